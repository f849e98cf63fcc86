"""Write the secret-redaction corpus: positives/, near_misses/ and manifest.json (run from anywhere).

    python tests/data/secrets/build_corpus.py [OUT_DIR]

Every value is random, made here from a fixed seed in the real format of its kind: realistic enough
for a scanner, never a live credential. manifest.json lists each positive as file, line (where the
secret begins), end_line, kind (the redaction kind expected) and secret (a part of the value that
must be gone after redaction), start_line (the first line of the sample, where a scanner may
flag it: the BEGIN line of a key, the header of a PuTTY file); and each near-miss as file, line and why it is not a secret. Every
file under near_misses/ must come out of the redactor byte for byte; in positives/, every line
that is not part of a listed positive must too.
"""

from __future__ import annotations

import base64
import json
import random
import shutil
import string
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
AN = string.ascii_letters + string.digits
UP = string.ascii_uppercase + string.digits
LO = string.ascii_lowercase + string.digits
HEX = "0123456789abcdef"
B64 = AN + "+/"
URLSAFE = AN + "-_"
SEED = 20261204
rng = random.Random(SEED)


def t(alphabet: str, n: int) -> str:
    """A random string of `n` characters of `alphabet`."""
    return "".join(rng.choice(alphabet) for _ in range(n))


def b64(n_bytes: int) -> str:
    """Standard base64 of `n_bytes` random bytes."""
    return base64.b64encode(bytes(rng.randrange(256) for _ in range(n_bytes))).decode()


def jwt() -> str:
    def enc(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    payload = {
        "sub": t(HEX, 12),
        "name": "svc-" + t(LO, 5),
        "iat": rng.randrange(1_600_000_000, 1_800_000_000),
    }
    return f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(payload)}.{t(URLSAFE, 43)}"


def pem(label: str, lines: int = 6) -> tuple[str, str]:
    body = [t(B64, 64) for _ in range(lines)] + [t(B64, 24) + "=="]
    return f"-----BEGIN {label}-----\n" + "\n".join(body) + f"\n-----END {label}-----", body[2]


def azure_key() -> str:
    return b64(64)  # 88 characters ending in ==


# Formats of the token kinds: kind -> a function giving one fresh value.
TOKENS = {
    "age-secret-key": lambda: (
        "AGE-SECRET-KEY-1" + t("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L".upper(), 58)
    ),
    "aws-access-key": lambda: "AKIA" + t(UP, 16),
    "github-fine-grained-token": lambda: f"github_pat_11{t(UP, 20)}_{t(AN, 59)}",
    "github-token": lambda: rng.choice(["ghp_", "gho_", "ghs_"]) + t(AN, 36),
    "gitlab-token": lambda: "glpat-" + t(AN + "_-", 20),
    "slack-webhook": lambda: (
        f"https://hooks.slack.com/services/T{t(UP, 8)}/B{t(UP, 10)}/{t(AN, 24)}"
    ),
    "slack-app-token": lambda: f"xapp-1-A{t(UP, 10)}-{t('0123456789', 13)}-{t(HEX, 64)}",
    "slack-token": lambda: f"xoxb-{t('0123456789', 12)}-{t('0123456789', 13)}-{t(AN, 24)}",
    "stripe-webhook-secret": lambda: "whsec_" + t(AN, 32),
    "stripe-key": lambda: rng.choice(["sk_live_", "rk_live_"]) + t(AN, 24),
    "anthropic-api-key": lambda: f"sk-ant-api03-{t(URLSAFE, 93)}AA",
    "openai-api-key": lambda: f"sk-proj-{t(URLSAFE, 20)}{t(AN, 20)}T3BlbkFJ{t(AN, 20)}",
    "google-api-key": lambda: "AIza" + t(URLSAFE, 35),
    "google-oauth-client-secret": lambda: "GOCSPX-" + t(URLSAFE, 28),
    "google-oauth-access-token": lambda: "ya29." + t(URLSAFE, 120),
    "huggingface-token": lambda: "hf_" + t(AN, 34),
    "npm-token": lambda: "npm_" + t(AN, 36),
    "pypi-token": lambda: "pypi-AgEIcHlwaS5vcmc" + t(URLSAFE, 140),
    "rubygems-token": lambda: "rubygems_" + t(HEX, 48),
    "docker-hub-token": lambda: "dckr_pat_" + t(URLSAFE, 27),
    "sendgrid-api-key": lambda: f"SG.{t(URLSAFE, 22)}.{t(URLSAFE, 43)}",
    "twilio-api-key": lambda: "SK" + t(HEX, 32),
    "mailgun-api-key": lambda: "key-" + t(HEX, 32),
    "mailchimp-api-key": lambda: t(HEX, 32) + "-us" + str(rng.randrange(1, 21)),
    "digitalocean-token": lambda: "dop_v1_" + t(HEX, 64),
    "shopify-token": lambda: "shpat_" + t(HEX, 32),
    "vault-token": lambda: "hvs." + t(AN, 90),
    "terraform-cloud-token": lambda: f"{t(AN, 14)}.atlasv1.{t(AN, 67)}",
    "discord-webhook": lambda: (
        f"https://discord.com/api/webhooks/{t('0123456789', 18)}/{t(URLSAFE, 68)}"
    ),
    "discord-bot-token": lambda: f"M{t(AN, 23)}.{t(URLSAFE, 6)}.{t(URLSAFE, 27)}",
    "telegram-bot-token": lambda: f"{t('0123456789', 10)}:AA{t(URLSAFE, 33)}",
    "databricks-token": lambda: "dapi" + t(HEX, 32),
    "linear-api-key": lambda: "lin_api_" + t(AN, 40),
    "square-token": lambda: "sq0csp-" + t(URLSAFE, 43),
    "newrelic-key": lambda: "NRAK-" + t(UP, 27),
    "postman-api-key": lambda: f"PMAK-{t(HEX, 24)}-{t(HEX, 34)}",
    "grafana-token": lambda: "glsa_" + t(AN, 32) + "_" + t(HEX, 8),
    "doppler-token": lambda: "dp.st.prd." + t(AN, 43),
    "pulumi-token": lambda: "pul-" + t(HEX, 40),
    "artifactory-token": lambda: "AKCp" + t(AN, 69),
    "atlassian-api-token": lambda: "ATATT3xFfGF0" + t(URLSAFE, 180) + "=" + t(HEX, 8).upper(),
    "tailscale-key": lambda: f"tskey-auth-k{t(AN, 10)}CNTRL-{t(AN, 33)}",
    "supabase-token": lambda: "sbp_" + t(HEX, 40),
    "sentry-token": lambda: "sntryu_" + t(HEX, 64),
    "figma-token": lambda: "figd_" + t(URLSAFE, 40),
    "replicate-token": lambda: "r8_" + t(AN, 37),
    "groq-api-key": lambda: "gsk_" + t(AN, 52),
    "xai-api-key": lambda: "xai-" + t(AN, 80),
    "perplexity-api-key": lambda: "pplx-" + t(AN, 48),
    "notion-token": lambda: "ntn_" + t("0123456789", 11) + t(AN, 35),
    "alibaba-access-key": lambda: "LTAI" + t(AN, 20),
    "tencent-secret-id": lambda: "AKID" + t(AN, 32),
    "sonar-token": lambda: "squ_" + t(HEX, 40),
    "buildkite-token": lambda: "bkua_" + t(HEX, 40),
    "heroku-api-key": lambda: "HRKU-" + t(URLSAFE, 60),
    "fly-token": lambda: "fo1_" + t(URLSAFE, 43),
    "netlify-token": lambda: "nfp_" + t(AN, 40),
    "planetscale-token": lambda: "pscale_tkn_" + t(URLSAFE, 43),
    "dynatrace-token": lambda: f"dt0c01.{t(UP, 24)}.{t(UP, 64)}",
    "mapbox-secret-token": lambda: f"sk.eyJ1Ijoi{t(AN, 20)}.{t(URLSAFE, 22)}",
    "contentful-token": lambda: "CFPAT-" + t(URLSAFE, 43),
    "circleci-token": lambda: f"CCIPAT_{t(AN, 22)}_{t(HEX, 40)}",
    "cloudflare-origin-ca-key": lambda: f"v1.0-{t(HEX, 24)}-{t(HEX, 146)}",
    "azure-ad-client-secret": lambda: f"{t(AN, 3)}8Q~{t(AN + '_~.-', 34)}",
    "jwt": jwt,
}

# How a token sits in each kind of file: (file name, line template with {v}, variable stem).
PLACES = [
    ("app.env", "{name}={v}"),
    ("settings.py", '{name} = "{v}"'),
    ("config.yaml", "  {lname}: {v}"),
    ("client.js", "const {camel} = '{v}';"),
    ("deploy.sh", 'export {name}="{v}"'),
    ("appsettings.json", '  "{camel}": "{v}",'),
    ("Main.java", '    private static final String {name} = "{v}";'),
    ("main.go", '\t{camel} := "{v}"'),
    ("config.toml", '{lname} = "{v}"'),
    ("README.md", "curl -H 'X-Token: {v}' https://api.internal.test/v1/ping"),
]


class Corpus:
    """Files being written, and the manifest entries of what is in them."""

    def __init__(self) -> None:
        self.files: dict[str, list[str]] = {}
        self.positives: list[dict[str, object]] = []
        self.near: list[dict[str, object]] = []

    def _lines(self, path: str) -> list[str]:
        return self.files.setdefault(path, [])

    def line(self, path: str, text: str) -> None:
        """Context that is neither a positive nor a counted near-miss (it must stay untouched too)."""
        self._lines(path).extend(text.split("\n"))

    def pos(self, path: str, kind: str, text: str, secret: str, offset: int = 0) -> None:
        """A positive: `text` (maybe several lines), its secret beginning on line `offset` of it."""
        lines = self._lines("positives/" + path)
        first = len(lines) + 1
        lines.extend(text.split("\n"))
        assert secret in text, (kind, secret)
        self.positives.append(
            {
                "file": "positives/" + path,
                "line": first + offset,
                "start_line": first,
                "end_line": len(lines),
                "kind": kind,
                "secret": secret,
            }
        )

    def nm(self, path: str, why: str, *lines: str) -> None:
        """Near-misses: each line must stay exactly as it is."""
        dest = self._lines("near_misses/" + path)
        for text in lines:
            dest.append(text)
            self.near.append({"file": "near_misses/" + path, "line": len(dest), "why": why})

    def write(self, out: Path) -> None:
        for sub in ("positives", "near_misses"):
            shutil.rmtree(out / sub, ignore_errors=True)
        for rel, lines in self.files.items():
            p = out / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("\n".join(lines) + "\n")
        manifest = {
            "generated_by": "tests/data/secrets/build_corpus.py",
            "positives": self.positives,
            "near_misses": self.near,
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def names(kind: str) -> dict[str, str]:
    stem = kind.replace("-", "_").upper()
    parts = kind.split("-")
    return {
        "name": stem,
        "lname": stem.lower(),
        "camel": parts[0] + "".join(p.title() for p in parts[1:]),
    }


def tokens(c: Corpus) -> None:
    """Each token kind in three different file types."""
    for i, (kind, make) in enumerate(TOKENS.items()):
        for j in range(3):
            path, template = PLACES[(i + j * 3) % len(PLACES)]
            v = make()
            c.pos(f"tokens/{path}", kind, template.format(v=v, **names(kind)), v)


def keys(c: Corpus) -> None:
    """Private keys as files, inside code, YAML block scalars and JSON strings."""
    body, secret = pem("RSA PRIVATE KEY")
    c.pos("keys/id_rsa", "private-key", body, secret)
    body, secret = pem("OPENSSH PRIVATE KEY", 5)
    c.pos("keys/id_ed25519", "openssh-private-key", body, secret)
    body, secret = pem("EC PRIVATE KEY", 3)
    c.line("positives/keys/tls.py", "import ssl\n")
    c.pos("keys/tls.py", "private-key", f'EC_KEY = """{body}"""', secret)
    body, secret = pem("ENCRYPTED PRIVATE KEY", 4)
    c.pos("keys/server.key", "private-key", body, secret)
    body, secret = pem("PRIVATE KEY", 8)
    escaped = body.replace("\n", "\\n")
    c.line("positives/keys/service-account.json", "{")
    c.line("positives/keys/service-account.json", '  "type": "service_account",')
    c.pos("keys/service-account.json", "private-key", f'  "private_key": "{escaped}\\n",', secret)
    c.line(
        "positives/keys/service-account.json",
        '  "client_email": "svc@proj.iam.gserviceaccount.com"\n}',
    )
    body, secret = pem("PGP PRIVATE KEY BLOCK", 6)
    c.pos("keys/signing.asc", "pgp-private-key", body, secret)
    body, secret = pem("OPENSSH PRIVATE KEY", 5)
    c.line("positives/keys/values.yaml", "ssh:")
    c.pos(
        "keys/values.yaml",
        "openssh-private-key",
        "  privateKey: |\n    " + body.replace("\n", "\n    "),
        secret,
        offset=1,
    )
    ssh2 = [t(B64, 70) for _ in range(5)]
    c.pos(
        "keys/legacy.ssh2",
        "ssh2-private-key",
        '---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----\nComment: "rsa-key-20241204"\n'
        + "\n".join(ssh2)
        + "\n---- END SSH2 ENCRYPTED PRIVATE KEY ----",
        ssh2[2],
    )
    for version, enc in ((2, "none"), (3, "aes256-cbc"), (2, "aes256-cbc")):
        pub = [t(B64, 64) for _ in range(4)]
        priv = [t(B64, 64) for _ in range(6)]
        head = [
            f"PuTTY-User-Key-File-{version}: ssh-rsa",
            f"Encryption: {enc}",
            "Comment: deploy@build",
        ]
        if version == 3 and enc != "none":
            head += [
                "Key-Derivation: Argon2id",
                "Argon2-Memory: 8192",
                f"Argon2-Salt: {t(HEX, 32)}",
            ]
        head += [f"Public-Lines: {len(pub)}", *pub]
        c.pos(
            f"keys/deploy{version}{enc[:3]}.ppk",
            "putty-private-key",
            "\n".join(head)
            + f"\nPrivate-Lines: {len(priv)}\n"
            + "\n".join(priv)
            + f"\nPrivate-MAC: {t(HEX, 64)}",
            priv[1],
            offset=len(head) + 1,
        )


def cloud(c: Corpus) -> None:
    """Azure, AWS, IBM and the kinds the issue names."""
    for path, tpl in (
        (".env", "AZURE_STORAGE_KEY={v}"),
        ("storage.py", 'STORAGE_ACCOUNT_KEY = "{v}"'),
        ("azure.tf", 'storage_account_key = "{v}"'),
        ("appsettings.json", '  "StorageAccountKey": "{v}",'),
    ):
        v = azure_key()
        c.pos(f"azure/{path}", "azure-storage-key", tpl.format(v=v), v)
    v = azure_key()
    c.pos(
        "azure/conn.cs",
        "azure-storage-key",
        f'var conn = "DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={v};EndpointSuffix=core.windows.net";',
        v,
    )
    for path, tpl in (
        (
            "bus.py",
            'CONN = "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={v}"',
        ),
        (
            "bus.env",
            "SERVICEBUS_CONNECTION=Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={v}",
        ),
        (
            "Bus.java",
            '    String cs = "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=listen;SharedAccessKey={v}";',
        ),
    ):
        v = b64(32)
        c.pos(f"azure/{path}", "azure-service-bus-key", tpl.format(v=v), v)
    v = t(AN, 43) + "%3D"
    c.pos(
        "azure/blob.py",
        "azure-sas-signature",
        f'URL = "https://acme.blob.core.windows.net/c/f.txt?sv=2022-11-02&ss=b&sp=r&se=2027-01-01&sig={v}"',
        v,
    )
    for path, tpl in (
        ("aws/credentials", "aws_secret_access_key = {v}"),
        ("aws/s3.py", 's3 = boto3.client("s3", aws_secret_access_key="{v}")'),
        ("aws/terraform.tfvars", 'aws_secret_key = "{v}"'),
    ):
        v = t(AN + "/+", 40)
        c.pos(path, "aws-secret-key", tpl.format(v=v), v)
    for path, tpl in (
        ("ibm/config.py", 'IBM_CLOUD_API_KEY = "{v}"'),
        ("ibm/app.env", "IBM_CLOUD_APIKEY={v}"),
    ):
        v = t(URLSAFE, 44)
        c.pos(path, "ibm-cloud-iam-key", tpl.format(v=v), v)
    v = t(HEX, 48)
    c.pos("ibm/cos.py", "ibm-cos-hmac-secret", f'cos_hmac_secret_access_key = "{v}"', v)
    v = t(LO, 64)
    c.pos("ibm/sl.py", "softlayer-api-key", f'SOFTLAYER_API_KEY = "{v}"', v)
    v = t(LO, 64)
    c.pos("ibm/sl.rb", "softlayer-api-key", f'url = "https://api.softlayer.com/soap/v3/{v}"', v)
    v = t(HEX, 64)
    c.pos("ibm/cloudant.py", "cloudant-credentials", f'cloudant_password = "{v}"', v)


def urls(c: Corpus) -> None:
    """Passwords in URLs (also with `/`), query keys, Authorization headers."""
    rows = [
        ("db/app.env", "DATABASE_URL=postgres://app:{v}@db.internal:5432/app", t(AN, 16)),
        (
            "db/settings.py",
            'BROKER = "amqp://worker:{v}@rabbit:5672//"',
            t(AN, 14) + "/" + t(AN, 6),
        ),
        ("db/config.yaml", "redis_url: redis://default:{v}@cache:6379/0", t(AN, 20)),
        ("db/db.go", '\tdsn := "mysql://root:{v}@tcp(db:3306)/shop"', t(AN, 8) + "/" + t(AN, 8)),
        (
            "db/mongo.js",
            "const uri = 'mongodb+srv://admin:{v}@cluster0.abcde.mongodb.net/test';",
            t(AN, 18),
        ),
        ("db/.git-credentials", "https://ci-bot:{v}@git.internal.test", t(AN, 30)),
        ("db/.git-credentials", "https://deploy:{v}@bitbucket.org", t(AN, 12) + "/" + t(AN, 4)),
        (
            "db/docker-compose.yml",
            "      - SQLALCHEMY_URL=postgresql+psycopg://svc:{v}@pg/app",
            t(AN, 12),
        ),
    ]
    for path, tpl, v in rows:
        c.pos(path, "connection-string-password", tpl.format(v=v), v)
    rows = [
        (
            "api/client.py",
            'r = requests.get("https://api.weather.test/v2/now?city=Oslo&api_key={v}")',
            t(HEX, 32),
        ),
        ("api/fetch.js", "fetch(`https://maps.example.test/geo?q=x&apikey={v}`)", t(AN, 32)),
        (
            "api/README.md",
            "GET https://api.service.test/v1/items?access_token={v}&limit=10",
            t(AN, 40),
        ),
        ("api/hooks.yaml", "url: https://ci.test/hook?token={v}", t(AN, 24)),
        ("api/Api.java", '    URL u = new URL("https://api.test/x?client_secret={v}");', t(AN, 30)),
    ]
    for path, tpl, v in rows:
        c.pos(path, "url-query-secret", tpl.format(v=v), v)
    rows = [
        ("api/call.sh", "curl -H 'Authorization: Bearer {v}' https://api.test", t(AN, 40)),
        ("api/http.py", 'headers = {{"Authorization": "Basic {v}"}}', b64(24)),
        ("api/nginx.conf", 'proxy_set_header Authorization "Bearer {v}";', t(AN + "._-", 48)),
    ]
    for path, tpl, v in rows:
        c.pos(path, "authorization-header", tpl.format(v=v), v)


def files(c: Corpus) -> None:
    """Credential files and file-type rules: docker, k8s, npmrc, netrc, pgpass, htpasswd, ..."""
    for i in range(3):
        v = base64.b64encode(f"user{i}:{t(AN, 16)}".encode()).decode()
        reg = ["https://index.docker.io/v1/", "ghcr.io", "registry.gitlab.com"][i]
        c.pos(
            f"docker/config{i}/config.json",
            "docker-registry-auth",
            f'{{"auths": {{"{reg}": {{"auth": "{v}"}}}}}}',
            v,
        )
    for i in range(2):
        inner = json.dumps(
            {"auths": {"ghcr.io": {"auth": base64.b64encode(f"u:{t(AN, 20)}".encode()).decode()}}}
        )
        v = base64.b64encode(inner.encode()).decode()
        c.line(
            f"positives/k8s/pull-secret{i}.yaml",
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: regcred\ntype: kubernetes.io/dockerconfigjson\ndata:",
        )
        c.pos(
            f"k8s/pull-secret{i}.yaml",
            "kubernetes-dockerconfigjson",
            f"  .dockerconfigjson: {v}",
            v,
        )
    c.line(
        "positives/k8s/db-secret.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:",
    )
    for key in ("username", "host", "dsn"):
        v = b64(18)
        c.pos("k8s/db-secret.yaml", "kubernetes-secret", f"  {key}: {v}", v)
    c.line("positives/k8s/db-secret.yaml", "stringData:")
    v = t(AN, 16)
    c.pos("k8s/db-secret.yaml", "kubernetes-secret", f"  api-url-signing: {v}", v)
    v = t(AN, 20)
    c.pos("k8s/db-secret.yaml", "secret-assignment", f"  password: {v}", v)
    for line, v in (
        ("//registry.npmjs.org/:_authToken={v}", "npm_" + t(AN, 36)),
        (
            "//npm.pkg.github.com/:_authToken={v}",
            t(HEX, 8) + "-" + t(HEX, 4) + "-" + t(HEX, 4) + "-" + t(HEX, 4) + "-" + t(HEX, 12),
        ),
        ("//nexus.internal/repository/npm/:_password={v}", b64(12)),
        ("_auth={v}", b64(18)),
    ):
        kind = "npm-token" if v.startswith("npm_") else "npmrc-auth"
        c.pos("npm/.npmrc", kind, line.format(v=v), v)
    for line, v in (
        ("machine api.heroku.test login ops@acme.test password {v}", t(AN, 24)),
        ("machine ftp.acme.test\n  login deploy\n  password {v}", t(AN, 14)),
    ):
        c.pos("netrc/.netrc", "netrc-password", line.format(v=v), v, offset=line.count("\n"))
    for host in ("db.internal:5432:app:app", "*:*:*:replicator", "10.0.0.5:6432:billing:billing"):
        v = t(AN, 18)
        c.pos("pg/.pgpass", "pgpass-password", f"{host}:{v}", v)
    for user in ("admin", "deploy"):
        v = "$apr1$" + t(AN, 8) + "$" + t(AN + "./", 22)
        c.pos("web/.htpasswd", "htpasswd-hash", f"{user}:{v}", v)
    v = "$2y$05$" + t(AN + "./", 53)
    c.pos("web/.htpasswd", "htpasswd-hash", f"ops:{v}", v)


def named(c: Corpus) -> None:
    """Secret-named settings in each format; the issue's `_PASS`, Dockerfile, shell, Terraform, code."""
    rows = [
        ("cfg/.env", "secret-assignment", "DB_PASS={v}"),
        ("cfg/.env", "secret-assignment", "SMTP_PASS='{v}'"),
        ("cfg/.env", "secret-assignment", "JWT_SECRET={v}"),
        ("cfg/.env.production", "secret-assignment", "REDIS_PASSWORD={v}"),
        ("cfg/config.yaml", "secret-assignment", "  db_pass: {v}"),
        ("cfg/config.yaml", "secret-assignment", '  client_secret: "{v}"'),
        ("cfg/config.yaml", "secret-assignment", "  smtpPass: {v}"),
        ("cfg/settings.json", "secret-assignment", '  "password": "{v}",'),
        ("cfg/settings.json", "secret-assignment", '  "apiKey": "{v}",'),
        ("cfg/pyproject.toml", "secret-assignment", 'token = "{v}"'),
        ("cfg/app.ini", "secret-assignment", "password = {v}"),
        ("cfg/my.cnf", "secret-assignment", "password={v}"),
        ("cfg/app.properties", "secret-assignment", "spring.datasource.password={v}"),
        ("cfg/app.properties", "secret-assignment", "mail.smtp.pass={v}"),
        ("cfg/.pypirc", "secret-assignment", "password: {v}"),
        ("cfg/web.xml", "xml-secret", "  <password>{v}</password>"),
        ("cfg/app.config", "xml-secret", '  <add key="ApiKey" value="{v}" />'),
        ("cfg/Dockerfile", "dockerfile-secret", "ENV DB_PASSWORD={v}"),
        ("cfg/Dockerfile", "dockerfile-secret", "ENV ADMIN_PASS {v}"),
        ("cfg/Dockerfile", "dockerfile-secret", "ARG NPM_TOKEN={v}"),
        ("cfg/api.Dockerfile", "dockerfile-secret", 'ENV SECRET_KEY="{v}"'),
        ("cfg/run.sh", "shell-secret", 'export DB_PASSWORD="{v}"'),
        ("cfg/run.sh", "shell-secret", "export SMTP_PASS={v}"),
        ("cfg/run.sh", "cli-secret-flag", "mysql -u root --password {v} shop < dump.sql"),
        ("cfg/.bashrc", "shell-secret", "export GH_TOKEN={v}"),
        ("cfg/main.tf", "terraform-secret", '  admin_password = "{v}"'),
        ("cfg/main.tf", "terraform-secret", '  master_password = "{v}"'),
        ("cfg/prod.tfvars", "terraform-secret", 'db_password = "{v}"'),
        ("cfg/ci.yml", "cli-secret-flag", "      - run: ./deploy --api-key {v} --env prod"),
    ]
    for path, kind, tpl in rows:
        v = t(AN, rng.randrange(8, 15)) + rng.choice("!%+_")
        c.pos(path, kind, tpl.format(v=v), v)
    v = t(AN, 24)
    c.line("positives/cfg/values.yaml", "app:\n  name: shop")
    c.pos(
        "cfg/values.yaml",
        "secret-assignment",
        f"  sshPassphrase: >-\n    {v}\n    {t(AN, 8)}",
        v,
        offset=1,
    )
    c.line("positives/cfg/values.yaml", "  replicas: 2")
    v = t(AN, 12)
    c.line(
        "positives/cfg/vars.tf",
        'variable "db_password" {\n  type      = string\n  sensitive = true',
    )
    c.pos("cfg/vars.tf", "terraform-secret", f'  default   = "{v}"', v)
    c.line("positives/cfg/vars.tf", "}")
    rows = [
        ("code/db.py", 'conn = psycopg.connect(host="db", user="app", password="{v}")'),
        ("code/db.py", "engine = connect(user='ro', passwd='{v}')"),
        ("code/login.js", "await login({{ user: 'admin', password: '{v}' }});"),
        ("code/auth.ts", 'const adminPass = "{v}";'),
        ("code/Db.java", '        ds.setPassword("x"); String dbPassword = "{v}";'),
        ("code/db.go", '\tpassword := "{v}"'),
        ("code/db.rb", "  password: '{v}',"),
        ("code/db.php", "$db_pass = '{v}';"),
        ("code/Db.cs", '            var pwd = "{v}";'),
        ("code/check.py", 'if password == "{v}":'),
    ]
    for path, tpl in rows:
        v = t(AN, rng.randrange(6, 11))
        c.pos(path, "password-literal", tpl.format(v=v), v)
    rows = [
        ("code/keys.py", 'SECRET_KEY = "{v}"'),
        ("code/keys.py", "stripe_secret = '{v}'"),
        ("code/client.rb", "API_TOKEN = '{v}'"),
        ("code/app.js", 'const clientSecret = "{v}";'),
        ("code/Keys.kt", '    val apiKey = "{v}"'),
        ("code/keys.py", 'HEROKU_API_KEY = "{v}"'),
    ]
    for path, tpl in rows:
        v = (
            t(AN, 32)
            if "HEROKU" not in tpl
            else f"{t(HEX, 8)}-{t(HEX, 4)}-4{t(HEX, 3)}-a{t(HEX, 3)}-{t(HEX, 12)}"
        )
        c.pos(path, "high-entropy-secret", tpl.format(v=v), v)


NEAR: list[tuple[str, str, list[str]]] = [
    (
        "placeholders.env",
        "placeholder or reference",
        [
            "DB_PASSWORD=${DB_PASSWORD}",
            "DB_PASSWORD=",
            "API_KEY=changeme",
            "SECRET_KEY=xxx",
            "TOKEN=<token>",
            "DB_PASS=$DB_PASS",
            "SMTP_PASSWORD=${SMTP_PASSWORD:-}",
            "REDIS_PASSWORD=''",
            'JWT_SECRET=""',
            "API_TOKEN=your-api-key-here",
            "AWS_SECRET_ACCESS_KEY=REPLACE_ME",
            "GITHUB_TOKEN=${{ secrets.GITHUB_TOKEN }}",
            "PASSWORD=********",
            "STRIPE_KEY=sk_test_xxxxxxxx",
            "DB_PASSWORD_FILE=/run/secrets/db_password",
            "TOKEN_URL=https://auth.test/oauth/token",
            "SECRET_NAME=prod/db/credentials",
            "PASSWORD_MIN_LENGTH=12",
            "KEY_ID=3",
            "AUTH_ENABLED=true",
        ],
    ),
    (
        "placeholders.yaml",
        "placeholder, reference, template or non-secret key",
        [
            "db:",
            '  password: "{{ .Values.db.password }}"',
            "  password: !vault |",
            "  pass: ~",
            "  password: null",
            "  token: ''",
            "  secretName: db-credentials",
            "  passwordPolicy: strict",
            "  api_key: ${API_KEY}",
            "  client_secret: <client-secret>",
            "  tokenUrl: https://idp.test/token",
            "  secret: '%(secret)s'",
            "  password: changeme",
            "  privateKeyPath: /etc/ssl/private/key.pem",
            "  key: name",
            "  passwordLength: 16",
            "  secretRef: arn:aws:secretsmanager:eu-west-1:123456789012:secret:db",
            "  token: ENV_TOKEN",
            "  bypass: cache",
            "  compass: north",
        ],
    ),
    (
        "k8s-configmap.yaml",
        "a ConfigMap is not a Secret; a Secret reference is not a value",
        [
            "apiVersion: v1",
            "kind: ConfigMap",
            "metadata:",
            "  name: app",
            "data:",
            "  LOG_LEVEL: debug",
            "  FEATURE_FLAGS: a,b,c",
            "  greeting: aGVsbG8gd29ybGQ=",
            "---",
            "env:",
            "  - name: DB_PASSWORD",
            "    valueFrom:",
            "      secretKeyRef:",
            "        name: db",
            "        key: password",
        ],
    ),
    (
        "settings.json",
        "JSON placeholders and non-secret keys",
        [
            "{",
            '  "password": "",',
            '  "token": null,',
            '  "apiKey": "${API_KEY}",',
            '  "passwordRequired": true,',
            '  "secretArn": "arn:aws:secretsmanager:us-east-1:1:secret:x",',
            '  "auth": {},',
            '  "credsStore": "desktop",',
            '  "integrity": "sha512-3Y8o5vE2mC3xL9e8WQ4Cw3o1zJwq1y2Qz8m0kq8Vw4Qk2o1x9y7z6v5u4t3s2r1q0p9o8n7m6l5k4j3i2h1g0f==",',
            '  "id": "123e4567-e89b-12d3-a456-426614174000",',
            '  "icon": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",',
            '  "publishableKey": "pk_live_51Hh2bFAbCdEfGhIjKlMnOpQrStUvWxYz",',
            "}",
        ],
    ),
    (
        "examples.py",
        "documented examples, references and code that handles passwords",
        [
            'password = os.environ["DB_PASSWORD"]',
            'token = os.getenv("API_TOKEN")',
            "password = getpass.getpass()",
            'password = request.form["password"]',
            "if not password:",
            "def check_password(password: str) -> bool:",
            "    return bcrypt.checkpw(password.encode(), hashed)",
            'secret_name = "prod/db"',
            'token_url = "https://oauth2.googleapis.com/token"',
            "PASSWORD_MIN_LENGTH = 12",
            "api_key = settings.API_KEY",
            '    "password": password,',
            'parser.add_argument("--password", help="the password to use")',
            'SECRET_KEY = env("SECRET_KEY")',
            'commit = "3f786850e387550fdab836ed7e6dc881de23001b"',
            'request_id = "123e4567-e89b-12d3-a456-426614174000"',
            "password_hash = hashlib.sha256(pw).hexdigest()",
            "token = None",
            'password = ""',
            'password = "password"',
            "password = '<password>'",
            'password = f"{prefix}{suffix}"',
            'DEFAULT_PASSWORD_ENV = "DB_PASSWORD"',
            'label = "Password"',
            "field = forms.CharField(widget=forms.PasswordInput)",
            'token_type = "bearer"',
            'digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
            'CACHE_KEY = "user:{id}:profile"',
            'key = "name"',
            'SECRET_FIELDS = ("password", "token")',
            "tokens = tokenizer.encode(text)",
            "passwd = None",
            'url = f"https://api.test/x?api_key={api_key}"',
            'u = "https://user@host.test/path"',
            'dsn = "postgres://localhost:5432/app"',
            'git = "git@github.com:org/repo.git"',
            'v = "http://example.com:8080/path@v2"',
            'mongo = "mongodb://user:${DB_PASSWORD}@db/app"',
        ],
    ),
    (
        "web.js",
        "JS references, public keys and short look-alikes",
        [
            "const password = process.env.DB_PASSWORD;",
            "const token = req.headers.authorization;",
            "headers: { Authorization: `Bearer ${token}` },",
            "const stripe = Stripe('pk_live_51Hh2bFAbCdEfGhIjKlMnOpQr');",
            "mapboxgl.accessToken = 'pk.eyJ1IjoiYWNtZSIsImEiOiJja2V4YW1wbGUifQ.abcdefghijklmnopqrstuv';",
            "const slack = 'xoxb-your-token';",
            "const gh = 'ghp_short';",
            "const key = 'sk-...';",
            "if (password === confirmPassword) {",
            "const passwordInput = document.getElementById('password');",
            "fetch(`/api/items?page=2&sort=asc`);",
            "fetch(`/api/items?key=value`);",
            "const url = `${base}?token=${token}`;",
            "export const TOKEN_KEY = 'auth.token';",
            "localStorage.setItem('token', token);",
        ],
    ),
    (
        "Dockerfile",
        "build args without values, references",
        [
            "FROM python:3.12-slim",
            "ARG DB_PASSWORD",
            "ARG NPM_TOKEN",
            "ENV DB_PASSWORD=${DB_PASSWORD}",
            'ENV API_KEY=""',
            "ENV PASSWORD_FILE=/run/secrets/pw",
            "RUN --mount=type=secret,id=npm_token npm ci",
            "ENV PYTHONDONTWRITEBYTECODE=1",
        ],
    ),
    (
        "deploy.sh",
        "shell references and prompts",
        [
            'export DB_PASSWORD="$DB_PASSWORD"',
            'export TOKEN="${GITHUB_TOKEN}"',
            "export PASSWORD=$(cat /run/secrets/pw)",
            'read -r -s -p "Password: " password',
            'echo "$password" | docker login --password-stdin',
            "unset DB_PASSWORD",
            'curl -H "Authorization: Bearer $TOKEN" https://api.test',
            'mysql --password="$MYSQL_PWD" db',
            'export API_KEY="${API_KEY:?set API_KEY}"',
        ],
    ),
    (
        "main.tf",
        "Terraform references and generated passwords",
        [
            "  password = var.db_password",
            "  master_password = random_password.db.result",
            "  password = data.aws_secretsmanager_secret_version.db.secret_string",
            '  token = ""',
            "  admin_password = local.admin_password",
            '  secret_name = "prod-db"',
            "  sensitive = true",
            'variable "db_password" {',
            "  type = string",
            "}",
        ],
    ),
    (
        "app.ini",
        "INI placeholders",
        [
            "[database]",
            "password =",
            "password = %(DB_PASSWORD)s",
            "password_file = /etc/app/pw",
            "pass_through = true",
            "[auth]",
            "token_ttl = 3600",
            "secret_backend = vault",
        ],
    ),
    (
        "pyproject.toml",
        "TOML non-secrets",
        [
            "[tool.poetry]",
            'name = "acme"',
            "[[package]]",
            'hash = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"',
            'token_env = "PYPI_TOKEN"',
            'password = ""',
        ],
    ),
    (
        "web.xml",
        "XML placeholders",
        [
            "<password>${db.password}</password>",
            "<password></password>",
            "<secretName>db</secretName>",
            '<add key="ApiKey" value="" />',
            '<add key="ApiKeyHeader" value="X-Api-Key" />',
        ],
    ),
    (
        ".npmrc",
        "npmrc references",
        [
            "//registry.npmjs.org/:_authToken=${NPM_TOKEN}",
            "registry=https://registry.npmjs.org/",
            "always-auth=true",
        ],
    ),
    (".pgpass", "pgpass comments", ["# hostname:port:database:username:password"]),
    (
        "README.md",
        "prose about secrets and documented examples",
        [
            "The password must be at least 12 characters.",
            "Set `DB_PASSWORD` in the environment, never in the file.",
            "Use `Authorization: Bearer <token>` on every request.",
            "Tokens look like `ghp_` followed by 36 characters.",
            "Run `export API_KEY=...` first.",
            "See https://docs.test/auth?token=YOUR_TOKEN for the flow.",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH3Rn2jZbq0vQ7lYxY5c5u3m4f6pQ4m0w9s2b7d8e1f2 dev@laptop",
            "-----BEGIN PUBLIC KEY-----",
            "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0",
            "-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----",
            "MIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJRTESMBAGA1UE",
            "-----END CERTIFICATE-----",
            "The commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
            "Passwords are hashed with bcrypt.",
            "Public IPs such as 8.8.8.8 are not secrets.",
        ],
    ),
    (
        "docs.md",
        "prose that names token formats",
        [
            "Access key ids start with AKIA and are 20 characters long.",
            "Classic tokens look like ghp_abc123 followed by more characters.",
            "# sk-learn is what people mistype for scikit-learn",
            "Secret keys start with sk_live_ or sk_test_.",
            "Bot tokens start with xoxb- and user tokens with xoxp-.",
            "App tokens start with xapp-1-.",
            "![x](data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk)",
            "Send `Authorization: Bearer <token>` with every request.",
            "PuTTY keys (.ppk) hold Private-Lines.",
        ],
    ),
    (
        "misc.py",
        "short look-alikes and non-secret names",
        [
            'prefix = "AKIAshort123"',
            'DSN = "postgres://app@db.internal:5432/app"',
            'BASE = "http://localhost:8080/path?x=1"',
            'DEFAULT_TOKEN = "not-a-real-token-value"',
            'HEADER_PREFIX = "eyJhbGciOi"',
            'k = "AIzaSyShort"',
            'api_key_header = "X-Api-Key"',
            "password = get_password()",
            'token = f"{prefix}{suffix}"',
            'k = "key-short"',
            'author = "Ada Lovelace"',
            'ALGORITHM = "HS256"  # signing_key is loaded from the vault',
            'oauth = {"client_id": "1234567890-abc.apps.googleusercontent.com"}',
            "max_tokens = 4096",
            'conn = connect(password=os.environ["PGPASSWORD"])',
            "login(user, password=password)",
        ],
    ),
    (
        "hashes.lock",
        "lock-file hashes",
        [
            "  integrity sha512-WFN2kG7YhW9oA5t1T3vQOQ6x+fEXAMPLEonly2kq8Vw4Qk2o1x9y7z6v5u4t3s2r1q0p9o8n7m6l5k4j3i2h1g0f==",
            '    "resolved": "https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz",',
            "    --hash=sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ],
    ),
]


def fixtures(c: Corpus) -> None:
    """Documented example keys and test fixtures: redacted like live ones (see jobs/secrets/values.py)."""
    c.pos(
        "fixtures/test_s3.py",
        "aws-access-key",
        'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
        "AKIAIOSFODNN7EXAMPLE",
    )
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    c.pos("fixtures/test_s3.py", "aws-secret-key", f'AWS_SECRET_ACCESS_KEY = "{secret}"', secret)
    c.pos(
        "fixtures/README.md",
        "aws-access-key",
        "Example key: `AKIAIOSFODNN7EXAMPLE`.",
        "AKIAIOSFODNN7EXAMPLE",
    )


def near_misses(c: Corpus) -> None:
    """Lines that look like secrets and are not: each must stay exactly as it is."""
    for path, why, lines in NEAR:
        c.nm(path, why, *lines)
    # Random-looking values that are not secrets: hashes, UUIDs, ids under non-secret names.
    for i in range(12):
        c.nm(
            "ids.py",
            "a digest, id or UUID under a non-secret name",
            f'CHECKSUM_{i} = "{t(HEX, 64)}"',
        )
        u = f"{t(HEX, 8)}-{t(HEX, 4)}-4{t(HEX, 3)}-a{t(HEX, 3)}-{t(HEX, 12)}"
        c.nm("ids.py", "a digest, id or UUID under a non-secret name", f'TRACE_ID_{i} = "{u}"')
        c.nm(
            "ids.py", "a digest, id or UUID under a non-secret name", f'commit_{i} = "{t(HEX, 40)}"'
        )


def main(out: Path = HERE) -> None:
    """Build the corpus from the fixed seed and write it under `out`."""
    rng.seed(SEED)
    c = Corpus()
    for build in (tokens, keys, cloud, urls, files, named, fixtures, near_misses):
        build(c)
    c.write(out)
    kinds = {p["kind"] for p in c.positives}
    types = {Path(str(p["file"])).suffix or Path(str(p["file"])).name for p in c.positives}
    print(
        f"{len(c.positives)} positives, {len(kinds)} kinds, {len(types)} file types, {len(c.near)} near-misses"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
