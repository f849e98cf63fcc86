"""SARIF for GitHub code scanning: one stable category per repo whatever the mode, fingerprints from the
identity, suppressions, and no error or warning from Microsoft's SARIF Multitool on any shape we write."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import anthropic
import jsonschema
from sarif_support import multitool_problems
from test_reports import four_agents, outcome

from jobs.agents import SPECIALISTS, build_prompt, findings_tool, findings_tool_choice, load_prompts
from jobs.findings import parse, parse_tool_input
from jobs.outcome import RepoOutcome
from jobs.pack import pack_repo
from jobs.pack_record import Pack
from jobs.reports import write_repo_report
from jobs.sarif import FINGERPRINT_KEY
from jobs.suppressions import Baseline, Source, load_suppressions
from jobs.tracking import Seen, tonight_files
from runner.simulator import Simulator

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text("utf-8"))
CODE = {
    "app.py": "import subprocess\n\ndef run(cmd):\n    subprocess.run(cmd, shell=True)\n    return eval(cmd)\n",
    "db.py": "import hashlib\n\ndef key(p):\n    global CACHE\n    return hashlib.md5(p)\n",
    "legacy/lib.py": "def load(s):\n    return eval(s)\n",
}


def night(sim: Simulator, pack: Pack, agents: tuple[str, ...]) -> RepoOutcome:
    api = anthropic.Anthropic(api_key="x", base_url=sim.base_url, max_retries=0, timeout=20)
    prompts = load_prompts()
    results = []
    for agent in agents:
        prompt = build_prompt(pack, agent, prompts, max_output_tokens=4096)
        message = api.messages.create(
            model="claude-sonnet-5-5", max_tokens=4096, system=prompt.system,
            tools=[findings_tool()], tool_choice=findings_tool_choice(),
            messages=[{"role": "user", "content": [{"type": "text", "text": prompt.pack},
                                                   {"type": "text", "text": prompt.instructions}]}],
        )  # fmt: skip
        results.append(
            parse_tool_input(message.content[0].input, message.stop_reason, agent=agent, pack=pack)
        )
    mode = "concurrent" if len(agents) > 1 else "single"
    return RepoOutcome(
        slug="shop", mode=mode, model="claude-sonnet-5-5", status="done", error=None, pack=pack.summary(),
        results=tuple(results), input_tokens=0, output_tokens=0, cache_creation_input_tokens=0,
        cache_read_input_tokens=0, cost_usd=0.0,
    )  # fmt: skip


def test_a_concurrent_night_then_a_single_night_keep_one_category_and_the_fingerprints(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "shop"
    for path, text in CODE.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    (tmp_path / "review-runner-suppressions.toml").write_text(
        '[[suppress]]\npath = "legacy/**"\nreason = "third-party code"\n'
    )
    suppressions = load_suppressions(
        [(tmp_path / "review-runner-suppressions.toml", Source.MANIFEST)], today=date(2026, 12, 4)
    )
    pack = pack_repo(repo, slug="shop", max_input_tokens=20_000)
    # Misplaced line numbers and reworded titles, but every quote right: the identities must not move.
    sim = Simulator(reword_rate=1.0, misline_rate=1.0, seed=3)
    sim.start()
    try:
        first = night(sim, pack, SPECIALISTS).with_tracking(
            (), run=Seen("n1", "2026-12-01"), suppressions=suppressions, **tonight_files(pack)
        )
        second = night(sim, pack, ("combined",)).with_tracking(
            first.tracking.open(), run=Seen("n2", "2026-12-02"), suppressions=suppressions, **tonight_files(pack)
        )  # fmt: skip
    finally:
        sim.stop()
    paths = [write_repo_report(tmp_path / "out" / r, o) / "findings.sarif" for r, o in (("n1", first), ("n2", second))]  # fmt: skip
    logs = [json.loads(p.read_text("utf-8")) for p in paths]
    for log in logs:
        jsonschema.Draft4Validator(SCHEMA).validate(log)
    runs = [log["runs"] for log in logs]
    assert [len(r) for r in runs] == [1, 1]
    categories = {r[0]["automationDetails"]["id"].rsplit("/", 1)[0] for r in runs}
    assert categories == {"review-runner/shop"}

    def fingerprints(run: dict) -> set[tuple[str, str]]:
        return {(r["ruleId"], r["partialFingerprints"][FINGERPRINT_KEY]) for r in run["results"]}

    assert fingerprints(runs[0][0]) == fingerprints(runs[1][0])
    assert len(fingerprints(runs[0][0])) == 5  # shell, eval, global, md5, and legacy eval
    by_agents = {
        r["properties"]["evidence"].strip(): r["properties"]["agents"]
        for r in runs[0][0]["results"]
    }
    assert by_agents["return eval(cmd)"] == ["code_review", "security", "multi_perspective"]
    assert {r["properties"]["status"] for r in runs[1][0]["results"]} == {
        "persisting",
        "suppressed",
    }
    (legacy,) = [r for r in runs[1][0]["results"] if "suppressions" in r]
    assert legacy["suppressions"][0]["kind"] == "external"
    assert legacy["suppressions"][0]["justification"] == "third-party code"
    assert second.tracking.counts()["new"] == 0
    assert multitool_problems(paths) == []


def test_every_shape_we_write_passes_the_multitool(tmp_path: Path) -> None:
    from test_findings import PACK, finding, reply

    failed = outcome(status="failed", error="HTTP 529 overloaded after 3 attempts", slug="failed")
    made_up = parse(
        reply(finding(), finding(line=5, evidence="not in the file", title="Made up"),
              finding(file=None, title="No CI configuration")),
        "end_turn", agent="security", pack=PACK,
    )  # fmt: skip
    baseline = Baseline().accept([made_up.findings[0].fingerprint], by="ana", at="2026-12-01T00:00:00Z", run_id="n0")  # fmt: skip
    accepted = outcome(made_up, slug="accepted").with_tracking((), run=Seen("n1", "2026-12-01"), files={}, baseline=baseline)  # fmt: skip
    paths = [
        write_repo_report(tmp_path / "run-1", four_agents()) / "findings.sarif",
        write_repo_report(tmp_path / "run-1", failed) / "findings.sarif",
        write_repo_report(tmp_path / "run-1", accepted) / "findings.sarif",
    ]
    log = json.loads(paths[2].read_text("utf-8"))
    (result,) = log["runs"][0]["results"]  # the unverified ones are left out
    assert result["suppressions"][0]["properties"]["source"] == "baseline"
    assert multitool_problems(paths) == []
