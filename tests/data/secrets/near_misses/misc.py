prefix = "AKIAshort123"
DSN = "postgres://app@db.internal:5432/app"
BASE = "http://localhost:8080/path?x=1"
DEFAULT_TOKEN = "not-a-real-token-value"
HEADER_PREFIX = "eyJhbGciOi"
k = "AIzaSyShort"
api_key_header = "X-Api-Key"
password = get_password()
token = f"{prefix}{suffix}"
k = "key-short"
author = "Ada Lovelace"
ALGORITHM = "HS256"  # signing_key is loaded from the vault
oauth = {"client_id": "1234567890-abc.apps.googleusercontent.com"}
max_tokens = 4096
conn = connect(password=os.environ["PGPASSWORD"])
login(user, password=password)
