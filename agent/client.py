"""The client library: list a fleet and call skills.

::

    async with Fleet("mqtt://127.0.0.1:1883", fleet="home") as fleet:
        for d in await fleet.devices():
            print(d.device, d.status, [s.name for s in d.skills])
        state = await fleet.call("lamp-kitchen", "set_brightness", {"level": 40})

``call`` returns the skill's output (parsed JSON, or ``result_type`` if given) or raises a
:class:`~edgeagent.errors.CallError` subclass. Bound the time with ``timeout=`` (also sent as the
request's Message Expiry Interval, so a device never runs a call nobody waits for) or with an
enclosing ``asyncio.timeout()``.

``call_skill`` calls a skill on whichever device routing picks: through the coordinator service
(the default), or, with ``Fleet(route="local")`` / ``via="local"``, routed by this client with
the coordinator's rules and sent to the device directly (:mod:`edgeagent.local_routing`; the
fleet view it routes on is :mod:`edgeagent.fleet_view`). ``explain=True`` returns a
:class:`~edgeagent.results.CallResult` ``(output, route)``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from .broker import BrokerConfig
from .clock import SYSTEM_CLOCK, Clock
from .errors import CallError, CallTimeout, InternalError, TransportError
from .fleet_view import MAX_DEVICES, DeviceInfo, FleetView
from .local_routing import LocalRouter
from .protocol import (
    BINARY_CONTENT_TYPE,
    DEFAULT_FLEET,
    DEFAULT_ROOT,
    EXPLAIN_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    INPUT_PROPERTY,
    MODE_PROPERTY,
    TRACE_PROPERTY,
    WHERE_PROPERTY,
    ErrorReply,
    Event,
    Message,
    Topics,
    decode_reply,
)
from .results import AskResult, CallMode, CallResult, RouteVia
from .rpc import PendingCalls, new_correlation, request_props
from .transport.base import Inbound, Transport

__all__ = ["MAX_DEVICES", "AskResult", "CallResult", "DeviceInfo", "Fleet", "encode_input"]

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(tp: Any) -> TypeAdapter[Any]:
    """A cached TypeAdapter: building one costs far more than using it."""
    adapter = _ADAPTERS.get(tp)
    if adapter is None:
        adapter = _ADAPTERS[tp] = TypeAdapter(tp)
    return adapter


def encode_input(value: Any) -> bytes:
    """A skill input as request bytes: models, dicts and lists as JSON; bytes and str as is."""
    if value is None:
        return b"{}"
    if isinstance(value, BaseModel):
        return value.model_dump_json().encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class Fleet:
    """A connection to one fleet: device listing, skill calls, live updates.

    ``route`` is where :meth:`call_skill` routes by default: ``"coordinator"`` (a coordinator
    service picks the device) or ``"local"`` (this client picks it with the same rules and calls
    it directly: :mod:`edgeagent.local_routing`). ``rng`` is the randomness of local routing.
    """

    def __init__(
        self,
        broker: str | BrokerConfig | None = None,
        *,
        fleet: str = DEFAULT_FLEET,
        root: str = DEFAULT_ROOT,
        transport: Transport | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        clock: Clock = SYSTEM_CLOCK,
        route: RouteVia = "coordinator",
        rng: random.Random | None = None,
    ) -> None:
        if route not in ("coordinator", "local"):
            raise ValueError(f"route must be 'coordinator' or 'local', not {route!r}")
        self.topics = Topics(root, fleet)
        self.broker = broker if isinstance(broker, BrokerConfig) else BrokerConfig.from_url(broker)
        if transport is None:
            from .transport.mqtt import MqttTransport

            transport = MqttTransport(self.broker, client_id=f"ea-cli-{uuid.uuid4().hex[:10]}")
        self.transport = transport
        self.timeout = timeout
        self.clock = clock
        self.route: RouteVia = route
        self._rng = rng
        self._reply_topic = self.topics.reply(transport.client_id)
        sync_topic = self._reply_topic.rsplit("/", 1)[0] + "/sync"
        self._pending: PendingCalls[Any] = PendingCalls(clock)
        self._view = FleetView(transport, self.topics, clock, sync_topic)
        self._router: LocalRouter | None = None

    async def __aenter__(self) -> Fleet:
        await self.transport.subscribe(self._reply_topic, self._on_reply)
        await self.transport.subscribe(self._view.sync_topic, self._view.on_sync)
        await self.transport.connect()
        if self.route == "local":
            await self.local_router()  # the fleet view is complete before the first call
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._pending.fail_all()
        await self.transport.close()

    # Calls --------------------------------------------------------------------------------------

    # fmt: off
    @overload
    async def call(
        self, device: str, skill: str, input: Any = None, *, timeout: float | None = None,
        trace: str | None = None, result_type: type[T], binary: bytes | None = None,
        check_device: bool = True,
    ) -> T: ...
    @overload
    async def call(
        self, device: str, skill: str, input: Any = None, *, timeout: float | None = None,
        trace: str | None = None, result_type: None = None, binary: bytes | None = None,
        check_device: bool = True,
    ) -> Any: ...
    # fmt: on
    async def call(
        self,
        device: str,
        skill: str,
        input: Any = None,
        *,
        timeout: float | None = None,
        trace: str | None = None,
        result_type: type[T] | None = None,
        binary: bytes | None = None,
        check_device: bool = True,
    ) -> Any:  # fmt: skip
        """Call ``skill`` on ``device`` and return its output (a ``result_type`` if given).

        ``binary`` sends raw bytes (an image, audio) for the skill's ``bytes`` input field
        without base64: Content Type ``application/octet-stream``, the other inputs (``input``)
        as JSON in a User Property. Raises :class:`CallTimeout` when no reply arrives within
        ``timeout`` seconds, or the :class:`CallError` subclass matching the device's error reply.

        A device that has never announced itself (no retained state or manifest in the fleet)
        gets :class:`NotFound` at once, naming the devices that did, closest names first, instead
        of a wait for the whole ``timeout``. The fleet view this reads is synced on the first
        call and kept current, so a known device costs no round trip. ``check_device=False``
        sends the call regardless (a responder that never announces itself).
        """
        timeout = self.timeout if timeout is None else timeout
        topic = self.topics.call(device, skill)
        what = f"{device}/{skill}"
        if check_device and device not in self._view.devices:
            await self._view.require(device)
        if binary is None:
            reply = await self.request(
                topic, encode_input(input), timeout=timeout, trace=trace, what=what
            )
        else:
            others = () if input is None else ((INPUT_PROPERTY, encode_input(input).decode()),)
            reply = await self.request(
                topic,
                binary,
                timeout=timeout,
                trace=trace,
                what=what,
                content_type=BINARY_CONTENT_TYPE,
                user_properties=others,
            )
        if isinstance(reply, ErrorReply):
            raise CallError.from_reply(reply)
        if result_type is None:
            return reply.output
        try:
            return _adapter(result_type).validate_python(reply.output)
        except ValidationError as exc:
            raise InternalError(f"{device}/{skill} replied with unexpected output: {exc}") from exc

    # fmt: off
    @overload
    async def call_skill(
        self, skill: str, input: Any = None, *, where: dict[str, str] | None = None,
        mode: CallMode = "one", timeout: float | None = None, trace: str | None = None,
        explain: Literal[True], idempotency_key: str | None = None,
        retry_after: float | None = None, via: RouteVia | None = None,
    ) -> CallResult: ...
    @overload
    async def call_skill(
        self, skill: str, input: Any = None, *, where: dict[str, str] | None = None,
        mode: CallMode = "one", timeout: float | None = None, trace: str | None = None,
        explain: Literal[False] = False, idempotency_key: str | None = None,
        retry_after: float | None = None, via: RouteVia | None = None,
    ) -> Any: ...
    @overload
    async def call_skill(  # a mode or explain known only at run time
        self, skill: str, input: Any = None, *, where: dict[str, str] | None = None,
        mode: str = "one", timeout: float | None = None, trace: str | None = None,
        explain: bool = False, idempotency_key: str | None = None,
        retry_after: float | None = None, via: RouteVia | None = None,
    ) -> Any: ...
    # fmt: on
    async def call_skill(
        self,
        skill: str,
        input: Any = None,
        *,
        where: dict[str, str] | None = None,
        mode: CallMode | str = "one",
        timeout: float | None = None,
        trace: str | None = None,
        explain: bool = False,
        idempotency_key: str | None = None,
        retry_after: float | None = None,
        via: RouteVia | None = None,
    ) -> Any:  # fmt: skip
        """Call ``skill`` on whichever device routing picks (``mode="all"``: every matching
        device; the output is then ``{"results": {device: output}, "errors": {...}}``).

        ``where`` filters devices by tags. With ``explain=True`` the return value is a
        :class:`CallResult` ``(output, route)``, the routing record. An idempotency key is sent
        (one is made if not given), so a retried call is never run twice.

        ``via`` (default: the Fleet's ``route``) is ``"coordinator"``, a coordinator service
        routes, or ``"local"``, this client routes with the same rules and calls the device
        directly (one broker crossing less each way; :mod:`edgeagent.local_routing`).
        ``retry_after`` (coordinator only) seconds without a reply, the same call (same key) is
        sent again, until ``timeout``: with coordinator replicas, a call held by one that died
        is taken up by another. Local routing needs no resend: it fails over itself.
        """
        timeout = self.timeout if timeout is None else timeout
        idem = idempotency_key or new_correlation().hex()  # unguessable, cheaper than uuid4
        if (via or self.route) == "local":
            router = self._router or await self.local_router()
            deadline = self.clock.monotonic() + timeout
            result = await router.call(
                skill, encode_input(input), where=where or {}, mode=mode, deadline=deadline,
                idem=idem, trace=trace, explain=explain,
            )  # fmt: skip
            return result if explain else result.output
        props: tuple[tuple[str, str], ...] = ((IDEMPOTENCY_PROPERTY, idem),)
        if mode != "one":  # one is the default: every property costs decoding time
            props += ((MODE_PROPERTY, mode),)
        if where:
            props += ((WHERE_PROPERTY, ",".join(f"{k}={v}" for k, v in sorted(where.items()))),)
        if explain:
            props += ((EXPLAIN_PROPERTY, "1"),)
        payload = encode_input(input)
        deadline = self.clock.monotonic() + timeout
        while True:
            left = deadline - self.clock.monotonic()
            attempt = left if retry_after is None else min(retry_after, left)
            try:
                reply = await self.request(
                    self.topics.coord_call(skill),
                    payload,
                    timeout=attempt,
                    trace=trace,
                    what=f"the coordinator ({skill})",
                    user_properties=props,
                    expiry_s=left,
                )
                break
            except CallTimeout:
                if retry_after is None or deadline - self.clock.monotonic() <= 0:
                    raise
                log.info("no reply for %s after %.2g s; sending it again", skill, attempt)
        if isinstance(reply, ErrorReply):
            error = CallError.from_reply(reply)
            error.route = reply.route
            raise error
        return CallResult(reply.output, reply.route or {}) if explain else reply.output

    async def local_router(self) -> LocalRouter:
        """The router :meth:`call_skill` uses with ``via="local"`` (made and fed on first use:
        the fleet view then follows health too, for the devices' queues)."""
        if self._router is None:
            self._router = LocalRouter(self._send, clock=self.clock, rng=self._rng)
            self._view.attach(self._router)
        await self._view.track(health=True)
        return self._router

    def _send(
        self,
        device: str,
        skill: str,
        payload: bytes,
        *,
        expires_in: float,
        wait: float,
        idem: str | None,
        trace: str | None,
    ) -> asyncio.Future[Any]:
        """One request to a device for the local router (a :class:`~.local_routing.Sender`)."""
        if not self.transport.connected:
            raise TransportError(f"not connected: cannot call {device}/{skill}")
        corr, future = self._pending.open(
            wait, lambda: f"no reply from {device}/{skill} within {wait:g} s"
        )
        user: tuple[tuple[str, str], ...] = ((TRACE_PROPERTY, trace),) if trace else ()
        if idem is not None:
            user += ((IDEMPOTENCY_PROPERTY, idem),)
        props = request_props(self._reply_topic, corr, expires_in, user_properties=user)
        self.transport.publish_nowait(self.topics.call(device, skill), payload, props=props)
        return future

    async def ask(
        self,
        text: str,
        *,
        threshold: float = 0.6,
        timeout: float | None = None,
        router: Any = None,
        llm: Any = None,
        dry_run: bool = False,
        before: Callable[[Any], None] | None = None,
    ) -> AskResult:
        """Understand a plain-language request and carry it out through :meth:`call_skill`.

        The layered router (:mod:`edgeagent.nlu`: exact skill syntax, a grammar, then the zoo's
        intent model) maps ``text`` to a skill, its input and a ``where`` over the devices that
        are online now. Only a command understood with certainty is called; otherwise (below
        ``threshold``, a statement, question about an action, condition, unknown room or unit,
        several matching devices) nothing is called: ``result.unsure`` holds the best
        candidates, the reason, and the question to ask back (``result.unsure.question``).

        ``llm`` (a model spec such as ``zoo:smollm2``, or a loaded session) adds the LLM layer
        (:mod:`edgeagent.nlu.layer_llm`); its multi-step reading (``result.plan``) is carried
        out step by step, stopping at the first failure (``result.steps``). ``before`` is called
        with the reading before anything is called (``--explain``); ``dry_run`` calls nothing.
        """
        from .nlu import Catalog, Interpretation, Plan, Router
        from .plan_run import run_steps

        if router is None:
            manifests = [d.manifest for d in await self.devices() if d.online and d.manifest]
            router = Router(Catalog.from_manifests(manifests), threshold=threshold, llm=llm)
        # Off the event loop: an LLM layer generates for seconds on a Pi.
        reading = await asyncio.to_thread(getattr(router, "route_plan", router.route), text)
        if not isinstance(reading, Interpretation | Plan):
            return AskResult(text=text, interpretation=None, unsure=reading, output=None)
        if before is not None:
            before(reading)
        one = reading if isinstance(reading, Interpretation) else None
        plan = reading if isinstance(reading, Plan) else None
        if dry_run:
            return AskResult(text, one, None, None, plan=plan)
        if plan is not None:
            steps = await run_steps(self.call_skill, plan.steps, timeout=timeout)
            return AskResult(text, None, None, None, plan=plan, steps=steps)
        assert one is not None
        output = await self.call_skill(
            one.skill, one.input, where=one.where, mode=one.mode, timeout=timeout
        )
        return AskResult(text=text, interpretation=one, unsure=None, output=output)

    async def request(
        self,
        topic: str,
        payload: bytes,
        *,
        timeout: float,
        trace: str | None = None,
        what: str = "",
        content_type: str | None = None,
        user_properties: tuple[tuple[str, str], ...] = (),
        expiry_s: float | None = None,
    ) -> Any:
        """Low level: publish ``payload`` to ``topic`` as an MQTT 5 request, await the reply.

        The request's Message Expiry Interval is ``expiry_s`` (default: ``timeout``), rounded up
        to whole seconds (:func:`edgeagent.rpc.request_props`); the wait is the clock's.
        """
        corr, future = self._pending.open(
            timeout, lambda: f"no reply from {what or topic} within {timeout:g} s"
        )
        user = (((TRACE_PROPERTY, trace),) if trace else ()) + user_properties
        props = request_props(
            self._reply_topic,
            corr,
            timeout if expiry_s is None else expiry_s,
            content_type=content_type,
            user_properties=user,
        )
        try:
            await self.transport.publish(topic, payload, props=props)
            return await future
        finally:
            future.cancel()  # no-op once settled; else the table forgets it

    def _on_reply(self, msg: Inbound) -> None:
        corr = msg.props.correlation_data
        if self._pending.get(corr) is None:
            log.debug("late or unknown reply on %s dropped", msg.topic)
            return
        try:
            self._pending.resolve(corr, decode_reply(msg.payload))
        except ValidationError as exc:
            self._pending.fail(corr, InternalError(f"malformed reply: {exc.errors()[0]['msg']}"))

    # Fleet view (edgeagent.fleet_view) ----------------------------------------------------------

    async def sync(self, timeout: float = 5.0) -> None:
        """Wait until retained messages sent before now have arrived (a marker round trip)."""
        await self._view.sync(timeout)

    async def devices(self, *, include_offline: bool = True) -> list[DeviceInfo]:
        """Every device that announced itself (from retained state and manifests)."""
        await self._view.track()
        found = sorted(self._view.devices.values(), key=lambda d: d.device)
        return [d for d in found if include_offline or d.online]

    async def device(self, device: str) -> DeviceInfo | None:
        await self._view.track()
        return self._view.devices.get(device)

    def watch(self, *, maxsize: int = 1000) -> AsyncGenerator[Message, None]:
        """Follow state, manifest and health messages as they arrive (retained ones first)."""
        return self._view.watch(maxsize=maxsize)

    def events(self, name: str = "+", *, maxsize: int = 1000) -> AsyncGenerator[Event, None]:
        """Follow events named ``name`` (``+``: all) from every device of the fleet."""
        return self._view.events(name, maxsize=maxsize)
