"""Ten nights on a generated repository that evolves commit by commit, reviewed by the seeded simulator.

Bugs are planted and fixed, code moves up and down, a file is renamed, every title is reworded every night,
some quotes are not in the file and one night the model forgets a finding. An oracle that knows where every bug
is (by its id, never by a fingerprint) says what each night's statuses must be; the pure functions must agree
exactly. Every night's SARIF passes the 2.1.0 schema and Microsoft's SARIF Multitool.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import jsonschema
from sarif_support import multitool_problems

from jobs.agents import SPECIALISTS, build_prompt, findings_tool, findings_tool_choice, load_prompts
from jobs.findings import AgentResult, parse_tool_input
from jobs.outcome import RepoOutcome
from jobs.pack import pack_repo
from jobs.pack_record import Pack
from jobs.reports import write_repo_report
from jobs.suppressions import Source, load_suppressions
from jobs.tracking import Seen, Status, Tracked, tonight_files
from runner.simulator.prompt import parse_prompt
from runner.simulator.replies import MISQUOTE_MARK, Realism, make_reply, request_digest

SLUG = "evolving"
SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text("utf-8"))
REALISM = Realism(reword_rate=1.0, misline_rate=0.5, misquote_rate=0.2, misline_max=3)
BUG_LINES = {
    "eval": "    return eval(bug{k}_expr)",
    "shell": "    subprocess.run(bug{k}_cmd, shell=True)",
    "md5": "    bug{k}_digest = hashlib.md5(data)",
    "assert": "    assert bug{k}_value > 0",
    "global": "    global bug{k}_counter",
    "todo": "    # TODO bug{k}_case is not handled",
}
# bug id -> (file key, kind, nights present)
BUGS = {
    1: ("app", "eval", range(1, 11)),
    2: ("app", "shell", range(1, 4)),
    3: ("db", "md5", range(2, 11)),
    4: ("db", "assert", range(1, 7)),
    5: ("util", "global", range(1, 11)),
    6: ("util", "todo", range(3, 9)),
    7: ("legacy", "eval", range(1, 11)),
    8: ("app", "assert", range(5, 11)),
    9: ("db", "shell", [4, 5, 9, 10]),
    10: ("util", "eval", range(7, 11)),
}
FORGOTTEN = {7: {3}}  # night -> bugs the model does not repeat that night
SUPPRESSED = {7}  # legacy/** is suppressed
SUPPRESSIONS = '[[suppress]]\npath = "legacy/**"\nreason = "legacy code, replaced in Q1"\n'
EXPIRED = '[[suppress]]\ncategory = "testing"\nreason = "old"\nexpires = 2026-01-01\n'
_TOKEN = re.compile(r"bug(\d+)_")


def path_of(file: str, night: int) -> str:
    if file == "util":
        return "util.py" if night < 6 else "helpers.py"  # renamed on night 6
    return {"app": "app.py", "db": "db.py", "legacy": "legacy/old.py"}[file]


def file_text(file: str, night: int) -> str:
    """A module whose bugs sit in functions between fillers; the fillers' count moves the code up and down."""
    top = (night * 5 + len(file)) % 9  # varies night by night, up and down
    lines = ["import hashlib", "import subprocess", ""]
    lines += [f"def top_{file}_{i}(x):\n    return x + {i}\n" for i in range(top)]
    bugs = [k for k, (f, _, nights) in BUGS.items() if f == file and night in nights]
    if night >= 8:
        bugs.reverse()  # code moved: the functions swap places
    for k in bugs:
        kind = BUGS[k][1]
        lines += [
            f"def func_{k}(data, bug{k}_expr='1'):",
            BUG_LINES[kind].format(k=k),
            "    return data",
            "",
        ]
        lines += [f"def pad_{k}_{night}_{i}(x):\n    return x * {i}\n" for i in range(night % 3)]
    return "\n".join(lines) + "\n"


def commit(root: Path, night: int) -> None:
    for old in root.rglob("*.py"):
        old.unlink()
    for file in ("app", "db", "util", "legacy"):
        path = root / path_of(file, night)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(file_text(file, night))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(root)]
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", f"night {night}"], check=True, capture_output=True)


def review(pack: Pack, night: int) -> list[AgentResult]:
    """Each agent's reply, from the simulator's reply function on the very request the runner would send."""
    agents = SPECIALISTS if night % 2 else ("combined",)
    prompts = load_prompts()
    results = []
    for agent in agents:
        prompt = build_prompt(pack, agent, prompts, max_output_tokens=4096)
        body = {
            "model": "claude-sonnet-5-5",
            "max_tokens": 4096,
            "tools": [findings_tool()],
            "tool_choice": findings_tool_choice(),
            "system": prompt.system,
            "messages": [{"role": "user", "content": [{"type": "text", "text": prompt.pack},
                                                      {"type": "text", "text": prompt.instructions}]}],
        }  # fmt: skip
        seen = parse_prompt(body)
        reply = make_reply(
            seen.text, seen.system_text, request_digest(body), 7, 400, 0.5, 4096,
            tools=body["tools"], tool_choice=body["tool_choice"], realism=REALISM,
        )  # fmt: skip
        assert reply.stop_reason == "tool_use" and reply.tool_input is not None
        data = dict(reply.tool_input)
        forgotten = FORGOTTEN.get(night, set())
        data["findings"] = [f for f in data["findings"] if bug_of(f["evidence"]) not in forgotten]
        results.append(parse_tool_input(data, reply.stop_reason, agent=agent, pack=pack))
    return results


def bug_of(text: str) -> int | None:
    match = _TOKEN.search(text)
    return int(match.group(1)) if match else None


@dataclass
class Oracle:
    """What the statuses must be, from where each bug is: its id, the path it was last seen at, first seen."""

    open: dict[int, tuple[str, str]] = field(
        default_factory=dict
    )  # bug -> (recorded path, first run)

    def night(self, night: int, verified: dict[int, str], files: set[str]) -> dict[str, set[int]]:
        """``verified``: bug -> path of tonight's verified findings; ``files``: tonight's paths."""
        present = {k: path_of(f, night) for k, (f, _, nights) in BUGS.items() if night in nights}
        expect: dict[str, set[int]] = {s: set() for s in ("new", "persisting", "suppressed", "fixed", "not_reported")}  # fmt: skip
        still: dict[int, tuple[str, str]] = {}
        for k, path in verified.items():
            prior = self.open.get(k)
            carried = prior is not None and (prior[0] == path or prior[0] not in files)
            status = "suppressed" if k in SUPPRESSED else "persisting" if carried else "new"
            expect[status].add(k)
            still[k] = (path, prior[1] if carried else f"night-{night:02d}")
        for k, (path, first) in self.open.items():
            if k in verified:
                continue
            if path in files and present.get(k) == path:
                expect["not_reported"].add(k)
                still[k] = (path, first)
            else:
                expect["fixed"].add(k)
        self.open = still
        return expect


def test_ten_nights_statuses_match_the_truth(tmp_path: Path) -> None:
    root = tmp_path / SLUG
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    manifest_dir = tmp_path / "manifest"
    manifest_dir.mkdir()
    (manifest_dir / "review-runner-suppressions.toml").write_text(SUPPRESSIONS + EXPIRED)
    suppressions = load_suppressions(
        [(manifest_dir / "review-runner-suppressions.toml", Source.MANIFEST)],
        today=date(2026, 12, 4),
    )
    oracle = Oracle()
    previous: list[Tracked] = []
    titles: dict[int, set[str]] = {}
    sarif_files = []
    misquoted = 0
    history: list[dict[str, set[int]]] = []
    for night in range(1, 11):
        commit(root, night)
        pack = pack_repo(root, slug=SLUG, max_input_tokens=50_000)
        results = review(pack, night)
        texts = tonight_files(pack)["files"]
        # Every quote that is not in the file is unverified, and only those; a verified finding points at its bug.
        for r in results:
            for f in r.findings:
                assert f.verified is (MISQUOTE_MARK not in f.evidence), f
                misquoted += MISQUOTE_MARK in f.evidence
                if f.verified:
                    assert f"bug{bug_of(f.evidence)}_" in texts[f.file].split("\n")[f.line - 1]
        run_id = f"night-{night:02d}"
        outcome = RepoOutcome(
            slug=SLUG, mode="concurrent" if night % 2 else "single", model="claude-sonnet-5-5", status="done",
            error=None, pack=pack.summary(), results=tuple(results), input_tokens=1, output_tokens=1,
            cache_creation_input_tokens=0, cache_read_input_tokens=0, cost_usd=0.0,
        ).with_tracking(
            previous, run=Seen(run_id, f"2026-12-{night:02d}"), suppressions=suppressions, **tonight_files(pack)
        )  # fmt: skip
        tracking = outcome.tracking
        assert tracking is not None
        verified = {bug_of(t.finding.evidence): t.finding.file for t in tracking.findings}
        expect = oracle.night(night, verified, set(texts))
        got = {
            "new": {bug_of(t.finding.evidence) for t in tracking.with_status(Status.NEW)},
            "persisting": {
                bug_of(t.finding.evidence) for t in tracking.with_status(Status.PERSISTING)
            },
            "suppressed": {
                bug_of(t.finding.evidence) for t in tracking.with_status(Status.SUPPRESSED)
            },
            "fixed": {bug_of(t.finding.evidence) for t in tracking.fixed},
            "not_reported": {
                bug_of(t.finding.evidence) for t in tracking.with_status(Status.NOT_REPORTED)
            },
        }
        assert got == expect, f"night {night}"
        history.append(expect)
        # No bug is tracked twice (rewording, a moved line or a second agent never makes a second identity).
        assert len(tracking.findings) == len(verified)
        for t in tracking.open():
            k = bug_of(t.finding.evidence)
            assert t.first_seen.run_id == oracle.open[k][1]
        for t in tracking.findings:
            titles.setdefault(bug_of(t.finding.evidence), set()).add(t.finding.title)
        folder = write_repo_report(tmp_path / "out" / run_id, outcome)
        doc = json.loads((folder / "findings.json").read_text("utf-8"))
        assert doc["counts"]["new"] == len(expect["new"]) and doc["counts"]["fixed"] == len(
            expect["fixed"]
        )
        assert doc["counts"]["suppressed"] == len(expect["suppressed"])
        assert all(
            f["status"] != "new" or bug_of(f["evidence"]) not in SUPPRESSED for f in doc["findings"]
        )
        assert (
            doc["expired_suppressions"] and "expired 2026-01-01" in doc["expired_suppressions"][0]
        )
        sarif = json.loads((folder / "findings.sarif").read_text("utf-8"))
        jsonschema.Draft4Validator(SCHEMA).validate(sarif)
        (run,) = sarif["runs"]
        assert run["automationDetails"]["id"] == f"review-runner/{SLUG}/{run_id}"
        suppressed = [r for r in run["results"] if "suppressions" in r]
        assert len(suppressed) == sum(t.suppression is not None for t in tracking.open()) >= 1
        sarif_files.append(folder / "findings.sarif")
        previous = list(tracking.open())
    # The scenario's events happened: fixes, the rename carried, a forgotten finding kept open, a re-planted bug.
    assert 2 in history[3]["fixed"] and 4 in history[6]["fixed"] and 9 in history[5]["fixed"]
    assert 5 in history[5]["persisting"]  # util.py renamed to helpers.py on night 6
    assert 3 in history[6]["not_reported"] and 3 in history[7]["persisting"]
    assert sum(9 in h["new"] for h in history) == 2  # fixed on night 6, planted again on night 9
    assert all(7 not in h["new"] and 7 not in h["persisting"] for h in history)
    # Titles were reworded from night to night, yet no rewording made a new finding (checked above each night).
    assert sum(len(t) > 1 for t in titles.values()) >= 5
    assert misquoted >= 3  # the realism really produced quotes that are not in the file
    assert multitool_problems(sarif_files) == []
