"""The stores' SQL, written for SQLite, as PostgreSQL reads it.

The stores keep one set of SQL (kept portable where it can be); the few SQLite spellings they
use translate mechanically, so that both backends run the same statements in the same
transactions:

- `?` / `?NNN` / `:name` parameters become psycopg's `%s` / `%(name)s` (`?NNN` reorders the
  values); a literal `%` is doubled.
- `INSERT OR IGNORE` becomes `INSERT ... ON CONFLICT DO NOTHING`; every plain INSERT returns
  its row, whose `id` is what `cursor.lastrowid` gives in SQLite. An upsert (ON CONFLICT)
  returns nothing: SQLite's lastrowid after one is not its row's either, and a row nobody reads
  still costs the server and the driver.
- Scalar `min(a, b)` / `max(a, b)` become LEAST / GREATEST; `IS ?` / `IS NOT ?` (a NULL-safe
  comparison in SQLite) become IS NOT DISTINCT FROM / IS DISTINCT FROM.
- In an upsert's `DO UPDATE SET`, a bare column on the right of `=` means the stored row in
  SQLite and is ambiguous in PostgreSQL: it is qualified with the table name.
- `FOR_UPDATE` (a comment to SQLite, which locks the whole file for a write anyway) becomes
  `FOR UPDATE`: the row lock a non-exclusive PostgreSQL transaction orders itself by.
- DDL: INTEGER is BIGINT (micro-dollars pass 2^31), REAL is DOUBLE PRECISION, an
  `INTEGER PRIMARY KEY` is a BIGSERIAL, and a table keyed otherwise gets a `rowid BIGSERIAL`
  so that `ORDER BY rowid` (insertion order) means the same on both.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["FOR_UPDATE", "translate", "translate_ddl"]

#: Appended to a SELECT: lock the rows it reads until the transaction ends (PostgreSQL's
#: `FOR UPDATE`); SQLite reads it as a comment.
FOR_UPDATE = " /* FOR UPDATE */"

_NUMBERED = re.compile(r"\?(\d+)")
_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_UPSERT = re.compile(r"\bINSERT\s+INTO\s+(\w+).*?\bDO\s+UPDATE\s+SET\b", re.S | re.I)
_IDENT = re.compile(r"(?<![.\w:])([A-Za-z_]\w*)\b(?!\s*[.(])")
_KEYWORDS = frozenset(
    [
        "case",
        "when",
        "then",
        "else",
        "end",
        "null",
        "and",
        "or",
        "not",
        "is",
        "in",
        "where",
        "excluded",
        "true",
        "false",
        "distinct",
        "from",
        "coalesce",
        "least",
        "greatest",
        "returning",
    ]
)


def translate(sql: str, params: Any = ()) -> tuple[str, Any]:
    """(PostgreSQL text, parameters in the order and form psycopg wants) for one statement."""
    text, order = _translate(sql, isinstance(params, Mapping))
    if order is not None:
        values = list(params)
        params = [values[index] for index in order]
    return text, params


@lru_cache(maxsize=1024)
def _translate(sql: str, named: bool) -> tuple[str, tuple[int, ...] | None]:
    text = _qualify_upsert(sql) if re.match(r"\s*INSERT\b", sql, re.I) else sql
    text = text.replace(FOR_UPDATE, " FOR UPDATE")
    text = text.replace("%", "%%")
    order: tuple[int, ...] | None = None
    if named:
        text = _NAMED.sub(r"%(\1)s", text)
    elif _NUMBERED.search(text):
        order = tuple(int(n) - 1 for n in _NUMBERED.findall(text))
        text = _NUMBERED.sub("%s", text)
    else:
        text = text.replace("?", "%s")
    text = re.sub(r"\bIS\s+NOT\s+%s", "IS DISTINCT FROM %s", text, flags=re.I)
    text = re.sub(r"\bIS\s+%s", "IS NOT DISTINCT FROM %s", text, flags=re.I)
    text = _scalar_min_max(text)
    head = text.lstrip()[:20].upper()
    if head.startswith("INSERT"):
        if re.match(r"\s*INSERT\s+OR\s+IGNORE\b", text, re.I):
            text = re.sub(r"\bINSERT\s+OR\s+IGNORE\b", "INSERT", text, count=1, flags=re.I)
            text += " ON CONFLICT DO NOTHING"
        if not re.search(r"\bRETURNING\b|\bON\s+CONFLICT\b", text, re.I):
            # Not every table has an `id` (some are keyed by a name): return the row, and
            # lastrowid reads its `id` when it has one, as SQLite's rowid alias would be.
            text += " RETURNING *"
    return text, order


def _scalar_min_max(text: str) -> str:
    """min(a, b) -> LEAST(a, b) and max(a, b) -> GREATEST(a, b); one-argument aggregates stay."""
    out, pos = [], 0
    for match in re.finditer(r"\b(min|max)\(", text, re.I):
        if match.start() < pos:
            continue
        depth, index, comma = 1, match.end(), False
        while index < len(text) and depth:
            char = text[index]
            depth += {"(": 1, ")": -1}.get(char, 0)
            comma |= char == "," and depth == 1
            index += 1
        if comma:
            name = "LEAST(" if match.group(1).lower() == "min" else "GREATEST("
            inner = _scalar_min_max(text[match.end() : index])
            out.append(text[pos : match.start()] + name + inner)
            pos = index
    out.append(text[pos:])
    return "".join(out)


def _qualify_upsert(text: str) -> str:
    match = _UPSERT.search(text)
    if match is None:
        return text
    table, head, tail = match.group(1), text[: match.end()], text[match.end() :]
    pieces = re.split(r"('[^']*')", tail)  # leave string literals alone

    def qualify(found: re.Match[str]) -> str:
        word = found.group(1)
        before = found.string[: found.start()].rstrip()
        after = found.string[found.end() :].lstrip()
        target = (before == "" or before.endswith(",")) and after.startswith("=")
        if target or word.lower() in _KEYWORDS:
            return word
        return f"{table}.{word}"

    for index in range(0, len(pieces), 2):
        piece = pieces[index]
        # Each assignment is judged on its own text, so that `before` sees its comma.
        parts = piece.split(",")
        pieces[index] = ",".join(_IDENT.sub(qualify, part) for part in parts)
    return head + "".join(pieces)


def translate_ddl(sql: str) -> str:
    """A migration's CREATE/ALTER statement with PostgreSQL's column types."""
    text = re.sub(r"\bINTEGER\s+PRIMARY\s+KEY\b", "BIGSERIAL PRIMARY KEY", sql, flags=re.I)
    text = re.sub(r"\bINTEGER\b", "BIGINT", text, flags=re.I)
    text = re.sub(r"\bREAL\b", "DOUBLE PRECISION", text, flags=re.I)
    if re.match(r"\s*CREATE\s+TABLE\b", text, re.I) and "BIGSERIAL PRIMARY KEY" not in text:
        closing = text.rstrip().rfind(")")
        text = text[:closing] + ",\n            rowid BIGSERIAL NOT NULL" + text[closing:]
    return text
