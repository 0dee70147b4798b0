"""The pure decisions of a fleet rollout: who updates when, when to halt, what to roll back.

No I/O and no clock: the caller (operator CLI, simulator, benchmark) passes ``now`` (seconds,
wall clock when the state is shared between machines; virtual time in the simulator), feeds
what the broker said with :meth:`Rollout.observe` and carries out what :meth:`Rollout.tick`
returns. The whole state round-trips through :meth:`Rollout.to_json` (kept in a retained
message), so another operator machine can carry on.

Rules:

- Selection: devices whose tags match ``where``; those already on the target release are
  ``skipped``, those claimed by another active rollout ``conflict``. The rest are ordered by a
  stable hash of (rollout id, device id): the canary first (the first devices online in that
  order), then the waves (cumulative shares of the selected devices, canary included).
- A wave starts only when every device of the earlier waves has had its turn and none is still
  updating, and after the canary wave only if a canary device is healthy (a canary offline at
  its turn is waited for); at most ``parallel`` devices update at once.
- A device offline at its turn waits as ``offline`` and is started when it returns while the
  rollout is running (or paused, then on resume); when the rollout ends it is ``pending``.
- Halting: any failure in the canary wave, or more failures (``failed`` + ``rolled_back``) than
  ``max_failures`` allows over the devices attempted so far (canary included). Then no new
  update starts and every failed device that has not rolled back by itself is told to (also
  those that fail later). Healthy devices stay on the new release.
- Deadline: an update that reports nothing for ``deadline`` seconds is ``failed``; a late
  ``healthy`` report still counts as long as the rollout has not halted.
- Pause: no new starts (updates under way go on, deadlines still count). Abort: the same for
  good; updates under way are left to finish and their outcomes recorded; nothing is rolled back.

Memory: a few bytes per device in arrays, plus the id and its index entry (about 250 bytes per
device in all); ``observe`` is O(1) and ``tick`` O(actions + expired deadlines).
"""

from __future__ import annotations

import heapq
import json
from array import array
from collections import deque
from collections.abc import Iterable
from typing import Any

from .rollout_state import (
    FORMAT_VERSION,
    LETTERS,
    Action,
    DeviceOffline,
    DeviceOnline,
    DeviceView,
    Done,
    Event,
    Halted,
    RollBack,
    RolloutError,
    RolloutSpec,
    StartUpdate,
    State,
    UpdateFailed,
    UpdateHealthy,
    UpdateProgress,
    UpdateRolledBack,
    WaveStarted,
    select,
    wave_ends,
)

PHASES = ("running", "paused", "halted", "aborted", "done")
ACTIVE = ("running", "paused")
_RB_SENT, _QUEUED = 1, 2
_P, _S, _C, _O, _U, _H, _F, _R = (int(s) for s in State)
_STATE_OF = {c: i for i, c in enumerate(LETTERS)}


class Rollout:
    """One rollout's state machine; build with :meth:`new` or :meth:`from_json`."""

    __slots__ = (
        "_canary_bad", "_changed", "_counts", "_cursor", "_flags", "_index", "_last", "_online",
        "_queue", "_rel", "_rel_index", "_releases", "_rollbacks", "_state", "_timers", "_why",
        "canary_n", "drained_at", "ends", "halt_reason", "ids", "phase", "spec", "started_at",
        "unmatched", "wave",
    )  # fmt: skip

    def __init__(self, spec: RolloutSpec, ids: list[str], started_at: float) -> None:
        n = len(ids)
        self.spec = spec
        self.ids = ids
        self.started_at = float(started_at)
        self.phase = "running"
        self.halt_reason: str | None = None
        self.drained_at: float | None = None  # when only offline devices were left
        self.ends: list[int] = []
        self.canary_n = 0
        self.wave = 0
        self.unmatched = 0
        self._index = {d: i for i, d in enumerate(ids)}
        if len(self._index) != n:
            raise RolloutError("the device list names a device more than once")
        self._state = bytearray(n)
        self._online = bytearray(n)
        self._flags = bytearray(n)
        self._rel = array("I", bytes(4 * n))
        self._releases: list[str | None] = [None]
        self._rel_index: dict[str | None, int] = {None: 0}
        self._last = array("d", bytes(8 * n))
        self._why: dict[int, str] = {}
        self._counts = [0] * len(State)
        self._counts[_P] = n
        self._canary_bad = 0
        self._cursor = 0
        self._queue: deque[int] = deque()
        self._timers: list[tuple[float, int]] = []
        self._rollbacks: list[int] = []
        self._changed: set[int] = set()  # devices whose state changed since take_changed()

    @classmethod
    def new(cls, spec: RolloutSpec, devices: Iterable[DeviceView], now: float) -> Rollout:
        """Select and order the devices; nothing starts before the first :meth:`tick`."""
        go, left, unmatched = select(spec, devices)
        views = go + [d for d, _, _ in left]
        r = cls(spec, [d.id for d in views], now)
        r.unmatched = unmatched
        r.ends = wave_ends(len(go), spec.canary, spec.waves)
        r.canary_n = r.ends[0] if spec.canary > 0 and r.ends else 0
        for i, d in enumerate(views):
            r._online[i] = d.online
            r._rel[i] = r._intern(d.release)
        for k, (_, state, why) in enumerate(left):
            r._set(len(go) + k, int(state))
            r._why[len(go) + k] = why
        return r

    # -- commands -------------------------------------------------------------------------

    def pause(self) -> None:
        if self.phase not in ACTIVE:
            raise RolloutError(f"cannot pause rollout {self.spec.id}: it is {self.phase}")
        self.phase = "paused"

    def resume(self) -> None:
        if self.phase not in ACTIVE:
            raise RolloutError(
                f"cannot resume rollout {self.spec.id}: it is {self.phase}"
                + (f" ({self.halt_reason})" if self.halt_reason else "")
                + "; start a new rollout (devices already updated are skipped)"
            )
        self.phase = "running"

    def abort(self) -> None:
        """No new starts and no roll-backs, for good; updates under way finish and are recorded."""
        if self.phase == "done":
            raise RolloutError(f"cannot abort rollout {self.spec.id}: it is done")
        if self.phase != "aborted":
            self._stop("aborted")

    # -- what the broker said ---------------------------------------------------------------

    def observe(self, event: Event, now: float) -> None:
        """Take one report into account; reports about devices outside the rollout, or that no
        longer matter (a late progress report of a failed update), are ignored."""
        i = self._index.get(event.device)
        if i is None:
            return
        s = self._state[i]
        if isinstance(event, DeviceOnline):
            self._online[i] = 1
            self._rel[i] = self._intern(event.release)
            if s == _U:
                self._last[i] = now
            elif s == _O and self.phase in ACTIVE and not self._flags[i] & _QUEUED:
                self._flags[i] |= _QUEUED
                self._queue.append(i)
        elif isinstance(event, DeviceOffline):
            self._online[i] = 0
        elif isinstance(event, UpdateProgress):
            if s == _U:
                self._last[i] = now
        elif isinstance(event, UpdateHealthy):
            late = s == _F and self.phase != "halted" and not self._flags[i] & _RB_SENT
            if (s == _U or late) and event.version == self.spec.version:
                self._set(i, _H)
                self._why.pop(i, None)
                self._rel[i] = self._intern(event.version)
            elif s == _U:
                self._fail(i, f"reported healthy on {event.version}, not {self.spec.version}")
        elif isinstance(event, UpdateFailed):
            if s in (_U, _H):
                self._fail(i, event.reason or "failed")
        elif isinstance(event, UpdateRolledBack) and s in (_U, _H, _F):
            self._rel[i] = self._intern(event.release)
            self._why.setdefault(i, f"rolled back to {event.release}")
            self._set(i, _R)

    # -- decisions ------------------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """What to do now. Call after feeding events, and periodically (deadlines)."""
        actions: list[Action] = []
        deadline = self.spec.deadline
        while self._timers and self._timers[0][0] <= now:
            _, i = heapq.heappop(self._timers)
            if self._state[i] != _U:
                continue
            if self._last[i] + deadline <= now:
                self._fail(i, f"no report in {deadline:g} s")
            else:
                heapq.heappush(self._timers, (self._last[i] + deadline, i))
        if self.phase in ACTIVE:
            reason = self._breach()
            if reason is not None:
                self.halt_reason = reason
                self._stop("halted")
                actions.append(Halted(reason))
                st, fl = self._state, self._flags
                self._rollbacks = [
                    i for i in range(len(st)) if st[i] == _F and not fl[i] & _RB_SENT
                ]
        if self._rollbacks:
            if self.phase == "halted":
                for i in self._rollbacks:
                    if self._state[i] != _F or self._flags[i] & _RB_SENT:
                        continue
                    self._flags[i] |= _RB_SENT
                    actions.append(RollBack(self.ids[i]))
            self._rollbacks = []
        if self.phase == "running":
            self._advance(now, actions)
        return actions

    def _breach(self) -> str | None:
        c = self._counts
        if self._canary_bad and self.wave == 1:
            bad = [
                f"{self.ids[i]} ({self._why.get(i, 'failed')})"
                for i in range(self.canary_n)
                if self._state[i] in (_F, _R)
            ]
            return "canary failed: " + ", ".join(bad)
        failures = c[_F] + c[_R]
        attempted = failures + c[_U] + c[_H]
        allowed = self.spec.allowed_failures(attempted)
        if failures > allowed:
            return (
                f"{failures} failures among {attempted} devices attempted: more than "
                f"--max-failures {self.spec.max_failures} allows ({allowed})"
            )
        return None

    def _advance(self, now: float, actions: list[Action]) -> None:
        st, on, target = self._state, self._online, self._rel_index.get(self.spec.version)
        parallel, c = self.spec.parallel, self._counts
        while True:
            while self._queue and c[_U] < parallel:
                i = self._queue.popleft()
                self._flags[i] &= ~_QUEUED
                if st[i] == _O and on[i]:
                    self._start(i, now, target, actions)
            end = self.ends[self.wave - 1] if self.wave else 0
            while self._cursor < end and c[_U] < parallel:
                i = self._cursor
                self._cursor += 1
                if st[i] != _P:
                    continue
                if on[i] or self._rel[i] == target:
                    self._start(i, now, target, actions)
                else:
                    self._set(i, _O)
            if self._cursor < end or c[_U]:
                return
            if self.wave == len(self.ends):
                if c[_O] and self.spec.wait_offline > 0:
                    if self.drained_at is None:
                        self.drained_at = float(now)
                    if now < self.drained_at + self.spec.wait_offline:
                        return
                self._stop("done")
                actions.append(Done(c[_H], c[_F] + c[_R], c[_P]))
                return
            if self.wave == 1 and self.canary_n and not self._canary_proved():
                return  # never past the canary without one canary healthy on the release
            self.wave += 1
            size = self.ends[self.wave - 1] - end
            for i in range(end, end + size):  # offline now: wait as such, started on return
                if not on[i] and self._rel[i] != target:
                    self._set(i, _O)
            canary = self.wave == 1 and self.canary_n > 0
            actions.append(WaveStarted(self.wave, len(self.ends), size, canary))

    def _canary_proved(self) -> bool:
        return any(self._state[i] in (_H, _S) for i in range(self.canary_n))

    def _start(self, i: int, now: float, target: int | None, actions: list[Action]) -> None:
        if self._rel[i] == target:
            self._set(i, _S)
            self._why[i] = f"already on {self.spec.version}"
            return
        self._set(i, _U)
        self._last[i] = now
        heapq.heappush(self._timers, (now + self.spec.deadline, i))
        actions.append(StartUpdate(self.ids[i]))

    def _fail(self, i: int, reason: str) -> None:
        self._why[i] = reason
        self._set(i, _F)
        if self.phase == "halted" and not self._flags[i] & _RB_SENT:
            self._rollbacks.append(i)

    def _set(self, i: int, state: int) -> None:
        old = self._state[i]
        self._counts[old] -= 1
        self._counts[state] += 1
        self._state[i] = state
        if old != state:
            self._changed.add(i)
        if i < self.canary_n:
            self._canary_bad += (state in (_F, _R)) - (old in (_F, _R))

    def _stop(self, phase: str) -> None:
        """Leave the active phases: waiting devices become pending; queued returns forgotten."""
        self.phase = phase
        st = self._state
        for i in range(len(st)):
            if st[i] == _O:
                self._set(i, _P)
            self._flags[i] &= ~_QUEUED
        self._queue.clear()

    def _intern(self, release: str | None) -> int:
        k = self._rel_index.get(release)
        if k is None:
            k = self._rel_index[release] = len(self._releases)
            self._releases.append(release)
        return k

    # -- reading the state ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Ended (done, halted or aborted) with no update still under way: nothing left to do
        but roll-backs already sent."""
        return self.phase not in ACTIVE and not self._counts[_U] and not self._rollbacks

    def take_changed(self) -> list[str]:
        """The devices whose state changed since the last call (at most one entry per device),
        so a caller follows changes without rescanning the fleet."""
        changed, self._changed = self._changed, set()
        return [self.ids[i] for i in sorted(changed)]

    def state_of(self, device: str) -> State | None:
        i = self._index.get(device)
        return None if i is None else State(self._state[i])

    def claims(self) -> list[str]:
        """Devices this rollout may still touch: another rollout must leave them alone."""
        keep = (_P, _O, _U) if self.phase in ACTIVE else (_U,)
        return [d for d, s in zip(self.ids, self._state, strict=True) if s in keep]

    def status(self, devices: bool = True) -> dict[str, Any]:
        """A small JSON-able summary for ``rollout status [--json]``; ``devices``: with the device
        ids per state and the reasons of failures and conflicts."""
        c = self._counts
        failures = c[_F] + c[_R]
        attempted = failures + c[_U] + c[_H]
        out: dict[str, Any] = {
            "id": self.spec.id, "version": self.spec.version, "phase": self.phase,
            "halted": self.halt_reason, "wave": self.wave, "waves": len(self.ends),
            "canary": self.canary_n, "selected": len(self.ids), "unmatched": self.unmatched,
            "counts": {s.label: c[s] for s in State}, "attempted": attempted,
            "failures": failures, "allowed_failures": self.spec.allowed_failures(attempted),
            "max_failures": self.spec.max_failures, "started_at": self.started_at,
        }  # fmt: skip
        if devices:
            per: dict[str, list[str]] = {s.label: [] for s in State if c[s]}
            for d, s in zip(self.ids, self._state, strict=True):
                per[State(s).label].append(d)
            out["devices"] = per
            out["reasons"] = {self.ids[i]: why for i, why in sorted(self._why.items())}
        return out

    # -- serialised form ------------------------------------------------------------------

    def to_json(self) -> str:
        """The whole state, compact: device ids once, one letter of state and one flag digit
        each, release indices into a small table, times only for updates under way."""
        st = self._state
        d = {
            "v": FORMAT_VERSION, "spec": self.spec.to_dict(), "phase": self.phase,
            "halt": self.halt_reason, "t0": float(self.started_at), "drained": self.drained_at,
            "ends": self.ends, "canary": self.canary_n, "wave": self.wave, "cursor": self._cursor,
            "unmatched": self.unmatched, "ids": self.ids,
            "st": "".join(LETTERS[s] for s in st),
            "fl": "".join(str(f | 4 * o) for f, o in zip(self._flags, self._online, strict=True)),
            "rels": self._releases, "rel": self._rel.tolist(),
            "last": {str(i): self._last[i] for i in range(len(st)) if st[i] == _U},
            "why": {str(i): w for i, w in self._why.items()},
            "q": list(self._queue), "rb": self._rollbacks,
        }  # fmt: skip
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> Rollout:
        try:
            d = json.loads(text)
            if not isinstance(d, dict) or d.get("v") != FORMAT_VERSION:
                got = d.get("v") if isinstance(d, dict) else type(d).__name__
                raise RolloutError(
                    f"saved rollout state has format {got!r}; this edgeagent reads {FORMAT_VERSION}"
                )
            r = cls(RolloutSpec.from_dict(d["spec"]), [str(x) for x in d["ids"]], float(d["t0"]))
            if d["phase"] not in PHASES:
                raise ValueError(f"phase {d['phase']!r}")
            r.phase = d["phase"]
            r.halt_reason = None if d["halt"] is None else str(d["halt"])
            r.drained_at = None if d["drained"] is None else float(d["drained"])
            r.ends, r.canary_n = [int(e) for e in d["ends"]], int(d["canary"])
            r.wave, r._cursor, r.unmatched = int(d["wave"]), int(d["cursor"]), int(d["unmatched"])
            n = len(r.ids)
            if len(d["st"]) != n or len(d["fl"]) != n or len(d["rel"]) != n:
                raise ValueError("per-device fields do not match the device list")
            r._releases = [None if x is None else str(x) for x in d["rels"]]
            r._rel_index = {x: k for k, x in enumerate(r._releases)}
            r._rel = array("I", (int(x) for x in d["rel"]))
            if r._rel and max(r._rel) >= len(r._releases):
                raise ValueError("release index out of range")
            for i, (letter, f) in enumerate(zip(d["st"], d["fl"], strict=True)):
                r._set(i, _STATE_OF[letter])
                r._flags[i], r._online[i] = int(f) & 3, int(f) >> 2
            for k, t in d["last"].items():
                i = int(k)
                r._last[i] = float(t)
                heapq.heappush(r._timers, (r._last[i] + r.spec.deadline, i))
            r._why = {int(k): str(w) for k, w in d["why"].items()}
            r._queue = deque(int(i) for i in d["q"])
            r._rollbacks = [int(i) for i in d["rb"]]
        except RolloutError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise RolloutError(f"saved rollout state is malformed: {e!r}") from e
        r._changed.clear()  # loaded, not changed
        return r
