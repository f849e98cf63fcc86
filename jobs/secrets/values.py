"""What a value must look like to be a secret: placeholders, references and examples are not.

The rules find *where* a secret could sit; these checks decide whether the text found there is one.
Decisions per kind of look-alike, stated:
- placeholders and references (`${DB_PASSWORD}`, `$TOKEN`, `{{ .Values.x }}`, `<password>`,
  `%(pw)s`, `os.environ[...]`, `!vault`, `arn:aws:secretsmanager:...`, `changeme`, `xxx`, `***`,
  an empty value) are not secrets: nothing is redacted;
- documented example values and test fixtures (AWS's `AKIAIOSFODNN7EXAMPLE`, a key under tests/)
  are redacted like live ones: a marker costs the review nothing, telling a fixture from a real
  key by its text is guesswork, and the marker still lets a reviewer flag a hard-coded credential;
  only the conventional stand-in *words* (`example`, `your-api-key`, `changeme`) are placeholders;
- hashes (lock-file `integrity`/`sha256:` digests), UUIDs and base64 `data:` images are not secrets
  by themselves; a UUID *assigned to a secret-named key* (Heroku and Snyk keys are UUIDs) is one;
- publishable keys (`pk_live_`, Mapbox `pk.eyJ`) are public by design; regular expressions and
  masked values (`:****`) are not secrets;
- a detect-secrets `pragma: allowlist secret` comment is *not* honoured: it says a value may be
  committed, not that it may leave the machine.
"""

from __future__ import annotations

import math
import re
from collections import Counter

__all__ = [
    "high_entropy",
    "is_placeholder",
    "is_uuid",
    "real_value",
    "shannon_entropy",
]

# Conventional words of docs and examples, and flags that merely sit where a secret could be.
_WORD_LIST = """
    none null nil true false yes no on off ~ undefined n/a na tbd todo fixme
    password passwd pass pwd passphrase secret secrets token tokens key apikey api_key credentials
    changeme change_me changeit example sample placeholder redacted dummy fake mock test
    your-password yourpassword your_password mypassword my_password secretpassword
    your-token your_token your-api-key your_api_key your-secret your_secret
    required optional string str bytes int value default env environment
    foo bar baz qux hunter2 s3cr3t
    | > |- >- |+ >+
"""
_WORDS = frozenset(_WORD_LIST.split())
_PLACEHOLDER = re.compile(
    r"""^(?:
        \$\{[^}]*\}? | \$\(?[A-Za-z_][A-Za-z0-9_]*\)? | \$\$ | \{\{ | \{[A-Za-z_][\w.\[\]'"]*\}
      | <[^<>]*> | %\(\w+\)[sdr] | %[sd] | \[REDACTED: | \*+ | [xX]{3,} | \.\.\. | …
      | ! | @Microsoft\.KeyVault\( | arn:aws: | vault: | ref\+ | file: | data: | env: | secret:
      | (?:os\.)?(?:environ|getenv)\b | process\.env | ENV\[ | System\.getenv | Environment\.
    )""",
    re.VERBOSE,
)
# A regular expression (a scanner's own pattern, a validator) is not a secret: `(?:`, `[...]+`, `\d`.
_REGEX_LIKE = re.compile(r"\(\?[:=!<P]|\[[^\]]{2,}\][*+?{]|\\[dwsbDWS]|\{\d+(?:,\d*)?\}")
# An all-caps name with underscores is an environment variable's name, not its value.
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_HINT_WORDS = ("your_", "your-", "replace", "placeholder", "changeme", "insert")
# Publishable keys: Stripe's `pk_live_`/`pk_test_`, Mapbox's public `pk.eyJ...` tokens.
_PUBLIC_PREFIXES = ("pk_live_", "pk_test_", "pk.eyJ")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def shannon_entropy(value: str) -> float:
    """Bits per character of `value` (0.0 for an empty string)."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def is_placeholder(value: str) -> bool:
    """True for an empty value, a reference to a secret kept elsewhere, or a documentation stand-in."""
    v = value.strip().strip("'\"`")
    if not v:
        return True
    low = v.lower()
    if low in _WORDS or _PLACEHOLDER.match(v) or _ENV_NAME.match(v):
        return True
    if any(w in low for w in _HINT_WORDS):
        return True
    if v.startswith(_PUBLIC_PREFIXES):  # published in web pages by design
        return True
    if len(set(v)) == 1 or "***" in v:  # "aaaa", "0000", a masked ":****"
        return True
    if _REGEX_LIKE.search(v):
        return True
    return v.replace(".", "").replace("_", "").replace("-", "").isdigit()


def real_value(value: str, line: str = "") -> bool:
    """A value that is not a placeholder: the check of every named-assignment rule."""
    return not is_placeholder(value)


def is_uuid(value: str) -> bool:
    """True for a UUID in its canonical 8-4-4-4-12 form."""
    return bool(_UUID.match(value))


def high_entropy(value: str, line: str = "") -> bool:
    """A random-looking literal: 16+ chars with letters and digits at 3.5+ bits per char, or a UUID.

    Used where the key name alone is weaker evidence (a secret-named variable in code).
    """
    if len(value) < 16 or is_placeholder(value):
        return False
    if is_uuid(value):
        return True
    return (
        any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and " " not in value
        and shannon_entropy(value) >= 3.5
    )
