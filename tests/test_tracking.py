"""Evidence checks, across-nights statuses, suppressions files and baselines, each rule on its own."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from test_findings import make_pack

from jobs.errors import JobsInputError
from jobs.evidence import evidence_fingerprint, locate, normalise_evidence, packed_files
from jobs.findings import Finding, parse
from jobs.suppressions import (
    SUPPRESSIONS_FILE,
    Baseline,
    Source,
    load_suppressions,
    suppression_files,
)
from jobs.tracking import Seen, Status, Tracked, Tracking, tonight_files, track

FILE = [
    "def f(x):",
    "    y = x + 1",
    "",
    "    return eval(y)",
    "",
    "def g():",
    "    return eval(y)",
]


# -- evidence ------------------------------------------------------------------------------------------------


def test_normalised_evidence_drops_line_numbers_whitespace_and_blank_lines() -> None:
    assert normalise_evidence("12|     return eval(y)\n\n  13| x  =  1 \n") == (
        "returneval(y)",
        "x=1",
    )
    assert normalise_evidence("   \n\n") == ()


def test_locate_prefers_the_occurrence_nearest_the_cited_line() -> None:
    assert locate("return eval(y)", FILE, 7).line == 7
    assert locate("return eval(y)", FILE, 3).line == 4
    found = locate("return eval(y)", FILE, 40)  # cited far off: found elsewhere, corrected
    assert (found.line, found.end_line) == (7, 7)


def test_locate_multi_line_skips_blank_lines_and_allows_fragments_at_the_ends() -> None:
    found = locate("y = x + 1\n\nreturn eval(y)", FILE, 2)
    assert (found.line, found.end_line) == (2, 4)
    assert locate("eval(y)", FILE, 4).line == 4  # a fragment of one line, long enough
    assert locate("y", FILE, 2) is None  # too short to prove anything
    assert (
        locate("ef f(x):\ny = x + 1\n\nreturn ev", FILE, 1) is not None
    )  # end of the first, start of the last
    assert locate("x + 1\nreturn eval", FILE, 2) is None  # "x+1" is too short a fragment
    assert locate("return eval(z)", FILE, 4) is None
    assert locate("", FILE, 4) is None


def test_packed_files_reads_the_numbered_lines_of_each_file() -> None:
    pack = make_pack({"a.py": 3, "b c.py": 2}, truncated={"a.py": 2})
    files = packed_files(pack.text)
    assert files == {"a.py": ["line 1 of a.py", "line 2 of a.py"], "b c.py": ["line 1 of b c.py", "line 2 of b c.py"]}  # fmt: skip


def test_a_quote_that_is_not_in_the_file_is_unverified_and_keeps_its_cited_line() -> None:
    pack = make_pack({"src/app.py": 10})
    reply = {"findings": [
        {"severity": "high", "category": "security", "title": "t", "file": "src/app.py", "line": 4,
         "evidence": "line 9 of src/app.py"},
        {"severity": "high", "category": "security", "title": "u", "file": "src/app.py", "line": 4,
         "evidence": "os.system(cmd)"},
        {"severity": "high", "category": "security", "title": "v", "file": "src/app.py", "line": 4},
    ]}  # fmt: skip
    a, b, c = parse(json.dumps(reply), "end_turn", agent="security", pack=pack).findings
    assert (a.verified, a.line) == (True, 9)
    assert (b.verified, b.line) == (False, 4)
    assert (c.verified, c.line, c.evidence) == (False, 4, "")


# -- across nights -------------------------------------------------------------------------------------------


def finding(path: str | None, evidence: str, category: str = "security", *, verified: bool = True, title: str = "t") -> Finding:  # fmt: skip
    return Finding(
        severity="high", category=category, title=title, file=path, line=1, end_line=1, detail="",
        suggestion="", confidence=None, agents=("security",),
        fingerprint=evidence_fingerprint("r", path, category, evidence), evidence=evidence, verified=verified,
    )  # fmt: skip


NIGHT1, NIGHT2 = Seen("n1", "2026-12-01"), Seen("n2", "2026-12-02")


def first_night(*findings: Finding) -> Tracking:
    return track((), findings, repo="r", run=NIGHT1, files={})


def test_rewording_and_moving_persist_with_first_seen_carried() -> None:
    one = first_night(finding("a.py", "eval(x_y)", title="Eval used"))
    assert [t.status for t in one.findings] == [Status.NEW]
    again = finding("a.py", "  eval(x_y) ", title="Dynamic code execution")
    two = track(one.open(), [again], repo="r", run=NIGHT2, files={"a.py": "\n\neval(x_y)"})
    (t,) = two.findings
    assert (t.status, t.first_seen, t.last_seen) == (Status.PERSISTING, NIGHT1, NIGHT2)
    assert two.fixed == () and two.carried == ()


def test_an_earlier_finding_is_fixed_only_when_its_evidence_is_gone() -> None:
    one = first_night(finding("a.py", "eval(x_y)"), finding("b.py", "pickle.loads(z)"), finding("c.py", "md5(p_q)"),
                      finding("gone.py", "exec(w_w)"))  # fmt: skip
    files = {"a.py": "safe(x_y)", "b.py": "x = 1\npickle.loads(z)\n"}
    two = track(one.open(), [], repo="r", run=NIGHT2, files=files, unreviewed={"c.py"})
    status = {t.finding.file: t.status for t in two.carried + two.fixed}
    assert status == {"a.py": Status.FIXED, "b.py": Status.NOT_REPORTED, "c.py": Status.NOT_REVIEWED, "gone.py": Status.FIXED}  # fmt: skip
    assert two.open() == two.carried and all(t.first_seen == NIGHT1 for t in two.carried)
    # The code still there moved down a line: the carried finding points at it tonight.
    assert [t.finding.line for t in two.carried if t.finding.file == "b.py"] == [2]
    # Carried ones are still open: found again on night 3, they persist from night 1.
    three = track(
        two.open(), [finding("b.py", "pickle.loads(z)")], repo="r", run=Seen("n3", "d"), files=files
    )
    assert [(t.status, t.first_seen) for t in three.findings] == [(Status.PERSISTING, NIGHT1)]


def test_code_below_the_shown_part_of_a_truncated_file_is_not_reviewed_not_fixed() -> None:
    one = first_night(finding("big.py", "deep_bug(q_q)"))
    two = track(
        one.open(), [], repo="r", run=NIGHT2, files={"big.py": "top only"}, truncated={"big.py": 1}
    )
    assert [t.status for t in two.carried] == [Status.NOT_REVIEWED]


def test_a_renamed_file_keeps_its_findings_persisting() -> None:
    one = first_night(finding("util.py", "global counter_c"))
    moved = finding("helpers.py", "global counter_c")
    two = track(one.open(), [moved], repo="r", run=NIGHT2, files={"helpers.py": "global counter_c"})
    (t,) = two.findings
    assert (t.status, t.first_seen) == (Status.PERSISTING, NIGHT1)
    assert t.previous_fingerprint == one.findings[0].fingerprint != t.fingerprint
    assert two.fixed == ()


def test_unverified_findings_are_never_tracked() -> None:
    one = first_night(finding("a.py", "made up", verified=False))
    assert one.findings == () and len(one.unverified) == 1 and one.counts()["unverified"] == 1


def test_tracking_round_trips_through_json() -> None:
    one = first_night(finding("a.py", "eval(x_y)"), finding("a.py", "nope", verified=False))
    assert Tracking.from_dict(json.loads(json.dumps(one.to_dict()))) == one
    with pytest.raises(JobsInputError, match="malformed tracked finding record"):
        Tracked.from_dict({"status": "new"})


def test_tonight_files_from_a_pack() -> None:
    pack = make_pack({"a.py": 3, "big.py": 40}, truncated={"big.py": 12}, omitted=("left.py",))
    args = tonight_files(pack)
    assert set(args["files"]) == {"a.py", "big.py"} and args["files"]["a.py"].startswith(
        "line 1 of a.py"
    )
    assert "left.py" in args["unreviewed"] and "logo.png" in args["unreviewed"]
    assert args["truncated"] == {"big.py": 12}


# -- suppressions and baselines ------------------------------------------------------------------------------


def write(folder: Path, text: str) -> list[tuple[Path, Source]]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SUPPRESSIONS_FILE).write_text(text)
    return suppression_files(folder, None)


def test_suppressions_by_glob_category_and_fingerprint_with_expiry(tmp_path: Path) -> None:
    fp = finding("src/x.py", "exec(z_z)").fingerprint
    files = write(tmp_path / "m", f"""
[[suppress]]
path = "vendor/**"
reason = "third-party code"

[[suppress]]
path = "src/*.py"
category = "maintainability"
reason = "style debt, tracked in #12"
expires = 2027-06-30

[[suppress]]
fingerprint = "{fp}"
reason = "false positive: z is a constant"

[[suppress]]
category = "testing"
reason = "was accepted until the test rewrite"
expires = 2026-11-30
""")  # fmt: skip
    sup = load_suppressions(files, today=date(2026, 12, 4))
    assert sup.match("r", finding("vendor/lib/a.py", "x_x")).reason == "third-party code"
    assert sup.match("r", finding("src/a.py", "x_x", "maintainability")).expires == "2027-06-30"
    assert (
        sup.match("r", finding("src/deep/a.py", "x_x", "maintainability")) is None
    )  # * stays in a folder
    assert sup.match("r", finding("src/a.py", "x_x")) is None  # security, not maintainability
    assert sup.match("r", finding("src/x.py", "exec(z_z)")).source is Source.MANIFEST
    assert sup.match("r", finding("t.py", "x_x", "testing")) is None  # expired: ignored...
    (expired,) = sup.expired_for("r")  # ...and reported
    assert expired.reason == "was accepted until the test rewrite"


def test_a_suppressed_finding_is_counted_never_new(tmp_path: Path) -> None:
    sup = load_suppressions(write(tmp_path / "m", '[[suppress]]\npath = "gen/**"\nreason = "generated"\n'), today=date(2026, 12, 4))  # fmt: skip
    one = track(
        (), [finding("gen/a.py", "eval(g_g)")], repo="r", run=NIGHT1, files={}, suppressions=sup
    )
    (t,) = one.findings
    assert t.status is Status.SUPPRESSED and t.suppression.reason == "generated"
    assert one.counts()["new"] == 0 and one.counts()["suppressed"] == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("[[suppress]]\npath = 'a'\n", "entry 1: reason is required", id="no-reason"),
        pytest.param(
            "[[suppress]]\nreason = 'x'\n",
            "entry 1: give at least one of path, category, fingerprint",
            id="no-criterion",
        ),
        pytest.param(
            "[[suppress]]\npath = 'a'\nreason = 'x'\ncolour = 1\n",
            "entry 1: unknown key 'colour'",
            id="unknown-key",
        ),
        pytest.param(
            "[[suppress]]\ncategory = 'style'\nreason = 'x'\n",
            "entry 1: category must be one of",
            id="bad-category",
        ),
        pytest.param(
            "[[suppress]]\npath = 'a'\nreason = 'x'\nexpires = '2027-01-01'\n",
            "entry 1: expires must be a TOML date",
            id="expiry-string",
        ),
        pytest.param(
            "[[suppress]]\npath = 'a'\nreason = ''\n",
            "entry 1: reason must be a non-empty string",
            id="empty-reason",
        ),
        pytest.param("suppress = 3\n", "suppress must be an array of tables", id="not-a-list"),
        pytest.param("[other]\n", "unknown key 'other'", id="unknown-table"),
        pytest.param("[[suppress]\n", "suppressions file", id="bad-toml"),
    ],
)
def test_a_bad_suppressions_file_names_the_file_and_entry(
    tmp_path: Path, text: str, message: str
) -> None:
    files = write(tmp_path / "m", text)
    with pytest.raises(JobsInputError, match=message) as info:
        load_suppressions(files, today=date(2026, 12, 4))
    assert str(tmp_path / "m" / SUPPRESSIONS_FILE) in str(info.value)


def test_the_repository_file_cannot_aim_at_other_repos(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / SUPPRESSIONS_FILE).write_text(
        "[[suppress]]\npath = 'a'\nrepo = 'other'\nreason = 'x'\n"
    )
    files = suppression_files(None, tmp_path / "repo")
    assert files == [(tmp_path / "repo" / SUPPRESSIONS_FILE, Source.REPOSITORY)]
    with pytest.raises(JobsInputError, match="repo is only allowed in the manifest folder's file"):
        load_suppressions(files, today=date(2026, 12, 4))


def test_a_baseline_accepted_fingerprint_is_never_new() -> None:
    known = finding("a.py", "eval(b_b)")
    baseline = Baseline().accept(
        [known.fingerprint], by="ana", at="2026-11-30T10:00:00Z", run_id="n0"
    )
    assert Baseline.from_dict(json.loads(json.dumps(baseline.to_dict()))) == baseline
    # Seen for the first time after it was accepted: suppressed (kind baseline), first seen at the baseline.
    one = track(
        (), [known, finding("a.py", "exec(n_n)")], repo="r", run=NIGHT1, files={}, baseline=baseline
    )
    accepted, fresh = one.findings
    assert accepted.status is Status.SUPPRESSED and accepted.suppression.source is Source.BASELINE
    assert accepted.first_seen == Seen("n0", "2026-11-30T10:00:00Z")
    assert fresh.status is Status.NEW
    # Accepting again keeps the first acceptance.
    again = baseline.accept([known.fingerprint], by="bo", at="2026-12-09T00:00:00Z", run_id="n9")
    assert again.entries[known.fingerprint].accepted_by == "ana"


def test_repo_outcome_with_tracking_round_trips_through_json(tmp_path: Path) -> None:
    from test_findings import PACK, reply
    from test_findings import finding as item
    from test_reports import outcome

    from jobs.outcome import RepoOutcome

    result = parse(reply(item(), item(line=5, evidence="not there", title="x")), "end_turn", agent="security", pack=PACK)  # fmt: skip
    sup = load_suppressions(write(tmp_path / "m", "[[suppress]]\ncategory = 'testing'\nreason = 'old'\nexpires = 2026-01-01\n"), today=date(2026, 12, 4))  # fmt: skip
    o = outcome(result).with_tracking((), run=NIGHT1, files={}, suppressions=sup)
    assert o.tracking.counts()["new"] == 1 and o.tracking.counts()["unverified"] == 1
    assert o.expired_suppressions and "expired 2026-01-01" in o.expired_suppressions[0]
    assert RepoOutcome.from_dict(json.loads(json.dumps(o.to_dict()))) == o
