"""The prompt cache: prefixes by content, a minimum length, 5m/1h TTLs refreshed on a hit.

An entry is readable only from its `ready_at`: the moment the writing response began (its time to
first byte). A request that arrives earlier finds no hit and writes the prefix itself, as on the
platform. Not thread-safe by itself: used under the simulator's state lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.simulator.prompt import TTL_SECONDS, Prompt

__all__ = ["CachePlan", "PromptCache"]


@dataclass
class _Entry:
    ttl: str
    ready_at: float
    expires_at: float


@dataclass(frozen=True)
class CachePlan:
    """What one request reads and writes; `commit` applies it once the request is admitted."""

    read_tokens: int
    write_5m: int
    write_1h: int
    input_tokens: int  # uncached input after the last read or written prefix
    hit_key: str | None
    writes: tuple[tuple[str, str], ...] = field(default=())  # (key, ttl)

    @property
    def write_tokens(self) -> int:
        """All cache-write tokens."""
        return self.write_5m + self.write_1h

    def usage(self) -> dict[str, object]:
        """The input part of the platform's usage object."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.write_tokens,
            "cache_read_input_tokens": self.read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.write_5m,
                "ephemeral_1h_input_tokens": self.write_1h,
            },
        }


class PromptCache:
    """Cache entries keyed by prefix digest (which includes the model)."""

    def __init__(self, min_tokens: int) -> None:
        self.min_tokens = min_tokens
        self._entries: dict[str, _Entry] = {}

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def plan(self, prompt: Prompt, now: float) -> CachePlan:
        """Look up the longest readable breakpoint prefix and the writes after it (no change)."""
        hit_index = -1
        read = 0
        hit_key = None
        for i in range(len(prompt.breakpoints) - 1, -1, -1):
            bp = prompt.breakpoints[i]
            entry = self._live(bp.key, now)
            if entry is not None and entry.ready_at <= now:
                hit_index, read, hit_key = i, bp.tokens, bp.key
                break
        w5 = w1 = 0
        done = read
        writes: list[tuple[str, str]] = []
        for bp in prompt.breakpoints[hit_index + 1 :]:
            if bp.tokens < self.min_tokens:
                continue  # too short to cache: stays uncached input
            segment = bp.tokens - done
            if bp.ttl == "1h":
                w1 += segment
            else:
                w5 += segment
            done = bp.tokens
            writes.append((bp.key, bp.ttl))
        return CachePlan(read, w5, w1, prompt.total_tokens - done, hit_key, tuple(writes))

    def commit(self, plan: CachePlan, now: float, ready_at: float) -> None:
        """Refresh the hit's TTL and add the written prefixes, readable from `ready_at`."""
        if plan.hit_key is not None:
            entry = self._entries.get(plan.hit_key)
            if entry is not None:
                entry.expires_at = max(entry.expires_at, now + TTL_SECONDS[entry.ttl])
        for key, ttl in plan.writes:
            expires = ready_at + TTL_SECONDS[ttl]
            entry = self._live(key, now)
            if entry is None:
                self._entries[key] = _Entry(ttl, ready_at, expires)
            else:
                # A parallel writer got there first: the earliest response start makes it readable.
                entry.ready_at = min(entry.ready_at, ready_at)
                entry.expires_at = max(entry.expires_at, expires)
                if ttl == "1h":
                    entry.ttl = "1h"

    def __len__(self) -> int:
        return len(self._entries)
