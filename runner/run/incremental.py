"""Incremental nights: tonight's work against each repo's last completed review (runner.repo_memory).

Per packed repo, in this order:
- `--full`: a full review.
- same pack, prompts, model and agents, no new tag at HEAD, reviewed less than `full_review_days`
  ago: not sent; its last review's findings are carried forward ("unchanged since RUN (date)").
- the same but reviewed that long ago: a fresh full review, single (nothing changed to look at
  with four perspectives).
- changed: packed again with the changed files first and the redacted unified diff after the tree
  (jobs.changes), unless the last commit is not an ancestor of HEAD or missing from a shallow
  clone even after deepening: then a full review, and the reason says so.

The mode per repo (the seed's matrix): a pin in the manifest wins; an explicit run mode
(`--mode`, or the manifest's `mode`) applies to every other repo; under auto a release (a new
tag at HEAD since the last review, or `release = true`) is concurrent, a small change
(`small_change_files` files at most, or under `small_change_lines` lines) single, and anything
else (a first review, a larger change) is left to the ledger's rule: concurrent if the budget
and the limiter's health allow. The budget still has the last word at admission.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from jobs.changes import Change, file_digests, find_change, head_commit, head_tags, preface
from jobs.changes import tree_sha256 as tree_hash
from jobs.manifest import Manifest
from jobs.outcome import RepoOutcome
from jobs.pack import pack_repo
from ledger.modes import Mode, RequestedMode
from runner.repo_memory import Review, last_review, prompts_sha256, repo_key
from runner.run.decisions import RepoDecision, RepoFacts
from runner.run.plan import RepoWork
from runner.runs import Runs
from statedb import parse_iso

__all__ = ["CHARS_PER_TOKEN", "Carried", "carried_outcome", "triage"]

# The pack's own estimate (jobs.pack_format): ~3.5 bytes a token; the diff gets a quarter of the budget.
CHARS_PER_TOKEN = 3.5
DIFF_SHARE = 0.25

Carried = tuple[RepoWork, Review]  # an unchanged repo and the review its findings come from


def triage(
    works: Sequence[RepoWork],
    manifest: Manifest,
    runs: Runs | None,
    *,
    requested: str,
    full: bool,
    now: datetime,
    prompt_texts: Mapping[str, str],
    resumed: bool = False,
) -> tuple[tuple[RepoWork, ...], tuple[Carried, ...]]:
    """(repos to send, each with its decision and facts; unchanged repos with their last review).

    `runs` None: no memory to read (`plan` before any run: it creates no runs.db). `resumed`:
    the repos of a resumed run have jobs left to do, so none of them is left out as unchanged.
    """
    prompts = prompts_sha256(prompt_texts, manifest.max_output_tokens)
    send: list[RepoWork] = []
    carried: list[Carried] = []
    for work in works:
        facts = _facts(work, prompts)
        review = last_review(runs, facts.repo_key) if runs is not None else None
        work = replace(work, facts=facts)
        decided = _decide(work, review, manifest, requested=requested, full=full, now=now)
        if resumed and isinstance(decided, RepoDecision):
            decided = replace(work, decision=replace(decided, send=True, unchanged_since=None,
                                                     reason=f"resumed; {decided.reason}"))  # fmt: skip
        if isinstance(decided, RepoWork):
            send.append(decided)
        else:
            assert review is not None
            carried.append((replace(work, decision=decided), review))
    return tuple(send), tuple(carried)


def _facts(work: RepoWork, prompts: str) -> RepoFacts:
    digests = file_digests(work.root, [f.path for f in work.pack.files])
    in_git = work.pack.method == "git"
    return RepoFacts(
        repo_key=repo_key(work.spec),
        head_commit=head_commit(work.root) if in_git else None,
        tree_sha256=tree_hash(digests),
        pack_sha256=work.pack.sha256,
        prompts_sha256=prompts,
        files=digests,
        tags=head_tags(work.root) if in_git else (),
    )


def _since(review: Review) -> str:
    return f"{review.run_id} ({review.reviewed_at[:10]})"


def _decide(
    work: RepoWork,
    review: Review | None,
    manifest: Manifest,
    *,
    requested: str,
    full: bool,
    now: datetime,
) -> RepoWork | RepoDecision:
    """The work to send (with its decision), or the decision not to send it."""
    spec, facts = work.spec, work.facts
    assert facts is not None

    def send(reason: str, auto: Mode | None, change: Change | None = None) -> RepoWork:
        mode, why = _mode(work, requested, auto, reason)
        counts = (len(change.files), change.lines) if change is not None else (None, None)
        return replace(work, decision=RepoDecision(spec.slug, True, mode, why, *counts))

    if review is None:
        return send("first review", None)
    if full:
        return send("full review asked for (--full)", None)
    new_tags = sorted(set(facts.tags) - set(review.tags))
    settings = [
        name
        for name, same in (
            ("prompts", review.prompts_sha256 == facts.prompts_sha256),
            ("model", review.model == spec.model),
            ("agents", tuple(review.agents) == tuple(spec.agents)),
        )
        if not same
    ]
    if review.pack_sha256 == facts.pack_sha256 and not settings and not new_tags:
        age = int((now.timestamp() - parse_iso(review.reviewed_at)) // 86400)
        if age < manifest.full_review_days:
            return RepoDecision(
                spec.slug, False, None, f"unchanged since {_since(review)}",
                files_changed=0, lines_changed=0, unchanged_since=_since(review),
            )  # fmt: skip
        return send(
            f"unchanged for {age} days (full_review_days = {manifest.full_review_days}): "
            "a fresh full review",
            Mode.SINGLE,
        )
    if settings:
        return send(f"{', '.join(settings)} changed since {_since(review)}: full review", None)
    change = find_change(
        work.root,
        since=review.head_commit if facts.head_commit else None,
        before=review.files,
        after=facts.files,
        max_diff_chars=int(spec.max_input_tokens * DIFF_SHARE * CHARS_PER_TOKEN),
        url=spec.url,
        ref=spec.ref,
    )
    if change.full_reason is not None:
        return send(f"full review: {change.full_reason}", None, change)
    if change.files:  # re-packed with the change in view
        pack = pack_repo(
            work.root,
            slug=spec.slug,
            max_input_tokens=spec.max_input_tokens,
            lead=[p for p in change.files if p in facts.files],
            preface=preface(change),
        )
        work = replace(work, pack=pack)
    described = f"{len(change.files)} file(s), {change.lines} line(s) changed"
    if not change.files and not new_tags:  # max_input_tokens, or the packing or redaction rules
        return send("the pack changed though no file did: full review", None, change)
    if new_tags or spec.release:
        hint = f"new tag {', '.join(new_tags)} at HEAD" if new_tags else "release = true"
        return send(f"release ({hint}); {described}", Mode.CONCURRENT, change)
    small = (
        len(change.files) <= manifest.small_change_files
        or change.lines < manifest.small_change_lines
    )
    if small:
        return send(f"small change: {described}", Mode.SINGLE, change)
    return send(f"change: {described}", None, change)


def _mode(
    work: RepoWork, requested: str, auto: Mode | None, reason: str
) -> tuple[Mode | None, str]:
    """The repo's mode (None: the run's rule) and its reason, by precedence: pin, run mode, rule."""
    if work.spec.mode is not None:
        return Mode(work.spec.mode), f"{reason}; mode pinned to {work.spec.mode} in the manifest"
    if requested != RequestedMode.AUTO:
        return Mode(requested), f"{reason}; mode {requested} asked for the run"
    return auto, reason


def carried_outcome(work: RepoWork, review: Review) -> RepoOutcome:
    """The unchanged repo's last review, carried forward: its agents' findings, not its statuses.

    The run's Tracker (runner.run.tracker) then tracks them against the findings store, so each
    one is persisting with its first_seen kept, and records tonight's review for the next night.
    Costs and tokens are tonight's: none.
    """
    earlier = RepoOutcome.from_dict(review.outcome)
    assert work.decision is not None
    return replace(
        earlier,
        tracking=None,
        mode_reason=work.decision.reason,
        unchanged_since=work.decision.unchanged_since,
        cost_usd=0.0,
        input_tokens=0,
        output_tokens=0,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=0,
    )
