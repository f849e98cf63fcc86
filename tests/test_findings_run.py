"""Findings tracked across nights through the real CLI, the real SDK and the seeded simulator.

The evolving repository of tests/test_nights.py (bugs planted and fixed, code moving, a file renamed) is
reviewed night after night by `review-runner run`; the simulator rewords every title, cites lines off and
misquotes code. An oracle that knows where each bug is says what every night's statuses must be, and the
reports (findings.json, summary.json, review.md, SARIF) and `findings list` must agree with it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sarif_support import multitool_problems
from support import api_env, cli, make_repos, messages, write_manifest
from test_nights import BUGS, SUPPRESSED, SUPPRESSIONS, Oracle, bug_of, commit

from jobs.errors import JobsInputError
from jobs.manifest import load_manifest
from jobs.pack import pack_repo
from jobs.suppressions import SUPPRESSIONS_FILE
from runner.run.plan import RepoWork
from runner.run.tracker import load_repo_suppressions
from runner.simulator import SimConfig, Simulator
from runner.simulator.replies import MISQUOTE_MARK

SLUG = "evolving"
# The repo tries to silence every security finding of its own: ignored unless the manifest trusts it.
OWN_SUPPRESSIONS = '[[suppress]]\ncategory = "security"\nreason = "we know"\n'
# A plain document, so that the prefix is long enough to be cached (the warm-up then matters).
README = "".join(f"Line {n} of the project notes: nothing to review here.\n" for n in range(300))
# (commit night, mode, misquote rate). The last two review the same commit in both modes, no misquotes,
# so that their SARIF can be compared result for result.
NIGHTS = [
    (1, "concurrent", 0.25),
    (2, "single", 0.25),
    (3, "concurrent", 0.25),
    (6, "concurrent", 0.0),
    (6, "single", 0.0),
]


def _repo(tmp_path: Path) -> Path:
    root = tmp_path / SLUG
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "README.md").write_text(README)
    (root / SUPPRESSIONS_FILE).write_text(OWN_SUPPRESSIONS)
    return root


def _manifest(tmp_path: Path, root: Path, **extra: object) -> Path:
    folder = tmp_path / "manifest"
    folder.mkdir(exist_ok=True)
    (folder / SUPPRESSIONS_FILE).write_text(SUPPRESSIONS)  # legacy/** is suppressed
    return write_manifest(
        folder / "m.toml", [root], max_output_tokens=4096, max_input_tokens=50_000, **extra
    )


def test_nights_through_the_cli_match_the_truth(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    manifest = _manifest(tmp_path, root)
    assert cli("budget", "set", "--usd", "50").returncode == 0
    oracle = Oracle()
    titles: dict[int, set[str]] = {}
    sarifs: list[Path] = []
    unverified = 0
    run_ids: list[str] = []
    history: list[dict[str, set[int]]] = []
    for i, (night, mode, misquote) in enumerate(NIGHTS):
        if i == 0 or NIGHTS[i - 1][0] != night:
            commit(root, night)
        config = SimConfig(seed=7, reword_rate=1.0, misline_rate=0.5, misquote_rate=misquote)
        with Simulator(config) as sim:
            # The same night again in another mode: --full, or the unchanged repo is not sent.
            again = ["--full"] if i and NIGHTS[i - 1][0] == night else []
            result = cli("run", str(manifest), "--mode", mode, "--json", *again, env=api_env(sim))
            assert result.returncode == 0, result.stderr
            sent = messages(sim)
        run = json.loads(result.stdout)
        # Every request, the warm-up included, carries the findings tool and forces it: one cached prefix.
        assert sent and all(
            m["tools"] == ["report_findings"]
            and m["tool_choice"] == {"type": "tool", "name": "report_findings"}
            for m in sent
        )
        assert [m["stop_reason"] for m in sent].count("tool_use") == (
            4 if mode == "concurrent" else 1
        )
        if mode == "concurrent":
            assert len(sent) == 5 and run["cache_read_input_tokens"] > 0
        assert "its own review-runner-suppressions.toml is ignored" in result.stderr
        folder = Path(run["out_dir"]) / SLUG
        doc = json.loads((folder / "findings.json").read_text("utf-8"))
        assert doc["complete"] and all(a["status"] == "ok" for a in doc["agents"])
        # A quote that is not in the file is unverified, and only such a quote.
        for f in doc["findings"]:
            assert (f["status"] == "unverified") is (MISQUOTE_MARK in f["evidence"]), f
        unverified += doc["counts"]["unverified"]
        assert sum(doc["unverified_by_agent"].values()) >= doc["counts"]["unverified"]
        tracked = [f for f in doc["findings"] if f["status"] != "unverified"]
        verified = {bug_of(f["evidence"]): f["file"] for f in tracked}
        files = {p.relative_to(root).as_posix() for p in root.rglob("*.py")}
        expect = oracle.night(night, verified, files)
        got = {s: {bug_of(f["evidence"]) for f in tracked if f["status"] == s} for s in ("new", "persisting", "suppressed")}  # fmt: skip
        got["fixed"] = {bug_of(f["evidence"]) for f in doc["fixed"]}
        got["not_reported"] = {bug_of(f["evidence"]) for f in doc["open"] if f["status"] == "not_reported"}  # fmt: skip
        assert got == expect, f"night {night} ({mode})"
        history.append(expect)
        # Rewording never makes a second identity: one tracked finding per bug, first seen as the oracle says.
        assert len(tracked) == len(verified)
        for f in tracked + doc["open"]:
            first = _run_of(oracle, bug_of(f["evidence"]), [*run_ids, run["run_id"]])
            assert f["first_seen"]["run_id"] == first
            titles.setdefault(bug_of(f["evidence"]), set()).add(f["title"])
        assert all(bug_of(f["evidence"]) not in SUPPRESSED for f in tracked if f["status"] == "new")
        # The manifest folder's file suppresses legacy/**; the repo's own file (security) is ignored.
        assert doc["counts"]["suppressed"] == len(SUPPRESSED & set(verified))
        for f in tracked + doc["open"]:
            source = (f["suppression"] or {}).get("source")
            assert source == ("manifest" if bug_of(f["evidence"]) in SUPPRESSED else None), f
        # The summary and review.md say the same.
        summary = json.loads((Path(run["out_dir"]) / "summary.json").read_text("utf-8"))
        (row,) = summary["repos"]
        assert (row["new"], row["persisting"], row["fixed"]) == tuple(len(expect[s]) for s in ("new", "persisting", "fixed"))  # fmt: skip
        review = (folder / "review.md").read_text("utf-8")
        assert f"## New ({len(expect['new'])})" in review
        sarifs.append(folder / "findings.sarif")
        run_ids.append(run["run_id"])
    assert sum(len(t) > 1 for t in titles.values()) >= 5  # titles really were reworded
    assert unverified >= 2  # the simulator really misquoted
    # The scenario's events happened on night 6: util.py renamed (bug 5 persisting), bug 2 fixed, bug 8 new.
    assert 5 in history[3]["persisting"] and 2 in history[3]["fixed"] and 8 in history[3]["new"]
    assert (
        history[4]["new"] == set() and history[4]["fixed"] == set()
    )  # the same code in single mode
    # One category per repo whatever the mode, the same fingerprints from a concurrent and a single night.
    concurrent, single = (json.loads(p.read_text("utf-8")) for p in sarifs[-2:])
    for doc in (concurrent, single):
        (sarif_run,) = doc["runs"]
        assert sarif_run["automationDetails"]["id"].rsplit("/", 1)[0] == f"review-runner/{SLUG}"
    assert _fingerprints(concurrent) == _fingerprints(single) and len(_fingerprints(single)) >= 6
    assert multitool_problems(sarifs) == []
    # `findings list` reads the same statuses back from runs.db.
    listed = json.loads(cli("findings", "list", "--json").stdout)
    assert [r["run_id"] for r in listed["repos"]] == [run_ids[-1]]
    assert {bug_of(f["evidence"]) for f in listed["findings"] if f["status"] == "persisting"} == {
        k for k, (_, _, nights) in BUGS.items() if 6 in nights and k not in SUPPRESSED
    }


def _run_of(oracle: Oracle, bug: int | None, run_ids: list[str]) -> str:
    """The run id the oracle's first night of ``bug`` became (the oracle names nights, the CLI runs)."""
    assert bug is not None
    first = oracle.open[bug][1]  # "night-NN"
    nights = [n for n, _, _ in NIGHTS]
    return run_ids[nights.index(int(first.removeprefix("night-")))]


def _fingerprints(sarif: dict) -> set[str]:
    return {next(iter(r["partialFingerprints"].values())) for r in sarif["runs"][0]["results"]}


def test_repo_suppressions_only_with_the_manifest_opt_in(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    commit(root, 1)
    messages_seen: list[str] = []
    for trusted in (False, True):
        manifest = load_manifest(_manifest(tmp_path, root, trust_repo_suppressions=trusted))
        work = RepoWork(
            manifest.repos[0], root, pack_repo(root, slug=SLUG, max_input_tokens=50_000)
        )
        found = load_repo_suppressions(manifest, {SLUG: work}, on_message=messages_seen.append)
        categories = {r.category for r in found[SLUG].rules}
        assert categories == ({None, "security"} if trusted else {None})
    assert len(messages_seen) == 1 and "trust_repo_suppressions = true" in messages_seen[0]


def test_trust_repo_suppressions_must_be_a_boolean(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, _repo(tmp_path), trust_repo_suppressions="yes")
    with pytest.raises(JobsInputError) as err:
        load_manifest(manifest)
    assert str(err.value) == f"{manifest}: key 'trust_repo_suppressions': expected true or false, got 'yes' (string)"  # fmt: skip
    result = cli("plan", str(manifest))
    assert result.returncode == 2 and "key 'trust_repo_suppressions': expected true or false" in result.stderr  # fmt: skip


def test_a_broken_suppressions_file_stops_the_run_before_anything_is_sent(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    commit(root, 1)
    manifest = _manifest(tmp_path, root)
    (manifest.parent / SUPPRESSIONS_FILE).write_text('[[suppress]]\npath = "x/**"\n')
    cli("budget", "set", "--usd", "50")
    plan = cli("plan", str(manifest))
    assert plan.returncode == 2
    assert f"{manifest.parent / SUPPRESSIONS_FILE} entry 1: reason is required" in plan.stderr
    with Simulator(SimConfig(seed=1)) as sim:
        result = cli("run", str(manifest), env=api_env(sim))
        sent = messages(sim)
    assert result.returncode == 2
    assert f"{manifest.parent / SUPPRESSIONS_FILE} entry 1: reason is required" in result.stderr
    assert sent == []  # no review request; and nothing held in the ledger
    status = json.loads(cli("budget", "status", "--json").stdout)
    assert status["held_usd"] == 0 and status["reserved_usd"] == 0


def test_a_resumed_run_reports_the_repos_its_first_attempt_tracked(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.toml", make_repos(tmp_path / "repos", 4))
    cli("budget", "set", "--usd", "50")
    with Simulator(SimConfig(seed=3)) as sim:
        first = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
    assert first.returncode == 0, first.stderr
    # The second night stops at the spend cap part-way, then is resumed: the repos done before the stop
    # were tracked then (persisting), and the summary of the resumed run must say so, not "new".
    with Simulator(SimConfig(seed=3, spend_cap_usd=0.01)) as sim:
        capped = cli("run", str(manifest), "--mode", "single", "--workers", "1", "--json", "--full", env=api_env(sim))  # fmt: skip
    assert capped.returncode == 3, capped.stderr
    stopped = json.loads(capped.stdout)
    assert stopped["jobs"]["done"] >= 1 and stopped["jobs"]["deferred"] >= 1
    with Simulator(SimConfig(seed=3)) as sim:
        resumed = cli("run", "--resume", "last", "--json", env=api_env(sim))
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    summary = json.loads((Path(doc["out_dir"]) / "summary.json").read_text("utf-8"))
    assert len(summary["repos"]) == 4
    for row in summary["repos"]:
        report = json.loads(
            (Path(doc["out_dir"]) / row["slug"] / "findings.json").read_text("utf-8")
        )
        assert (row["new"], row["persisting"]) == (0, report["counts"]["persisting"]) and row["persisting"] >= 3, row  # fmt: skip
    listed = json.loads(cli("findings", "list", "--json").stdout)
    assert {r["run_id"] for r in listed["repos"]} == {doc["run_id"]}


def test_a_gateway_that_answers_in_text_is_parsed_by_the_text_parser(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    commit(root, 1)
    manifest = _manifest(tmp_path, root)
    cli("budget", "set", "--usd", "50")
    with Simulator(SimConfig(seed=5, tool_use=False)) as sim:
        result = cli("run", str(manifest), "--mode", "concurrent", "--json", env=api_env(sim))
        sent = messages(sim)
    assert result.returncode == 0, result.stderr
    assert all(m["tools"] == ["report_findings"] for m in sent)  # asked for, not used
    assert sorted(m["stop_reason"] for m in sent) == ["end_turn"] * 4 + [
        "max_tokens"
    ]  # + the warm-up
    folder = Path(json.loads(result.stdout)["out_dir"]) / SLUG
    doc = json.loads((folder / "findings.json").read_text("utf-8"))
    assert [a["status"] for a in doc["agents"]] == ["ok"] * 4
    present = {k for k, (_, _, nights) in BUGS.items() if 1 in nights}
    assert {bug_of(f["evidence"]) for f in doc["findings"]} == present
    assert doc["counts"]["unverified"] == 0


def test_after_a_baseline_only_what_is_new_is_reported_as_new(tmp_path: Path) -> None:
    root = _repo(tmp_path)
    manifest = _manifest(tmp_path, root)
    cli("budget", "set", "--usd", "50")
    docs = []
    with Simulator(SimConfig(seed=9, reword_rate=1.0)) as sim:
        for night in (1, 2):
            commit(root, night)
            result = cli("run", str(manifest), "--mode", "single", "--json", env=api_env(sim))
            assert result.returncode == 0, result.stderr
            folder = Path(json.loads(result.stdout)["out_dir"]) / SLUG
            docs.append((json.loads((folder / "findings.json").read_text("utf-8")), folder))
            if night == 1:
                accepted = cli("findings", "baseline", SLUG, "--reason", "known")
                assert accepted.returncode == 0, accepted.stderr
    tonight, folder = docs[1]
    status = {bug_of(f["evidence"]): (f["status"], (f["suppression"] or {}).get("source")) for f in tonight["findings"]}  # fmt: skip
    assert status == {
        1: ("suppressed", "baseline"), 2: ("suppressed", "baseline"), 4: ("suppressed", "baseline"),
        5: ("suppressed", "baseline"), 7: ("suppressed", "manifest"), 3: ("new", None),
    }  # fmt: skip
    assert tonight["counts"]["new"] == 1 and tonight["counts"]["suppressed"] == 5
    first = {bug_of(f["evidence"]): f["first_seen"] for f in docs[0][0]["findings"]}
    assert all(f["first_seen"] == first[bug_of(f["evidence"])] for f in tonight["findings"] if bug_of(f["evidence"]) != 3)  # fmt: skip
    sarif = json.loads((folder / "findings.sarif").read_text("utf-8"))
    assert sum("suppressions" in r for r in sarif["runs"][0]["results"]) == 5
    assert multitool_problems([folder / "findings.sarif"]) == []
