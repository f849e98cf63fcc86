"""Planted-secret corpus: every secret redacted with a marker naming its kind, no near-miss touched."""

from __future__ import annotations

import random
import string

import pytest

from jobs.secrets import KINDS, is_config_file, marker, redact, shannon_entropy

AN = string.ascii_letters + string.digits
UP = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = AN + "+/"


def tok(alphabet: str, n: int, seed: int) -> str:
    """A deterministic random-looking string (built at run time: no live-looking secret in the source)."""
    rng = random.Random(seed)
    return "".join(rng.choice(alphabet) for _ in range(n))


PEM_BODY = "\n".join(tok(B64, 64, 100 + i) for i in range(4))
GCP_KEY = (
    "-----BEGIN PRIVATE KEY-----\\n"
    + tok(B64, 64, 7)
    + "\\n"
    + tok(B64, 40, 8)
    + "\\n-----END PRIVATE KEY-----\\n"
)

# (kind, path, text, the secret that must disappear)
SECRETS = [
    (
        "private-key",
        "deploy/id_rsa",
        f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\n",
        PEM_BODY.split("\n")[1],
    ),
    (
        "private-key",
        "src/keys.py",
        f'KEY = """-----BEGIN OPENSSH PRIVATE KEY-----\n{PEM_BODY}\n-----END OPENSSH PRIVATE KEY-----"""\n',
        PEM_BODY.split("\n")[2],
    ),
    (
        "private-key",
        "sa.json",
        f'{{"type": "service_account", "private_key": "{GCP_KEY}"}}\n',
        GCP_KEY[40:80],
    ),
    (
        "aws-access-key",
        "src/aws.py",
        f'client = boto3.client("s3", aws_access_key_id="AKIA{tok(UP, 16, 1)}")\n',
        None,
    ),
    (
        "aws-secret-key",
        "config/credentials",
        f"[default]\naws_secret_access_key = {tok(B64, 40, 2)}\n",
        None,
    ),
    ("github-token", "ci.sh", f"curl -H 'X: ghp_{tok(AN, 36, 3)}' https://api.github.com\n", None),
    (
        "github-fine-grained-token",
        "src/gh.go",
        f'const t = "github_pat_{tok(AN, 22, 4)}_{tok(AN, 59, 5)}"\n',
        None,
    ),
    ("gitlab-token", "src/gl.rb", f"TOKEN = 'glpat-{tok(AN, 20, 6)}'\n", None),
    (
        "slack-token",
        "bot.js",
        f"const slack = new App({{ token: 'xoxb-123456789012-1234567890123-{tok(AN, 24, 9)}' }});\n",
        None,
    ),
    (
        "slack-webhook",
        "notify.py",
        f'URL = "https://hooks.slack.com/services/T{tok(UP, 8, 10)}/B{tok(UP, 8, 11)}/{tok(AN, 24, 12)}"\n',
        None,
    ),
    ("stripe-key", "pay.py", f'stripe.api_key = "sk_live_{tok(AN, 24, 13)}"\n', None),
    ("stripe-webhook-secret", "hooks.py", f'endpoint_secret = "whsec_{tok(AN, 32, 14)}"\n', None),
    (
        "anthropic-api-key",
        "llm.py",
        f'client = Anthropic(api_key="sk-ant-api03-{tok(AN + "-_", 93, 15)}AA")\n',
        None,
    ),
    (
        "openai-api-key",
        "llm.ts",
        f'const openai = new OpenAI({{ apiKey: "sk-proj-{tok(AN + "-_", 64, 16)}" }});\n',
        None,
    ),
    (
        "google-api-key",
        "maps.html",
        f'<script src="https://maps.googleapis.com/maps/api/js?key=AIza{tok(AN, 35, 17)}"></script>\n',
        None,
    ),
    ("google-oauth-client-secret", "oauth.py", f'SECRET = "GOCSPX-{tok(AN, 28, 18)}"\n', None),
    (
        "google-oauth-access-token",
        "fetch.sh",
        f"curl -H 'Authorisation-ish: ya29.{tok(AN, 60, 19)}' x\n",
        None,
    ),
    ("huggingface-token", "hub.py", f'login("hf_{tok(string.ascii_letters, 34, 20)}")\n', None),
    ("npm-token", "publish.sh", f"NPM_PUBLISH=npm_{tok(AN, 36, 21)} npm publish\n", None),
    (
        "pypi-token",
        "release.sh",
        f"twine upload -p pypi-AgEIcHlwaS5vcmc{tok(AN, 60, 22)} dist/*\n",
        None,
    ),
    (
        "sendgrid-api-key",
        "mail.py",
        f'sg = SendGridAPIClient("SG.{tok(AN, 22, 23)}.{tok(AN, 43, 24)}")\n',
        None,
    ),
    ("twilio-api-key", "sms.py", f'client = Client("SK{tok(HEX, 32, 25)}", other)\n', None),
    ("mailgun-api-key", "mg.py", f'auth=("api", "key-{tok(AN, 32, 26)}")\n', None),
    ("mailchimp-api-key", "mc.py", f'mc.set_config({{"api": "{tok(HEX, 32, 27)}-us6"}})\n', None),
    (
        "digitalocean-token",
        "do.tf",
        f'provider "digitalocean" {{ do_api = "dop_v1_{tok(HEX, 64, 28)}" }}\n',
        None,
    ),
    (
        "shopify-token",
        "shop.rb",
        f"ShopifyAPI::Session.new(token: 'shpat_{tok(HEX, 32, 29)}')\n",
        None,
    ),
    ("vault-token", "vault.sh", f"vault login hvs.{tok(AN, 90, 30)}\n", None),
    (
        "terraform-token",
        "tfrc.hcl",
        f'credentials "app.terraform.io" {{ t = "{tok(AN, 14, 31)}.atlasv1.{tok(AN, 67, 32)}" }}\n',
        None,
    ),
    (
        "discord-webhook",
        "alert.py",
        f'HOOK = "https://discord.com/api/webhooks/123456789012345678/{tok(AN, 68, 33)}"\n',
        None,
    ),
    ("telegram-bot-token", "bot.py", f'bot = Bot("123456789:AA{tok(AN, 33, 34)}")\n', None),
    ("databricks-token", "dbx.py", f'host_cfg = ("dapi{tok(HEX, 32, 35)}", 1)\n', None),
    (
        "linear-api-key",
        "linear.ts",
        f'new LinearClient({{ apiKey: "lin_api_{tok(AN, 40, 36)}" }})\n',
        None,
    ),
    ("square-token", "sq.py", f'Client(access_token="sq0atp-{tok(AN, 22, 37)}")\n', None),
    ("newrelic-key", "nr.js", f"const nr = 'NRAK-{tok(UP, 27, 38)}';\n", None),
    ("postman-api-key", "pm.sh", f"X=PMAK-{tok(HEX, 24, 39)}-{tok(HEX, 34, 40)}\n", None),
    ("grafana-token", "graf.py", f'g = "glsa_{tok(AN, 32, 41)}_{tok(HEX, 8, 42)}"\n', None),
    ("doppler-token", "dop.sh", f"doppler run --token dp.pt.{tok(AN, 43, 43)} -- app\n", None),
    ("pulumi-token", "pulumi.sh", f"export PULUMI_ACCESS=pul-{tok(HEX, 40, 44)}\n", None),
    (
        "jwt",
        "api_test.http",
        f"GET /me\nX-Session: eyJ{tok(AN, 30, 45)}.eyJ{tok(AN, 60, 46)}.{tok(AN + '-_', 43, 47)}\n",
        None,
    ),
    (
        "azure-storage-key",
        "azure.cs",
        f'var c = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={tok(B64, 86, 48)}==;EndpointSuffix=core.windows.net";\n',
        None,
    ),
    (
        "azure-sas-signature",
        "blob.py",
        f'url = "https://a.blob.core.windows.net/c/f?sv=2022-11-02&sig={tok(AN, 44, 49)}%3D"\n',
        None,
    ),
    (
        "connection-string-password",
        "src/db.py",
        'DSN = "postgresql://app:S3cr3t-Pa55word@db.internal:5432/app"\n',
        "S3cr3t-Pa55word",
    ),
    (
        "connection-string-password",
        "app.yaml",
        "url: mongodb+srv://admin:hunter2hunter2@cluster0.mongodb.net/db\n",
        "hunter2hunter2",
    ),
    (
        "authorization-header",
        "client.sh",
        f"curl -H 'Authorization: Bearer {tok(AN, 40, 50)}' https://x\n",
        None,
    ),
    (
        "npmrc-auth",
        ".npmrc",
        "//registry.npmjs.org/:_authToken=5f1a2b3c-4d5e-6f70-8192-a3b4c5d6e7f8\n",
        "5f1a2b3c-4d5e",
    ),
    (
        "netrc-password",
        ".netrc",
        "machine api.example.com login bob password tr0ub4dor&3\n",
        "tr0ub4dor&3",
    ),
    (
        "secret-assignment",
        ".env",
        "DEBUG=1\nDB_PASSWORD=correct-horse-battery\n",
        "correct-horse-battery",
    ),
    (
        "secret-assignment",
        "config/settings.yaml",
        'oauth:\n  client_secret: "weakbutreal"\n',
        "weakbutreal",
    ),
    ("secret-assignment", "app.ini", "[smtp]\nsmtp_password = letmein99\n", "letmein99"),
    ("secret-assignment", "config.json", '{"db": {"password": "p@ss w0rd"}}\n', "p@ss w0rd"),
    ("high-entropy-secret", "src/settings.py", f'API_TOKEN = "{tok(AN, 24, 51)}"\n', None),
    (
        "high-entropy-secret",
        "src/client.ts",
        f'const headers = {{ "X-Api-Key": "{tok(AN, 32, 52)}" }};\n',
        None,
    ),
    (
        "age-secret-key",
        "keys.txt",
        f"AGE-SECRET-KEY-1{tok('QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L', 58, 53)}\n",
        None,
    ),
]


def _secret_of(kind: str, text: str, secret: str | None) -> str:
    if secret is not None:
        return secret
    # The token is the longest word-ish run in the line that holds it.
    words = [w for w in __import__("re").split(r"[\s'\"(){}=,;:]+", text) if w]
    return max(words, key=len)


@pytest.mark.parametrize(
    ("kind", "path", "text", "secret"), [pytest.param(*s, id=f"{s[0]}:{s[1]}") for s in SECRETS]
)
def test_secret_is_redacted(kind: str, path: str, text: str, secret: str | None) -> None:
    out, counts = redact(text, path)
    value = _secret_of(kind, text, secret)
    assert value not in out
    assert marker(kind) in out
    assert counts.get(kind, 0) >= 1
    assert sum(counts.values()) >= 1
    assert out.count("\n") == text.count("\n"), "line numbers must survive redaction"


def test_corpus_covers_at_least_30_kinds() -> None:
    kinds = {s[0] for s in SECRETS}
    assert len(kinds) >= 30
    assert kinds <= set(KINDS)
    assert set(KINDS) == kinds, "every rule has a planted secret"


NEAR_MISSES = [
    ("docs/aws.md", "Access key ids start with AKIA and are 20 characters long.\n"),
    ("src/a.py", 'prefix = "AKIAshort123"\n'),
    ("docs/gh.md", "Classic tokens look like ghp_abc123 followed by more characters.\n"),
    ("src/ml.py", "# sk-learn is what people mistype for scikit-learn\n"),
    ("docs/stripe.md", "Secret keys start with sk_live_ or sk_test_.\n"),
    ("src/db.py", 'password = os.environ["DB_PASSWORD"]\n'),
    (".env", "DB_PASSWORD=${DB_PASSWORD}\n"),
    (".github/workflows/ci.yml", "env:\n  token: ${{ secrets.GITHUB_TOKEN }}\n"),
    ("deploy/app.yaml", "secret_name: my-app-secret\n"),
    ("pyproject.toml", 'token_url = "https://oauth2.googleapis.com/token"\n'),
    ("src/db.py", 'DSN = "postgres://app@db.internal:5432/app"\n'),
    ("src/web.py", 'BASE = "http://localhost:8080/path?x=1"\n'),
    ("src/db.py", 'DSN = "postgres://user:${PGPASSWORD}@host/db"\n'),
    ("docs/setup.yaml", "password: <your-password>\n"),
    ("config.toml", "max_tokens = 4096\n"),
    ("policy.yaml", "password_min_length: 12\n"),
    ("src/defaults.py", 'DEFAULT_TOKEN = "not-a-real-token-value"\n'),
    ("CHANGELOG.md", "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it\n"),
    ("src/ids.py", 'id = "123e4567-e89b-12d3-a456-426614174000"\n'),
    (
        "deps.toml",
        'checksum = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"\n',
    ),
    (
        "certs/pub.pem",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n",
    ),
    (
        "certs/ca.crt",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUb3\n-----END CERTIFICATE-----\n",
    ),
    ("run.sh", 'curl -H "Authorization: Bearer ${TOKEN}" https://api.example.com\n'),
    ("docs/api.md", "Send `Authorization: Bearer <token>` with every request.\n"),
    ("src/jwt.py", 'HEADER_PREFIX = "eyJhbGciOi"\n'),
    ("src/maps.py", 'k = "AIzaSyShort"\n'),
    ("docs/slack.md", "Bot tokens start with xoxb- and user tokens with xoxp-.\n"),
    ("feature.yaml", "auth: true\n"),
    ("src/http.py", 'api_key_header = "X-Api-Key"\n'),
    ("settings.ini", "[app]\nsecret = changeme\n"),
    ("oauth.json", '{"client_id": "1234567890-abc.apps.googleusercontent.com"}\n'),
    ("src/checkout.js", f"Stripe('pk_live_{tok(AN, 24, 60)}');\n"),
    ("src/auth.py", "password = get_password()\n"),
    ("src/auth.py", 'token = f"{prefix}{suffix}"\n'),
    (
        "docs/img.md",
        "![x](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk)\n",
    ),
    ("src/t.py", f'tid = "SK{tok(HEX, 31, 61)}"\n'),
    ("src/m.py", 'k = "key-short"\n'),
    (".env", "export GITHUB_TOKEN=\n"),
    (".env", "TOKEN_TTL=3600\n"),
    ("src/author.py", 'author = "Ada Lovelace"\n'),
    ("k8s/secret.yaml", "kind: Secret\nmetadata:\n  name: db-credentials-ref\n"),
    ("src/crypto.py", 'ALGORITHM = "HS256"  # signing_key is loaded from the vault\n'),
]


@pytest.mark.parametrize(
    ("path", "text"), [pytest.param(p, t, id=f"{i}:{p}") for i, (p, t) in enumerate(NEAR_MISSES)]
)
def test_near_miss_is_untouched(path: str, text: str) -> None:
    out, counts = redact(text, path)
    assert out == text
    assert counts == {}


def test_near_miss_corpus_size() -> None:
    assert len(NEAR_MISSES) >= 30


def test_counts_per_kind_and_idempotence() -> None:
    key1, key2 = f"AKIA{tok(UP, 16, 70)}", f"AKIA{tok(UP, 16, 71)}"
    text = f"a = '{key1}'\nb = '{key2}'\nc = 'ghp_{tok(AN, 36, 72)}'\n"
    out, counts = redact(text, "src/x.py")
    assert counts == {"aws-access-key": 2, "github-token": 1}
    assert (
        out
        == "a = '[REDACTED:aws-access-key]'\nb = '[REDACTED:aws-access-key]'\nc = '[REDACTED:github-token]'\n"
    )
    again, counts2 = redact(out, "src/x.py")
    assert again == out and counts2 == {}


def test_multiline_key_keeps_line_numbers() -> None:
    text = f"line1\n-----BEGIN EC PRIVATE KEY-----\n{PEM_BODY}\n-----END EC PRIVATE KEY-----\nafter = 1\n"
    out, counts = redact(text, "src/k.py")
    assert counts == {"private-key": 1}
    assert out.splitlines()[1] == "[REDACTED:private-key]"
    assert out.splitlines().index("after = 1") == text.splitlines().index("after = 1")


def test_unterminated_private_key_is_still_redacted() -> None:
    text = f"-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n"
    out, _ = redact(text, "leak.txt")
    assert PEM_BODY.split("\n")[0] not in out and PEM_BODY.split("\n")[-1] not in out


def test_helpers() -> None:
    assert shannon_entropy("") == 0.0
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == 2.0
    assert is_config_file(".env.production") and is_config_file("deploy/app.yml")
    assert not is_config_file("src/app.py")
