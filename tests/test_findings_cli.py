"""`review-runner findings list|baseline` over reviews recorded in runs.db, and the store beneath them."""

from __future__ import annotations

import json
from pathlib import Path

from support import cli

from jobs.findings import Finding
from jobs.tracking import Seen, Status, Tracked, Tracking
from runner.findings_store import FindingsStore
from runner.runs import Runs


def finding(n: int, *, file: str = "app.py", category: str = "security") -> Finding:
    return Finding(
        severity="high", category=category, title=f"Finding {n}", file=file, line=n, end_line=n,
        detail="d", suggestion="s", confidence=0.5, agents=("security",), fingerprint=f"fp{n:030d}",
        evidence=f"eval(bug{n}_expr)", verified=True,
    )  # fmt: skip


def tracked(n: int, status: Status, first: str, run: str) -> Tracked:
    return Tracked(finding(n), status, Seen(first, "2026-12-01"), Seen(run, "2026-12-02"))


def store(state: Path) -> FindingsStore:
    return FindingsStore(Runs(state / "runs.db").open())


def record(state: Path, run: str, slug: str, date: str, tracking: Tracking, complete: bool = True) -> None:  # fmt: skip
    store(state).record(run, slug, run_date=date, complete=complete, tracking=tracking)


def two_nights(state: Path) -> None:
    """shop: night 1 finds 1, 2, 3; night 2 keeps 1, fixes 2, carries 3, finds 4 (and misquotes one);
    a third, incomplete review must not count. api: one night, one finding."""
    night1 = Tracking(tuple(tracked(n, Status.NEW, "r1", "r1") for n in (1, 2, 3)), (), (), ())
    record(state, "r1", "shop", "2026-12-01T02:00:00Z", night1)
    night2 = Tracking(
        (tracked(1, Status.PERSISTING, "r1", "r2"), tracked(4, Status.NEW, "r2", "r2")),
        (tracked(3, Status.NOT_REPORTED, "r1", "r1"),),
        (tracked(2, Status.FIXED, "r1", "r1"),),
        (finding(9),),
    )
    record(state, "r2", "shop", "2026-12-02T02:00:00Z", night2)
    broken = Tracking((tracked(7, Status.NEW, "r3", "r3"),), (), (), ())
    record(state, "r3", "shop", "2026-12-03T02:00:00Z", broken, complete=False)
    record(state, "r2", "api", "2026-12-02T02:00:00Z", Tracking((tracked(5, Status.NEW, "r2", "r2"),), (), (), ()))  # fmt: skip


def test_list_and_baseline_with_no_review_yet_fail_with_exit_2(isolated_state: Path) -> None:
    for args in (("findings", "list"), ("findings", "list", "--json"), ("findings", "baseline")):
        result = cli(*args)
        assert result.returncode == 2, result
        assert result.stderr.strip() == (
            f"Error: no review recorded in {isolated_state / 'runs.db'} yet: "
            "run `review-runner run MANIFEST` first"
        )
        assert result.stdout == ""


def test_baseline_of_an_unknown_repo_fails_with_exit_2_and_accepts_nothing(isolated_state: Path) -> None:  # fmt: skip
    two_nights(isolated_state)
    result = cli("findings", "baseline", "shop", "nope")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"Error: unknown repo 'nope': no review of it in {isolated_state / 'runs.db'} (known: api, shop)"
    )
    assert (
        store(isolated_state).baseline("shop").entries == {}
    )  # the known one was not accepted either


def test_baseline_of_a_repo_without_a_complete_review_fails_with_exit_2(isolated_state: Path) -> None:  # fmt: skip
    broken = Tracking((tracked(7, Status.NEW, "r3", "r3"),), (), (), ())
    record(isolated_state, "r3", "web", "2026-12-03T02:00:00Z", broken, complete=False)
    result = cli("findings", "baseline", "web")
    assert result.returncode == 2
    assert "Error: repo 'web' has no complete review to accept" in result.stderr
    assert cli("findings", "list", "--status", "nope").returncode == 2  # click's own usage error


def test_list_reads_each_repos_last_complete_review_with_statuses(isolated_state: Path) -> None:
    two_nights(isolated_state)
    doc = json.loads(cli("findings", "list", "--json").stdout)
    assert [(r["slug"], r["run_id"]) for r in doc["repos"]] == [("api", "r2"), ("shop", "r2")]
    shop = {f["title"]: f for f in doc["findings"] if f["slug"] == "shop"}
    assert {t: f["status"] for t, f in shop.items()} == {
        "Finding 1": "persisting",
        "Finding 4": "new",
        "Finding 3": "not_reported",
        "Finding 2": "fixed",
    }  # fmt: skip  (the misquoted Finding 9 is not tracked; the incomplete r3 is not the reference)
    assert shop["Finding 1"]["first_seen"] == {"run_id": "r1", "date": "2026-12-01"}
    for status, titles in (("new", {"Finding 4", "Finding 5"}), ("persisting", {"Finding 1"}), ("fixed", {"Finding 2"})):  # fmt: skip
        doc = json.loads(cli("findings", "list", "--status", status, "--json").stdout)
        assert {f["title"] for f in doc["findings"]} == titles, status
    text = cli("findings", "list", "--status", "fixed")
    assert text.returncode == 0
    assert "shop: run r2 (2026-12-02T02:00:00Z): 1 new, 1 persisting, 1 fixed" in text.stdout
    assert "fixed        high     shop  app.py:2  Finding 2  (first seen r1," in text.stdout


def test_baseline_accepts_the_open_findings_once(isolated_state: Path) -> None:
    two_nights(isolated_state)
    result = cli("findings", "baseline", "shop", "--reason", "known before the nightly")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == "shop: 3 finding(s) accepted from run r2 (0 already in the baseline)"
    )
    accepted = store(isolated_state).baseline("shop").entries
    assert sorted(accepted) == [
        finding(n).fingerprint for n in (1, 3, 4)
    ]  # open ones: not the fixed 2
    assert {e.reason for e in accepted.values()} == {"known before the nightly"}
    assert store(isolated_state).baseline("api").entries == {}
    again = json.loads(cli("findings", "baseline", "--json").stdout)
    assert again["accepted"] == [
        {"slug": "api", "run_id": "r2", "added": 1, "already": 0},
        {"slug": "shop", "run_id": "r2", "added": 0, "already": 3},
    ]
    listed = json.loads(cli("findings", "list", "--json").stdout)["findings"]
    assert {f["title"]: f["baselined"] for f in listed if f["slug"] == "shop"} == {
        "Finding 1": True, "Finding 4": True, "Finding 3": True, "Finding 2": False,
    }  # fmt: skip


def test_recording_a_review_again_replaces_it_and_previous_skips_the_run_itself(isolated_state: Path) -> None:  # fmt: skip
    two_nights(isolated_state)
    s = store(isolated_state)
    again = Tracking((tracked(1, Status.PERSISTING, "r1", "r2"),), (), (), ())
    s.record("r2", "shop", run_date="2026-12-02T02:00:00Z", complete=True, tracking=again)
    review = s.review("r2", "shop")
    assert review is not None and [t.finding.title for t in review.tracking.findings] == [
        "Finding 1"
    ]
    assert review.tracking.fixed == () and review.tracking.unverified == ()
    # r2 compared with itself never: its previous is r1's open findings.
    assert [t.finding.title for t in s.previous("shop", run_id="r2")] == ["Finding 1", "Finding 2", "Finding 3"]  # fmt: skip
    assert [t.finding.title for t in s.previous("shop", run_id="r9")] == ["Finding 1"]
