"""The rollout's pure decisions: canary, waves, parallel, failure threshold, deadlines, offline
devices, pause/resume/abort, conflicts, the serialised state, and invariants under random runs."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence

import pytest

from edgeagent.deploy.rollout_plan import Rollout
from edgeagent.deploy.rollout_state import (
    Action,
    DeviceOffline,
    DeviceOnline,
    DeviceView,
    Done,
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
    parse_max_failures,
    parse_waves,
    wave_ends,
)

NEW = "2.0"


def views(n: int, *, release: str = "1.0", prefix: str = "lamp", kind: str = "lamp",
          offline: Iterable[int] = ()) -> list[DeviceView]:  # fmt: skip
    off = set(offline)
    return [
        DeviceView(f"{prefix}-{i:03}", release, i not in off, {"kind": kind, "room": f"r{i % 3}"})
        for i in range(n)
    ]


def spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = {"id": "r1", "version": NEW, "bundle_hash": "h" * 64}
    base.update(kw)
    return RolloutSpec(**base)  # type: ignore[arg-type]


def started(actions: Sequence[Action]) -> list[str]:
    return [a.device for a in actions if isinstance(a, StartUpdate)]


def healthy(r: Rollout, devices: Iterable[str], now: float) -> None:
    for d in devices:
        r.observe(UpdateHealthy(d, NEW), now)


def test_canary_failure_halts_nobody_else_starts_and_the_canary_is_rolled_back() -> None:
    for max_failures in ("5%", "3"):  # the canary halts whatever the threshold
        r = Rollout.new(spec(parallel=5, max_failures=max_failures), views(20), 0)
        first = r.tick(0)
        assert first[0] == WaveStarted(1, 4, 1, canary=True)
        (canary,) = started(first)
        assert canary == r.ids[0]
        assert r.tick(1) == []  # nothing else while the canary updates
        r.observe(UpdateFailed(canary, "skill raises on import"), 2)
        out = r.tick(2)
        assert len(out) == 2
        assert isinstance(out[0], Halted)
        assert "canary failed" in out[0].reason
        assert "skill raises on import" in out[0].reason
        assert out[1] == RollBack(canary)
        assert r.phase == "halted"
        for t in range(3, 10):
            assert r.tick(t) == []  # no second RollBack, no start
        r.observe(UpdateRolledBack(canary, "1.0"), 10)
        st = r.status()
        assert st["counts"]["rolled_back"] == 1
        assert st["counts"]["pending"] == 19
        assert r.finished
        with pytest.raises(RolloutError, match=r"halted.*canary failed"):
            r.resume()


def test_canary_that_rolled_back_by_itself_is_not_told_to() -> None:
    r = Rollout.new(spec(), views(10), 0)
    (canary,) = started(r.tick(0))
    r.observe(UpdateFailed(canary, "health check: no answer"), 1)
    r.observe(UpdateRolledBack(canary, "1.0"), 2)
    out = r.tick(3)
    assert [type(a) for a in out] == [Halted]
    assert r.state_of(canary) is State.ROLLED_BACK


def test_waves_start_only_when_the_previous_one_is_done() -> None:
    r = Rollout.new(spec(parallel=100), views(100), 0)
    assert r.ends == [1, 10, 50, 100]
    out = r.tick(0)
    assert started(out) == r.ids[:1]
    healthy(r, r.ids[:1], 1)
    out = r.tick(1)
    assert out[0] == WaveStarted(2, 4, 9, canary=False)
    assert started(out) == r.ids[1:10]
    healthy(r, r.ids[1:9], 2)  # one of wave 2 still updating
    for t in range(2, 5):
        r.observe(UpdateProgress(r.ids[9]), t)
        assert r.tick(t) == []
    assert r.status()["wave"] == 2
    healthy(r, r.ids[9:10], 5)
    out = r.tick(5)
    assert out[0] == WaveStarted(3, 4, 40, canary=False)
    assert started(out) == r.ids[10:50]
    healthy(r, r.ids[10:50], 6)
    out = r.tick(6)
    assert started(out) == r.ids[50:100]
    healthy(r, r.ids[50:100], 7)
    assert r.tick(7) == [Done(healthy=100, failed=0, pending=0)]
    assert r.phase == "done"
    assert r.finished
    assert r.claims() == []
    assert r.tick(8) == []


def test_failure_within_budget_lets_the_next_wave_start() -> None:
    r = Rollout.new(spec(parallel=100, max_failures="1"), views(20), 0)
    healthy(r, started(r.tick(0)), 1)
    wave2 = started(r.tick(1))
    assert len(wave2) == 1  # ceil(10% of 20) = 2, the canary is one of them
    r.observe(UpdateFailed(wave2[0], "boom"), 2)
    out = r.tick(2)
    assert isinstance(out[0], WaveStarted)
    assert out[0].number == 3
    assert len(started(out)) == 8


def test_threshold_as_a_count() -> None:
    r = Rollout.new(spec(parallel=50, max_failures="2", waves=(1.0,)), views(30), 0)
    healthy(r, started(r.tick(0)), 1)
    rest = started(r.tick(1))
    assert len(rest) == 29
    for d in rest[:2]:
        r.observe(UpdateFailed(d, "x"), 2)
    assert r.tick(2) == []
    assert r.phase == "running"
    r.observe(UpdateFailed(rest[2], "x"), 3)
    out = r.tick(3)
    assert isinstance(out[0], Halted)
    assert "3 failures among 30" in out[0].reason
    assert "--max-failures 2 allows (2)" in out[0].reason
    assert {a.device for a in out[1:] if isinstance(a, RollBack)} == set(rest[:3])
    # updates under way when it halted: a later failure is rolled back, a success is kept
    r.observe(UpdateFailed(rest[3], "late"), 4)
    r.observe(UpdateHealthy(rest[4], NEW), 4)
    assert r.tick(4) == [RollBack(rest[3])]
    assert r.state_of(rest[4]) is State.HEALTHY


def test_threshold_as_a_share_of_the_devices_attempted() -> None:
    r = Rollout.new(spec(parallel=20, max_failures="10%", waves=(1.0,)), views(41), 0)
    healthy(r, started(r.tick(0)), 1)
    batch = started(r.tick(1))
    assert len(batch) == 20  # 21 attempted: floor(10% × 21) = 2 failures allowed
    for d in batch[:2]:
        r.observe(UpdateFailed(d, "x"), 2)
    assert len(started(r.tick(2))) == 2  # two slots freed
    st = r.status()
    assert st["attempted"] == 23
    assert st["allowed_failures"] == 2
    assert st["phase"] == "running"
    r.observe(UpdateRolledBack(batch[2], "1.0"), 3)  # a rollback counts as a failure
    out = r.tick(3)
    assert isinstance(out[0], Halted)
    assert "3 failures among 23" in out[0].reason


def test_parallel_limit_holds_at_every_tick() -> None:
    r = Rollout.new(spec(parallel=3, canary=0, waves=(1.0,)), views(20), 0)
    out = r.tick(0)
    assert out[0] == WaveStarted(1, 1, 20, canary=False)
    running = started(out)
    assert len(running) == 3
    t = 1.0
    while r.phase == "running":
        done = running.pop(0)
        healthy(r, [done], t)
        new = started(r.tick(t))
        assert len(new) <= 1
        running += new
        assert len(running) == r.status()["counts"]["updating"] <= 3
        t += 1
    assert r.status()["counts"]["healthy"] == 20


def test_devices_already_on_the_target_are_skipped() -> None:
    devs = views(10)
    devs[4] = DeviceView("lamp-004", NEW, True, {"kind": "lamp"})
    r = Rollout.new(spec(parallel=10, canary=0, waves=(1.0,)), devs, 0)
    assert r.state_of("lamp-004") is State.SKIPPED
    assert r.ends == [9]
    # another reached the target by other means before its turn
    r.observe(DeviceOnline(r.ids[5], NEW), 0)
    out = started(r.tick(0))
    assert len(out) == 8
    assert r.ids[5] not in out
    assert "lamp-004" not in out
    assert r.state_of(r.ids[5]) is State.SKIPPED
    assert r.status()["reasons"]["lamp-004"] == "already on 2.0"


def test_where_selects_by_tags() -> None:
    devs = views(6) + views(4, prefix="plug", kind="plug")
    r = Rollout.new(spec(where={"kind": "lamp", "room": "r0"}), devs, 0)
    assert sorted(r.ids) == ["lamp-000", "lamp-003"]
    st = r.status()
    assert st["selected"] == 2
    assert st["unmatched"] == 8
    r.observe(UpdateHealthy("plug-000", NEW), 1)  # not in this rollout: ignored
    assert r.state_of("plug-000") is None


def test_offline_device_is_updated_when_it_returns_else_pending_at_the_end() -> None:
    devs = views(6, offline=(2, 4))
    r = Rollout.new(spec(parallel=1, canary=0, waves=(1.0,)), devs, 0)
    order = r.ids
    away = [d for d in order if d in ("lamp-002", "lamp-004")]
    seen: list[str] = []
    t = 0.0
    while len(seen) < 4:
        new = started(r.tick(t))
        assert len(new) == 1
        assert new[0] not in away
        seen += new
        if len(seen) < 4:
            healthy(r, new, t)
        t += 1
    assert all(r.state_of(d) is State.OFFLINE for d in away)  # since the wave started
    assert r.status()["counts"]["offline"] == 2
    assert r.phase == "running"
    r.observe(DeviceOffline(seen[-1]), t)  # a restart during its update: not a failure
    r.observe(DeviceOnline(away[0], "1.0"), t)
    assert r.tick(t) == []  # --parallel 1: the slot is taken
    healthy(r, seen[-1:], t + 1)
    assert r.tick(t + 1) == [StartUpdate(away[0])]
    r.observe(UpdateHealthy(away[0], NEW), t + 2)
    assert r.tick(t + 2) == [Done(healthy=5, failed=0, pending=1)]
    assert r.state_of(away[1]) is State.PENDING
    assert r.status()["devices"]["pending"] == [away[1]]
    r.observe(DeviceOnline(away[1], "1.0"), t + 3)  # too late: the rollout is over
    assert r.tick(t + 3) == []


def test_devices_offline_when_their_wave_starts_wait_as_offline() -> None:
    r = Rollout.new(spec(parallel=1, canary=0, waves=(1.0,)), views(10, offline=range(5, 10)), 0)
    assert len(started(r.tick(0))) == 1
    assert r.status()["counts"]["offline"] == 5  # at once, not when their turn comes
    r.observe(
        DeviceOnline("lamp-007", "1.0"), 1
    )  # returns: queued, started first when a slot frees
    healthy(r, [d for d in r.ids if r.state_of(d) is State.UPDATING], 1)
    assert r.tick(1) == [StartUpdate("lamp-007")]


def test_offline_devices_can_be_waited_for() -> None:
    devs = views(3, offline=(0, 1, 2))
    r = Rollout.new(spec(canary=0, waves=(1.0,)), devs, 0)
    assert r.tick(0) == [WaveStarted(1, 1, 3, canary=False), Done(0, 0, 3)]  # nobody reachable
    r = Rollout.new(spec(canary=0, waves=(1.0,), wait_offline=60), devs, 0)
    assert r.tick(0) == [WaveStarted(1, 1, 3, canary=False)]
    assert r.status()["counts"]["offline"] == 3
    r.observe(DeviceOnline(r.ids[0], NEW), 1)  # returns on the target: skipped
    r.observe(DeviceOnline(r.ids[1], "1.0"), 1)
    assert r.tick(1) == [StartUpdate(r.ids[1])]
    assert r.state_of(r.ids[0]) is State.SKIPPED
    healthy(r, r.ids[1:2], 30)
    assert r.tick(30) == []  # 60 s from when only offline devices were left (0)
    assert r.tick(59.5) == []
    r2 = Rollout.from_json(r.to_json())
    assert r2.tick(60) == r.tick(60) == [Done(healthy=1, failed=0, pending=1)]


def test_deadline_turns_silence_into_failure() -> None:
    r = Rollout.new(spec(deadline=60, max_failures="5", canary=0, waves=(1.0,)), views(2), 0)
    a, b = started(r.tick(0))
    r.observe(UpdateProgress(a), 50)
    r.observe(DeviceOnline(a, NEW), 55)  # back after its restart: a report too
    assert r.tick(59.5) == []
    assert r.state_of(b) is State.UPDATING
    r.tick(60)
    assert r.state_of(b) is State.FAILED
    assert r.state_of(a) is State.UPDATING
    assert r.status()["reasons"][b] == "no report in 60 s"
    r.tick(114.5)
    assert r.state_of(a) is State.UPDATING
    assert r.tick(115) == [Done(healthy=0, failed=2, pending=0)]
    assert r.state_of(a) is State.FAILED
    r.observe(UpdateHealthy(a, NEW), 120)  # late but true: not halted, so it is recorded
    assert r.state_of(a) is State.HEALTHY
    assert a not in r.status()["reasons"]
    assert r.status()["counts"]["failed"] == 1


def test_canary_is_chosen_among_devices_online() -> None:
    devs = views(30, offline=range(0, 30, 2))
    r = Rollout.new(spec(canary=3), devs, 0)
    assert r.canary_n == 3
    canary = started(r.tick(0))
    assert canary == r.ids[:3]
    assert all(int(d[-3:]) % 2 == 1 for d in canary)
    # no canary online at all: the rollout waits for one rather than skip the proof
    r = Rollout.new(spec(canary=1, wait_offline=0), views(5, offline=range(5)), 0)
    assert r.tick(0) == [WaveStarted(1, 3, 1, canary=True)]
    assert r.tick(100) == []
    assert r.phase == "running"
    r.observe(DeviceOnline(r.ids[0], "1.0"), 101)
    assert r.tick(101) == [StartUpdate(r.ids[0])]
    healthy(r, r.ids[:1], 102)
    assert r.tick(102)[0] == WaveStarted(2, 3, 2, canary=False)


def test_pause_resume_abort() -> None:
    r = Rollout.new(
        spec(parallel=2, canary=0, waves=(1.0,), deadline=30, max_failures="5"), views(8), 0
    )
    a, b = started(r.tick(0))
    r.pause()
    healthy(r, [a], 1)
    assert r.tick(1) == []
    assert r.status()["phase"] == "paused"
    r.tick(40)  # deadlines still count while paused
    assert r.state_of(b) is State.FAILED
    r.resume()
    c, d = started(r.tick(41))
    r.abort()
    assert r.tick(42) == []
    assert r.phase == "aborted"
    healthy(r, [c], 43)  # left to finish, and recorded
    r.observe(UpdateFailed(d, "x"), 43)
    assert r.tick(44) == []  # aborting rolls nothing back
    st = r.status()
    assert st["counts"] == {"pending": 4, "skipped": 0, "conflict": 0, "offline": 0,
                            "updating": 0, "healthy": 2, "failed": 2, "rolled_back": 0}  # fmt: skip
    assert r.finished
    with pytest.raises(RolloutError, match="aborted"):
        r.pause()


def test_abort_while_updating_is_not_finished_until_the_outcome() -> None:
    r = Rollout.new(spec(), views(5), 0)
    (c,) = started(r.tick(0))
    r.abort()
    assert not r.finished
    assert r.claims() == [c]
    healthy(r, [c], 1)
    assert r.finished
    assert r.claims() == []
    done = Rollout.new(spec(), [], 0)
    assert done.tick(0) == [Done(0, 0, 0)]
    with pytest.raises(RolloutError, match="done"):
        done.abort()


def test_conflict_with_another_rollouts_claim() -> None:
    devs = views(4)
    devs[1] = DeviceView("lamp-001", "1.0", True, {"kind": "lamp"}, claimed_by="r0")
    devs[2] = DeviceView("lamp-002", "1.0", True, {"kind": "lamp"}, claimed_by="r1")  # our own
    r = Rollout.new(spec(parallel=10, canary=0, waves=(1.0,)), devs, 0)
    assert r.state_of("lamp-001") is State.CONFLICT
    assert sorted(started(r.tick(0))) == ["lamp-000", "lamp-002", "lamp-003"]
    assert "lamp-001" not in r.claims()
    st = r.status()
    assert st["devices"]["conflict"] == ["lamp-001"]
    assert st["reasons"]["lamp-001"] == "claimed by rollout r0"
    # the other operator's view: a second rollout over the same fleet sees our claims
    ours = set(r.claims())
    other_devs = [DeviceView(d.id, d.release, True, d.tags, "r1" if d.id in ours else None)
                  for d in devs]  # fmt: skip
    other = Rollout.new(spec(id="r2"), other_devs, 1)
    assert other.status()["counts"]["conflict"] == 3


def test_json_round_trip_mid_rollout_gives_the_same_next_actions() -> None:
    devs = views(40, offline=range(0, 40, 3))
    s = spec(parallel=4, max_failures="3", deadline=50, canary=2, waves=(0.5, 1.0))
    r = Rollout.new(s, devs, 1000.0)
    healthy(r, started(r.tick(1000)), 1001)
    first = started(r.tick(1001))
    assert len(first) == 4
    r.observe(UpdateFailed(first[0], "bad"), 1002)
    r.observe(UpdateProgress(first[1]), 1003)
    healthy(r, first[2:], 1003)
    more = started(r.tick(1004))
    assert len(more) == 3
    returning = [d for d in r.ids if r.state_of(d) is State.OFFLINE]
    assert returning
    r.observe(DeviceOnline(returning[0], "1.0"), 1005)
    text = r.to_json()
    assert json.loads(text)["v"] == 1
    assert " " not in text
    r2 = Rollout.from_json(text)
    assert r2.to_json() == text
    assert r2.status() == r.status()
    events = [UpdateHealthy(d, NEW) for d in more[:2]] + [UpdateFailed(more[2], "x")]
    for t, ev in zip((1006, 1007, 1008), events, strict=True):
        r.observe(ev, t)
        r2.observe(ev, t)
        assert r.tick(t) == r2.tick(t)
    assert r.tick(1060) == r2.tick(1060)  # deadlines rebuilt from the saved times
    assert r.to_json() == r2.to_json()


def test_saved_state_is_compact() -> None:
    r = Rollout.new(spec(parallel=100), views(1000), 0)
    r.tick(0)
    per_device = len(r.to_json()) / 1000
    assert per_device < 25, per_device


def test_wave_order_is_deterministic_per_rollout_id() -> None:
    devs = views(50)
    shuffled = devs[:]
    random.Random(5).shuffle(shuffled)
    a = Rollout.new(spec(), devs, 0).ids
    assert Rollout.new(spec(), shuffled, 0).ids == a
    assert a != [d.id for d in devs]  # spread, not the listing order
    b = Rollout.new(spec(id="r2"), devs, 0).ids
    assert b != a
    assert sorted(b) == sorted(a)


def test_wave_ends() -> None:
    assert wave_ends(100, 1, (0.1, 0.5, 1.0)) == [1, 10, 50, 100]
    assert wave_ends(5, 1, (0.1, 0.5, 1.0)) == [1, 3, 5]
    assert wave_ends(3, 5, (0.5, 1.0)) == [3]
    assert wave_ends(10, 0, (0.25, 1.0)) == [3, 10]
    assert wave_ends(0, 1, (1.0,)) == []


def test_options_are_parsed_and_refused_with_reasons() -> None:
    assert parse_waves("10%,50%,100%") == (0.1, 0.5, 1.0)
    assert parse_waves("0.2, 1") == (0.2, 1.0)
    assert parse_max_failures("5%") == (None, 0.05)
    assert parse_max_failures("3") == (3, None)
    for bad, match in [
        ("50%,10%,100%", "must grow"),
        ("10%,50%", "last wave must be 100%"),
        ("10", "at most 100%"),
        ("abc", "not a percentage"),
        ("", "at least one"),
    ]:
        with pytest.raises(RolloutError, match=match):
            parse_waves(bad)  # fmt: skip
    for bad in ("x", "-1", "150%", "1.5"):
        with pytest.raises(RolloutError, match="--max-failures"):
            parse_max_failures(bad)
    with pytest.raises(RolloutError, match="--parallel"):
        spec(parallel=0)
    with pytest.raises(RolloutError, match="--canary"):
        spec(canary=-1)
    with pytest.raises(RolloutError, match="more than once"):
        Rollout.new(spec(), views(2) + views(1), 0)
    assert spec(max_failures="0").allowed_failures(1000) == 0
    assert spec(max_failures="5%").allowed_failures(40) == 2


def test_bad_saved_state_is_refused() -> None:
    good = json.loads(Rollout.new(spec(), views(3), 0).to_json())
    with pytest.raises(RolloutError, match="format 2"):
        Rollout.from_json(json.dumps({**good, "v": 2}))
    with pytest.raises(RolloutError, match="malformed"):
        Rollout.from_json(json.dumps({**good, "st": "PP"}))
    with pytest.raises(RolloutError, match="malformed"):
        Rollout.from_json(json.dumps({k: v for k, v in good.items() if k != "ids"}))
    with pytest.raises(RolloutError, match="format"):
        Rollout.from_json("[]")


TERMINAL = {State.SKIPPED, State.CONFLICT, State.HEALTHY, State.FAILED, State.ROLLED_BACK,
            State.PENDING}  # fmt: skip


def _random_reports(r: Rollout, rng: random.Random, online: dict[str, bool], t: float) -> None:
    """A random report (or none) from every device, as a fleet might send them."""
    for d in r.ids:
        st = r.state_of(d)
        x = rng.random()
        if x < 0.03:
            r.observe(DeviceOffline(d), t)
            online[d] = False
        elif x < 0.08:
            r.observe(DeviceOnline(d, rng.choice(["1.0", NEW])), t)
            online[d] = True
        elif st is State.UPDATING and x < 0.4:
            y = rng.random()
            if y < 0.8:
                r.observe(UpdateHealthy(d, NEW), t)
            elif y < 0.84:
                r.observe(UpdateFailed(d, "random"), t)
            elif y < 0.86:
                r.observe(UpdateRolledBack(d, "1.0"), t)
            else:
                r.observe(UpdateProgress(d), t)


@pytest.mark.parametrize("seed", range(40))
def test_invariants_under_random_runs(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    devs = [
        DeviceView(f"d{i}", rng.choice(["1.0", "1.0", "1.0", NEW, None]), rng.random() > 0.2,
                   {"kind": rng.choice(["lamp", "lamp", "plug"])},
                   rng.choice([None] * 8 + ["other"]))
        for i in range(n)
    ]  # fmt: skip
    waves = (*tuple(sorted({rng.choice([0.1, 0.25, 0.5, 0.75]) for _ in range(2)})), 1.0)
    s = spec(id=f"r{seed}", canary=rng.randint(0, 3), waves=waves,
             parallel=rng.randint(1, 6), deadline=rng.choice([8.0, 30.0]),
             max_failures=rng.choice(["0", "2", "10", "10%", "30%", "100%"]),
             where={"kind": "lamp"} if rng.random() < 0.5 else {})  # fmt: skip
    abort_p = rng.choice([0.0, 0.0, 0.003])
    r = Rollout.new(s, devs, 0)
    online = {d.id: d.online for d in devs}
    rolled: set[str] = set()
    ever: set[str] = set()
    stopped = False  # halted or aborted seen
    done = False
    t = 0.0
    for _ in range(3000):
        t += rng.choice([0.5, 1.0, 3.0])
        _random_reports(r, rng, online, t)
        x = rng.random()
        if x < 0.02 and r.phase == "running":
            r.pause()
        elif x < 0.1 and r.phase == "paused":
            r.resume()
        elif 0.1 <= x < 0.1 + abort_p and r.phase in ("running", "paused"):
            r.abort()
            stopped = True
        if rng.random() < 0.05:
            r = Rollout.from_json(r.to_json())
        actions = r.tick(t)
        for a in actions:
            if isinstance(a, StartUpdate):
                assert not stopped
                assert not done
                assert a.device not in ever  # once per device
                assert online[a.device]
                ever.add(a.device)
                i = r.ids.index(a.device)
                assert i < r.ends[r.wave - 1]  # only devices of waves started
            elif isinstance(a, Halted | WaveStarted):
                assert not stopped
                assert not done
                stopped = stopped or isinstance(a, Halted)
            elif isinstance(a, RollBack):
                assert r.phase == "halted"
                assert r.state_of(a.device) is State.FAILED
                assert a.device not in rolled
                rolled.add(a.device)
            elif isinstance(a, Done):
                done = True
        assert r.status(devices=False)["counts"]["updating"] <= s.parallel
        if r.finished:
            break
    assert r.finished, "the rollout never finished"
    states = {r.state_of(d) for d in r.ids}
    assert states <= TERMINAL, states
    counts = r.status()["counts"]
    assert sum(counts.values()) == len(r.ids)
    if done:
        assert r.phase == "done"
        assert counts["pending"] == sum(1 for d in r.ids if r.state_of(d) is State.PENDING)
    # every device ever told to update was selected and is past "updating"
    assert all(r.state_of(d) in TERMINAL for d in ever)
