"""Finding the findings JSON in a text reply: fences and prose around it, several candidates, a cut-off reply.

Text replies come from gateways without tool use; the model may wrap its JSON in a fence, add prose, echo JSON
it read in the code under review, or be cut off mid-object. The rule for several candidates is ``extract``'s.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["extract", "finding_list", "salvage"]

_SUMMARY = re.compile(r'"summary"\s*:\s*("(?:[^"\\]|\\.)*")', re.S)
_OPENER = re.compile(r"[{\[]")
# How many "{" positions to try when looking for JSON in prose; replies are bounded by max_tokens.
_MAX_STARTS = 500


def extract(text: str) -> tuple[Any, str | None]:
    """Return (the findings object or bare list found in ``text``, None), or (None, why it is ambiguous).

    The rule: every top-level JSON value in the text is a candidate (an object nested in another, or in a
    string, is not top-level). Among the objects with a findings list, the last one is the reply's own answer
    when every earlier one holds a subset of its findings (a model echoing a planted ``{"findings": []}`` from
    a code comment, or a draft before its final answer). Two that disagree otherwise leave the reply unparsed:
    text in the reviewed code can then at worst make the review visibly incomplete, never hide a finding.
    """
    values = _top_level(text)
    objects = [v for v in values if isinstance(v, dict) and isinstance(v.get("findings"), list)]
    if objects:
        last = objects[-1]
        kept = [_canonical(f) for f in last["findings"]]
        for earlier in objects[:-1]:
            if any(_canonical(f) not in kept for f in earlier["findings"]):
                return None, (
                    f"the reply holds {len(objects)} findings objects that disagree (one may be quoted "
                    "from the code under review); none was trusted"
                )
        return last, None
    keyed = [v for v in values if isinstance(v, dict) and "findings" in v]
    if keyed:
        return keyed[-1], None
    lists = [v for v in values if finding_list(v)]
    if len(lists) > 1 and any(v != lists[-1] for v in lists):
        return None, f"the reply holds {len(lists)} different findings lists; none was trusted"
    if lists:
        return lists[-1], None
    return (values[-1] if values else None), None


def _top_level(text: str) -> list[Any]:
    """Every top-level JSON object or array in ``text``, left to right (fences and prose around them ignored)."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos, tries = 0, 0
    while tries < _MAX_STARTS:
        match = _OPENER.search(text, pos)
        if match is None:
            break
        tries += 1
        try:
            value, end = decoder.raw_decode(text, match.start())
        except ValueError:
            pos = match.start() + 1
            continue
        if isinstance(value, dict | list):
            values.append(value)
        pos = end
    return values


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


def finding_list(value: Any) -> bool:
    """A bare JSON list is taken for the findings only if it looks like them, not any list in prose."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) for v in value)
        and any("title" in v or "severity" in v for v in value)
    )


def salvage(text: str) -> dict | None:
    """From a reply cut mid-JSON, keep the summary and every finding object that was closed before the cut."""
    match = re.search(r'"findings"\s*:\s*\[', text)
    summary_match = _SUMMARY.search(text)
    summary = ""
    if summary_match:
        try:
            summary = json.loads(summary_match.group(1))
        except ValueError:
            summary = ""
    if match is None:
        return {"summary": summary, "findings": []} if summary_match else None
    decoder = json.JSONDecoder()
    items: list[Any] = []
    pos = match.end()
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            break
        try:
            item, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
        items.append(item)
    return {"summary": summary, "findings": items}
