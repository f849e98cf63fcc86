"""How review jobs run: CLI, process pool, limiter, API client, simulator."""

from __future__ import annotations
