password = os.environ["DB_PASSWORD"]
token = os.getenv("API_TOKEN")
password = getpass.getpass()
password = request.form["password"]
if not password:
def check_password(password: str) -> bool:
    return bcrypt.checkpw(password.encode(), hashed)
secret_name = "prod/db"
token_url = "https://oauth2.googleapis.com/token"
PASSWORD_MIN_LENGTH = 12
api_key = settings.API_KEY
    "password": password,
parser.add_argument("--password", help="the password to use")
SECRET_KEY = env("SECRET_KEY")
commit = "3f786850e387550fdab836ed7e6dc881de23001b"
request_id = "123e4567-e89b-12d3-a456-426614174000"
password_hash = hashlib.sha256(pw).hexdigest()
token = None
password = ""
password = "password"
password = '<password>'
password = f"{prefix}{suffix}"
DEFAULT_PASSWORD_ENV = "DB_PASSWORD"
label = "Password"
field = forms.CharField(widget=forms.PasswordInput)
token_type = "bearer"
digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CACHE_KEY = "user:{id}:profile"
key = "name"
SECRET_FIELDS = ("password", "token")
tokens = tokenizer.encode(text)
passwd = None
url = f"https://api.test/x?api_key={api_key}"
u = "https://user@host.test/path"
dsn = "postgres://localhost:5432/app"
git = "git@github.com:org/repo.git"
v = "http://example.com:8080/path@v2"
mongo = "mongodb://user:${DB_PASSWORD}@db/app"
