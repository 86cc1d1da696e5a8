"""The HTTP core both broker adapters share: timeout, rate limit, retries, error translation.

One :class:`HttpCore` per account. It never creates a session: the composition root
owns one ``aiohttp.ClientSession`` for the whole process and passes it in.

Every request:

1. waits for the account's token bucket (:mod:`syncd.brokers.ratelimit`);
2. is sent with a total timeout of ``timeout_s`` for the WHOLE request: every attempt,
   every backoff sleep and the rate limiter's wait share one deadline, so a broker that
   hangs costs one request ``timeout_s`` (never ``attempts x timeout_s``); a first attempt
   sent at once is bounded by aiohttp's timeout alone, anything after it by one more timer;
3. is retried, with full-jitter exponential backoff (:func:`syncd.errors.backoff`), on a connection error, a
   timeout, a 5xx or a 429 (waiting what ``Retry-After`` or Alpaca's
   ``X-Ratelimit-Reset`` asks for instead, when given) while the deadline leaves time for
   the wait and another attempt -- unless the caller says the
   request must be sent at most once (an order placement: its outcome would be unknown,
   and the caller looks the client order id up instead of sending it again);
4. has its answer translated into syncd's exceptions (:mod:`syncd.brokers.base`).

No message built here contains a header value: the credentials travel in headers only,
and every message is scrubbed of the account's secrets besides.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import structlog

from syncd.brokers.base import (
    BadBrokerData,
    BrokerAuthFailed,
    BrokerError,
    BrokerRateLimited,
    BrokerRejected,
    BrokerUnavailable,
    OrderNotFound,
)
from syncd.brokers.parse import MAX_SIGNIFICANT_DIGITS, significant_digits
from syncd.brokers.ratelimit import TokenBucket
from syncd.errors import backoff

log = structlog.get_logger(__name__)

RequestHook = Callable[[str, str, str], None]
"""``(broker, endpoint, status)`` after every attempt; ``status`` is the HTTP code, ``timeout`` or ``error``.

``endpoint`` is a route template (``/v2/orders/{id}``), never a URL with ids in it, so
it can label ``syncd_broker_requests_total{broker,endpoint,status}``.
"""

ReasonExtractor = Callable[[Any], str | None]
On404 = Literal["error", "not_found", "none"]

_MAX_REASON = 300
_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry; ``sleep`` and ``clock`` are injectable for tests."""

    attempts: int = 4  # total tries of an idempotent request
    initial_s: float = 0.5  # backoff multiplier: waits are random in [0, initial * 2**n], capped
    max_s: float = 8.0
    max_retry_after_s: float = 30.0  # a 429 asking for longer gives up at once (BrokerRateLimited)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)
    clock: Callable[[], float] = field(default=time.time)  # wall clock, for X-Ratelimit-Reset
    monotonic: Callable[[], float] = field(default=time.monotonic)  # the request's deadline


class _Transient(Exception):
    """One attempt failed in a way a retry may cure."""

    def __init__(self, what: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.status = status
        self.retry_after = retry_after
        self.out_of_time = False  # set when the deadline left no time for the wait and a retry


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes


class HttpCore:
    """Sends one account's requests to one broker. See the module docstring."""

    def __init__(
        self,
        *,
        broker: str,
        account: str,
        session: aiohttp.ClientSession,
        timeout_s: float,
        headers: Mapping[str, str],
        limiter: TokenBucket | None = None,
        retry: RetryPolicy | None = None,
        on_request: RequestHook | None = None,
        reason_of: ReasonExtractor | None = None,
        secrets: Sequence[str] = (),
    ) -> None:
        self.broker = broker
        self.account = account
        self._session = session
        self.timeout_s = timeout_s
        self._headers = dict(headers)
        self._limiter = limiter
        self.retry = retry or RetryPolicy()
        self._on_request = on_request
        self._reason_of = reason_of or _default_reason
        self._secrets = tuple(s for s in secrets if s)
        self.request_count = 0

    # -- public -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        once: bool = False,
        on_404: On404 = "error",
        reject_403: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Send a request and return its decoded JSON body (``None`` for an empty body).

        ``once=True`` sends it exactly once (order placement): a timeout, connection
        error, 5xx or 429 raises ``BrokerUnavailable``/``BrokerRateLimited`` at once.
        ``on_404``: ``error`` raises ``BrokerError``, ``not_found`` raises
        ``OrderNotFound``, ``none`` returns ``None``.
        ``reject_403(body)`` says whether a 403 is a business refusal (``BrokerRejected``)
        rather than an authorisation failure.
        """
        what = f"{self.broker} {method} {endpoint}"
        reply = await self._send(what, method, url, endpoint, params, json_body, form, once)
        return self._interpret(what, reply, on_404=on_404, reject_403=reject_403)

    async def request_reply(
        self,
        method: str,
        url: str,
        *,
        endpoint: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        form: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> tuple[str, Reply]:
        """Like :meth:`request` (``on_404="error"``), but a 2xx answer comes back undecoded.

        Returns ``(what, reply)``: the adapter decodes ``reply.body`` itself (a typed fast
        decoder), and hands it to :meth:`decode` -- the same decoding :meth:`request` does --
        whenever its fast decoder does not take the answer as it is. Every other status is
        translated into syncd's exceptions exactly as :meth:`request` does.
        """
        what = f"{self.broker} {method} {endpoint}"
        reply = await self._send(what, method, url, endpoint, params, None, form, False)
        if not 200 <= reply.status < 300:
            self._interpret(what, reply, on_404="error", reject_403=None)  # raises
        return what, reply

    def decode(self, what: str, reply: Reply) -> Any:
        """A 2xx ``reply``'s body decoded as :meth:`request` decodes it (exact Decimals, digit check)."""
        return self._decode(what, reply)

    async def _send(
        self,
        what: str,
        method: str,
        url: str,
        endpoint: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        json_body: Any,
        form: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        once: bool,
    ) -> Reply:
        """The request's attempts under its one deadline; retries (and their bookkeeping) only after a failure.

        The first attempt, when the rate limiter has a token at once (the usual case), is bounded
        by aiohttp's own timeout, the whole of ``timeout_s``: the request sets one timer, not two.
        Anything after it (a wait for a token, a backoff sleep, a retry) runs under an
        ``asyncio`` timeout at the same deadline.
        """
        loop = asyncio.get_running_loop()
        hard_deadline = loop.time() + self.timeout_s  # the hard bound of the whole request
        deadline = self.retry.monotonic() + self.timeout_s
        limit = 1 if once else max(1, self.retry.attempts)
        attempt = 0
        failed: _Transient | None = None
        try:
            if self._limiter is None or self._limiter.take_now():
                attempt = 1
                try:
                    return await self._attempt(method, url, endpoint, params, json_body, form, deadline, token=True)
                except _Transient as exc:
                    if attempt >= limit:
                        raise
                    failed = exc
            # Each later attempt's own aiohttp timeout is what is left of the deadline.
            async with asyncio.timeout_at(hard_deadline):
                while True:
                    if failed is not None:
                        wait = self._wait(failed, attempt, deadline)  # raises failed when waiting is pointless
                        log.warning(
                            "broker_request_retry",
                            broker=self.broker,
                            account=self.account,
                            request=what,
                            attempt=attempt,
                            reason=str(failed),
                            wait_s=round(wait, 3),
                        )
                        await self.retry.sleep(wait)
                    attempt += 1
                    try:
                        return await self._attempt(method, url, endpoint, params, json_body, form, deadline)
                    except _Transient as exc:
                        if attempt >= limit:
                            raise
                        failed = exc
        except _Transient as exc:
            raise self._exhausted(what, exc, once=once, attempts=attempt) from None
        except TimeoutError:
            raise BrokerUnavailable(
                f"{what}: no answer within {self.timeout_s:g}s (broker_timeout_s, retries included)",
                timed_out=True,
                broker=self.broker,
                account=self.account,
            ) from None

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this account replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # -- one attempt --------------------------------------------------------------------

    async def _attempt(
        self,
        method: str,
        url: str,
        endpoint: str,
        params: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        json_body: Any,
        form: Mapping[str, str] | Sequence[tuple[str, str]] | None,
        deadline: float,
        *,
        token: bool = False,  # the rate limiter's token is taken already
    ) -> Reply:
        if self._limiter is not None and not token:
            await self._limiter.acquire()
        self.request_count += 1
        left = max(0.001, deadline - self.retry.monotonic())
        try:
            async with self._session.request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                headers=self._headers,
                # exact: aiohttp rounds a timeout over 5 s up to a whole second of the loop's clock
                timeout=aiohttp.ClientTimeout(total=min(self.timeout_s, left), ceil_threshold=_NEVER),
                allow_redirects=False,
            ) as resp:
                body = await resp.read()
                reply = Reply(resp.status, resp.headers, body)
        except TimeoutError:
            self._hook(endpoint, "timeout")
            raise _Transient(f"timed out after {min(self.timeout_s, left):.3g}s") from None
        except aiohttp.ClientError as exc:
            self._hook(endpoint, "error")
            detail = self.scrub(str(exc))[:200]
            raise _Transient(f"connection error ({type(exc).__name__}: {detail})") from None
        self._hook(endpoint, str(reply.status))
        if reply.status == 429:
            raise _Transient("rate limited (429)", status=429, retry_after=self._retry_after(reply.headers))
        if reply.status >= 500:
            raise _Transient(f"server error {reply.status}", status=reply.status)
        return reply

    def _hook(self, endpoint: str, status: str) -> None:
        if self._on_request is None:
            return
        try:
            self._on_request(self.broker, endpoint, status)
        except Exception:  # a metrics bug must never break a broker call
            log.exception("broker_request_hook_failed", broker=self.broker, endpoint=endpoint)

    def _retry_after(self, headers: Mapping[str, str]) -> float | None:
        """Seconds the broker asks us to wait: ``Retry-After`` or Alpaca's ``X-Ratelimit-Reset``."""
        raw = headers.get("Retry-After")
        if raw:
            raw = raw.strip()
            try:
                return max(0.0, float(raw))
            except ValueError:
                try:
                    when = parsedate_to_datetime(raw)
                except (TypeError, ValueError):
                    when = None
                if when is not None:
                    if when.tzinfo is None:
                        when = when.replace(tzinfo=dt.UTC)
                    return max(0.0, when.timestamp() - self.retry.clock())
        reset = headers.get("X-Ratelimit-Reset")
        if reset:
            try:
                epoch = float(reset.strip())
            except ValueError:
                return None
            if epoch > 1e12:  # milliseconds
                epoch /= 1000.0
            return max(0.0, epoch - self.retry.clock())
        return None

    # -- retry plumbing -------------------------------------------------------------------

    def _wait(self, exc: _Transient, attempt: int, deadline: float) -> float:
        """Seconds to wait after failed attempt number ``attempt``; raises ``exc`` when no retry can help."""
        if exc.retry_after is not None:
            if exc.retry_after > self.retry.max_retry_after_s:
                # Waiting that long inside one request would stall a whole cycle: give up now.
                raise exc
            wait = exc.retry_after
        else:
            wait = backoff(attempt, self.retry.initial_s, self.retry.max_s, jitter="full")
        if wait >= deadline - self.retry.monotonic():
            # The wait would use up what is left of broker_timeout_s: no time for another attempt.
            exc.out_of_time = True
            raise exc
        return wait

    def _exhausted(self, what: str, exc: _Transient, *, once: bool, attempts: int) -> BrokerUnavailable:
        if exc.retry_after is not None and exc.retry_after > self.retry.max_retry_after_s:
            tries = f"asked to wait {exc.retry_after:.0f}s, more than {self.retry.max_retry_after_s:g}s"
        elif once:
            tries = "sent once, not retried"
        elif exc.out_of_time:
            plural = "s" if attempts != 1 else ""
            tries = f"after {attempts} attempt{plural}; broker_timeout_s {self.timeout_s:g}s used up"
        else:
            tries = f"after {attempts} attempts"
        msg = f"{what}: {exc.what} ({tries})"
        if exc.status == 429:
            return BrokerRateLimited(msg, retry_after=exc.retry_after, broker=self.broker, account=self.account)
        timed_out = exc.what.startswith("timed out")
        return BrokerUnavailable(msg, timed_out=timed_out, broker=self.broker, account=self.account)

    # -- answers ------------------------------------------------------------------------

    def _interpret(
        self,
        what: str,
        reply: Reply,
        *,
        on_404: On404,
        reject_403: Callable[[Any], bool] | None,
    ) -> Any:
        status = reply.status
        if 200 <= status < 300:
            return self._decode(what, reply)
        body = self._decode_quietly(reply.body)
        reason = self._reason(body, reply.body)
        kw = {"broker": self.broker, "account": self.account}
        if status == 403 and reject_403 is not None and reject_403(body):
            raise BrokerRejected(f"{what}: refused (403): {reason}", reason=reason, status=403, **kw)
        if status in (401, 403):
            raise BrokerAuthFailed(f"{what}: not authorised ({status}): {reason}", **kw)
        if status == 404:
            if on_404 == "none":
                return None
            if on_404 == "not_found":
                raise OrderNotFound(f"{what}: not found (404): {reason}", **kw)
            raise BrokerError(f"{what}: not found (404); is the base URL right? {reason}", **kw)
        if 400 <= status < 500:
            raise BrokerRejected(f"{what}: refused ({status}): {reason}", reason=reason, status=status, **kw)
        raise BadBrokerData(f"{what}: unexpected HTTP status {status}", field="status", **kw)

    def _decode(self, what: str, reply: Reply) -> Any:
        if reply.status == 204 or not reply.body.strip():
            return None
        too_fine: list[str] = []

        def exact(text: str) -> Decimal:
            # Numbers with a point or exponent as exact Decimals, never through a float: a float
            # would silently drop the digits past its 17th, which syncd must see to refuse them.
            # A literal of at most MAX_SIGNIFICANT_DIGITS characters cannot hold more digits.
            number = Decimal(text)
            long = len(text) > MAX_SIGNIFICANT_DIGITS
            if long and not too_fine and significant_digits(number) > MAX_SIGNIFICANT_DIGITS:
                too_fine.append(text)
            return number

        try:
            decoded = json.loads(reply.body, parse_float=exact)
        except (ValueError, UnicodeDecodeError):
            ctype = reply.headers.get("Content-Type", "no content type")
            looks = "an HTML page" if reply.body.lstrip()[:1] == b"<" else "malformed JSON"
            raise BadBrokerData(
                f"{what}: answer is not JSON: {looks} ({ctype}, {len(reply.body)} bytes)",
                field="body",
                broker=self.broker,
                account=self.account,
            ) from None
        if too_fine:
            # A model typed float (alpaca-py's) would round it to 17 digits unseen: refuse it here.
            raise BadBrokerData(
                f"{what}: the number {too_fine[0][:40]} has more digits than syncd keeps exactly"
                f" (at most {MAX_SIGNIFICANT_DIGITS})",
                field="body",
                broker=self.broker,
                account=self.account,
            )
        return decoded

    @staticmethod
    def _decode_quietly(body: bytes) -> Any:
        try:
            return json.loads(body) if body.strip() else None
        except (ValueError, UnicodeDecodeError):
            return None

    def _reason(self, decoded: Any, raw: bytes) -> str:
        reason: str | None = None
        try:
            reason = self._reason_of(decoded) if decoded is not None else None
        except Exception:  # noqa: BLE001 -- a reason is a courtesy; never let it fail the call
            reason = None
        if not reason:
            text = raw.decode("utf-8", "replace").strip()
            reason = "no details" if not text or text.startswith("<") else " ".join(text.split())
        return self.scrub(reason)[:_MAX_REASON]


def _default_reason(body: Any) -> str | None:
    if isinstance(body, dict):
        for key in ("message", "error", "detail"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value
    return None
