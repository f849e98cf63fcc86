"""statedb.dialect: the stores' SQLite-spelled SQL as PostgreSQL reads it, and the embedded
default never loading the driver."""

from __future__ import annotations

import subprocess
import sys

import pytest

from statedb.dialect import FOR_UPDATE, translate, translate_ddl


@pytest.mark.parametrize(
    ("sql", "params", "text", "values"),
    [
        (
            "UPDATE buckets SET capacity = ?1, level = min(level, ?1) WHERE name = ?2",
            (5.0, "requests"),
            "UPDATE buckets SET capacity = %s, level = LEAST(level, %s) WHERE name = %s",
            [5.0, 5.0, "requests"],
        ),
        (
            "INSERT OR IGNORE INTO limits (name, source) VALUES (?, 'default')",
            ("rpm",),
            "INSERT INTO limits (name, source) VALUES (%s, 'default') ON CONFLICT DO NOTHING",
            ("rpm",),
        ),
        (
            "SELECT id FROM t WHERE a IS NOT ? AND b IS ? AND c LIKE 'x%'",
            (1, None),
            "SELECT id FROM t WHERE a IS DISTINCT FROM %s AND b IS NOT DISTINCT FROM %s"
            " AND c LIKE 'x%%'",
            (1, None),
        ),
        (
            "SELECT * FROM entries WHERE id = ?" + FOR_UPDATE,
            (7,),
            "SELECT * FROM entries WHERE id = %s FOR UPDATE",
            (7,),
        ),
        (
            "SELECT max(a), min(x, max(y, 2)) FROM t",
            (),
            "SELECT max(a), LEAST(x, GREATEST(y, 2)) FROM t",
            (),
        ),
    ],
)
def test_sqlite_spellings_translate(sql: str, params: tuple, text: str, values: object) -> None:
    assert translate(sql, params) == (text, values)


def test_an_upsert_names_the_stored_row_and_keeps_named_parameters() -> None:
    text, values = translate(
        "INSERT INTO runs (run_id, n) VALUES (:run, :n) ON CONFLICT(run_id) DO UPDATE SET"
        " n = n + excluded.n, mode = COALESCE(excluded.mode, mode), w = CASE :n WHEN 1"
        " THEN w * :keep ELSE w END",
        {"run": "r", "n": 1, "keep": 0.5},
    )
    assert text == (
        "INSERT INTO runs (run_id, n) VALUES (%(run)s, %(n)s) ON CONFLICT(run_id) DO UPDATE SET"
        " n = runs.n + excluded.n, mode = COALESCE(excluded.mode, runs.mode), w = CASE %(n)s"
        " WHEN 1 THEN runs.w * %(keep)s ELSE runs.w END"
    )
    assert values == {"run": "r", "n": 1, "keep": 0.5}
    # An upsert returns nothing (no one reads it); a plain INSERT returns its row (lastrowid).
    assert translate("INSERT INTO t (a) VALUES (?)", (1,))[0] == (
        "INSERT INTO t (a) VALUES (%s) RETURNING *"
    )


def test_ddl_widens_integers_and_gives_every_table_an_insertion_order() -> None:
    assert translate_ddl("CREATE TABLE b (id INTEGER PRIMARY KEY, level REAL NOT NULL)") == (
        "CREATE TABLE b (id BIGSERIAL PRIMARY KEY, level DOUBLE PRECISION NOT NULL)"
    )
    keyed = translate_ddl("CREATE TABLE jobs (id TEXT PRIMARY KEY, cost INTEGER)")
    assert keyed.startswith("CREATE TABLE jobs (id TEXT PRIMARY KEY, cost BIGINT,")
    assert keyed.endswith("rowid BIGSERIAL NOT NULL)")
    assert translate_ddl("ALTER TABLE jobs ADD COLUMN warm INTEGER NOT NULL DEFAULT 0") == (
        "ALTER TABLE jobs ADD COLUMN warm BIGINT NOT NULL DEFAULT 0"
    )


def test_the_sqlite_default_never_imports_the_driver() -> None:
    code = (
        "import sys, tempfile, pathlib; from ledger import Ledger; from runner.limiter import"
        " Limiter; d = pathlib.Path(tempfile.mkdtemp()); Ledger(d / 'ledger.db').status();"
        " Limiter(d).status(); print('psycopg' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
