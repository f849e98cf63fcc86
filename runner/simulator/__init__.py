"""An Anthropic-compatible API server on loopback: limits, caching, faults, findings replies.

`Simulator(SimConfig(...)).start()` serves in a thread and returns its base URL; the real
`anthropic` client works against it unchanged. See DESIGN.md (Simulator) for what it models.
"""

from __future__ import annotations

from runner.simulator.prompt import count_tokens
from runner.simulator.server import SimConfig, Simulator

__all__ = ["SimConfig", "Simulator", "count_tokens"]
