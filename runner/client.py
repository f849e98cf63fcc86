"""The one door to the Anthropic API: one request in, a Reply or a classified CallError out.

This is the only module that imports `anthropic`. The SDK's own retries are off
(max_retries=0) so that every retry goes back through the shared limiter and ledger.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.errors import RunnerError
from runner.kinds import Billed, ErrorKind

if TYPE_CHECKING:
    import anthropic

__all__ = ["ApiClient", "CallError", "Reply", "api_configured"]


def api_configured() -> bool:
    """True when the environment names a real account or endpoint (a key or a base URL)."""
    return bool(
        os.environ.get("ANTHROPIC_API_KEY")
        or os.environ.get("ANTHROPIC_AUTH_TOKEN")
        or os.environ.get("ANTHROPIC_BASE_URL")
    )


@dataclass(frozen=True)
class Reply:
    """A successful response: its text, why it stopped, and what it cost in tokens."""

    text: str
    stop_reason: str | None
    usage: dict[str, Any]
    request_id: str | None
    service_tier: str | None
    headers: dict[str, str]
    latency: float
    # The content blocks as dicts (a forced tool call's input is in its tool_use block).
    content: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class _Kind:
    retry: bool  # worth another attempt (after backoff or the retry-after)
    billed: Billed  # "no" (release the reservation) or "unknown" (keep it charged)


# What each failure means for retrying and for the money.
KINDS: dict[ErrorKind, _Kind] = {
    ErrorKind.RATE_LIMITED: _Kind(retry=True, billed=Billed.NO),
    ErrorKind.SPEND_CAP: _Kind(retry=False, billed=Billed.NO),
    ErrorKind.OVERLOADED: _Kind(retry=True, billed=Billed.NO),
    ErrorKind.SERVER: _Kind(retry=True, billed=Billed.NO),
    ErrorKind.NOT_SENT: _Kind(retry=True, billed=Billed.NO),
    ErrorKind.DROPPED: _Kind(retry=True, billed=Billed.UNKNOWN),
    ErrorKind.AUTH: _Kind(retry=False, billed=Billed.NO),
    ErrorKind.TOO_LONG: _Kind(retry=False, billed=Billed.NO),
    ErrorKind.BAD_REQUEST: _Kind(retry=False, billed=Billed.NO),
}


class CallError(RunnerError):
    """A request that did not return a message. `kind` is one of KINDS."""

    def __init__(
        self,
        kind: ErrorKind | str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        latency: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = ErrorKind(kind)
        self.status = status
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.latency = latency

    @property
    def retryable(self) -> bool:
        return KINDS[self.kind].retry

    @property
    def billed(self) -> Billed:
        return KINDS[self.kind].billed

    @property
    def limit(self) -> str | None:
        """Which bucket the server said was empty, from its rate-limit headers."""
        for name in ("requests", "input-tokens", "output-tokens"):
            remaining = self.headers.get(f"anthropic-ratelimit-{name}-remaining")
            if remaining is not None and remaining.strip() in ("0", "0.0"):
                return name.replace("-", "_")
        return None

    def __reduce__(self) -> tuple[Any, ...]:  # keep the fields across process boundaries
        return (_rebuild_call_error, (self.kind, str(self), self.__dict__))


def _rebuild_call_error(kind: str, message: str, state: dict[str, Any]) -> CallError:
    err = CallError(kind, message)
    err.__dict__.update(state)
    return err


@dataclass
class ApiClient:
    """One SDK client per process. `base_url`/`api_key` None means: what the environment says."""

    base_url: str | None = None
    api_key: str | None = None
    timeout: float = 600.0
    _sdk: Any = field(default=None, init=False, repr=False)

    @property
    def sdk(self) -> anthropic.Anthropic:
        # Imported here: the SDK takes a second to import, and most commands never send.
        import anthropic

        if self._sdk is None:
            kwargs: dict[str, Any] = {"max_retries": 0, "timeout": self.timeout}
            if self.base_url:
                kwargs["base_url"] = self.base_url
            if self.api_key:
                kwargs["api_key"] = self.api_key
            try:
                self._sdk = anthropic.Anthropic(**kwargs)
            except anthropic.AnthropicError as exc:  # no key anywhere
                raise CallError(
                    "auth", "no API key: set ANTHROPIC_API_KEY, or run with --simulate"
                ) from exc
        return self._sdk

    def create(
        self,
        *,
        model: str,
        system: str,
        blocks: list[dict[str, Any]],
        max_tokens: int,
        extra_headers: Mapping[str, str] | None = None,
        tools: Mapping[str, Any] | None = None,
    ) -> Reply:
        """Send one Messages request; a Reply, or a CallError that says what to do next.

        ``tools``: the ``tools`` and ``tool_choice`` parameters, as ``jobs.agents`` builds them.
        """
        import anthropic

        started = time.monotonic()
        # Our blocks are plain dicts; the SDK's TypedDicts cannot tell which param type they are.
        messages: Any = [{"role": "user", "content": blocks}]
        try:
            raw = self.sdk.messages.with_raw_response.create(
                model=model,
                max_tokens=max_tokens,
                system=system,
                messages=messages,
                extra_headers=dict(extra_headers or {}),
                **dict(tools or {}),
            )
            message = raw.parse()
        except anthropic.APIStatusError as exc:
            raise _classify_status(exc, time.monotonic() - started) from None
        except anthropic.APIConnectionError as exc:
            raise _classify_connection(exc, time.monotonic() - started) from None
        text = "".join(getattr(block, "text", "") for block in message.content)
        usage = message.usage.model_dump(exclude_none=True) if message.usage else {}
        return Reply(
            text=text,
            stop_reason=message.stop_reason,
            usage=usage,
            request_id=raw.headers.get("request-id"),
            service_tier=usage.get("service_tier"),
            headers=dict(raw.headers),
            latency=time.monotonic() - started,
            content=tuple(block.model_dump(exclude_none=True) for block in message.content),
        )

    def count_tokens(
        self,
        *,
        model: str,
        system: str,
        blocks: list[dict[str, Any]],
        tools: Mapping[str, Any] | None = None,
    ) -> int:
        """The API's own count of a request's input tokens (``tools`` as for ``create``)."""
        import anthropic

        messages: Any = [{"role": "user", "content": blocks}]
        try:
            result = self.sdk.messages.count_tokens(
                model=model, system=system, messages=messages, **dict(tools or {})
            )
        except anthropic.APIStatusError as exc:
            raise _classify_status(exc, None) from None
        except anthropic.APIConnectionError as exc:
            raise _classify_connection(exc, None) from None
        return int(result.input_tokens)


def _classify_status(exc: anthropic.APIStatusError, latency: float | None) -> CallError:
    status = exc.status_code
    headers = dict(exc.response.headers)
    detail = exc.api_message or exc.message
    where = f"HTTP {status} {exc.type or 'error'}"
    if status == 429 and exc.error_code == "enforced_spend_limit_reached":
        kind = ErrorKind.SPEND_CAP
        detail = f"the account's spend limit is reached ({detail})"
    elif status == 429:
        kind = ErrorKind.RATE_LIMITED
    elif status in (401, 403):
        kind = ErrorKind.AUTH
        detail = f"the API rejected the credentials ({detail}); check ANTHROPIC_API_KEY"
    elif status == 529:
        kind = ErrorKind.OVERLOADED
    elif status >= 500 or status == 408:
        kind = ErrorKind.SERVER
    elif status == 400 and "too long" in (detail or "").lower():
        kind = ErrorKind.TOO_LONG
    else:
        kind = ErrorKind.BAD_REQUEST
    retry_after = None
    if "retry-after" in headers:
        try:
            retry_after = float(headers["retry-after"])
        except ValueError:
            retry_after = None
    return CallError(
        kind,
        f"{where}: {detail}",
        status=status,
        retry_after=retry_after,
        headers=headers,
        latency=latency,
    )


def _classify_connection(exc: anthropic.APIConnectionError, latency: float | None) -> CallError:
    import httpx2

    cause = exc.__cause__
    # A failure to connect (or to write the request) means the API never saw it;
    # anything later (a read timeout, a dropped response) may have been processed and billed.
    if isinstance(
        cause, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout | httpx2.WriteError
    ):
        return CallError(ErrorKind.NOT_SENT, f"could not reach the API ({cause})", latency=latency)
    reason = type(cause).__name__ if cause else "connection lost"
    return CallError(
        ErrorKind.DROPPED,
        f"no response from the API ({reason}); the request may have been processed",
        latency=latency,
    )
