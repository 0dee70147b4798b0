"""The loop of a running rollout: :class:`Driver` feeds the planner (``rollout_plan.Rollout``)
what the devices report and carries out what it decides, over one MQTT connection.

Inputs: every device's ``…/dev/{device}/update`` report (agent/system.py) about this rollout
(``rollout`` is its id) or its target version; a retained one only when it tells what a device
under way did while nobody listened. State and manifest messages say which devices are online
and on what release. Control messages (pause, resume, abort) on ``…/rollout/{id}/control``.
Outputs: ``system.update`` (an ``unavailable`` answer is asked again a few times, shortly; a
refused or unanswered call is a failure) and ``system.rollback`` calls (only to a device that
switched: one still on its old release is rolled back already), the planner's state retained
on ``…/rollout/{id}`` at most once a second and on every phase or wave change, and what happens
to the :class:`Reporter`. The content files are served by a ``FileServer`` named
``rollout-{id}`` while the driver runs. Time is the fleet's clock
(``Fleet.clock``): the simulator drives a rollout on virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..client import Fleet
from ..errors import EdgeAgentError, TransportError, Unavailable
from ..protocol import Manifest, StateMessage
from ..transport.base import Inbound
from .rollout_io import (
    COMMANDS,
    Release,
    control_topic,
    encode_state,
    parse_json,
    server_name,
    state_topic,
    sync,
    update_topics,
)
from .rollout_plan import Rollout
from .rollout_state import (
    Action,
    DeviceOffline,
    DeviceOnline,
    Done,
    Event,
    Halted,
    RollBack,
    RolloutError,
    StartUpdate,
    State,
    UpdateFailed,
    UpdateHealthy,
    UpdateProgress,
    UpdateRolledBack,
    WaveStarted,
)
from .transfer_mqtt import FileServer

log = logging.getLogger(__name__)

#: Seconds a ``system.update`` / ``system.rollback`` call may take to be answered (the work goes
#: on after the reply).
CALL_TIMEOUT = 30.0
#: How long the driver waits at the end for devices told to roll back to say they did.
ROLLBACK_WAIT = 60.0
#: A retained report older than the rollout by more than this is history (clock skew allowed).
SKEW = 60.0
#: ``system.update`` answered ``unavailable`` is asked again after these pauses (seconds), then
#: it is a failure: an agent that has just come online answers so until its system skills have
#: taken hold of it (agent/system.py ``SystemSkills.run``), a moment; one shutting down, too.
UNAVAILABLE_RETRIES = (0.25, 0.5, 1.0, 2.0)
#: A device seen going offline while it downloaded, back online on its old release, is asked
#: again (the transfer resumes from its partial files) at most this many times per rollout.
RESUMES = 3
_PROGRESS = {"downloading", "applying", "verifying"}


class Reporter(Protocol):
    """What the driver tells its user (the CLI prints it)."""

    def selected(self, rollout: Rollout, excluded: Mapping[str, str]) -> None: ...
    def wave(self, wave: WaveStarted) -> None: ...
    def device(self, device: str, state: str, detail: str) -> None: ...
    def note(self, text: str) -> None: ...
    def progress(self, rollout: Rollout) -> None: ...


class QuietReporter:
    def selected(self, rollout: Rollout, excluded: Mapping[str, str]) -> None:
        pass

    def wave(self, wave: WaveStarted) -> None:
        pass

    def device(self, device: str, state: str, detail: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def progress(self, rollout: Rollout) -> None:
        pass


@dataclass(slots=True)
class Outcome:
    status: dict[str, Any]
    code: int
    """0: done with no failure; 1: halted, aborted, or failures; 130: stopped driving (Ctrl-C)."""
    interrupted: bool = False


def exit_code(r: Rollout) -> int:
    failures = r.status(devices=False)["failures"]
    return 0 if r.phase == "done" and not failures else 1


class Driver:
    """Feeds the planner and carries out its actions until the rollout is finished."""

    def __init__(
        self, fleet: Fleet, rollout: Rollout, release: Release, reporter: Reporter
    ) -> None:
        self.fleet = fleet
        self.r = rollout
        self.release = release
        self.reporter = reporter
        self.topics = fleet.topics
        self._events: list[Event] = []
        self._commands: list[tuple[str, str]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._releases: dict[str, str | None] = {}  # as the devices announce them
        self._online: dict[str, bool] = {}
        # Devices whose next change is printed: those updating (a resumed rollout's too).
        self._shown: dict[str, State] = {
            d: State.UPDATING for d in rollout.ids if rollout.state_of(d) == State.UPDATING
        }
        self._why: dict[str, str] = {}
        self._rolling: dict[str, float] = {}  # told to roll back: when
        self._downloading: set[str] = set()  # their last report for this rollout: downloading
        self._resumed: dict[str, int] = {}  # asked again after coming back mid-download: times
        self._pub_at = 0.0
        self._pub_key: tuple[str, int] | None = None
        self._dirty = True

    @property
    def wake(self) -> asyncio.Event:
        """What wakes the driving loop (an event or command queued). Public so a benchmark's
        memory accounting can stop at it; setting it from outside is not part of the API."""
        return self._wake

    # -- inputs ------------------------------------------------------------------------------

    def _push(self, event: Event) -> None:
        self._events.append(event)
        self._wake.set()

    def _on_update(self, msg: Inbound) -> None:
        parts = msg.topic.split("/")
        device = parts[-2] if len(parts) >= 2 else ""
        data = parse_json(msg.payload) if msg.payload else None
        st = self.r.state_of(device)
        if data is None or st is None:
            return
        state, version = data.get("state"), data.get("version")
        ours = data.get("rollout") == self.r.spec.id
        if not ours and (version is None or version != self.release.target(device)):
            return
        if msg.retain and not ours:
            # History, unless it tells what a device under way did while nobody listened.
            ts = data.get("ts")
            fresh = isinstance(ts, int | float) and ts >= self.r.started_at - SKEW
            if st not in (State.UPDATING, State.HEALTHY, State.FAILED) or not fresh:
                return
        error = str(data.get("error") or state)
        if state == "downloading":
            self._downloading.add(device)
        else:
            self._downloading.discard(device)
        if state in _PROGRESS:
            self._push(UpdateProgress(device))
        elif state in ("healthy", "current"):
            self._push(UpdateHealthy(device, self.release.label))
        elif state == "failed":
            self._why[device] = error
            self._push(UpdateFailed(device, error))
        elif state == "rolled_back":
            back = data.get("release")
            self._why[device] = f"rolled back to {back}: {error}"
            self._push(UpdateRolledBack(device, self.release.norm(device, back)))

    def _on_control(self, msg: Inbound) -> None:
        data = parse_json(msg.payload)
        if data is not None and data.get("command") in COMMANDS:
            self._commands.append((str(data["command"]), str(data.get("by", "?"))))
            self._wake.set()

    async def _watch(self) -> None:
        norm = self.release.norm
        async for msg in self.fleet.watch():
            d = getattr(msg, "device", "")
            if self.r.state_of(d) is None:
                continue
            if isinstance(msg, Manifest):
                self._releases[d] = msg.release
                if self._online.get(d):
                    self._push(DeviceOnline(d, norm(d, msg.release)))
            elif isinstance(msg, StateMessage):
                online = msg.status == "online"
                if online != self._online.get(d):
                    back = online and d in self._online  # (not the first sight of it)
                    self._online[d] = online
                    event = DeviceOnline(d, norm(d, self._releases.get(d))) if online else None
                    self._push(event or DeviceOffline(d))
                    if back:
                        self._resume(d)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> Outcome:
        t, topics, rid = self.fleet.transport, self.topics, self.r.spec.id
        server = FileServer(t, list(self.release.stores), root=topics.root, fleet=topics.fleet,
                            server=server_name(rid))  # fmt: skip
        await server.start()
        await t.subscribe(update_topics(topics), self._on_update, qos=1)
        await t.subscribe(control_topic(topics, rid), self._on_control, qos=1)
        await self.fleet.devices()
        await sync(t, topics)  # the retained reports are in before the first decision
        watcher = asyncio.create_task(self._watch(), name=f"rollout-{rid}-watch")
        try:
            await self._loop(stop)
        finally:
            watcher.cancel()
            for task in [watcher, *self._tasks]:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(TransportError):
                await self._publish(self.fleet.clock.time(), force=True)
            await server.stop()
            for f in (update_topics(topics), control_topic(topics, rid)):
                with contextlib.suppress(TransportError):
                    await t.unsubscribe(f)
        interrupted = stop.is_set() and not self._over(self.fleet.clock.time())
        status = self.r.status()
        status["server"] = {"bytes_served": server.stats.bytes_served,
                            "chunks_served": server.stats.chunks_served}  # fmt: skip
        return Outcome(status, 130 if interrupted else exit_code(self.r), interrupted)

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            now = self.fleet.clock.time()
            self._step(now)
            try:
                await self._publish(now)
            except TransportError as exc:
                log.warning("rollout state not published (will retry): %s", exc)
            if self._over(now):
                return

    def _over(self, now: float) -> bool:
        if not self.r.finished or self._tasks or self._events:
            return False
        waiting = [d for d, at in self._rolling.items()
                   if self.r.state_of(d) == State.FAILED and now - at < ROLLBACK_WAIT]  # fmt: skip
        return not waiting

    def _step(self, now: float) -> None:
        r = self.r
        events, self._events = self._events, []
        for ev in events:
            if not isinstance(ev, DeviceOnline | DeviceOffline) and ev.device not in self._shown:
                old = r.state_of(ev.device)
                if old is not None:
                    self._shown[ev.device] = old
            r.observe(ev, now)
        self._report_changes()  # before what they lead to (a wave started, a halt)
        commands, self._commands = self._commands, []
        for what, by in commands:
            try:
                getattr(r, what)()
                self.reporter.note(f"{what} (asked by {by}): rollout is {r.phase}")
            except RolloutError as exc:
                self.reporter.note(f"{what} (asked by {by}) refused: {exc}")
        actions = r.tick(now)
        self._report_changes()  # deadlines passed
        for a in actions:
            self._act(a, now)
        self._dirty = self._dirty or bool(events or commands or actions)
        if self._dirty:
            self.reporter.progress(r)

    def _act(self, a: Action, now: float) -> None:
        if isinstance(a, StartUpdate):
            self._shown[a.device] = State.UPDATING
            self.reporter.device(a.device, "updating", f"to {self.release.target(a.device)}")
            self._spawn(self._update(a.device), a.device)
        elif isinstance(a, RollBack):
            d = a.device
            rel = self._releases.get(d)
            if rel is not None and rel != self.release.target(d):
                # It never switched (failed while downloading or verifying the bundle): it is on
                # its previous release already; nothing to call.
                self._why[d] = f"still on {rel}"
                self._push(UpdateRolledBack(d, self.release.norm(d, rel)))
                return
            self._rolling[d] = now
            self.reporter.device(d, "rolling back", f"from {self.release.target(d)}")
            self._spawn(self._rollback(d), d)
        elif isinstance(a, WaveStarted):
            self.reporter.wave(a)
        elif isinstance(a, Halted):
            self.reporter.note(f"halted: {a.reason}")
        elif isinstance(a, Done):
            self.reporter.note(
                f"done: {a.healthy} healthy, {a.failed} failed, {a.pending} pending (offline)"
            )

    def _report_changes(self) -> None:
        for d in self.r.take_changed():  # (not a rescan of every device shown: issue 12 bench)
            old = self._shown.get(d)
            if old is None:
                continue
            new = self.r.state_of(d)
            if new is None or new == old or new == State.UPDATING:
                continue  # (a start is reported with its action)
            if new == State.HEALTHY:
                detail = f"on {self.release.target(d)}"
            elif new == State.FAILED and d not in self._why:
                detail = f"no report in {self.r.spec.deadline:g} s"
            else:
                detail = self._why.get(d, "")
            self.reporter.device(d, new.label, detail)
            del self._shown[d]

    def _spawn(self, coro: Any, device: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"rollout-call-{device}")
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._wake.set()

        task.add_done_callback(done)

    def _resume(self, d: str) -> None:
        """``d`` is back online: if it went away in the middle of its download (a restart, a
        crash, a power cut: its agent does not pick an interrupted update up by itself), ask
        again; its partial files make it a resume. Asked while the update still runs (only the
        connection was lost), the device answers that it is running."""
        if d not in self._downloading or self.r.state_of(d) != State.UPDATING:
            return
        if self._resumed.get(d, 0) >= RESUMES:
            return
        self._resumed[d] = self._resumed.get(d, 0) + 1
        self._downloading.discard(d)
        self.reporter.device(d, "updating", "back online mid-download: asked again")
        self._spawn(self._update(d), d)

    async def _update(self, d: str) -> None:
        try:
            manifest, signature = self.release.request(d)
            request = {
                "manifest": manifest, "signature": signature,
                "server": server_name(self.r.spec.id), "rollout": self.r.spec.id,
                "confirm_within_s": self.r.spec.confirm_within,
            }  # fmt: skip
            for pause in (*UNAVAILABLE_RETRIES, None):
                try:
                    out = await self.fleet.call(d, "system.update", request, timeout=CALL_TIMEOUT)
                    break
                except Unavailable:
                    if pause is None:
                        raise
                    await self.fleet.clock.sleep(pause)  # starting (or stopping): ask again
        except EdgeAgentError as exc:
            self._why[d] = f"system.update: {exc}"
            self._push(UpdateFailed(d, self._why[d]))
            return
        if isinstance(out, dict) and out.get("state") == "current":
            self._push(UpdateHealthy(d, self.release.label))
        else:
            self._push(UpdateProgress(d))

    async def _rollback(self, d: str) -> None:
        try:
            out = await self.fleet.call(d, "system.rollback", {}, timeout=CALL_TIMEOUT)
        except EdgeAgentError as exc:
            self.reporter.note(f"{d}: system.rollback failed: {exc}")
            self._rolling.pop(d, None)
            return
        if isinstance(out, dict) and not out.get("ok", True):
            self.reporter.note(f"{d}: system.rollback: {out.get('detail')}")
            self._rolling.pop(d, None)

    async def _publish(self, now: float, *, force: bool = False) -> None:
        key = (self.r.phase, self.r.wave)
        if not force and key == self._pub_key and (not self._dirty or now - self._pub_at < 1.0):
            return
        payload, props = encode_state(self.r.to_json())
        await self.fleet.transport.publish(
            state_topic(self.topics, self.r.spec.id), payload, qos=1, retain=True, props=props
        )
        self._pub_at, self._pub_key, self._dirty = now, key, False
