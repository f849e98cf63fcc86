"""Reports: review.md, findings.json, SARIF validated against the 2.1.0 schema, summaries, and safe slugs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
from test_findings import CUT, PACK, TWO, finding, reply

from jobs import reports
from jobs.errors import JobsInputError
from jobs.findings import CATEGORIES, AgentResult, parse
from jobs.reports import RepoOutcome, safe_slug, write_repo_report, write_summary
from jobs.sarif import FINGERPRINT_KEY, build_sarif, rule_id

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text("utf-8"))
VALIDATOR = jsonschema.Draft4Validator(SCHEMA)


def outcome(
    *results: AgentResult, slug: str = "shop", status: str = "done", error: str | None = None
) -> RepoOutcome:
    return RepoOutcome(
        slug=slug,
        mode="concurrent" if len(results) > 1 else "single",
        model="claude-sonnet-5-5",
        status=status,
        error=error,
        pack=PACK.summary(),
        results=results,
        input_tokens=120_000,
        output_tokens=5_300,
        cache_creation_input_tokens=30_000,
        cache_read_input_tokens=90_000,
        cost_usd=0.5321,
    )


def sarif_of(o: RepoOutcome, run_id: str) -> dict:
    return build_sarif(o, run_id, o.tracked(run_id, "2026-12-01"))


def four_agents() -> RepoOutcome:
    security = parse(
        reply(
            finding(severity="critical", line=12, end_line=14),
            finding(
                severity="low",
                title="<script>alert(1)</script> in a | title",
                file="src/my file.py",
                line=1,
            ),
        ),
        "end_turn",
        agent="security",
        pack=PACK,
    )
    review = parse(TWO, "end_turn", agent="code_review", pack=PACK)
    architecture = parse(CUT, "max_tokens", agent="architecture", pack=PACK)
    multi = parse("Sorry, I got confused.", "end_turn", agent="multi_perspective", pack=PACK)
    return outcome(review, architecture, security, multi)


def test_repo_report_files_and_review_md(tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "20261128-nightly"
    folder = write_repo_report(run_dir, four_agents())
    assert folder == (run_dir / "shop").resolve()
    assert sorted(p.name for p in folder.iterdir()) == [
        "findings.json",
        "findings.sarif",
        "review.md",
    ]
    md = (folder / "review.md").read_text("utf-8")
    # Agents that are not ok come first, prominently, and the review says it is incomplete.
    warning = md.index("[!WARNING]")
    # What is new leads, before the agents' own summaries.
    assert warning < md.index("**3 new · 0 fixed · 0 persisting**") < md.index("## New (3)")
    assert md.index("## New (3)") < md.index("## Agents")
    assert "**architecture: truncated**" in md and "**multi_perspective: unparsed**" in md
    assert "Missing findings do not mean there are none" in md
    # Findings grouped by severity, with file:line.
    assert md.index("### Critical (1)") < md.index("### Medium (1)") < md.index("### Low (1)")
    assert "`src/db.py:12-14`" in md and "`src/app.py:3`" in md
    # The SQL finding, merged across three agents; nothing was dropped.
    assert "found by code_review, architecture, security" in md
    assert "Dropped as invalid" not in md
    # Model text cannot inject HTML or break out of its line.
    assert "<script>" not in md and "&lt;script&gt;" in md
    # Coverage, what was left out, redactions, tokens and cost.
    assert "- files: 4 included, 1 truncated, 1 left out to fit the input budget" in md
    assert "- coverage: bytes 60%, files 80%" in md
    assert (
        "`src/omitted.py`: omitted" in md and "`docs/big.md`: truncated (lines 1-100 shown)" in md
    )
    assert "- secrets redacted before sending: 1 (aws-access-key 1)" in md
    assert "- binary: 1" in md
    assert "- input tokens: 120,000" in md and "- cache read input tokens: 90,000" in md
    assert "- cost: $0.5321" in md


def test_findings_json_keeps_raw_replies_and_completeness(tmp_path: Path) -> None:
    folder = write_repo_report(tmp_path / "run1", four_agents())
    doc = json.loads((folder / "findings.json").read_text("utf-8"))
    assert doc["schema"] == "review-runner/findings/1" and doc["run_id"] == "run1"
    assert doc["complete"] is False
    assert doc["findings_by_severity"] == {
        "critical": 1,
        "high": 0,
        "medium": 1,
        "low": 1,
        "info": 0,
    }
    statuses = {a["agent"]: a["status"] for a in doc["agents"]}
    assert statuses == {"code_review": "ok", "architecture": "truncated", "security": "ok", "multi_perspective": "unparsed"}  # fmt: skip
    raw = {a["agent"]: a["raw"] for a in doc["agents"]}
    assert raw["multi_perspective"] == "Sorry, I got confused." and raw["architecture"] == CUT
    assert doc["pack"]["sha256"] == PACK.sha256 and doc["cost_usd"] == 0.5321
    rebuilt = [AgentResult.from_dict(a) for a in doc["agents"]]
    assert tuple(rebuilt) == four_agents().results


def test_review_md_no_findings_only_when_complete(tmp_path: Path) -> None:
    clean = parse(reply(summary="Nothing to report."), "end_turn", agent="security", pack=PACK)
    md = (write_repo_report(tmp_path / "r", outcome(clean)) / "review.md").read_text("utf-8")
    assert "Nothing new." in md and "[!WARNING]" not in md
    refused = parse("I won't.", "refusal", agent="security", pack=PACK)
    md = (write_repo_report(tmp_path / "r2", outcome(refused)) / "review.md").read_text("utf-8")
    assert "Nothing new." not in md
    assert "Nothing new was read, but the review is incomplete" in md
    assert "**security: refused**, the model refused" in md


def test_dropped_findings_are_reported(tmp_path: Path) -> None:
    items = (finding(), finding(file="nope.py"), finding(line=999))
    r = parse(reply(*items), "end_turn", agent="security", pack=PACK)
    md = (write_repo_report(tmp_path / "r", outcome(r)) / "review.md").read_text("utf-8")
    assert "Dropped as invalid (a file or line not in the pack, a bad severity): security 2." in md


def test_failed_repo_report(tmp_path: Path) -> None:
    o = outcome(status="failed", error="HTTP 529 overloaded after 3 attempts")
    folder = write_repo_report(tmp_path / "r", o)
    md = (folder / "review.md").read_text("utf-8")
    assert "**The review of this repository failed**: HTTP 529 overloaded after 3 attempts" in md
    sarif = json.loads((folder / "findings.sarif").read_text("utf-8"))
    VALIDATOR.validate(sarif)
    (run,) = sarif["runs"]
    assert run["invocations"][0]["executionSuccessful"] is False
    assert (
        "failed: HTTP 529"
        in run["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]
    )


def test_sarif_is_valid_and_shaped_for_code_scanning(tmp_path: Path) -> None:
    o = four_agents()
    folder = write_repo_report(tmp_path / "run-42", o)
    sarif = json.loads((folder / "findings.sarif").read_text("utf-8"))
    errors = sorted(VALIDATOR.iter_errors(sarif), key=str)
    assert errors == [], errors[:3]
    assert sarif["version"] == "2.1.0"
    # One run per repo whatever the mode; its category is everything before the last "/" of the id.
    (run,) = sarif["runs"]
    assert run["automationDetails"]["id"] == "review-runner/shop/run-42"
    driver = run["tool"]["driver"]
    assert driver["name"] == "review-runner" and driver["informationUri"].startswith("https://")
    rules = driver["rules"]
    assert [r["id"] for r in rules] == [rule_id(c) for c in CATEGORIES]
    for rule in rules:
        assert (
            rule["shortDescription"]["text"]
            and rule["fullDescription"]["text"]
            and rule["help"]["text"]
        )
        assert len(rule["fullDescription"]["text"]) <= 1000
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False  # two agents not ok
    notes = [n["descriptor"]["id"] for n in invocation["toolExecutionNotifications"]]
    assert notes == ["status/truncated", "status/unparsed"]
    assert [a["agent"] for a in run["properties"]["agents"]] == [r.agent for r in o.results]
    assert len(run["results"]) == len(o.findings) == 3
    for res in run["results"]:
        assert res["ruleId"] == rules[res["ruleIndex"]]["id"]
        f = next(x for x in o.findings if x.fingerprint == res["properties"]["fingerprint"])
        assert res["ruleId"] == rule_id(f.category)
        assert res["level"] == {"critical": "error", "high": "error", "medium": "warning", "low": "note", "info": "note"}[f.severity]  # fmt: skip
        assert res["partialFingerprints"] == {FINGERPRINT_KEY: f"{f.fingerprint}:1"}
        assert "primaryLocationLineHash" not in res["partialFingerprints"]
        assert res["message"]["text"].startswith(f.title)
        assert (
            res["properties"]["agents"] == list(f.agents) and res["properties"]["status"] == "new"
        )
        loc = res["locations"][0]["physicalLocation"]
        uri = loc["artifactLocation"]["uri"]
        assert " " not in uri and not urlsplit(uri).scheme and not uri.startswith("/")
        assert loc["region"] == {"startLine": f.line, "endLine": f.end_line or f.line}
    sql = next(r for r in run["results"] if r["properties"]["severity"] == "critical")
    assert sql["properties"]["agents"] == ["code_review", "architecture", "security"]
    assert len([r for r in run["results"] if "my%20file" in json.dumps(r)]) == 1


def test_sarif_numbers_repeats_of_one_fingerprint() -> None:
    same = "line 3 of src/db.py"
    r = parse(
        reply(finding(line=3, end_line=None, evidence=same),
              finding(line=3, end_line=None, evidence=same, title="Another problem on that line")),
        "end_turn", agent="security", pack=PACK,
    )  # fmt: skip
    results = sarif_of(outcome(r), "x")["runs"][0]["results"]
    fp = r.findings[0].fingerprint
    assert [res["partialFingerprints"][FINGERPRINT_KEY] for res in results] == [
        f"{fp}:1",
        f"{fp}:2",
    ]


def test_schema_is_really_enforced() -> None:
    sarif = sarif_of(four_agents(), "x")
    VALIDATOR.validate(sarif)
    sarif["runs"][0]["results"][0]["level"] = "critical"  # not a SARIF level
    sarif["runs"][0]["automationDetails"]["guid"] = "not-a-guid"
    del sarif["runs"][0]["invocations"][0]["executionSuccessful"]
    assert len(list(VALIDATOR.iter_errors(sarif))) == 3


def test_sarif_category_and_fingerprints_are_stable_across_modes_and_moves() -> None:
    first = sarif_of(four_agents(), "night-1")
    moved = parse(
        reply(finding(severity="critical", line=20, end_line=21, evidence="line 12 of src/db.py"),
              finding(title="<script>alert(1)</script> in a | title", severity="low", file="src/my file.py",
                      line=2, evidence="line 1 of src/my file.py")),
        "end_turn", agent="combined", pack=PACK,
    )  # fmt: skip
    second = sarif_of(outcome(moved), "night-2")
    key = lambda r: (r["ruleId"], r["partialFingerprints"][FINGERPRINT_KEY])  # noqa: E731
    fps_first = {
        key(r) for r in first["runs"][0]["results"] if "security" in r["properties"]["agents"]
    }
    assert fps_first == set(map(key, second["runs"][0]["results"]))
    ids = [s["runs"][0]["automationDetails"]["id"] for s in (first, second)]
    assert [i.rsplit("/", 1)[0] for i in ids] == ["review-runner/shop", "review-runner/shop"]


def test_sarif_leaves_out_unverified_findings_unless_asked() -> None:
    r = parse(
        reply(finding(), finding(line=5, evidence="code that is not in the file", title="Made up")),
        "end_turn", agent="security", pack=PACK,
    )  # fmt: skip
    o = outcome(r)
    assert o.unverified_by_agent() == {"security": 1}
    tracking = o.tracked("x", "2026-12-01")
    assert [len(build_sarif(o, "x", tracking, include_unverified=u)["runs"][0]["results"]) for u in (False, True)] == [1, 2]  # fmt: skip


def test_sarif_repo_wide_finding_is_unverified_and_left_out() -> None:
    r = parse(
        reply(finding(file=None, title="No CI configuration")),
        "end_turn",
        agent="architecture",
        pack=PACK,
    )
    o = outcome(r)
    sarif = sarif_of(o, "x")
    VALIDATOR.validate(sarif)
    assert sarif["runs"][0]["results"] == []
    tracking = o.tracked("x", "2026-12-01")
    (res,) = build_sarif(o, "x", tracking, include_unverified=True)["runs"][0]["results"]
    assert "locations" not in res and res["partialFingerprints"][FINGERPRINT_KEY].endswith(":1")


def test_summary_across_repos(tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "run-7"
    clean = parse(reply(finding(severity="medium")), "end_turn", agent="security", pack=PACK)
    outcomes = [
        four_agents(),
        outcome(clean, slug="billing"),
        outcome(
            status="deferred", error="budget: single mode would exceed the month", slug="legacy"
        ),
    ]
    for o in outcomes:
        write_repo_report(run_dir, o)
    totals = {"cost_usd": 1.2, "input_tokens": 360000, "jobs": {"done": 2, "deferred": 1}}
    assert write_summary(run_dir, "run-7", outcomes, totals=totals) == run_dir
    doc = json.loads((run_dir / "summary.json").read_text("utf-8"))
    assert doc["run_id"] == "run-7" and doc["totals"] == totals
    assert doc["repos_by_status"] == {"done": 2, "deferred": 1}
    assert doc["findings_by_severity"] == {
        "critical": 1,
        "high": 0,
        "medium": 2,
        "low": 1,
        "info": 0,
    }
    assert doc["incomplete"] == ["shop", "legacy"]
    shop, billing, legacy = doc["repos"]
    for row in doc["repos"]:
        for key in ("mode", "agents", "findings", "input_tokens", "output_tokens", "cache_creation_input_tokens",
                    "cache_read_input_tokens", "cost_usd", "coverage", "status"):  # fmt: skip
            assert key in row
    assert shop["mode"] == "concurrent" and [a["status"] for a in shop["agents"]] == [
        "ok",
        "truncated",
        "ok",
        "unparsed",
    ]
    assert billing["complete"] is True and billing["findings"]["medium"] == 1
    assert billing["coverage"] == {"files": 0.8, "bytes": 0.6}
    assert legacy["status"] == "deferred" and legacy["error"].startswith("budget:")
    md = (run_dir / "summary.md").read_text("utf-8")
    assert "Incomplete reviews (failed, deferred, or an agent not ok): shop, legacy" in md
    assert "| [shop](shop/review.md) | done (incomplete) | concurrent |" in md
    assert "architecture **truncated**" in md
    assert (
        "| [billing](billing/review.md) | done | single | security | 1 | 0 | 0 | 0 | 0 | 1 | 0 | 0 |"
        in md
    )
    assert (billing["new"], billing["fixed"], billing["persisting"], billing["unverified"]) == (
        1,
        0,
        0,
        0,
    )
    assert "- legacy: budget: single mode would exceed the month" in md


def test_repo_outcome_round_trip_through_json() -> None:
    o = four_agents()
    again = RepoOutcome.from_dict(json.loads(json.dumps(o.to_dict())))
    assert again == o and again.findings == o.findings
    with pytest.raises(JobsInputError, match="malformed repo outcome record"):
        RepoOutcome.from_dict({"slug": "x"})


SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@pytest.mark.parametrize(
    "name",
    ["../evil", "/etc/passwd", "a/../../b", "..", ".", "", "...", "a\x00b", "ünïcödé", "x" * 300, "C:\\Windows",
     "-rf", ".git", "a/b", "a:b", " spaced name ", "%2e%2e%2f", "repo\nname"],
)  # fmt: skip
def test_safe_slug_never_leaves_the_run_folder(tmp_path: Path, name: str) -> None:
    slug = safe_slug(name)
    assert SAFE.match(slug) and ".." not in slug and len(slug) <= 100
    assert safe_slug(slug) == slug  # idempotent, so write_* may apply it again
    run_dir = tmp_path / "out" / "run"
    folder = write_repo_report(run_dir, outcome(slug=name))
    assert folder.parent == run_dir.resolve()
    written = {p for p in (tmp_path).rglob("*") if p.is_file()}
    assert all(run_dir.resolve() in p.resolve().parents for p in written)


def test_safe_slug_keeps_safe_names_and_separates_lookalikes() -> None:
    assert safe_slug("shop") == "shop" and safe_slug("my-repo_2.0") == "my-repo_2.0"
    assert safe_slug("a/b") != safe_slug("a:b") != safe_slug("a-b")
    assert safe_slug("org/repo").startswith("org-repo-")


def test_symlinked_repo_folder_is_refused(tmp_path: Path) -> None:
    run_dir, outside = tmp_path / "run", tmp_path / "outside"
    run_dir.mkdir()
    outside.mkdir()
    (run_dir / "shop").symlink_to(outside)
    with pytest.raises(JobsInputError, match="is a symlink; refusing to write through it"):
        write_repo_report(run_dir, four_agents())
    assert list(outside.iterdir()) == []


def test_planted_file_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "shop").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    (run_dir / "shop" / "review.md").symlink_to(victim)
    write_repo_report(run_dir, four_agents())
    assert victim.read_text("utf-8") == "keep me"
    assert not (run_dir / "shop" / "review.md").is_symlink()


def test_failed_write_keeps_the_previous_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_repo_report(tmp_path / "run", four_agents())
    before = (folder / "review.md").read_text("utf-8")

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(reports.os, "replace", boom)
    clean = parse(reply(), "end_turn", agent="security", pack=PACK)
    with pytest.raises(OSError, match="No space left"):
        write_repo_report(tmp_path / "run", outcome(clean))
    monkeypatch.undo()
    assert (folder / "review.md").read_text("utf-8") == before
    assert sorted(os.listdir(folder)) == ["findings.json", "findings.sarif", "review.md"]
