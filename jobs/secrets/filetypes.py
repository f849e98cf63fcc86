"""File types, and the rules that only make sense in some of them.

In a config file (.env, YAML, JSON, TOML, INI, properties, XML, Terraform, Dockerfile, shell) a
value assigned to a secret-named key is a secret whatever it looks like (`DB_PASS=hunter2`). In
source code and docs a name alone is weaker evidence (`password = request.form["password"]`), so
only a *literal* counts: any non-placeholder literal for a password-named key, a random-looking one
(or a UUID) for the other secret names. Credential files (.netrc, .pgpass, .git-credentials,
.htpasswd, docker config.json, Kubernetes Secrets) have rules for their own layouts.
"""

from __future__ import annotations

import enum
import re

from jobs.secrets.rules import Rule
from jobs.secrets.values import high_entropy, real_value

__all__ = ["FileType", "file_type", "is_config_file", "rules_for"]


class FileType(enum.StrEnum):
    """The file types the redactor tells apart."""

    ENV = "env"
    YAML = "yaml"
    JSON = "json"
    TOML = "toml"
    INI = "ini"
    PROPERTIES = "properties"
    XML = "xml"
    TERRAFORM = "terraform"
    DOCKERFILE = "dockerfile"
    SHELL = "shell"
    NPMRC = "npmrc"
    NETRC = "netrc"
    PGPASS = "pgpass"
    GIT_CREDENTIALS = "git-credentials"
    HTPASSWD = "htpasswd"
    PUTTY_KEY = "putty-key"
    SSH_KEY = "ssh-key"
    CODE = "code"


_BY_SUFFIX = {
    ".env": FileType.ENV,
    ".yaml": FileType.YAML,
    ".yml": FileType.YAML,
    ".json": FileType.JSON,
    ".jsonc": FileType.JSON,
    ".toml": FileType.TOML,
    ".ini": FileType.INI,
    ".cfg": FileType.INI,
    ".conf": FileType.INI,
    ".cnf": FileType.INI,
    ".config": FileType.XML,
    ".properties": FileType.PROPERTIES,
    ".xml": FileType.XML,
    ".tf": FileType.TERRAFORM,
    ".tfvars": FileType.TERRAFORM,
    ".hcl": FileType.TERRAFORM,
    ".sh": FileType.SHELL,
    ".bash": FileType.SHELL,
    ".zsh": FileType.SHELL,
    ".ksh": FileType.SHELL,
    ".envrc": FileType.SHELL,
    ".ppk": FileType.PUTTY_KEY,
    ".pem": FileType.SSH_KEY,
    ".key": FileType.SSH_KEY,
}
_BY_NAME = {
    ".npmrc": FileType.NPMRC,
    ".yarnrc": FileType.NPMRC,
    ".netrc": FileType.NETRC,
    "_netrc": FileType.NETRC,
    ".pgpass": FileType.PGPASS,
    ".git-credentials": FileType.GIT_CREDENTIALS,
    ".htpasswd": FileType.HTPASSWD,
    ".pypirc": FileType.INI,
    "credentials": FileType.INI,  # ~/.aws/credentials
    "config": FileType.INI,  # ~/.aws/config, ~/.kube/config is YAML but key: value reads alike
    ".bashrc": FileType.SHELL,
    ".bash_profile": FileType.SHELL,
    ".profile": FileType.SHELL,
    ".zshrc": FileType.SHELL,
    ".envrc": FileType.SHELL,
    "dockerfile": FileType.DOCKERFILE,
    "containerfile": FileType.DOCKERFILE,
    "id_rsa": FileType.SSH_KEY,
    "id_dsa": FileType.SSH_KEY,
    "id_ecdsa": FileType.SSH_KEY,
    "id_ed25519": FileType.SSH_KEY,
}
_CONFIG_TYPES = frozenset(FileType) - {FileType.CODE, FileType.PUTTY_KEY, FileType.SSH_KEY}


def file_type(path: str) -> FileType:
    """The type of the file at `path`, from its name (the content is not read)."""
    # String operations rather than PurePosixPath: this runs once per packed file.
    name = path.rsplit("/", 1)[-1].lower()
    if name in _BY_NAME:
        return _BY_NAME[name]
    if name.startswith(".env") or name.endswith(".env"):
        return FileType.ENV
    if name.startswith("dockerfile") or name.endswith(".dockerfile"):
        return FileType.DOCKERFILE
    dot = name.rfind(".")
    return _BY_SUFFIX.get(name[dot:], FileType.CODE) if dot > 0 else FileType.CODE


def is_config_file(path: str) -> bool:
    """True for .env files and config formats, where any secret-named value is a secret."""
    return file_type(path) in _CONFIG_TYPES


# Secret-named keys: the key must END in one of these words, so `secret_name`, `token_url` or
# `password_env` are not secrets but `DB_PASSWORD`, `client_secret`, `X-Api-Key` are. `pass` only
# as its own word (`DB_PASS`, `smtpPass`), never inside `bypass` or `compass`.
_PASS_WORD = r"(?:(?i:password|passwd|passphrase|pwd)|(?<![A-Za-z])(?i:pass)|(?<=[a-z])Pass)"
_KEY_WORD = (
    rf"(?:{_PASS_WORD}|(?i:secret|token|credentials?|"
    r"(?:api|access|secret|private|signing|encryption|master|client|auth|account|storage|shared)[_.\-]?key|apikey))"
)
_OP = r"(?::=|=>|==?|:)"
_QUOTED_OR_BARE = r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)'|(?P<bare>\$\{\{[^}\n]*\}\}|\$\{[^}\n]*\}|[^\s'"#,;}{\]]+))"""
# A key starts after a space, a quote or a bracket, never after `:` or `/` (`arn:...:secret:db`).
_KEY_START = r"""(?:^|(?<=[\s"'`{(\[,;$@&|!*]))[\w.\-]*?"""
_QUOTED = r"""(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)')"""
_HINTS = ("pass", "pwd", "secret", "token", "credential", "key")


def _assignment(kind: str, value: str) -> Rule:
    rx = re.compile(rf"""(?m){_KEY_START}{_KEY_WORD}s?['"]?[ \t]*{_OP}[ \t]*{value}""")
    return Rule(kind, rx, _HINTS, group="value", fold=True, check=real_value, per_line=True)


def _literal_check(value: str, line: str) -> bool:
    return real_value(value) and " " not in value.strip()


_CONFIG_ASSIGNMENT = _assignment("secret-assignment", _QUOTED_OR_BARE)
_SHELL_ASSIGNMENT = _assignment("shell-secret", _QUOTED_OR_BARE)
_DOCKERFILE_ASSIGNMENT = _assignment("dockerfile-secret", _QUOTED_OR_BARE)
_TERRAFORM_ASSIGNMENT = _assignment("terraform-secret", _QUOTED)
# In code: password-named literals of any length, other secret names only when random-looking.
_PASSWORD_LITERAL = Rule(
    "password-literal",
    re.compile(
        rf"""(?m){_KEY_START}{_PASS_WORD}['"]?[ \t]*{_OP}[ \t]*[bru]?(?:"(?P<dq>[^"\\\n]{{3,}})"|'(?P<sq>[^'\\\n]{{3,}})')"""
    ),
    ("pass", "pwd"),
    group="value",
    fold=True,
    check=_literal_check,
    per_line=True,
)
_ENTROPY_ASSIGNMENT = Rule(
    "high-entropy-secret",
    re.compile(
        rf"""(?m){_KEY_START}{_KEY_WORD}s?['"]?[ \t]*{_OP}[ \t]*[bru]?(?:"(?P<dq>[^"\s]{{16,}})"|'(?P<sq>[^'\s]{{16,}})')"""
    ),
    _HINTS,
    group="value",
    fold=True,
    check=high_entropy,
    per_line=True,
)
_DOCKERFILE_ENV_SPACE = Rule(
    "dockerfile-secret",
    re.compile(rf"""(?im)^[ \t]*(?:ENV|ARG)[ \t]+\w*{_KEY_WORD}[ \t]+{_QUOTED_OR_BARE}[ \t]*$"""),
    ("env", "arg"),
    group="value",
    fold=True,
    check=real_value,
    per_line=True,
)
_CLI_FLAG = Rule(
    "cli-secret-flag",
    re.compile(rf"""--[\w\-]*{_KEY_WORD}[ \t]+{_QUOTED_OR_BARE}"""),
    ("--",),
    group="value",
    check=real_value,
    per_line=True,
)
_TERRAFORM_VARIABLE_DEFAULT = Rule(
    "terraform-secret",
    re.compile(rf"""variable[ \t]+"\w*{_KEY_WORD}"[ \t]*\{{[^}}]*?default[ \t]*=[ \t]*{_QUOTED}"""),
    ("variable",),
    group="value",
    check=real_value,
)
_XML_ELEMENT = Rule(
    "xml-secret",
    re.compile(rf"""<(?P<tag>[\w.:\-]*{_KEY_WORD})>(?P<bare>[^<\n]+)</(?P=tag)>"""),
    ("<",),
    group="value",
    check=real_value,
)
_XML_ATTRIBUTE = Rule(
    "xml-secret",
    re.compile(
        rf"""<add\s+key="[\w.:\-]*{_KEY_WORD}"\s+value=(?:"(?P<dq>[^"\n]*)"|'(?P<sq>[^'\n]*)')"""
    ),
    ("<add",),
    group="value",
    check=real_value,
)
_YAML_BLOCK = Rule(
    "secret-assignment",
    # `password: |` then an indented block: the block is the value (the `|` alone is not).
    re.compile(
        rf"""(?m)^(?P<indent>[ \t]*)(?:- )?[\w.\-]*{_KEY_WORD}:[ \t]*[|>][-+]?[ \t]*\n(?P<bare>(?:(?P=indent)[ \t]+[^\n]*(?:\n|$))+)"""
    ),
    _HINTS,
    group="value",
    fold=True,
    check=real_value,
)
_DOCKER_AUTH = Rule(
    "docker-registry-auth",
    re.compile(r""""auth"\s*:\s*"(?P<dq>[A-Za-z0-9+/=]{8,})\""""),
    ('"auth"',),
    group="value",
    check=real_value,
)
_DOCKERCONFIGJSON = Rule(
    "kubernetes-dockerconfigjson",
    re.compile(
        r"""\.docker(?:configjson|cfg)["']?\s*:\s*(?:"(?P<dq>[A-Za-z0-9+/=]{16,})"|'(?P<sq>[A-Za-z0-9+/=]{16,})'|(?P<bare>[A-Za-z0-9+/=]{16,}))"""
    ),
    (".docker",),
    group="value",
    check=real_value,
)
_NPMRC = Rule(
    "npmrc-auth",
    re.compile(r"(?:^|:)_(?:authToken|auth|password)\s*=\s*(?P<bare>\S+)", re.M),
    ("_auth", "_password"),
    group="value",
    check=real_value,
)
_NETRC = Rule(
    "netrc-password",
    re.compile(r"\bmachine\s+\S+\s+login\s+\S+\s+password\s+(?P<bare>\S+)"),
    ("machine",),
    group="value",
    check=real_value,
)
_NETRC_LINE = Rule(
    "netrc-password",
    re.compile(r"(?m)(?:^|\s)password\s+(?P<bare>\S+)"),
    ("password",),
    group="value",
    check=real_value,
)
_PGPASS = Rule(
    "pgpass-password",
    re.compile(r"(?m)^(?!#)(?:(?:[^:\\\n]|\\.)*:){4}(?P<bare>[^\n]+)$"),
    (":",),
    group="value",
    check=lambda v, line: real_value(v) and v != "*",  # `*` matches any password: a wildcard
)


def _htpasswd_check(value: str, line: str) -> bool:
    # Hashes start with `$` (`$apr1$`, `$2y$`): not a shell reference here.
    return len(value) >= 13


_HTPASSWD = Rule(
    "htpasswd-hash",
    re.compile(r"(?m)^(?!#)[^:\s]+:(?P<bare>\S+)$"),
    (":",),
    group="value",
    check=_htpasswd_check,
)

# Rules for every file, after the token rules; then the rules of the file's own type.
COMMON_RULES: tuple[Rule, ...] = (_DOCKER_AUTH, _DOCKERCONFIGJSON, _NETRC)
_BY_TYPE: dict[FileType, tuple[Rule, ...]] = {
    FileType.TERRAFORM: (_TERRAFORM_VARIABLE_DEFAULT, _TERRAFORM_ASSIGNMENT),
    FileType.DOCKERFILE: (_DOCKERFILE_ENV_SPACE, _DOCKERFILE_ASSIGNMENT, _CLI_FLAG),
    FileType.SHELL: (_CLI_FLAG, _SHELL_ASSIGNMENT),
    FileType.XML: (_XML_ELEMENT, _XML_ATTRIBUTE, _CONFIG_ASSIGNMENT),
    FileType.YAML: (_YAML_BLOCK, _CLI_FLAG, _CONFIG_ASSIGNMENT),
    FileType.NPMRC: (_NPMRC, _CONFIG_ASSIGNMENT),
    FileType.NETRC: (_NETRC_LINE,),
    FileType.PGPASS: (_PGPASS,),
    FileType.HTPASSWD: (_HTPASSWD,),
    FileType.GIT_CREDENTIALS: (),
    FileType.CODE: (_PASSWORD_LITERAL, _ENTROPY_ASSIGNMENT),
    FileType.PUTTY_KEY: (),
    FileType.SSH_KEY: (),
}


def rules_for(ftype: FileType) -> tuple[Rule, ...]:
    """The rules for a file of this type beyond the token rules, in the order they are applied."""
    return COMMON_RULES + _BY_TYPE.get(ftype, (_CLI_FLAG, _CONFIG_ASSIGNMENT))


KINDS_OF_FILE_RULES: tuple[str, ...] = tuple(
    dict.fromkeys(
        r.kind for rules in (COMMON_RULES, *_BY_TYPE.values(), (_CONFIG_ASSIGNMENT,)) for r in rules
    )
)
