"""A metered call's way through the pass-through: in, its body read and its estimate reserved;
out, its answer read for usage as it passes, and the call settled exactly once.

What goes upstream is our own serialisation of the checked JSON body (top-level keys in lower
case: new-api reads fields case-insensitively, so a ``"Max_Tokens"`` we did not see would
otherwise count), with an output cap added when the caller named none, and for chat streams
``stream_options.include_usage`` set. Multipart bodies leave as they came. The answer:

- an upstream error refunds the reservation (new-api bills no failed call);
- a JSON answer is read whole (up to ``METER_BUFFER``), settled to its ``usage`` before it is
  sent, and carries ``x-gateway-cost``; a larger one is streamed on and charged its estimate;
- an event stream passes through a ``UsageTap``, which holds its last event (``[DONE]``,
  ``response.completed``, ...) until the call has settled, then sends it with the end;
- speech (audio or its event stream) is charged by the characters it was asked to read,
  known before it is sent;
- anything that ends without usage (an abort, a cut, a timeout the upstream may have acted on)
  is charged the estimate, which stays charged too when Redis cannot take the settlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.auth.api_keys import KeyScope
from gateway.errors import GatewayError, InvalidRequest
from gateway.metering import answers, kinds
from gateway.metering.forms import form_fields
from gateway.metering.prices import Usage
from gateway.metering.service import Admission, Meter
from gateway.metering.streams import UsageTap
from gateway.proxy import body_policy, media
from gateway.quota.model import SPEND_UNITS
from gateway.upstream import rewrite
from gateway.upstream.client import UpstreamResponse
from gateway.upstream.json_keys import fold
from gateway.upstream.routes import PLAIN, RouteRule
from gateway.web.asgi import Receive, Scope, Send, header

log = logging.getLogger("gateway.metering")

METER_BUFFER = 64 * 1024 * 1024  # a JSON answer up to this is read whole for its usage


class _Budget:
    """Bytes of JSON answers this process holds to read their usage, all calls together and
    per team: a caller asking for many large answers at once (embeddings as floats run to
    tens of MiB) would otherwise make the replica hold them all, and one team reading them
    slowly would leave no room for the others. Past either bound, an answer is streamed on
    and charged its estimate, like one past ``METER_BUFFER``."""

    def __init__(self, total: int, per_team: int) -> None:
        self.total = total
        self.per_team = per_team
        self.held = 0
        self._teams: dict[str, int] = {}

    def take(self, team: str, n: int) -> bool:
        mine = self._teams.get(team, 0)
        if self.held + n > self.total or mine + n > self.per_team:
            return False
        self.held += n
        self._teams[team] = mine + n
        return True

    def give(self, team: str, n: int) -> None:
        if not n:
            return
        self.held -= n
        left = self._teams.get(team, 0) - n
        if left > 0:
            self._teams[team] = left
        else:
            self._teams.pop(team, None)


BUFFERED = _Budget(4 * METER_BUFFER, per_team=METER_BUFFER)
_settling: set[asyncio.Task[Any]] = set()  # settlements outliving a cancelled request


def cost_text(units: int) -> str:
    """Stored units as the currency amount, exactly (0.000150, never 0.00015000000000000001)."""
    return f"{units // SPEND_UNITS}.{units % SPEND_UNITS:06d}"


@dataclass
class MeteredCall:
    meter: Meter
    admission: Admission
    body: bytes | None  # what goes upstream
    hide_usage: bool  # the caller did not ask for a stream's usage: drop it on the way
    json: bool = False  # the body was read as JSON: it must leave declared as JSON

    async def settle(self, usage: Usage | None, *, failed: bool = False) -> int:
        """Settle once; a settlement Redis cannot take leaves the estimate charged."""
        adm = self.admission
        try:
            return await self.meter.settle(adm, usage, failed=failed)
        except GatewayError:
            log.warning("could not settle a metered call; its estimate stays charged")
            return adm.reserved_units
        except Exception:
            # Whatever went wrong, the answer the upstream gave (and billed) still reaches
            # the caller whole: never a cut stream or a 500 for a call that ran.
            log.exception("settling a metered call failed; its estimate stays charged")
            return adm.reserved_units

    async def settle_shielded(self, usage: Usage | None, *, failed: bool = False) -> None:
        """Settle even when the request's task is being cancelled."""
        if self.admission.settled:
            return
        task = asyncio.ensure_future(self.settle(usage, failed=failed))
        _settling.add(task)
        task.add_done_callback(_settling.discard)
        await asyncio.shield(task)

    async def upstream_failed(self, exc: GatewayError) -> None:
        # A timeout or a cut after the request left may have been billed: keep the estimate.
        await self.settle_shielded(None, failed=not exc.maybe_processed)

    async def answer(
        self,
        resp: UpstreamResponse,
        receive: Receive | None,
        send: Send,
        relay: Callable[..., Any],
        observer: Any,
    ) -> None:
        adm = self.admission
        headers = rewrite.response_headers(resp.raw_headers) + adm.headers
        ctype = resp.header("content-type") or ""
        try:
            if adm.kind == kinds.SPEECH:  # audio, or its events: the cost was known up front
                cost = await self.settle(adm.estimate.bound)
                await relay(resp, receive, send, [*headers, _cost(cost)], observer)
                return
            if "event-stream" in ctype.lower():
                tap = UsageTap(adm.kind, hide_usage=self.hide_usage)
                headers = [(k, v) for k, v in headers if k != b"content-length"]

                async def before_end() -> bytes:
                    rest = tap.flush()
                    await self.settle(tap.usage)  # none seen: the estimate
                    return rest

                await relay(
                    resp,
                    receive,
                    send,
                    headers,
                    observer,
                    tap=tap.feed,
                    before_end=before_end,
                    ended=lambda: tap.ended,
                )
                if not adm.settled:  # cut or abandoned: what its end said, else the estimate
                    await self.settle_shielded(tap.final_usage)
                return
            await self._buffered(resp, receive, send, relay, observer, headers)
        finally:
            if not adm.settled:
                await self.settle_shielded(None)

    async def _buffered(
        self,
        resp: UpstreamResponse,
        receive: Receive | None,
        send: Send,
        relay: Callable[..., Any],
        observer: Any,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        adm = self.admission
        body = bytearray()
        chunks = resp.iter_chunks()
        team = adm.team
        taken = 0
        try:
            async for chunk in chunks:  # a cut raises UpstreamError: 502, the estimate charged
                body += chunk
                if len(body) > METER_BUFFER or not BUFFERED.take(team, len(chunk)):
                    break
                taken += len(chunk)
            else:
                usage = answers.from_json(adm.kind, body)
                cost = await self.settle(usage)
                resp.finish()
                start = {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [*headers, _cost(cost)],
                }
                await send(start)
                if len(body) <= SLICE:
                    await send({"type": "http.response.body", "body": bytes(body)})
                else:
                    for piece in _slices(body):
                        await send({"type": "http.response.body", "body": piece, "more_body": True})
                    await send({"type": "http.response.body", "body": b""})
                if observer is not None:
                    observer.chunk(len(body))
                return
            # Too large to hold: streamed on, charged the estimate (counted as estimated).
            await self.settle(None)

            async def rest() -> Any:
                nonlocal taken
                for piece in _slices(body):
                    yield piece
                # Every slice but the last has left for the caller (each send waits for the one
                # before it to drain): no longer this process's to hold.
                del body[:]
                BUFFERED.give(team, taken)
                taken = 0
                async for chunk in chunks:
                    yield chunk

            await relay(resp, receive, send, headers, observer, chunks=rest())
        finally:
            BUFFERED.give(team, taken)


SLICE = 1024 * 1024  # a held answer leaves in pieces of this


def _slices(body: bytearray) -> Iterator[bytes]:
    """A held answer in pieces, each sent only once the one before it has drained: uvicorn's
    send returns as soon as a body is in its buffer (and waits for the buffer to drain at the
    next send), so one send of a whole large answer left it all held for a caller who never
    reads, after the budget that counted it was given back."""
    for i in range(0, len(body), SLICE):
        yield bytes(body[i : i + SLICE])


def _cost(units: int) -> tuple[bytes, bytes]:
    return (b"x-gateway-cost", cost_text(units).encode())


def _principal(scope: Scope) -> tuple[str, str, KeyScope | None]:
    p = scope.get("principal")
    return (p.team, p.user, p.key) if p is not None else ("", "", None)


def _lowered(doc: dict[str, Any]) -> dict[str, Any]:
    return {fold(k): v for k, v in doc.items()}


async def open_call(meter: Meter, scope: Scope, rule: RouteRule, body: bytes | None) -> MeteredCall:
    """Read the body for the estimate, apply the body policy, and reserve; raises the 400,
    403 or 429 that refuses the call before anything goes upstream."""
    kind = rule.meter
    team, user, key = _principal(scope)
    try:
        tag, doc, out, hide, how = _read_call(meter, scope, rule, body)
    except GatewayError:
        # Refused before its reservation, which would have counted its request: count it here
        # (over the request rate, that 429 is the answer, as for any other request).
        await meter.count_request(team, key)
        raise
    adm = await meter.admit(team, user, kind, doc, body or b"", tag, key=key)
    if how == media.JSON and kind != kinds.REQUEST:
        # Sent as the gateway serialises it, with the estimate's caps.
        try:
            doc.update(adm.estimate.inject)
            out = body_policy.serialise(doc)
        except BaseException:
            with contextlib.suppress(GatewayError):
                await meter.settle(adm, None, failed=True)
            raise
    return MeteredCall(meter, adm, out, hide, json=how == media.JSON)


def _read_call(
    meter: Meter, scope: Scope, rule: RouteRule, body: bytes | None
) -> tuple[str, dict[str, Any], bytes | None, bool, media.Format | None]:
    """The call's tag, the document its estimate reads, the body to send, whether a stream's
    usage must be hidden from the caller, and how the body was read (a JSON body of a
    route the gateway knows is rebuilt from the document once reserved)."""
    kind = rule.meter
    tag = meter.tag_of(header(scope, b"x-gateway-tag"))
    raw = body or b""
    how = media.body_format(scope, kind, has_body=bool(raw))
    if how is None:  # a route added in config, called without a body
        return tag, {}, body, False, None
    if how == media.FORM:
        ctype = (header(scope, b"content-type") or b"").decode("latin-1")
        fields: dict[str, Any] = dict(form_fields(raw, ctype))
        n = fields.get("n")
        if kind in kinds.FORM_KINDS and isinstance(n, str) and n.isascii() and n.isdigit():
            fields["n"] = int(n)  # form fields are text
        return tag, fields, body, False, how
    if kind == kinds.REQUEST:
        # A route added in config: the model its body names, read as the upstream reads it
        # (a body whose model could not be read would be priced as "-" while the upstream
        # runs it). Sent as it came.
        return tag, _lowered(body_policy.scanned(raw)), body, False, how
    if rule.body != PLAIN:
        doc = _lowered(body_policy.checked(rule.body, body))
    else:
        doc = _lowered(body_policy.scanned(raw))
    # Everything that can refuse the body runs before the reservation, so that a refusal
    # never leaves an estimate charged.
    hide = False
    if kind in (kinds.CHAT, kinds.COMPLETIONS) and doc.get("stream") is True:
        hide = _ask_for_usage(doc)
    if b"\\u" in raw:  # an escape may be a lone surrogate, which cannot be sent
        body_policy.serialise(doc)
    return tag, doc, body, hide, how


def _ask_for_usage(doc: dict[str, Any]) -> bool:
    """Make a chat stream carry its usage; answers whether the caller had not asked."""
    options = doc.get("stream_options")
    if options is None:
        doc["stream_options"] = {"include_usage": True}
        return True
    if not isinstance(options, dict):
        raise InvalidRequest(
            "'stream_options' must be an object.", code="invalid_type", param="stream_options"
        )
    options = {fold(k): v for k, v in options.items()}  # as the upstream reads them
    if options.get("include_usage") is True:
        return False
    doc["stream_options"] = {**options, "include_usage": True}
    return True
