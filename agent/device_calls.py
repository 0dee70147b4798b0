"""Serving a device's calls: the I/O shell around admission and the idempotency cache.

:class:`CallServer` is the part of :class:`~edgeagent.device.DeviceAgent` that answers
``…/call/{skill}``. For every request it asks the pure policies what to do, in this order:
:func:`~edgeagent.admission.key_refusal`, the :class:`~edgeagent.idempotency.IdempotencyCache`,
:func:`~edgeagent.admission.admit`, :func:`~edgeagent.admission.parse_input`; then it queues the
call as a task in the agent's task group, runs the skill within the smaller of its ``timeout_s``
and the request's deadline (Message Expiry Interval, read on the injected clock), and publishes
the reply with :func:`~edgeagent.rpc.reply_props`. A call whose deadline passes while it waits
for a slot is dropped, not run.

Only this module publishes replies; the decisions are in :mod:`edgeagent.admission` and
:mod:`edgeagent.idempotency`, tested without a broker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Any, Protocol

from pydantic import BaseModel

from . import __version__
from .admission import Refusal, admit, key_refusal, parse_input
from .clock import Clock
from .config import AgentConfig
from .device_run import SkillSlot, run_skill
from .idempotency import CallKey, IdempotencyCache, Replay, Wait, call_key, input_digest
from .logutil import LogLimiter, clip
from .metrics_stats import OTHER
from .protocol import (
    CALLER_PROPERTY,
    HOP_PROPERTY,
    IDEMPOTENCY_PROPERTY,
    INPUT_PROPERTY,
    TRACE_PROPERTY,
    ErrorCode,
    ErrorReply,
    Ok,
    SkillHealth,
    SkillSpec,
    encode,
)
from .rpc import reply_props
from .skills import Skill, SkillContext
from .transport.base import Inbound, Props, Transport, valid_publish_topic

__all__ = ["CALL_LOG", "CallServer", "EmitAtHop"]

# The agent's logger: call records keep the name they always had.
log = logging.getLogger("edgeagent.device")
#: One limiter for every agent in the process (a simulated fleet runs 100,000): refused and
#: failed calls are logged a few at a time per kind, with counts of the rest.
CALL_LOG = LogLimiter(log)


class EmitAtHop(Protocol):
    """Publishes an event with the hop of the call whose skill emitted it (0: none)."""

    def __call__(
        self, name: str, data: dict[str, Any] | BaseModel | None = None, hop: int = 0
    ) -> None: ...


#: Where a reply goes: the response topic and the reply's properties.
_Waiter = tuple[str, Props]


class CallServer:
    """Admit, run and answer one device's calls; counts what it served, failed and dropped.

    The agent hands it the task group its calls run in (:meth:`open`), subscribes
    :meth:`on_call`, and at the end drains (:meth:`begin_drain`, :meth:`wait_idle`), cancels
    what is left (:meth:`cancel`) and :meth:`close`\\ s it.
    """

    __slots__ = (
        "_call_prefix",
        "_calls",
        "_clock",
        "_config",
        "_emit_at_hop",
        "_executor",
        "_group",
        "_idem",
        "_idle",
        "_own_executor",
        "_slots",
        "_started",
        "_transport",
        "draining",
        "dropped",
        "errors_by_code",
        "failed",
        "served",
    )

    def __init__(
        self,
        config: AgentConfig,
        skills: list[Skill],
        *,
        call_prefix: str,
        transport: Transport,
        clock: Clock,
        executor: concurrent.futures.Executor | None,
        emit_at_hop: EmitAtHop,
    ) -> None:
        """``executor`` runs synchronous skills (None: ``config.workers`` threads of its own,
        made by :meth:`open`); ``emit_at_hop`` publishes the events skills emit."""
        self._config = config
        self._slots = {s.name: SkillSlot(s) for s in skills}
        self._call_prefix = call_prefix
        self._transport = transport
        self._clock = clock
        self._executor = executor
        self._own_executor = executor is None
        self._emit_at_hop = emit_at_hop
        self._started = 0.0
        self._group: asyncio.TaskGroup | None = None
        # The running calls, owned by the agent's task group. Indexed here (a dict, not a set)
        # only to cancel them in the order they came: sets of tasks iterate by address, and the
        # simulator's runs must repeat exactly.
        self._calls: dict[asyncio.Task[None], None] = {}
        # Made on the first call with a key: most devices of a simulated fleet never see one.
        self._idem: IdempotencyCache[_Waiter] | None = None
        # Made when a drain starts: an idle agent holds no event (a simulated fleet has 100,000).
        self._idle: asyncio.Event | None = None
        self.draining = False
        self.served = 0
        self.failed = 0
        self.dropped = 0
        #: Error replies by (skill, code); a name that is no skill here counts as ``other``.
        self.errors_by_code: dict[tuple[str, str], int] = {}

    # The agent's view --------------------------------------------------------------------------

    def __len__(self) -> int:
        """How many skills are served."""
        return len(self._slots)

    def specs(self) -> list[SkillSpec]:
        return [s.skill.spec for s in self._slots.values()]

    def slots(self) -> list[SkillSlot]:
        """Each skill's load and statistics (read by metrics exporters)."""
        return list(self._slots.values())

    def skill_health(self) -> dict[str, SkillHealth]:
        return {s.skill.name: s.health() for s in self._slots.values()}

    def in_flight(self) -> int:
        return sum(s.in_flight for s in self._slots.values())

    def queued(self) -> int:
        return sum(s.queued for s in self._slots.values())

    def busy(self) -> int:
        """Calls running or waiting for a slot."""
        return sum(s.in_flight + s.queued for s in self._slots.values())

    # Lifecycle -----------------------------------------------------------------------------------

    def open(self, group: asyncio.TaskGroup, started: float) -> None:
        """Serve calls as tasks of ``group`` (the agent's, entered by its ``start``); the agent
        started at ``started`` (the clock's monotonic time: the ping's uptime)."""
        self._started = started
        if self._own_executor:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=self._config.workers,
                thread_name_prefix=f"skill-{self._config.device}",
            )
        self._group = group

    def begin_drain(self) -> None:
        """Refuse new calls (``unavailable``) from now on."""
        self.draining = True
        self._idle = asyncio.Event()

    async def wait_idle(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for the running and queued calls to finish (after
        :meth:`begin_drain`)."""
        if self.busy() and self._idle is not None:
            try:
                async with self._clock.timeout(grace_s):
                    await self._idle.wait()  # set by _finish when the last call ends
            except TimeoutError:
                pass
        if self.busy():
            log.warning(
                "%s: %d calls unfinished after %.1f s grace",
                self._config.device,
                self.busy(),
                grace_s,
            )

    def cancel(self) -> None:
        """Cancel the calls still running, in the order they came (no more are taken)."""
        self.draining = True
        self._group = None
        for task in list(self._calls):
            task.cancel()

    def close(self) -> None:
        """Shut down the executor if it is the server's own (threads still running finish)."""
        if self._executor is not None and self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # Replies -------------------------------------------------------------------------------------

    def _error_bytes(
        self,
        code: ErrorCode,
        message: str,
        skill: str,
        details: dict[str, Any] | None = None,
    ) -> bytes:
        self.failed += 1
        key = (skill if skill in self._slots else OTHER, code)
        self.errors_by_code[key] = self.errors_by_code.get(key, 0) + 1
        CALL_LOG.warning(
            f"call-{code}",
            "%s: call %s -> %s: %s",
            self._config.device,
            clip(skill),
            code,
            clip(message),
        )
        return encode(ErrorReply(code=code, message=message, details=details))

    def _refuse(self, topic: str, props: Props, refusal: Refusal, skill: str) -> None:
        payload = self._error_bytes(refusal.code, refusal.message, skill)
        self._transport.publish_nowait(topic, payload, props=props)

    def _reply_ping(self, topic: str, props: Props) -> None:
        """The system skill every agent answers (not listed among the skills): who and what
        it runs, so a deploy's health check needs nothing from the user's skills."""
        out = {
            "device": self._config.device,
            "release": self._config.release,
            "agent_version": __version__,
            "uptime_s": round(self._clock.monotonic() - self._started, 3),
            "skills": len(self._slots),
        }
        self._transport.publish_nowait(topic, encode(Ok(output=out)), props=props)

    def _duplicate(self, key: CallKey) -> None:
        CALL_LOG.info(
            "duplicate",
            "%s: duplicate call (idempotency key %s) answered from the first",
            self._config.device,
            clip(key[2], 40),
        )

    # Admission -----------------------------------------------------------------------------------

    def on_call(self, msg: Inbound) -> None:
        """A request on ``…/call/{skill}``: refuse it, answer it from the cache, or queue it."""
        name = msg.topic[len(self._call_prefix) :]
        props = msg.props
        reply_to = props.response_topic
        if not reply_to or not valid_publish_topic(reply_to):
            self.dropped += 1
            CALL_LOG.warning(
                "no-response-topic",
                "%s: call to %r dropped: without a response topic (or not a publishable one: %r)",
                self._config.device,
                clip(name),
                clip(reply_to),
            )
            return
        rprops = reply_props(props)
        key = props.user_property(IDEMPOTENCY_PROPERTY)
        idem: CallKey | None = None
        digest = b""
        if key is not None:
            refusal = key_refusal(key)
            if refusal is not None:
                self._refuse(reply_to, rprops, refusal, name)
                return
            caller = props.user_property(CALLER_PROPERTY) or reply_to
            idem = call_key(caller, name, key)
            digest = input_digest(
                msg.payload, props.content_type, props.user_property(INPUT_PROPERTY)
            )
            if self._idem is None:
                self._idem = IdempotencyCache()
            seen = self._idem.lookup(idem, digest, (reply_to, rprops))
            if isinstance(seen, Refusal):
                self._refuse(reply_to, rprops, seen, name)
                return
            if isinstance(seen, Replay):
                self._transport.publish_nowait(reply_to, seen.payload, props=rprops)
                self._duplicate(idem)
                return
            if isinstance(seen, Wait):
                self._duplicate(idem)
                return
        decision = admit(
            name,
            hop=props.user_property(HOP_PROPERTY),
            draining=self.draining,
            size=len(msg.payload),
            max_payload=self._config.max_payload,
            device=self._config.device,
            skills=self._slots,
        )
        if isinstance(decision, Refusal):
            if decision.skill_full:
                self._slots[name].rejected += 1
            self._refuse(reply_to, rprops, decision, name)
            return
        if decision.ping:
            self._reply_ping(reply_to, rprops)
            return
        slot = self._slots[name]
        value = parse_input(
            slot.skill, msg.payload, props.content_type, props.user_property(INPUT_PROPERTY)
        )
        if isinstance(value, Refusal):
            self._refuse(reply_to, rprops, value, name)
            return
        deadline = (
            self._clock.monotonic() + props.message_expiry
            if props.message_expiry is not None
            else None
        )
        assert self._group is not None
        slot.queued += 1
        if idem is not None and self._idem is not None:
            self._idem.start(idem, digest)
        task = self._group.create_task(
            self._run(
                slot,
                value,
                reply_to,
                rprops,
                props.user_property(TRACE_PROPERTY),
                deadline,
                idem,
                decision.hop,
            )
        )
        self._calls[task] = None
        task.add_done_callback(self._forget_call)

    # Running -------------------------------------------------------------------------------------

    async def _run(
        self,
        slot: SkillSlot,
        value: BaseModel,
        reply_to: str,
        rprops: Props,
        trace: str | None,
        deadline: float | None,
        idem: CallKey | None = None,
        hop: int = 0,
    ) -> None:
        skill = slot.skill
        replied: bytes | None = None
        # `queued` was counted at admission (in on_call), so a burst cannot overrun the limit.
        try:
            await slot.sem.acquire()
        finally:
            slot.queued -= 1
        release = True
        running = False
        try:
            now = self._clock.monotonic()
            if deadline is not None and now >= deadline:
                self.dropped += 1
                CALL_LOG.warning(
                    "expired",
                    "%s: call to %s expired while queued; dropped",
                    self._config.device,
                    skill.name,
                )
                return
            slot.in_flight += 1
            running = True
            budget = skill.options.timeout_s
            if deadline is not None:
                budget = min(budget, deadline - now)
            ctx = SkillContext(
                device=self._config.device,
                skill=skill.name,
                trace=trace,
                deadline=deadline,
                emit=functools.partial(self._emit_at_hop, hop=hop),
                log=log,
            )
            started = self._clock.monotonic()

            def abandon(fut: asyncio.Future[Any]) -> None:
                nonlocal release  # the thread keeps the slot until it returns
                release = False
                fut.add_done_callback(lambda _f: self._finish(slot))

            outcome = await run_skill(
                skill,
                value,
                ctx,
                budget=budget,
                clock=self._clock,
                executor=self._executor,
                abandon=abandon,
            )
            took = self._clock.monotonic() - started
            slot.latency.add(took)
            slot.runtime.observe(took)
            slot.calls += 1
            if isinstance(outcome, bytes):
                payload = outcome
                self.served += 1
            else:
                slot.errors += 1
                payload = self._error_bytes(
                    outcome.code, outcome.message, skill.name, outcome.details
                )
            self._transport.publish_nowait(reply_to, payload, props=rprops)
            replied = payload
        finally:
            if idem is not None:
                self._answer_repeats(idem, replied)
            if release:
                self._finish(slot, counted=running)

    def _answer_repeats(self, idem: CallKey, replied: bytes | None) -> None:
        """Record the reply (None: the call never ran, so the key may run again) and answer
        the repeats that waited for it."""
        if self._idem is None:
            return
        waiters = self._idem.finish(idem, replied)
        if replied is not None:
            for topic, props in waiters:
                self._transport.publish_nowait(topic, replied, props=props)

    def _forget_call(self, task: asyncio.Task[None]) -> None:
        self._calls.pop(task, None)

    def _finish(self, slot: SkillSlot, counted: bool = True) -> None:
        if counted:
            slot.in_flight -= 1
        slot.sem.release()
        if self.draining and self._idle is not None and not self.busy():
            self._idle.set()
