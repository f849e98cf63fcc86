"""Parsing model replies into findings: a corpus of realistic replies, validation, merging, fingerprints."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import MappingProxyType

import pytest

from jobs.errors import JobsInputError
from jobs.findings import (
    CATEGORIES,
    SEVERITIES,
    AgentResult,
    Finding,
    fingerprint,
    parse,
)
from jobs.merging import merge
from jobs.pack_record import Pack, PackedFile

SLUG = "shop"


def make_pack(
    files: dict[str, int],
    *,
    slug: str = SLUG,
    truncated: dict[str, int] | None = None,
    omitted: tuple[str, ...] = (),
) -> Pack:
    """A real Pack in the shared format: ``files`` maps path to line count; truncated shows lines 1..N."""
    truncated = truncated or {}
    paths = sorted([*files, *omitted])
    parts = [f'<repository name="{slug}">\n<tree>\n', *(p + "\n" for p in paths), "</tree>\n"]
    packed = []
    for path in paths:
        if path in omitted:
            packed.append(PackedFile(path, 100, 5, 30, "omitted", None))
            continue
        lines = files[path]
        shown = truncated.get(path)
        attr = f' truncated="1-{shown}"' if shown else ""
        parts.append(f'<file path="{path}" lines="{lines}"{attr}>\n')
        parts += [f"{i}| line {i} of {path}\n" for i in range(1, (shown or lines) + 1)]
        parts.append("</file>\n")
        status = "truncated" if shown else "included"
        packed.append(
            PackedFile(path, lines * 20, lines, lines * 6, status, (1, shown) if shown else None)
        )
    parts.append("</repository>\n")
    text = "".join(parts)
    return Pack(
        slug=slug,
        root=Path("/nonexistent") / slug,
        text=text,
        sha256="0" * 64,
        token_estimate=len(text) // 4,
        files=tuple(packed),
        skipped=(("logo.png", "binary"),),
        redactions=MappingProxyType({"aws-access-key": 1}),
        coverage=MappingProxyType({"files": 0.8, "bytes": 0.6}),
    )


PACK = make_pack(
    {
        "src/app.py": 40,
        "src/db.py": 30,
        "tests/test_app.py": 20,
        "docs/big.md": 500,
        "src/my file.py": 5,
    },
    truncated={"docs/big.md": 100},
    omitted=("src/omitted.py",),
)


def finding(**over: object) -> dict:
    base = {
        "severity": "high",
        "category": "security",
        "title": "SQL built by string formatting",
        "file": "src/db.py",
        "line": 12,
        "end_line": 14,
        "detail": "The query interpolates user input.",
        "suggestion": "Use parameters.",
        "confidence": 0.9,
    }
    base.update(over)
    if "evidence" not in over and isinstance(base["file"], str) and isinstance(base["line"], int):
        # The pack's line, as a model is asked to copy it (make_pack writes "line N of PATH").
        path = base["file"].replace("\\", "/").removeprefix("./").removeprefix(f"{SLUG}/")
        base["evidence"] = f"line {base['line']} of {path}"
    return base


def reply(*findings: dict, summary: str = "Mostly fine.") -> str:
    return json.dumps({"summary": summary, "findings": list(findings)}, indent=2)


TWO = reply(finding(), finding(severity="medium", category="correctness", title="Unclosed file", file="src/app.py", line=3, end_line=None))  # fmt: skip
CUT = TWO[: TWO.index('"Unclosed file"') - 20]  # second finding cut mid-object

REALISTIC = r"""I'll focus on the security-relevant parts of `shop`. Here is what I found:

```json
{
  "summary": "The data layer builds SQL from request values, and one helper opens files it never closes. Authentication itself looks sound (constant-time comparison in `src/app.py`).",
  "findings": [
    {
      "severity": "critical",
      "category": "security",
      "title": "SQL injection in `find_orders`",
      "file": "src/db.py",
      "line": 12,
      "end_line": 14,
      "detail": "`cursor.execute(f\"SELECT * FROM orders WHERE user = '{user}'\")` interpolates `user`, which comes straight from the query string.\n\n```python\ncursor.execute(f\"... '{user}'\")\n```",
      "suggestion": "Use a parameterised query: `cursor.execute(\"SELECT * FROM orders WHERE user = ?\", (user,))`.",
      "confidence": 0.95
    },
    {
      "severity": "low",
      "category": "maintainability",
      "title": "Résumé parser leaks file handles",
      "file": "src/app.py",
      "line": 30,
      "end_line": 33,
      "detail": "open() without a context manager; on an exception the handle stays open.",
      "suggestion": "Use `with open(path) as fh:`.",
      "confidence": 0.6
    }
  ]
}
```

**Overall:** fix the injection first; the rest can wait."""

TRAILING_COMMA = """```json
{"summary": "One issue.", "findings": [{"severity": "medium", "category": "correctness", "title": "Off-by-one in pagination", "file": "src/app.py", "line": 21, "end_line": 21, "detail": "range(1, n) skips the last page.", "suggestion": "Use range(1, n + 1).", "confidence": 0.7}],}
```"""

# (reply, stop_reason, status, findings kept, dropped)
CORPUS = [
    pytest.param(TWO, "end_turn", "ok", 2, 0, id="bare-json"),
    pytest.param(REALISTIC, "end_turn", "ok", 2, 0, id="realistic-fenced-with-code-in-strings"),
    pytest.param(TRAILING_COMMA, "end_turn", "ok", 1, 0, id="trailing-comma-list-recovered"),
    pytest.param(f"```json\n{TWO}\n```", "end_turn", "ok", 2, 0, id="fenced-json"),
    pytest.param(f"Here is the review.\n\n```\n{TWO}\n```\nLet me know!", "end_turn", "ok", 2, 0, id="fenced-no-lang-prose"),
    pytest.param(f"I reviewed the repository carefully. My findings:\n{TWO}", "end_turn", "ok", 2, 0, id="prose-before"),
    pytest.param(f"{TWO}\n\nNote: I skipped {{generated}} files and [vendored] ones.", "end_turn", "ok", 2, 0, id="prose-after-with-braces"),
    pytest.param(f'Schema: {{"note": 1}} and then\n{TWO}', "end_turn", "ok", 2, 0, id="decoy-object-before"),
    pytest.param(reply(summary="No issues found."), "end_turn", "ok", 0, 0, id="empty-findings"),
    pytest.param(json.dumps([finding()]), "end_turn", "ok", 1, 0, id="bare-list"),
    pytest.param('Files checked: [{"path": "a.py"}, {"path": "b.py"}]', "end_turn", "unparsed", 0, 0, id="list-of-other-objects"),
    pytest.param(reply(finding(), finding()), "end_turn", "ok", 1, 0, id="duplicate-in-reply"),
    pytest.param(TWO, None, "ok", 2, 0, id="no-stop-reason"),
    pytest.param(CUT, "max_tokens", "truncated", 1, 0, id="cut-mid-json"),
    pytest.param('{"summary": "The code is', "max_tokens", "truncated", 0, 0, id="cut-in-summary"),
    pytest.param('{"summary": "Two issues.", "findings": [', "max_tokens", "truncated", 0, 0, id="cut-before-first"),
    pytest.param(TWO, "max_tokens", "truncated", 2, 0, id="max-tokens-json-complete"),
    pytest.param(f"```json\n{CUT}", "max_tokens", "truncated", 1, 0, id="cut-inside-fence"),
    pytest.param("I can't help with reviewing this code.", "refusal", "refused", 0, 0, id="refusal"),
    pytest.param(TWO, "refusal", "refused", 0, 0, id="refusal-even-with-json"),
    pytest.param("I'm sorry, but I can't assist with that request.", "end_turn", "unparsed", 0, 0, id="refusal-words-end-turn"),
    pytest.param("The code looks good overall. The DB layer is fine.", "end_turn", "unparsed", 0, 0, id="prose-only"),
    pytest.param("", "end_turn", "unparsed", 0, 0, id="empty"),
    pytest.param("{'summary': 'x', 'findings': []}", "end_turn", "unparsed", 0, 0, id="python-dict-not-json"),
    pytest.param('{"summary": "All good"}', "end_turn", "unparsed", 0, 0, id="no-findings-key"),
    pytest.param('{"summary": "x", "findings": null}', "end_turn", "unparsed", 0, 0, id="findings-null"),
    pytest.param('{"summary": "x", "findings": {"a": 1}}', "end_turn", "unparsed", 0, 0, id="findings-not-list"),
    pytest.param(
        reply(finding(severity=5), finding(title=["x"]), finding(line="twelve"), finding(severity="urgent"),
              finding(detail={"a": 1}), finding(file=7), "just a string", 3, finding(title="  ")),
        "end_turn", "ok", 0, 9, id="wrong-types",
    ),
    pytest.param(
        reply(finding(file="../etc/passwd"), finding(file="/etc/passwd"), finding(file="C:\\repo\\src\\db.py"),
              finding(file="src/../../x.py"), finding(file="https://example.com/src/db.py"), finding(file="~/x.py")),
        "end_turn", "ok", 0, 6, id="paths-outside-repo",
    ),
    pytest.param(
        reply(finding(file="src/nothere.py"), finding(file="src/omitted.py", line=1), finding(file="SRC/DB.PY")),
        "end_turn", "ok", 0, 3, id="paths-not-in-pack",
    ),
    pytest.param(
        reply(finding(line=31, end_line=None), finding(line=0), finding(line=-2), finding(file="docs/big.md", line=300, end_line=None)),
        "end_turn", "ok", 0, 4, id="lines-outside-file",
    ),
    pytest.param(
        reply(finding(file="shop/src/db.py"), finding(file="./src/app.py", title="B"), finding(file="src\\app.py", title="C", line=2)),
        "end_turn", "ok", 3, 0, id="paths-normalised",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("text", "stop", "status", "kept", "dropped"), CORPUS)
def test_reply_corpus(text: str, stop: str | None, status: str, kept: int, dropped: int) -> None:
    result = parse(text, stop, agent="security", pack=PACK)
    assert (result.status, len(result.findings), result.dropped) == (status, kept, dropped)
    assert result.agent == "security"
    if status == "ok":
        assert result.raw is None and result.note == ""
    else:
        # Whatever went wrong, the raw reply is kept and the reason is stated: never a silent "no findings".
        assert result.raw == text
        assert result.note
    for f in result.findings:
        assert f.severity in SEVERITIES and f.category in CATEGORIES
        assert f.file is None or PACK.line_count(f.file) is not None
        assert f.agents == ("security",)


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 20


def test_realistic_reply_keeps_text_intact() -> None:
    result = parse(REALISTIC, "end_turn", agent="security", pack=PACK)
    sql, leak = result.findings
    assert result.summary.startswith("The data layer builds SQL")
    assert "```python" in sql.detail and "WHERE user = '{user}'" in sql.detail
    assert leak.title == "Résumé parser leaks file handles" and leak.confidence == 0.6
    # The invalid outer object loses its summary, but the closed findings list is recovered.
    assert parse(TRAILING_COMMA, "end_turn", agent="a", pack=PACK).summary == ""


def test_truncated_salvages_summary_and_complete_findings() -> None:
    result = parse(CUT, "max_tokens", agent="code_review", pack=PACK)
    assert result.summary == "Mostly fine."
    assert [f.title for f in result.findings] == ["SQL built by string formatting"]
    assert "cut off" in result.note and "1 complete finding" in result.note


def test_normalisation_of_a_finding() -> None:
    text = reply(
        finding(severity=" High ", category="Bug", title="  Off  by\none ", file="./src/app.py", line="7",
                end_line=99, confidence=85),
        finding(severity="warning", category="ux", title="Unknown category", file=None, line=4, confidence="high"),
        finding(severity="Informational", category="perf", title="Truncated doc", file="docs/big.md", line=50,
                end_line=200, confidence=1.5e3),
    )  # fmt: skip
    result = parse(text, "end_turn", agent="code_review", pack=PACK)
    assert result.status == "ok" and result.dropped == 0
    a, b, c = result.findings
    assert (a.severity, a.category, a.title, a.file, a.line, a.end_line, a.confidence) == (
        "high", "correctness", "Off by one", "src/app.py", 7, 40, 0.85,
    )  # fmt: skip
    # A repository-wide finding keeps no line; an unknown category is "other"; a bad confidence is unknown.
    assert (b.severity, b.category, b.file, b.line, b.confidence) == (
        "medium",
        "other",
        None,
        None,
        None,
    )
    # In a truncated file, end_line is clamped to the shown part.
    assert (c.severity, c.category, c.line, c.end_line, c.confidence) == (
        "info",
        "performance",
        50,
        100,
        None,
    )


def test_end_line_before_line_is_dropped_not_the_finding() -> None:
    result = parse(reply(finding(line=10, end_line=3)), "end_turn", agent="security", pack=PACK)
    assert (result.findings[0].line, result.findings[0].end_line) == (10, None)


def test_path_with_space_and_no_pack() -> None:
    result = parse(
        reply(finding(file="src/my file.py", line=2, end_line=2)), "end_turn", agent="a", pack=PACK
    )
    assert result.findings[0].file == "src/my file.py"
    # Without a pack only the form of a path is checked: relative, inside the repo.
    loose = parse(
        reply(finding(file="any/where.py", line=5000), finding(file="../x.py")),
        "end_turn",
        agent="a",
    )
    assert [f.file for f in loose.findings] == ["any/where.py"] and loose.dropped == 1


def test_parse_never_raises_on_garbage() -> None:
    rng = random.Random(5)
    alphabet = '{}[]":,0123456789abcfindgs \n`\\'
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for stop in ("end_turn", "max_tokens", None):
            result = parse(text, stop, agent="security", pack=PACK)
            assert result.status in ("ok", "unparsed", "truncated")


def test_fingerprint_ignores_lines_title_and_whitespace_of_the_evidence() -> None:
    base = parse(
        reply(finding(line=12, evidence="line 12 of src/db.py")),
        "end_turn",
        agent="security",
        pack=PACK,
    ).findings[0]
    moved = parse(
        reply(finding(line=20, title="Reworded entirely", evidence="12|   line  12 of src/db.py ")),
        "end_turn",
        agent="code_review",
        pack=PACK,
    ).findings[0]
    assert base.verified is moved.verified is True
    assert (base.line, moved.line) == (12, 12)  # the cited line 20 corrected to where the quote is
    assert (
        base.fingerprint
        == moved.fingerprint
        == fingerprint(SLUG, "src/db.py", "security", "line 12 of src/db.py")
    )
    assert fingerprint(SLUG, "src/app.py", "security", base.evidence) != base.fingerprint
    assert fingerprint(SLUG, "src/db.py", "correctness", base.evidence) != base.fingerprint
    assert fingerprint("other", "src/db.py", "security", base.evidence) != base.fingerprint
    assert len(base.fingerprint) == 32


def _result(agent: str, *items: dict, status: str = "ok") -> AgentResult:
    parsed = parse(reply(*items), "end_turn", agent=agent, pack=PACK)
    return AgentResult(agent, status, parsed.summary, parsed.findings, 0, None)


def test_merge_folds_the_same_problem_from_two_agents() -> None:
    security = _result("security", finding(severity="critical", line=12, end_line=14))
    review = _result(
        "code_review",
        finding(
            severity="high",
            category="correctness",
            title="SQL query built with string formatting",
            line=13,
        ),
    )
    merged = merge([review, security])
    assert len(merged) == 1
    (f,) = merged
    # The most severe report wins, and both agents are named, in the agents' canonical order.
    assert f.severity == "critical" and f.category == "security"
    assert f.agents == ("code_review", "security")


def test_merge_keeps_distinct_problems() -> None:
    security = _result("security", finding(line=12, end_line=14))
    review = _result(
        "code_review",
        finding(
            title="SQL built by string formatting", category="correctness", line=25
        ),  # other lines
        finding(title="Connection never closed", category="correctness", line=12),  # other title
    )
    assert len(merge([security, review])) == 3


def test_merge_does_not_fold_two_findings_of_one_agent() -> None:
    one = _result(
        "security",
        finding(title="Token compared with ==", line=5),
        finding(title="Token compared with == again", line=5),
    )
    assert len(merge([one])) == 2


def test_one_agent_naming_a_problem_at_two_places_keeps_both() -> None:
    r = parse(
        reply(finding(line=3, end_line=None), finding(line=20, end_line=None), finding(line=3, end_line=None)),
        "end_turn", agent="security", pack=PACK,
    )  # fmt: skip
    assert [f.line for f in r.findings] == [3, 20] and r.dropped == 0
    # Two places quote two pieces of code: two identities.
    assert r.findings[0].fingerprint != r.findings[1].fingerprint
    assert [f.line for f in merge([r])] == [3, 20]


def test_merge_folds_equal_fingerprints_whatever_the_lines() -> None:
    # The architecture agent cites line 28 for code that is at line 2: corrected, then folded.
    a = _result("security", finding(line=2, end_line=None))
    b = _result("architecture", finding(line=28, end_line=None, severity="low", evidence="line 2 of src/db.py"))  # fmt: skip
    (f,) = merge([a, b])
    assert f.agents == ("architecture", "security") and f.severity == "high" and f.line == 2


def test_merge_sorts_by_severity_then_location() -> None:
    r = _result(
        "code_review",
        finding(severity="low", title="a", file="src/app.py", line=1),
        finding(severity="critical", title="b", file="src/db.py", line=9),
        finding(severity="medium", title="c", file=None),
        finding(severity="medium", title="d", file="src/app.py", line=30),
        finding(severity="info", title="e", file="src/app.py", line=2),
    )
    assert [f.title for f in merge([r])] == ["b", "d", "c", "a", "e"]


def test_merge_ignores_results_without_findings() -> None:
    assert merge([AgentResult("security", "unparsed", "", (), 0, "garbage", "no JSON")]) == ()


def test_agent_result_round_trip_through_json() -> None:
    result = parse(CUT, "max_tokens", agent="security", pack=PACK)
    again = AgentResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result
    ok = parse(TWO, "end_turn", agent="architecture", pack=PACK)
    assert AgentResult.from_dict(json.loads(json.dumps(ok.to_dict()))) == ok


@pytest.mark.parametrize(
    ("record", "message"),
    [
        pytest.param({"status": "ok"}, "'agent'", id="missing-agent"),
        pytest.param({"agent": "a", "status": "great"}, "unknown status 'great'", id="bad-status"),
        pytest.param({"agent": "a", "status": "ok", "findings": [{"title": "x"}]}, "malformed finding", id="bad-finding"),
    ],
)  # fmt: skip
def test_agent_result_from_malformed_record(record: dict, message: str) -> None:
    with pytest.raises(JobsInputError, match="malformed") as info:
        AgentResult.from_dict(record)
    assert message in str(info.value)


def test_finding_round_trip() -> None:
    f = parse(TWO, "end_turn", agent="security", pack=PACK).findings[0]
    assert Finding.from_dict(f.to_dict()) == f
