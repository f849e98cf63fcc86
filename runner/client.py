"""The one door to the Anthropic API: one request in, a Reply or a classified CallError out.

This is the only module that imports `anthropic`. The SDK's own retries are off
(max_retries=0) so that every retry goes back through the shared limiter and ledger.

Time: connecting gets CONNECT_TIMEOUT_S (a reachable API accepts in well under a second), reading
gets READ_TIMEOUT_S of silence at most. A reply whose `max_tokens` could take longer than that to
generate is streamed (`messages.stream`), so bytes keep arriving while it is written; a shorter
one is a plain request. So an endpoint that never answers costs a read timeout per attempt, not
the SDK's 10 minutes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runner.errors import RunnerError
from runner.kinds import Billed, ErrorKind

if TYPE_CHECKING:
    import anthropic

__all__ = [
    "CONNECT_TIMEOUT_S",
    "READ_TIMEOUT_S",
    "ApiClient",
    "BatchApi",
    "BatchInfo",
    "CallError",
    "Reply",
    "api_configured",
    "streams",
]

# Seconds to open a connection: the API accepts in milliseconds; longer means unreachable.
CONNECT_TIMEOUT_S = 5.0
# Longest silence tolerated while waiting for (or reading) a response: a streamed reply sends
# events as it is generated, and a plain one is only used when it can be generated in this time.
READ_TIMEOUT_S = 60.0
# The generation speed the SDK assumes for a non-streaming request (its own
# _calculate_nonstreaming_timeout: 128,000 tokens an hour), plus time for the prompt to be read.
NONSTREAMING_TOKENS_PER_S = 128_000 / 3600
PROMPT_ALLOWANCE_S = 15.0
DEFAULT_BASE_URL = "https://api.anthropic.com"


def streams(max_tokens: int, read_timeout: float = READ_TIMEOUT_S) -> bool:
    """Whether a request of `max_tokens` is streamed: its reply could outlast a plain read.
    A cache warm-up (max_tokens 0) has nothing to stream."""
    return max_tokens > 0 and (
        PROMPT_ALLOWANCE_S + max_tokens / NONSTREAMING_TOKENS_PER_S > read_timeout
    )


def _is_anthropic(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host == "anthropic.com" or host.endswith(".anthropic.com")


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
    ErrorKind.TIMED_OUT: _Kind(retry=True, billed=Billed.UNKNOWN),
    # A gateway's own 5xx (it timed out or failed upstream) may come after the API billed.
    ErrorKind.GATEWAY: _Kind(retry=True, billed=Billed.UNKNOWN),
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
    read_timeout: float = READ_TIMEOUT_S
    connect_timeout: float = CONNECT_TIMEOUT_S
    _sdk: Any = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        """The API base URL requests go to (ours, else the environment's, else the SDK's default)."""
        url = self.base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL
        return url.rstrip("/")

    @property
    def sdk(self) -> anthropic.Anthropic:
        # Imported here: the SDK takes a second to import, and most commands never send.
        import anthropic

        if self._sdk is None:
            timeout = anthropic.Timeout(self.read_timeout, connect=self.connect_timeout)
            kwargs: dict[str, Any] = {"max_retries": 0, "timeout": timeout}
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
        """Send one Messages request (streamed if `streams(max_tokens)`); a Reply, or a CallError
        that says what to do next.

        ``tools``: the ``tools`` and ``tool_choice`` parameters, as ``jobs.agents`` builds them.
        """
        import anthropic

        started = time.monotonic()
        # Our blocks are plain dicts; the SDK's TypedDicts cannot tell which param type they are.
        messages: Any = [{"role": "user", "content": blocks}]
        params: dict[str, Any] = {
            "model": model,
            "max_tokens": max_tokens,
            "system": system,
            "messages": messages,
            "extra_headers": dict(extra_headers or {}),
            **dict(tools or {}),
        }
        begun = False  # a response has started: any later failure came after the API took it
        try:
            if streams(max_tokens, self.read_timeout):
                with self.sdk.messages.stream(**params) as stream:
                    begun = True
                    message: Any = stream.get_final_message()
                    headers = dict(stream.response.headers)
            else:
                raw = self.sdk.messages.with_raw_response.create(**params)
                begun = True
                message, headers = raw.parse(), dict(raw.headers)
        except anthropic.APIStatusError as exc:
            if exc.status_code < 400:  # an error event inside a stream that had begun
                raise _broken_stream(exc, time.monotonic() - started) from None
            raise self._classify_status(exc, time.monotonic() - started) from None
        except anthropic.APIConnectionError as exc:
            latency = time.monotonic() - started
            raise _classify_connection(exc, latency, begun=begun, wait=self.read_timeout) from None
        text = "".join(getattr(block, "text", "") for block in message.content)
        usage = message.usage.model_dump(exclude_none=True) if message.usage else {}
        return Reply(
            text=text,
            stop_reason=message.stop_reason,
            usage=usage,
            request_id=headers.get("request-id"),
            service_tier=usage.get("service_tier"),
            headers=headers,
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
            raise self._classify_status(exc, None) from None
        except anthropic.APIConnectionError as exc:
            raise _classify_connection(exc, None, wait=self.read_timeout) from None
        return int(result.input_tokens)

    def _classify_status(self, exc: anthropic.APIStatusError, latency: float | None) -> CallError:
        """`exc` as a CallError; a 5xx that a gateway (a non-Anthropic base URL) answered itself
        may have been billed upstream: GATEWAY, kept charged. The API's own error, relayed with
        its request id, is not billed, whoever relays it."""
        err = _classify_status(exc, latency)
        if err.kind in (ErrorKind.SERVER, ErrorKind.OVERLOADED) and exc.status_code >= 500:
            body = exc.body if isinstance(exc.body, dict) else {}
            from_api = body.get("type") == "error" and bool(
                exc.request_id or body.get("request_id")
            )
            if not _is_anthropic(self.endpoint) and not from_api:
                return CallError(
                    ErrorKind.GATEWAY,
                    f"HTTP {exc.status_code} from the gateway at {self.endpoint}, not from the"
                    " API; the request may have been forwarded and billed",
                    status=exc.status_code,
                    headers=err.headers,
                    latency=latency,
                )
        return err


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


def _classify_connection(
    exc: anthropic.APIConnectionError,
    latency: float | None,
    *,
    begun: bool = False,
    wait: float | None = None,
) -> CallError:
    import httpx2

    cause = exc.__cause__
    # A failure to connect (or to write the request) means the API never saw it;
    # anything later (a read timeout, a dropped response) may have been processed and billed.
    if isinstance(
        cause, httpx2.ConnectError | httpx2.ConnectTimeout | httpx2.PoolTimeout | httpx2.WriteError
    ):
        return CallError(ErrorKind.NOT_SENT, f"could not reach the API ({cause})", latency=latency)
    if isinstance(cause, httpx2.ReadTimeout) and not begun:
        return CallError(
            ErrorKind.TIMED_OUT,
            f"no response from the API within the read timeout ({wait or 0:g} s); the request"
            " may have been processed",
            latency=latency,
        )
    reason = type(cause).__name__ if cause else "connection lost"
    return CallError(
        ErrorKind.DROPPED,
        f"no response from the API ({reason}); the request may have been processed",
        latency=latency,
    )


def _broken_stream(exc: anthropic.APIStatusError, latency: float | None) -> CallError:
    """An error event in a stream that had begun: generation had started, so it may be billed."""
    detail = exc.api_message or exc.message
    return CallError(
        ErrorKind.DROPPED,
        f"the reply stream broke off ({exc.type or 'error'}: {detail}); the request may have been"
        " processed",
        latency=latency,
    )


@dataclass(frozen=True)
class BatchInfo:
    """A Message Batch as the API describes it (its requests' custom_ids are not part of it)."""

    id: str
    status: str  # in_progress | canceling | ended
    counts: dict[str, int]  # processing, succeeded, errored, canceled, expired
    created_at: float  # epoch seconds
    ended_at: float | None

    @property
    def requests(self) -> int:
        """How many requests the batch holds (the counts always sum to it)."""
        return sum(self.counts.values())


def _batch_info(batch: Any) -> BatchInfo:
    return BatchInfo(
        id=batch.id,
        status=batch.processing_status,
        counts=batch.request_counts.model_dump(),
        created_at=batch.created_at.timestamp(),
        ended_at=batch.ended_at.timestamp() if batch.ended_at else None,
    )


@dataclass
class BatchApi:
    """Message Batches through the same SDK client: create, retrieve, list, results.

    Every failure is a classified CallError, as for single requests.
    """

    client: ApiClient

    def _call(self, what: Any) -> Any:
        import anthropic

        try:
            return what()
        except anthropic.APIStatusError as exc:
            raise _classify_status(exc, None) from None
        except anthropic.APIConnectionError as exc:
            raise _classify_connection(exc, None) from None

    def create(self, requests: list[dict[str, Any]]) -> BatchInfo:
        """Submit one batch of `requests` ({"custom_id", "params"} each)."""
        body: Any = requests  # plain dicts; the SDK's TypedDicts cannot tell them apart
        return _batch_info(
            self._call(lambda: self.client.sdk.messages.batches.create(requests=body))
        )

    def retrieve(self, batch_id: str) -> BatchInfo:
        """The batch's state and counts now."""
        return _batch_info(self._call(lambda: self.client.sdk.messages.batches.retrieve(batch_id)))

    def created_since(self, since: float) -> list[BatchInfo]:
        """Every batch of the account created at or after `since` (epoch s), newest first."""
        found: list[BatchInfo] = []

        def page_through() -> None:
            for batch in self.client.sdk.messages.batches.list(limit=100):
                info = _batch_info(batch)
                if info.created_at < since:
                    return  # the list is newest first: nothing older can match
                found.append(info)

        self._call(page_through)
        return found

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        """An ended batch's results, one {"custom_id", "result": {...}} dict per request."""
        return self._call(
            lambda: [
                line.model_dump() for line in self.client.sdk.messages.batches.results(batch_id)
            ]
        )
