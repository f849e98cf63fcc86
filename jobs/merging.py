"""Merging the findings of several agents of one run into one list, each finding naming every agent.

Two findings are one when two agents quote the same code for the same category (equal fingerprints), or cite
the same file with overlapping lines and similar titles. A verified report is kept over an unverified one of
the same problem, and the most severe over the others.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import replace

from jobs.findings import SEVERITIES, AgentResult, Finding
from jobs.findings import norm_title as _norm_title

__all__ = ["merge"]

_AGENT_ORDER = ("code_review", "architecture", "security", "multi_perspective", "combined")


def merge(results: Sequence[AgentResult]) -> tuple[Finding, ...]:
    """Merge the findings of several agents: duplicates folded into one that names every agent, most severe first.

    Two findings are the same when they have the same fingerprint, or cite the same file with overlapping lines
    (or both no lines) and similar titles. Findings of one agent are folded only on equal fingerprints: one
    reviewer listing two problems on the same lines meant two problems.
    """
    ordered = sorted((f for r in results for f in r.findings), key=_merge_key)
    clusters: list[Finding] = []
    for finding in ordered:
        for i, kept in enumerate(clusters):
            if _same(kept, finding):
                clusters[i] = _fold(kept, finding)
                break
        else:
            clusters.append(finding)
    return tuple(sorted(clusters, key=_sort_key))


def _severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _agent_rank(agents: tuple[str, ...]) -> int:
    return min((_agent_rank_one(a)[0] for a in agents), default=len(_AGENT_ORDER))


def _merge_key(f: Finding) -> tuple:
    # A verified report is kept over an unverified one of the same problem: its quote and lines are right.
    return (_severity_rank(f.severity), f.verified is False, _agent_rank(f.agents), f.file or "", f.line or 0, f.title)  # fmt: skip


def _sort_key(f: Finding) -> tuple:
    return (_severity_rank(f.severity), f.file is None, f.file or "", f.line or 0, f.title, f.fingerprint)  # fmt: skip


def _similar(a: str, b: str) -> bool:
    na, nb = _norm_title(a), _norm_title(b)
    if na == nb:
        return True
    words_a, words_b = set(na.split()), set(nb.split())
    jaccard = len(words_a & words_b) / max(1, len(words_a | words_b))
    return jaccard >= 0.5 or difflib.SequenceMatcher(None, na, nb).ratio() >= 0.75


def _overlap(a: Finding, b: Finding) -> bool:
    if a.line is None or b.line is None:
        return a.line is None and b.line is None
    return a.line <= (b.end_line or b.line) and b.line <= (a.end_line or a.line)


def _same(a: Finding, b: Finding) -> bool:
    shared_agent = bool(set(a.agents) & set(b.agents))
    if a.fingerprint == b.fingerprint:
        # Two agents quoting the same code for the same category name one problem; one agent naming two
        # problems on the same code (other titles) or the same one at two places meant two.
        return not shared_agent or (_overlap(a, b) and _norm_title(a.title) == _norm_title(b.title))
    if shared_agent or a.file != b.file:
        return False
    return _overlap(a, b) and _similar(a.title, b.title)


def _fold(kept: Finding, other: Finding) -> Finding:
    """Keep the first (most severe) finding's words and location; add the other's agents and confidence."""
    agents = tuple(sorted(set(kept.agents) | set(other.agents), key=_agent_rank_one))
    confidences = [c for c in (kept.confidence, other.confidence) if c is not None]
    return replace(
        kept,
        agents=agents,
        confidence=max(confidences) if confidences else None,
        detail=kept.detail or other.detail,
        suggestion=kept.suggestion or other.suggestion,
    )


def _agent_rank_one(agent: str) -> tuple[int, str]:
    return (_AGENT_ORDER.index(agent) if agent in _AGENT_ORDER else len(_AGENT_ORDER), agent)
