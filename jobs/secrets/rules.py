"""The rules that recognise a secret by its own shape, whatever file it is in.

Each rule is gated by cheap literal hints (`str.__contains__`), so a file without any hint costs a
few substring searches and no regex. Rules are tried in the order of `TOKEN_RULES`: private keys
first (a key body would otherwise be taken apart by the token rules), then prefixed tokens, then
secrets recognised by where they sit in a URL or a header.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from jobs.secrets.values import high_entropy, is_placeholder, real_value

__all__ = ["TOKEN_RULES", "URL_RULES", "Rule"]

Check = Callable[[str, str], bool]  # (value, the line it is on) -> is it a secret


@dataclass(frozen=True)
class Rule:
    """One way of finding a secret: where it is (`regex`, `group`) and whether it is one (`check`)."""

    kind: str
    regex: re.Pattern[str]
    hints: tuple[str, ...]  # run the regex only if one occurs; () = always (it is cheap enough)
    group: int | str = 0  # the part of the match that is the secret; "value" = dq, sq or bare
    fold: bool = False  # hints are matched against the lower-cased text
    # The regex never spans lines: run it only on the lines holding a hint (keyword rules, whose
    # hints such as `key` occur in most files, would otherwise be tried at every position).
    per_line: bool = False
    check: Check | None = None  # None: a token's own check (not a placeholder, not an example)

    def accepts(self, value: str, line: str) -> bool:
        """Whether `value`, found by the regex on `line`, is a secret."""
        if self.check is not None:
            return self.check(value, line)
        return self.kind in _ALWAYS or not is_placeholder(value)


# Kinds redacted even in fixtures: a private key is never a harmless example.
_ALWAYS = frozenset(
    {
        "private-key",
        "openssh-private-key",
        "pgp-private-key",
        "ssh2-private-key",
        "putty-private-key",
    }
)


def _r(pattern: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(pattern, flags)


def _tok(kind: str, pattern: str, *hints: str, group: int = 0) -> Rule:
    return Rule(kind, _r(pattern), hints, group=group)


def _url_password(value: str, line: str) -> bool:
    # `host:8080/path@v2` is a port and a path, not a password; a real one may contain `/`.
    if "/" in value and value.split("/", 1)[0].isdigit():
        return False
    return real_value(value) and "://" not in value


def _standalone_storage_key(value: str, line: str) -> bool:
    # A 64-byte base64 value is an Azure key only where the line calls it a key; a lock file's
    # `sha512-...==` integrity digest has the same length and is not a secret.
    low = line.lower()
    return "key" in low and "sha512-" not in low


_PK_TAIL = r"(?:[\s\S]*?-----END {0}-----|(?:(?:\r?\n|\\n)[A-Za-z0-9+/=:,\- ]*)*)"

PRIVATE_KEY_RULES: tuple[Rule, ...] = (
    Rule(
        "openssh-private-key",
        _r(r"-----BEGIN OPENSSH PRIVATE KEY-----" + _PK_TAIL.format("OPENSSH PRIVATE KEY")),
        ("OPENSSH PRIVATE KEY",),
    ),
    Rule(
        "pgp-private-key",
        _r(r"-----BEGIN PGP PRIVATE KEY BLOCK-----" + _PK_TAIL.format("PGP PRIVATE KEY BLOCK")),
        ("PGP PRIVATE KEY",),
    ),
    Rule(
        "private-key",
        _r(r"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY)-----" + _PK_TAIL.format(r"\1")),
        ("PRIVATE KEY",),
    ),
    Rule(
        "ssh2-private-key",
        _r(
            r"---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----[\s\S]*?(?:---- END SSH2 ENCRYPTED PRIVATE KEY ----|\Z)"
        ),
        ("BEGIN SSH2 ENCRYPTED",),
    ),
    Rule(
        "putty-private-key",
        # The public lines are public; the private lines and their MAC are the key.
        _r(
            r"(?m)^Private-Lines: *\d+\r?\n([\s\S]*?^Private-(?:MAC|Hash): *[0-9a-fA-F]+|[A-Za-z0-9+/=\r\n]+)"
        ),
        ("Private-Lines:",),
        group=1,
    ),
)

PREFIXED_TOKEN_RULES: tuple[Rule, ...] = (
    _tok(
        "age-secret-key",
        r"\bAGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}\b",
        "AGE-SECRET-KEY-",
    ),
    _tok(
        "aws-access-key",
        r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
        "AKIA",
        "ASIA",
        "ABIA",
        "ACCA",
        "A3T",
    ),
    Rule(
        "aws-secret-key",
        _r(
            r"(?i)aws[\w.\-]{0,30}?(?:secret|sk|key|token|pass|pwd|pw)[\w.\-]{0,20}['\"]?\s*(?::=|=>|[:=,(])\s*['\"]?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])"
        ),
        ("aws",),
        group=1,
        fold=True,
        per_line=True,
    ),
    _tok("github-fine-grained-token", r"\bgithub_pat_[A-Za-z0-9_]{50,255}", "github_pat_"),
    _tok(
        "github-token",
        r"\bgh[pousr]_[A-Za-z0-9_]{36,255}\b",
        "ghp_",
        "gho_",
        "ghu_",
        "ghs_",
        "ghr_",
    ),
    _tok(
        "gitlab-token",
        r"\b(?:gl(?:pat|dt|rt|ptt|cbt|ft|soat|imt|agent|oas)-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20,})",
        "glpat-",
        "gldt-",
        "glrt-",
        "glptt-",
        "glcbt-",
        "glft-",
        "glsoat-",
        "glimt-",
        "glagent-",
        "gloas-",
        "GR1348941",
    ),
    _tok(
        "slack-webhook",
        r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/]{20,}",
        "hooks.slack.com",
    ),
    _tok("slack-app-token", r"\bxapp-\d-[A-Za-z0-9]+-\d+-[A-Za-z0-9]+", "xapp-"),
    Rule("slack-token", _r(r"(?i)\bxox[abposre]-(?:\d+-)*[a-z0-9\-]{10,}"), ("xox",), fold=True),
    _tok("stripe-webhook-secret", r"\bwhsec_[A-Za-z0-9]{32,}\b", "whsec_"),
    _tok(
        "stripe-key",
        r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,}\b",
        "sk_live_",
        "sk_test_",
        "rk_live_",
        "rk_test_",
    ),
    _tok("anthropic-api-key", r"\bsk-ant-[a-z]{3,8}\d{0,3}-[A-Za-z0-9_\-]{20,}", "sk-ant-"),
    _tok(
        "openai-api-key",
        r"\bsk-(?:(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}|[A-Za-z0-9\-_]*[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20})",
        "sk-proj-",
        "sk-svcacct-",
        "sk-admin-",
        "T3BlbkFJ",
    ),
    _tok("google-api-key", r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])", "AIza"),
    _tok("google-oauth-client-secret", r"\bGOCSPX-[A-Za-z0-9_\-]{28}", "GOCSPX-"),
    _tok("google-oauth-access-token", r"\bya29\.[0-9A-Za-z_\-]{20,}", "ya29."),
    _tok("huggingface-token", r"\bhf_[A-Za-z0-9]{34,}\b", "hf_"),
    _tok("npm-token", r"\bnpm_[A-Za-z0-9]{36}\b", "npm_"),
    _tok("pypi-token", r"\bpypi-AgE[A-Za-z0-9_\-]{50,}", "pypi-AgE"),
    _tok("rubygems-token", r"\brubygems_[a-f0-9]{48}\b", "rubygems_"),
    _tok("docker-hub-token", r"\bdckr_pat_[A-Za-z0-9_\-]{27,}", "dckr_pat_"),
    _tok(
        "sendgrid-api-key", r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}(?![A-Za-z0-9_\-])", "SG."
    ),
    _tok("twilio-api-key", r"\bSK[0-9a-f]{32}\b", "SK"),
    _tok("mailgun-api-key", r"\bkey-[0-9a-zA-Z]{32}\b", "key-"),
    _tok("mailchimp-api-key", r"\b[0-9a-z]{32}-us[0-9]{1,2}\b", "-us"),
    _tok("digitalocean-token", r"\bdo[por]_v1_[a-f0-9]{64}\b", "_v1_"),
    _tok(
        "shopify-token",
        r"\bshp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}\b",
        "shpat_",
        "shpca_",
        "shppa_",
        "shpss_",
    ),
    _tok("vault-token", r"\bhv[sbr]\.[A-Za-z0-9_\-]{24,}", "hvs.", "hvb.", "hvr."),
    _tok("terraform-cloud-token", r"\b[A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-]{60,}", ".atlasv1."),
    _tok(
        "discord-webhook",
        r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/\d+/[A-Za-z0-9_\-]{60,}",
        "/api/webhooks/",
    ),
    # No literal prefix: the regex itself is the gate (it fails fast on its first character).
    _tok(
        "discord-bot-token",
        r"\b[MNO][A-Za-z\d_\-]{23,25}\.[A-Za-z\d_\-]{6}\.[A-Za-z\d_\-]{27,38}(?![A-Za-z\d_\-])",
    ),
    _tok("telegram-bot-token", r"\b\d{8,10}:AA[A-Za-z0-9_\-]{33}(?![A-Za-z0-9_\-])", ":AA"),
    _tok("databricks-token", r"\bdapi[a-f0-9]{32}(?:-\d)?\b", "dapi"),
    _tok("linear-api-key", r"\blin_api_[A-Za-z0-9]{40}\b", "lin_api_"),
    _tok("square-token", r"\bsq0(?:atp|csp)-[0-9A-Za-z_\-]{22,43}", "sq0atp-", "sq0csp-"),
    _tok("newrelic-key", r"\bNR(?:AK|AA|II)-[A-Z0-9]{27}\b", "NRAK-", "NRAA-", "NRII-"),
    _tok("postman-api-key", r"\bPMAK-[a-f0-9]{24}-[a-f0-9]{34}\b", "PMAK-"),
    _tok("grafana-token", r"\bgl(?:c|sa)_[A-Za-z0-9+/_]{32,}={0,2}", "glc_", "glsa_"),
    _tok(
        "doppler-token",
        r"\bdp\.(?:pt|st|ct|sa|scim)\.(?:[a-z0-9_\-]{2,35}\.)?[A-Za-z0-9]{40,}",
        "dp.",
    ),
    _tok("pulumi-token", r"\bpul-[a-f0-9]{40}\b", "pul-"),
    _tok("artifactory-token", r"(?<![A-Za-z0-9])AKCp[A-Za-z0-9]{60,}", "AKCp"),
    _tok("atlassian-api-token", r"\bATATT3[A-Za-z0-9_\-=]{180,}", "ATATT3"),
    _tok(
        "tailscale-key",
        r"\btskey-(?:api|auth|client|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,}",
        "tskey-",
    ),
    _tok("supabase-token", r"\bsbp_[a-f0-9]{40}\b", "sbp_"),
    _tok("sentry-token", r"\bsntry[su]_[A-Za-z0-9_=+/\-]{40,}", "sntrys_", "sntryu_"),
    _tok("figma-token", r"\bfigd_[A-Za-z0-9_\-]{40,}", "figd_"),
    _tok("replicate-token", r"\br8_[A-Za-z0-9]{37}\b", "r8_"),
    _tok("groq-api-key", r"\bgsk_[A-Za-z0-9]{52}\b", "gsk_"),
    _tok("xai-api-key", r"\bxai-[A-Za-z0-9]{80}\b", "xai-"),
    _tok("perplexity-api-key", r"\bpplx-[A-Za-z0-9]{48}\b", "pplx-"),
    _tok(
        "notion-token",
        r"\b(?:ntn_[0-9]{11}[A-Za-z0-9]{35}|secret_[A-Za-z0-9]{43})\b",
        "ntn_",
        "secret_",
    ),
    _tok("alibaba-access-key", r"\bLTAI[A-Za-z0-9]{20}\b", "LTAI"),
    _tok("tencent-secret-id", r"\bAKID[A-Za-z0-9]{32}\b", "AKID"),
    _tok("sonar-token", r"\bsq[pua]_[a-f0-9]{40}\b", "sqp_", "squ_", "sqa_"),
    _tok("buildkite-token", r"\bbkua_[a-f0-9]{40}\b", "bkua_"),
    _tok("heroku-api-key", r"\bHRKU-[A-Za-z0-9_\-]{60}", "HRKU-"),
    _tok(
        "fly-token",
        r"\bFlyV1 fm\d[a-z]?_[A-Za-z0-9+/=_\-,]{80,}|\bfo1_[A-Za-z0-9_\-]{43}(?![A-Za-z0-9_\-])",
        "FlyV1 ",
        "fo1_",
    ),
    _tok("netlify-token", r"\bnf[pcu]_[A-Za-z0-9]{36,}\b", "nfp_", "nfc_", "nfu_"),
    _tok("planetscale-token", r"\bpscale_(?:tkn|pw|oauth)_[A-Za-z0-9_\-.]{32,64}", "pscale_"),
    _tok("dynatrace-token", r"\bdt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64}\b", "dt0c01."),
    _tok("mapbox-secret-token", r"\bsk\.eyJ[A-Za-z0-9_\-]{20,}\.[A-Za-z0-9_\-]{20,}", "sk.eyJ"),
    _tok("contentful-token", r"\bCFPAT-[A-Za-z0-9_\-]{43}", "CFPAT-"),
    _tok("circleci-token", r"\bCCIPAT_[A-Za-z0-9]{22}_[a-f0-9]{40}\b", "CCIPAT_"),
    _tok("cloudflare-origin-ca-key", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", "v1.0-"),
    _tok(
        "azure-ad-client-secret",
        r"(?<![A-Za-z0-9_~.\-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.\-]{31,34}(?![A-Za-z0-9_~.\-])",
        "Q~",
    ),
    _tok("jwt", r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}", "eyJ"),
    _tok("azure-storage-key", r"AccountKey=([A-Za-z0-9+/]{40,}={0,2})", "AccountKey=", group=1),
    Rule(
        "azure-storage-key",
        _r(r"(?<![A-Za-z0-9+/\-])[A-Za-z0-9+/]{86}==(?![A-Za-z0-9+/=])"),
        ("==",),
        check=_standalone_storage_key,
    ),
    _tok(
        "azure-service-bus-key",
        r"SharedAccessKey=([A-Za-z0-9+/]{20,}={0,2})",
        "SharedAccessKey=",
        group=1,
    ),
    _tok("azure-sas-signature", r"[?&]sig=([A-Za-z0-9%+/]{40,}={0,2})", "sig=", group=1),
    # Keyword-anchored formats of IBM and SoftLayer (detect-secrets has them; their values have no prefix).
    Rule(
        "ibm-cloud-iam-key",
        _r(
            r"(?i)(?:ibm|iam)[\w\-]{0,20}?(?:key|pwd|password|pass|token)['\"]?\s*(?::=|[:=])\s*['\"]?([A-Za-z0-9_\-]{44})(?![A-Za-z0-9_\-])"
        ),
        ("ibm", "iam"),
        group=1,
        fold=True,
        per_line=True,
    ),
    Rule(
        "ibm-cos-hmac-secret",
        _r(
            r"(?i)(?:cos|hmac)[\w\-]{0,20}?secret[_\-]?(?:access)?[_\-]?key['\"]?\s*(?::=|[:=])\s*['\"]?([a-f0-9]{48})(?![a-f0-9])"
        ),
        ("cos", "hmac"),
        group=1,
        fold=True,
        per_line=True,
    ),
    Rule(
        "softlayer-api-key",
        _r(
            r"(?i)(?:softlayer|\bsl)[_\-]?(?:api)?[_\-]?(?:key|pwd|password|pass|token)['\"]?\s*(?::=|[:=])\s*['\"]?([a-z0-9]{64})\b"
            r"|api\.softlayer\.com/soap/v3(?:\.1)?/([a-z0-9]{64})"
        ),
        ("softlayer", "sl"),
        group=1,
        fold=True,
        per_line=True,
    ),
    Rule(
        "cloudant-credentials",
        _r(
            r"(?i)\b(?:cloudant|cl|clou)[_\-]?(?:api)?[_\-]?(?:key|pwd|pw|password|pass|token)['\"]?\s*(?::=|[:=])\s*['\"]?([0-9a-f]{64}|[a-z]{24})\b"
        ),
        ("cl",),
        group=1,
        fold=True,
        per_line=True,
    ),
)

_QUERY_NAMES = (
    r"(?:api[_\-]?key|apikey|x-api-key|access[_\-]?token|auth[_\-]?token|private[_\-]?token|token|"
    r"client[_\-]?secret|secret|password|passwd|pwd|access[_\-]?key|signature|key)"
)


def _query_value(value: str, line: str) -> bool:
    # `?key=value` is common in docs; a generic `key` must also look random to be a secret.
    return real_value(value) and len(value) >= 8 and (high_entropy(value) or not value.isalpha())


URL_RULES: tuple[Rule, ...] = (
    Rule(
        "connection-string-password",
        _r(
            r"\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@'\"<>]{0,100}:([^\s@'\"<>]{1,200}?)@(?=[\w\[])"
        ),
        ("://",),
        group=1,
        check=_url_password,
        per_line=True,
    ),
    Rule(
        "url-query-secret",
        _r(rf"(?i)[?&;]{_QUERY_NAMES}=([^&\s#\"'<>`;)]+)"),
        ("?", "&"),
        group=1,
        check=_query_value,
        per_line=True,
    ),
    Rule(
        "authorization-header",
        _r(
            r"(?i)\bauthorization['\"]?\s*[:=,]?\s*['\"]?(?:bearer|basic|token|digest)\s+([A-Za-z0-9._~+/\-]{16,}=*)"
        ),
        ("authorization",),
        group=1,
        fold=True,
        check=lambda v, line: any(c.isdigit() for c in v),
        per_line=True,
    ),
)

TOKEN_RULES: tuple[Rule, ...] = (*PRIVATE_KEY_RULES, *PREFIXED_TOKEN_RULES, *URL_RULES)
