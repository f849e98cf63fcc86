"""An Anthropic-compatible API server on loopback: limits, caching, faults, batches, replies.

`Simulator(SimConfig(...)).start()` serves in a thread and returns its base URL; the real
`anthropic` client works against it unchanged. See DESIGN.md (Simulator) for what it models.
"""

from __future__ import annotations

from runner.simulator.buckets import ClassLimits, parse_class_limit
from runner.simulator.config import SimConfig
from runner.simulator.prompt import count_tokens
from runner.simulator.server import Simulator

__all__ = ["ClassLimits", "SimConfig", "Simulator", "count_tokens", "parse_class_limit"]
