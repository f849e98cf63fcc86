"""Which models share rate limits: the platform's model classes, in one table.

The platform enforces RPM, ITPM and OTPM per model class, not per model name: the versions of
one family and generation share one set of buckets (Opus 4 and Opus 4.1 draw on the same "Opus
4.x" limits, Sonnet 4 and 4.5 on "Sonnet 4.x"), while older models each have their own. Both the
simulator (its buckets) and the runner's limiter (its learned limits) key on `model_class`, so a
change here changes both at once. No dependencies, so anything in `runner` can import it.
"""

from __future__ import annotations

import re

__all__ = ["MODEL_CLASSES", "model_class"]

# (model-name prefix, class). The first match wins, so a longer prefix goes before a shorter one
# it extends. A prefix matches a whole name part: "claude-opus-4" matches "claude-opus-4-1" and
# "claude-opus-4-20250514" but not "claude-opus-40".
MODEL_CLASSES: tuple[tuple[str, str], ...] = (
    ("claude-opus-5", "opus-5"),
    ("claude-sonnet-5", "sonnet-5"),
    ("claude-haiku-5", "haiku-5"),
    ("claude-opus-4", "opus-4"),
    ("claude-sonnet-4", "sonnet-4"),
    ("claude-haiku-4", "haiku-4"),
    ("claude-3-7-sonnet", "sonnet-3-7"),
    ("claude-3-5-sonnet", "sonnet-3-5"),
    ("claude-3-5-haiku", "haiku-3-5"),
    ("claude-3-opus", "opus-3"),
    ("claude-3-haiku", "haiku-3"),
)

# A family and generation the table does not know yet (a new "claude-sonnet-6-1") still groups
# by the same rule, so a new release shares with its siblings without a code change.
_GENERIC = re.compile(r"^claude-(opus|sonnet|haiku)-(\d+)(?:-|$)")


def _matches(model: str, prefix: str) -> bool:
    return model == prefix or model.startswith(prefix + "-") or model.startswith(prefix + "@")


def model_class(model: str) -> str:
    """The rate-limit class of `model` (e.g. "sonnet-5" for "claude-sonnet-5-5").

    A model that matches no rule is a class of its own (its lower-cased name): two unknown models
    are never assumed to share limits.
    """
    name = model.strip().lower()
    for prefix, cls in MODEL_CLASSES:
        if _matches(name, prefix):
            return cls
    generic = _GENERIC.match(name)
    if generic:
        return f"{generic.group(1)}-{generic.group(2)}"
    return name
