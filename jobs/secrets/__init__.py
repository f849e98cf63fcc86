"""Secret redaction: every secret in a file's text becomes `[REDACTED:kind]` before it is packed.

Contract: `redact_file(text, path)` returns the text with each secret replaced in place by
`[REDACTED:kind]` plus the newlines the secret contained (so every line keeps its number and cited
line numbers still match the real file), and `hits`: one `(line, kind)` per redaction, never the
value. `redact(text, path)` is the same with counts per kind. Pure functions: nothing is read,
written or logged.

Why our own rules and not detect-secrets at run time: detect-secrets 1.5 (Yelp) finds secrets but
does not redact them; its private-key plugin flags only the BEGIN line (the key body would leave
the machine); it runs each of its 27 plugins over every line, which took 47-96 s on the 10,000-file
benchmark tree where these rules take 0.2-0.35 s, and would break the packing budget (at least 5x
faster than repomix; benchmarks/secrets_bench.py prints both); and it misses kinds we must catch
(Azure keys outside connection strings, `_PASS` names, Docker registry auths, Dockerfile, shell
and Terraform passwords, URL query keys, PuTTY v3 keys, Slack `xapp-` tokens...). So
detect-secrets is the *peer*: tests/test_secrets.py and benchmarks/secrets_bench.py run it on the
same corpus and require that we find everything it finds there. What it flags that we do not, by
decision: public IPv4 addresses (IPPublicDetector: an address is not a credential and reviews
need it); quoted high-entropy strings under no secret-named key (Base64/HexHighEntropyString: on
real code these are hashes, digests and test vectors); short non-password values under a
secret-like name in code (KeywordDetector's `secret = "abc"`: we want a password name, or a
random-looking value); Twilio `AC...` account SIDs (an identifier) and Artifactory's bare
`AP...` strings (too short a shape to tell from words).

How: rules gated by cheap literal hints, in this order (the first rule to claim a span wins, markers
are never re-matched): private keys (PEM, OpenSSH, PGP, SSH2, PuTTY private lines); tokens with a
recognisable shape (jobs/secrets/rules.py); passwords in URLs, secret query parameters and
Authorization headers; then the rules of the file's type (jobs/secrets/filetypes.py): named
assignments in config files, Dockerfile ENV/ARG, shell exports and flags, Terraform, XML, .npmrc,
.netrc, .pgpass, .htpasswd, docker config auths, Kubernetes Secrets; in code, password literals
and random-looking secret-named literals. Placeholders and references are not
secrets (jobs/secrets/values.py states the decision per kind).
"""

from __future__ import annotations

from jobs.secrets.filetypes import KINDS_OF_FILE_RULES, FileType, file_type, is_config_file
from jobs.secrets.rules import TOKEN_RULES
from jobs.secrets.scanner import Hit, Redaction, marker, redact, redact_file
from jobs.secrets.values import is_placeholder, shannon_entropy

__all__ = [
    "KINDS",
    "FileType",
    "Hit",
    "Redaction",
    "file_type",
    "is_config_file",
    "is_placeholder",
    "marker",
    "redact",
    "redact_file",
    "shannon_entropy",
]

KINDS: tuple[str, ...] = tuple(
    dict.fromkeys((*(r.kind for r in TOKEN_RULES), *KINDS_OF_FILE_RULES, "kubernetes-secret"))
)
