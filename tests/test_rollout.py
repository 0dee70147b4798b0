"""`edgeagent rollout` (issue 12), for real: six deployed devices in process mode (one fleet, one
signing key, a device root each, their agents real processes) on the test's mosquitto, and the
operator CLI as a process of its own. One fleet serves every test of the module, each test rolling
out the next release (a `version_marker` skill that answers with the release's marker).

Bundles are per device (a bundle carries its agent's config): a release is a folder of six."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from edgeagent.cli import main
from edgeagent.client import DeviceInfo
from edgeagent.deploy import minisign
from edgeagent.deploy.errors import BundleInvalid
from edgeagent.deploy.rollout_io import (
    DeviceBundle,
    Release,
    decode_state,
    encode_state,
    load_release,
)
from edgeagent.deploy.rollout_plan import Rollout
from edgeagent.deploy.rollout_run import select_views
from edgeagent.deploy.rollout_state import DeviceView, RolloutSpec, State, order_key
from edgeagent.protocol import Manifest, SkillSpec
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import announced_release, build, call
from tests.updatelab import (
    Device,
    build_set,
    install_first,
    new_fleet,
    pinned_edgeagent_wheel,
    set_echo,
    share_env,
    start_agent,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]

N = 6
#: --confirm-within of the rollouts here: a switch not confirmed by then is undone by the device.
CONFIRM = "15"


@dataclass
class Lab:
    devices: list[Device]
    broker: str
    fleet: str
    work: Path
    releases: dict[str, Path] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.work / "cache"

    def release(self, marker: str, *, broken: bool = False) -> Path:
        """Build the next release, one bundle per device, with ``version_marker`` answering
        ``MARKER:…`` (and raising on import when ``broken``)."""
        stop_drivers(self, abort=True)  # what a failed test left running would hold devices
        name = marker + ("-broken" if broken else "")
        for d in self.devices:
            set_echo(d, marker, broken=broken)
        build_set(self.devices, self.work / "rel" / name, self.cache, check_import=not broken)
        self.releases[name] = self.work / "rel" / name
        return self.releases[name]

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "edgeagent.cli", "--broker", self.broker,
                "--fleet", self.fleet, *args]  # fmt: skip

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_STATE_HOME": str(self.work / "state")}

    def cli(self, *args: str, timeout: float = 200) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env(),
                              timeout=timeout, check=False)  # fmt: skip

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.env())  # fmt: skip

    def status(self, rid: str, *, wait: float = 30) -> dict[str, Any]:
        """``rollout status RID --json`` (waiting for a rollout just started to be there)."""
        deadline = time.monotonic() + wait
        while True:
            res = CliRunner().invoke(main, ["--broker", self.broker, "--fleet", self.fleet,
                                            "rollout", "status", rid, "--json"])  # fmt: skip
            if res.exit_code == 0 or time.monotonic() > deadline:
                break
            assert "no rollout" in res.output, res.output
            time.sleep(0.5)
        assert res.exit_code == 0, res.output
        data = json.loads(res.stdout)
        assert isinstance(data, dict)
        return data

    def releases_now(self) -> dict[str, str | None]:
        return {
            d.device: announced_release(self.broker, self.fleet, d.device) for d in self.devices
        }

    def markers(self) -> dict[str, Any]:
        out = {}
        for d in self.devices:
            try:
                out[d.device] = call(self.broker, self.fleet, d.device, "version_marker",
                                     {"data": "x"}, timeout=10)  # fmt: skip
            except Exception as exc:  # the skill may not exist (release A)
                out[d.device] = type(exc).__name__
        return out


def versions(path: Path) -> dict[str, str]:
    return {d: b.version for d, b in load_release(path).bundles.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("rollout")
    with pinned_edgeagent_wheel():
        devices = new_fleet(work, mosquitto.url, N)
        lab = Lab(devices, mosquitto.url, devices[0].fleet, work)
        try:
            first = build_set(devices, work / "rel" / "a", lab.cache)
            lab.releases["a"] = work / "rel" / "a"
            for k, d in enumerate(devices):
                if k:
                    share_env(d, first[d.device], devices[0])
                install_first(d, first[d.device])
            want = versions(lab.releases["a"])
            wait_for("six devices online on release A", lambda: lab.releases_now() == want, 90)
            yield lab
        finally:
            for d in devices:
                d.stop()
            with contextlib.suppress(Exception):
                stop_drivers(lab)
            stop_timers(devices)


def stop_timers(devices: list[Device]) -> None:
    """End the device tool's rollback timers (process mode: a sleeping process per switch, 600 s
    for the first install) that these devices left."""
    roots = {str(d.root) for d in devices}
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError):
            args = (proc / "cmdline").read_bytes().split(b"\0")
            words = [a.decode() for a in args]
            if "auto-rollback" in words and words[words.index("--root") + 1] in roots:
                os.kill(int(proc.name), signal.SIGTERM)


def stop_drivers(lab: Lab, *, abort: bool = False) -> None:
    """Kill the background operators a failed test left behind (a paused one runs forever);
    ``abort``: and abort the rollouts still active."""
    res = lab.cli("rollout", "ls", "--json", timeout=30)
    for r in json.loads(res.stdout or "[]"):
        driver = r.get("driver") or {}
        if driver.get("alive") and driver.get("pid"):
            with contextlib.suppress(OSError):
                os.kill(int(driver["pid"]), signal.SIGKILL)
            wait_for("driver gone", lambda rid=r["id"]: not lab.status(rid)["driver"]["alive"], 30)
        if abort and r.get("phase") in ("running", "paused"):
            lab.cli("rollout", "abort", r["id"], timeout=30)


class UpdateLog:
    """Every live ``…/dev/+/update`` report, with the time it arrived (a paho client of its
    own, in its own thread)."""

    def __init__(self, lab: Lab) -> None:
        self.reports: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._ready.set()
        host, port = lab.broker.removeprefix("mqtt://").rsplit(":", 1)
        self._client.connect(host, int(port))
        self._client.subscribe(f"edgeagent/{lab.fleet}/dev/+/update", qos=1)
        self._client.loop_start()
        assert self._ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        if not msg.retain:
            with self._lock:
                self.reports.append(
                    (time.time(), msg.topic.split("/")[-2], json.loads(msg.payload))
                )

    def first(self, state: str, version_of: dict[str, str]) -> dict[str, float]:
        """device → when it first reported ``state`` for its target version."""
        out: dict[str, float] = {}
        with self._lock:
            for t, d, r in self.reports:
                if r.get("state") == state and r.get("version") == version_of.get(d):
                    out.setdefault(d, t)
        return out

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def agent_log(dev: Device) -> str:
    """The end of a device's agent log and history (for a failure's message)."""
    out = []
    for f in (dev.root / "log" / "agent.log", dev.root / "log" / "apply.log",
              dev.root / "history.jsonl"):  # fmt: skip
        with contextlib.suppress(OSError):
            out.append(f"--- {f}\n" + f.read_text(errors="replace")[-3000:])
    return "\n".join(out)


def waves_from_output(out: str) -> list[list[str]]:
    """The devices started after each ``wave k/n`` line, in order."""
    waves: list[list[str]] = []
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "wave":
            waves.append([])
        elif len(words) >= 3 and words[2] == "updating:" and waves:
            waves[-1].append(words[1])
    return waves


# -- no devices needed ------------------------------------------------------------------------


def test_bad_input_exits_2(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["--broker", "mqtt://127.0.0.1:9", "rollout", "start"]
    res = runner.invoke(main, [*base, str(tmp_path)])
    assert res.exit_code == 2
    assert "no bundle.json" in res.output
    for extra, message in [(["--waves", "50%,20%"], "must grow"),
                           (["--max-failures", "lots"], "neither a count"),
                           (["--confirm-within", "5"], "not within 10-3600"),
                           (["--deadline", "60", "--confirm-within", "120"], "must be longer"),
                           (["--id", "a/b"], "invalid rollout id")]:  # fmt: skip
        res = runner.invoke(main, [*base, str(tmp_path), *extra])
        assert res.exit_code == 2, (extra, res.output)
        assert message in res.output, (extra, res.output)


def test_big_states_are_compressed() -> None:
    spec = RolloutSpec(id="r-big", version="2.0")
    views = [DeviceView(f"device-with-a-long-name-{i:06}", "1.0") for i in range(20_000)]
    r = Rollout.new(spec, views, 1000.0)
    r.tick(1000.0)
    text = r.to_json()
    assert len(text) > 256 * 1024
    payload, props = encode_state(text)
    assert props.content_type == "application/zlib"
    assert props.user_property("encoding") == "zlib"
    assert len(payload) < len(text) / 4
    again = Rollout.from_json(decode_state(payload, props))
    assert again.status() == r.status()
    small, plain = encode_state(Rollout.new(spec, views[:10], 1000.0).to_json())
    assert plain.content_type == "application/json"
    assert json.loads(small)["spec"]["id"] == "r-big"


def test_selection_leaves_out_devices_it_cannot_update(tmp_path: Path) -> None:
    def skill(name: str) -> SkillSpec:
        return SkillSpec(name=name, side_effect="actuate", idempotent=False,
                         input_schema={}, output_schema={}, max_concurrency=1, max_queue=1,
                         timeout_s=10)  # fmt: skip

    def info(d: str, profile: str, release: str, skills: tuple[str, ...] = ("system.update",),
             kind: str = "lamp", online: bool = True) -> DeviceInfo:  # fmt: skip
        m = Manifest(device=d, fleet="f", profile=profile, tags={"kind": kind},
                     skills=[skill(s) for s in skills], max_payload=1, agent_version="0",
                     release=release)  # fmt: skip
        return DeviceInfo(d, "online" if online else "offline", manifest=m,
                          skills=tuple(m.skills))  # fmt: skip

    bundles = {d: DeviceBundle(d, tmp_path / d, f"1.1+{d}", "pi4")
               for d in ("a", "b", "c", "d", "e", "f", "g")}  # fmt: skip
    release = Release(tmp_path, "set-x", "h", bundles, (tmp_path,))
    infos = [
        info("a", "pi4", "1.0"),
        info("b", "pi5", "1.0"),  # another profile than its bundle's
        info("c", "pi4", "1.0", skills=("echo",)),  # no system.update: not deployed
        info("d", "pi4", "1.1+d"),  # on its target already
        info("e", "pi4", "1.0", online=False),
        info("f", "pi4", "1.0"),  # claimed by another rollout
        info("g", "pi4", "1.0", kind="fan"),  # not matching --where
        info("h", "pi4", "1.0"),  # no bundle for it
    ]
    spec = RolloutSpec(id="r1", version="set-x", where={"kind": "lamp"})
    views, excluded = select_views(infos, release, spec, {"f": "r0"})
    assert excluded == {
        "b": "profile pi5, its bundle is for pi4",
        "c": "no system.update skill (not a deployed agent, or system_skills off)",
        "h": f"no bundle for it in {tmp_path}",
    }
    r = Rollout.new(spec, views, 0.0)
    assert r.unmatched == 1
    assert r.state_of("d") == State.SKIPPED  # its own version is the rollout's target
    assert r.state_of("f") == State.CONFLICT
    assert {r.state_of(d) for d in ("a", "e")} == {State.PENDING}
    assert release.norm("d", "1.1+d") == "set-x"
    assert release.norm("d", "1.1+a") == "1.1+a"


# -- six devices -------------------------------------------------------------------------------


def test_release_layouts(lab: Lab, tmp_path: Path) -> None:
    built = lab.releases["a"]
    release = load_release(built)
    assert sorted(release.bundles) == sorted(d.device for d in lab.devices)
    assert release.label.startswith("set-")
    assert len(release.stores) == N
    one = load_release(built / "lamp-1")  # a single bundle: its own version is the target
    assert list(one.bundles) == ["lamp-1"]
    assert one.label == release.bundles["lamp-1"].version
    # One content store shared by the bundles of the folder.
    shared = tmp_path / "shared"
    (shared / "files").mkdir(parents=True)
    for d in lab.devices:
        (shared / d.device).mkdir()
        for name in ("bundle.json", "bundle.json.minisig"):
            (shared / d.device / name).write_bytes((built / d.device / name).read_bytes())
        for f in (built / d.device / "files").iterdir():
            if not (shared / "files" / f.name).exists():
                os.link(f, shared / "files" / f.name)
    again = load_release(shared)
    assert again.stores == (shared / "files",)
    assert again.label == release.label
    victim = next((shared / "files").iterdir())
    cut = victim.read_bytes()[:-1]
    victim.unlink()  # a hard link into release A: replaced, not written through
    victim.write_bytes(cut)
    with pytest.raises(BundleInvalid, match=f"content file {victim.name} .* is missing or cut"):
        load_release(shared)
    (shared / "lamp-2" / "bundle.json.minisig").unlink()
    with pytest.raises(BundleInvalid, match=r"lamp-2/bundle\.json\.minisig: missing"):
        load_release(shared)


def test_canary_then_waves_all_healthy(lab: Lab) -> None:
    for d in lab.devices:  # every device answers before
        assert call(lab.broker, lab.fleet, d.device, "echo", {"data": "before"}) == "before"
    assert set(lab.markers().values()) == {"NotFound"}  # release A has no version_marker
    rel = lab.release("v2")
    target = versions(rel)
    log = UpdateLog(lab)
    try:
        res = lab.cli("rollout", "start", str(rel), "--canary", "1", "--waves", "50%,100%",
                      "--confirm-within", CONFIRM, "--deadline", "120",
                      "--id", "r-waves")  # fmt: skip
    finally:
        log.close()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "done: 6 healthy, 0 failed, 0 pending" in res.stdout
    # Canary first, then the waves, each only once the one before was healthy: the devices'
    # own reports (when each started downloading, when each was healthy) say so.
    waves = waves_from_output(res.stdout)
    assert [len(w) for w in waves] == [1, 2, 3], res.stdout
    assert sorted(d for w in waves for d in w) == sorted(target)
    ordered = sorted(target, key=lambda d: order_key("r-waves", d))
    assert waves[0] == [ordered[0]]  # the canary: first in the rollout's stable order
    started, healthy = log.first("downloading", target), log.first("healthy", target)
    assert set(started) == set(healthy) == set(target)
    for before, after in itertools.pairwise(waves):
        assert max(healthy[d] for d in before) < min(started[d] for d in after), (waves, log)
    assert lab.releases_now() == target
    assert lab.markers() == {d.device: "v2:x" for d in lab.devices}
    for d in lab.devices:  # and every call after
        assert call(lab.broker, lab.fleet, d.device, "echo", {"data": "after"}) == "after"

    status = lab.status("r-waves")
    assert status["phase"] == "done"
    assert (status["wave"], status["waves"]) == (3, 3)
    assert status["counts"]["healthy"] == N
    assert status["failures"] == 0
    assert sorted(status["devices"]["healthy"]) == sorted(target)
    assert status["driver"]["alive"] is False
    text = lab.cli("rollout", "status", "r-waves").stdout
    assert text.startswith("rollout r-waves  done  wave 3/3  target set-"), text
    assert "healthy 6" in text
    assert "failures 0 of 6 attempted (allowed 0 by --max-failures 5%)" in text
    line = [x for x in lab.cli("rollout", "ls").stdout.splitlines() if x.startswith("r-waves")]
    assert "done" in line[0]
    assert "driver none" in line[0]
    res2 = lab.cli("rollout", "ls", "--json")
    listed = {r["id"]: r for r in json.loads(res2.stdout)}
    assert listed["r-waves"]["phase"] == "done"
    assert listed["r-waves"]["counts"]["healthy"] == N
    assert "devices" not in listed["r-waves"]


def test_bad_release_halts_on_the_canary(lab: Lab) -> None:
    before = lab.releases_now()
    rel = lab.release("v2", broken=True)  # echo.py raises on import: the agent cannot start
    res = lab.cli("rollout", "start", str(rel), "--canary", "1", "--waves", "50%,100%",
                  "--confirm-within", "10", "--deadline", "90", "--id", "r-bad",
                  "--json")  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    status = json.loads(res.stdout)
    assert status["phase"] == "halted"
    assert status["halted"].startswith("canary failed")
    canary = sorted(versions(rel), key=lambda d: order_key("r-bad", d))[0]
    assert status["devices"]["rolled_back"] == [canary]
    assert sorted(status["devices"]["pending"]) == sorted(set(before) - {canary})
    assert canary in status["reasons"]
    # Everyone is on the release from before, the canary too (rolled back by its own timer),
    # and answers.
    assert lab.releases_now() == before
    assert lab.markers() == {d.device: "v2:x" for d in lab.devices}


def test_release_the_devices_refuse_halts_without_a_rollback_call(lab: Lab) -> None:
    # Signed by a key the devices do not trust: the canary fetches it, its device tool refuses
    # it (`failed`), and it never switched: the driver records it as back on its release
    # without calling system.rollback.
    stop_drivers(lab, abort=True)
    before = lab.releases_now()
    key, pub = lab.work / "stranger.key", lab.work / "stranger.pub"
    minisign.generate_keypair(key, pub)
    for d in lab.devices:
        set_echo(d, "v2-unsigned")
    rel = lab.work / "rel" / "stranger"
    for d in lab.devices:
        build(d.config, "x86-64", rel / d.device, key, lab.cache)
    res = lab.cli("rollout", "start", str(rel), "--canary", "1", "--confirm-within", "10",
                  "--deadline", "60", "--id", "r-stranger", "--json")  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    status = json.loads(res.stdout)
    assert status["phase"] == "halted"
    canary = sorted(versions(rel), key=lambda d: order_key("r-stranger", d))[0]
    assert status["devices"].get("rolled_back") == [canary], res.stderr
    assert "which is not trusted" in status["reasons"][canary]
    assert "which is not trusted" in status["halted"]
    assert f"{canary} rolled_back: still on {before[canary]}" in res.stderr
    assert "rolling back" not in res.stderr  # no system.rollback call was needed
    assert lab.releases_now() == before


def test_offline_device_catches_up_when_it_returns(lab: Lab) -> None:
    rel = lab.release("v3")
    target = versions(rel)
    late = lab.devices[-1]
    late.stop()
    wait_for("device offline", lambda: announced_release(lab.broker, lab.fleet, late.device)
             is None, 30)  # fmt: skip
    proc = lab.spawn("rollout", "start", str(rel), "--canary", "0", "--waves", "100%",
                     "--wait-offline", "90", "--confirm-within", CONFIRM, "--deadline", "120",
                     "--id", "r-late")  # fmt: skip
    watch = lab.spawn("rollout", "status", "r-late", "--watch", "--json")
    try:

        def others_healthy() -> bool:
            counts = lab.status("r-late")["counts"]
            return bool(counts["healthy"] == N - 1 and counts["offline"] == 1)

        wait_for("the five online devices healthy, one waiting", others_healthy, 120)
        assert lab.status("r-late")["devices"]["offline"] == [late.device]
        start_agent(late)
        try:
            out, err = proc.communicate(timeout=150)
        except subprocess.TimeoutExpired:
            raise AssertionError(agent_log(late)) from None
        seen, _ = watch.communicate(timeout=30)  # --watch ends with the rollout
    finally:
        for p in (proc, watch):
            if p.poll() is None:
                p.kill()
    assert proc.returncode == 0, out + err + agent_log(late)
    assert f"{late.device} healthy" in out, out + agent_log(late)
    assert watch.returncode == 0
    watched = [json.loads(line) for line in seen.splitlines()]
    assert len(watched) >= 3  # one line per change
    assert watched[-1]["phase"] == "done"
    assert any(w["counts"]["offline"] == 1 for w in watched)
    assert [w["counts"]["healthy"] for w in watched] == sorted(w["counts"]["healthy"]
                                                             for w in watched)  # fmt: skip
    assert lab.releases_now() == target
    assert lab.markers() == {d.device: "v3:x" for d in lab.devices}


def test_operator_killed_mid_rollout_then_resumed_elsewhere(lab: Lab) -> None:
    rel = lab.release("v4")
    target = versions(rel)
    res = lab.cli("rollout", "start", str(rel), "--canary", "0", "--waves", "100%",
                  "--parallel", "1", "--confirm-within", CONFIRM, "--deadline", "120",
                  "--id", "r-resume", "--detach", timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert "driven in the background" in res.stdout
    wait_for("a device healthy", lambda: lab.status("r-resume")["counts"]["healthy"] >= 1, 90)
    # The operator dies (kill -9) while the next device updates: its last will says nobody
    # drives the rollout any more; the state it kept says where it stood.
    held = lab.status("r-resume")
    os.kill(held["driver"]["pid"], signal.SIGKILL)
    wait_for("driver gone", lambda: not lab.status("r-resume")["driver"]["alive"], 30)
    held = lab.status("r-resume")
    assert held["phase"] == "running"
    assert held["counts"]["healthy"] < N
    res = lab.cli("rollout", "resume", "r-resume")
    assert res.returncode == 1
    assert "--bundle" in res.stderr
    wrong = lab.cli("rollout", "resume", "r-resume", "--bundle", str(lab.releases["a"]))
    assert wrong.returncode == 2
    assert "rolls out" in wrong.stderr

    # Another operator carries on from the retained state; Ctrl-C stops it driving, cleanly.
    proc = lab.spawn("rollout", "resume", "r-resume", "--bundle", str(rel))
    try:
        more = held["counts"]["healthy"] + 1
        wait_for("one more device healthy",
                 lambda: lab.status("r-resume")["counts"]["healthy"] >= more, 90)  # fmt: skip
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "resuming rollout r-resume" in out
    assert f"rollout resume r-resume --bundle {rel}" in err
    held = lab.status("r-resume")
    assert held["phase"] == "running"
    assert held["driver"]["alive"] is False
    assert held["driver"]["reason"] == "stopped"
    # And a third one finishes it.
    res = lab.cli("rollout", "resume", "r-resume", "--bundle", str(rel), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    status = json.loads(res.stdout)
    assert status["phase"] == "done"
    assert status["counts"]["healthy"] == N
    assert status["failures"] == 0
    assert lab.releases_now() == target
    assert lab.markers() == {d.device: "v4:x" for d in lab.devices}


def test_pause_resume_abort_and_a_conflicting_rollout(lab: Lab) -> None:
    rel = lab.release("v5")
    target = versions(rel)
    res = lab.cli("rollout", "start", str(rel), "--canary", "0", "--waves", "100%",
                  "--parallel", "1", "--confirm-within", CONFIRM, "--deadline", "120",
                  "--id", "r-first", "--detach", timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    res = lab.cli("rollout", "pause", "r-first")
    assert res.returncode == 0, res.stderr
    assert "paused (driven by" in res.stdout
    wait_for("the update under way finished",
             lambda: lab.status("r-first")["counts"]["updating"] == 0, 90)  # fmt: skip
    held = lab.status("r-first")
    assert held["phase"] == "paused", held
    assert held["driver"]["alive"]
    time.sleep(3)
    assert lab.status("r-first")["counts"] == held["counts"]  # nothing new started
    assert held["counts"]["healthy"] <= N - 2  # one update or two while the pause came

    # A second operator, the same release: every device r-first still holds is left alone.
    res = lab.cli("rollout", "start", str(rel), "--canary", "0", "--waves", "100%",
                  "--id", "r-second", "--json")  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    second = json.loads(res.stdout)
    assert second["phase"] == "done"
    counts = second["counts"]
    assert counts["updating"] == counts["healthy"] == counts["failed"] == 0, second
    assert counts["conflict"] == N - held["counts"]["healthy"]
    assert counts["skipped"] == held["counts"]["healthy"]
    assert {second["reasons"][d] for d in second["devices"]["conflict"]} == {
        "claimed by rollout r-first"
    }

    res = lab.cli("rollout", "resume", "r-first")
    assert res.returncode == 0, res.stderr
    assert "running (driven by" in res.stdout
    more = held["counts"]["healthy"] + 1
    wait_for("one more device updated",
             lambda: lab.status("r-first")["counts"]["healthy"] >= more, 90)  # fmt: skip
    res = lab.cli("rollout", "abort", "r-first")
    assert res.returncode == 0, res.stderr
    wait_for("driver gone", lambda: not lab.status("r-first")["driver"]["alive"], 90)
    status = lab.status("r-first")
    assert status["phase"] == "aborted"
    assert status["failures"] == 0
    updated = status["devices"]["healthy"]
    assert more <= len(updated) < N
    assert sorted(updated + status["devices"]["pending"]) == sorted(target)
    now = lab.releases_now()
    assert all(now[d] == target[d] for d in updated)
    assert all(now[d] != target[d] for d in status["devices"]["pending"])
    res = lab.cli("rollout", "abort", "r-first")  # again: nobody drives it, it stays aborted
    assert res.returncode == 0, res.stderr
    assert "aborted (no process drives it)" in res.stdout
    res = lab.cli("rollout", "resume", "r-first", "--bundle", str(rel))
    assert res.returncode == 2
    assert "cannot resume rollout r-first: it is aborted" in res.stderr
    listed = {r["id"]: r["phase"] for r in json.loads(lab.cli("rollout", "ls", "--json").stdout)}
    assert listed.items() >= {"r-first": "aborted", "r-second": "done"}.items()
    assert listed.get("r-bad", "halted") == "halted"  # the earlier tests' rollouts, if run
    assert {listed.get(rid, "done") for rid in ("r-waves", "r-late", "r-resume")} == {"done"}
