"""What the HTTP side and the simulator's state exchange: an admitted request and the backend.

The HTTP side (http.py) is written against `Backend`, which `Simulator` (server.py) satisfies,
so http.py never imports server.py and the two modules form no import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ledger.prices import Price
from runner.simulator.buckets import RateLimits
from runner.simulator.cache import CachePlan
from runner.simulator.prompt import ApiError, Prompt
from runner.simulator.replies import Reply

if TYPE_CHECKING:
    from runner.simulator.config import SimConfig

__all__ = ["Admitted", "Backend"]


@dataclass
class Admitted:
    """A /v1/messages request that passed admission and is being served."""

    record: dict[str, Any]
    body: dict[str, Any]
    prompt: Prompt
    plan: CachePlan
    price: Price
    drop: bool
    headers: dict[str, str]
    limits: RateLimits | None = None  # the buckets of the request's model class
    reply: Reply | None = None


class Backend(Protocol):
    """The simulator's state as the HTTP handler uses it."""

    config: SimConfig

    def new_record(self, method: str, path: str, job: str | None) -> dict[str, Any]:
        """A fresh log record for a request that just arrived."""
        ...

    def check_key(self, key: str | None) -> None:
        """Raise a 401 ApiError unless the key is acceptable."""
        ...

    def admit(self, record: dict[str, Any], body: Any) -> Admitted:
        """Validate and admit a /v1/messages request (ApiError when refused)."""
        ...

    def reply_for(self, adm: Admitted) -> Reply:
        """The reply of an admitted request."""
        ...

    def produce(self, adm: Admitted, tokens: int) -> None:
        """Debit output tokens as they are generated."""
        ...

    def usage_of(self, adm: Admitted, *, tier: str = "standard") -> dict[str, Any]:
        """The platform's usage object for an admitted request."""
        ...

    def bill(self, record: dict[str, Any], usage: dict[str, Any], price: Price) -> None:
        """Add a processed request's usage and cost to the record and the counters."""
        ...

    def release(self) -> None:
        """A served request is no longer in flight."""
        ...

    def message_of(self, adm: Admitted, message_id: str) -> dict[str, Any]:
        """The complete Message object."""
        ...

    def finish(
        self, record: dict[str, Any], status: int | None, error: ApiError | None = None
    ) -> None:
        """Close a request's record."""
        ...

    def count_tokens(self, body: Any) -> dict[str, int]:
        """POST /v1/messages/count_tokens."""
        ...

    def batches(
        self,
        action: str,
        batch_id: str | None = None,
        body: Any = None,
        query: dict[str, str] | None = None,
        record: dict[str, Any] | None = None,
    ) -> Any:
        """One Message Batches call."""
        ...
