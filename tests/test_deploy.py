"""Deploy end to end against a real OpenSSH server on this machine (an x86-64 Debian "device"
whose agent runs as a supervised process: no systemd here) and a private mosquitto.

The emulated arm64 device with systemd is in ``test_deploy_vm.py``; both run the same code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgeagent.deploy import devicetool, minisign
from edgeagent.deploy.deployer import DeployOptions, DeployResult, deploy, remote_command
from edgeagent.deploy.errors import HealthCheckFailed, ProfileMismatch, RemoteError
from tests.broker.mosquitto import Mosquitto
from tests.deployapp import (
    add_skill,
    announced_release,
    break_module,
    build,
    call,
    make_app,
)
from tests.sshhost import SshHost, qualified_skip_reason

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(qualified_skip_reason() is not None, reason=str(qualified_skip_reason())),
    pytest.mark.timeout(300),
]


@dataclass
class Lab:
    host: SshHost
    broker: Mosquitto
    root: Path
    app: Path
    config: Path
    key: Path
    pub: Path
    cache: Path
    device: str
    fleet: str
    work: Path

    def options(self, **kw: object) -> DeployOptions:
        base: dict[str, object] = {
            "device": "x86-64",
            "root": str(self.root),
            "health_timeout": 30.0,
            "trust": [self.pub],
            "service": "process",
        }
        base.update(kw)
        return DeployOptions(**base)  # type: ignore[arg-type]

    def deploy(self, bundle: Path, **kw: object) -> DeployResult:
        return asyncio.run(
            deploy(bundle, self.host.target, self.host.options(), self.options(**kw))
        )

    def tool(self, *args: str) -> dict[str, Any]:
        return asyncio.run(
            remote_command(self.host.target, self.host.options(), str(self.root), *args)
        )

    def current(self) -> str | None:
        try:
            return os.readlink(self.root / "current").rsplit("/", 1)[-1]
        except OSError:
            return None


def _stop_agent(root: Path) -> None:
    try:
        pid = int((root / "run" / "agent.pid").read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("deploy")
    key, pub = work / "fleet.key", work / "fleet.pub"
    minisign.generate_keypair(key, pub)
    device = f"lamp-{uuid.uuid4().hex[:6]}"
    fleet = f"t{uuid.uuid4().hex[:8]}"
    with Mosquitto() as broker, SshHost() as host:
        config = make_app(
            work / "app", device=device, fleet=fleet, broker=broker.url, profile="x86-64"
        )
        root = work / "device-root"
        lab = Lab(
            host, broker, root, work / "app", config, key, pub, work / "cache", device, fleet, work
        )
        try:
            yield lab
        finally:
            _stop_agent(root)


def test_first_deploy_runs_the_lamp_and_second_sends_one_file(lab: Lab) -> None:
    b1 = build(lab.config, "x86-64", lab.work / "b1", lab.key, lab.cache)
    r1 = lab.deploy(b1.folder)
    assert r1.healthy
    assert r1.version == b1.version
    assert r1.sent_bytes == r1.bundle_bytes  # first contact
    assert lab.current() == b1.version
    out = call(lab.broker.url, lab.fleet, lab.device, "set_brightness", {"level": 40})
    assert out == {"on": True, "brightness": 40}
    assert announced_release(lab.broker.url, lab.fleet, lab.device) == b1.version
    ls = subprocess.run(
        [sys.executable, "-m", "edgeagent", "--broker", lab.broker.url, "--fleet", lab.fleet,
         "fleet", "ls", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert [d["release"] for d in json.loads(ls.stdout)] == [b1.version]

    add_skill(lab.app)
    b2 = build(lab.config, "x86-64", lab.work / "b2", lab.key, lab.cache)
    changed = {f["path"] for f in b2.manifest["files"]} - {
        f["path"] for f in b1.manifest["files"] if f in b2.manifest["files"]
    }
    assert changed == {"app/smarthome/echo.py"}
    r2 = lab.deploy(b2.folder)
    assert r2.healthy
    assert r2.sent_files == 1
    echo = next(f for f in b2.manifest["files"] if f["path"] == "app/smarthome/echo.py")
    assert r2.sent_bytes == echo["size"]
    assert r2.sent_bytes / r2.bundle_bytes < 0.05
    assert not r2.env_built  # same wheels: same environment
    assert call(lab.broker.url, lab.fleet, lab.device, "version_marker", {"data": "x"}) == "v2:x"
    status = lab.tool("status")
    assert status["current"] == b2.version
    assert status["previous"] == b1.version

    # A release whose skill module raises on import is rolled back; the old one answers again.
    break_module(lab.app)
    b3 = build(lab.config, "x86-64", lab.work / "b3", lab.key, lab.cache, check_import=False)
    with pytest.raises(HealthCheckFailed) as info:
        lab.deploy(b3.folder, health_timeout=8.0)
    assert info.value.rolled_back_to == b2.version
    assert "broken on purpose" in info.value.logs
    assert lab.current() == b2.version
    assert call(lab.broker.url, lab.fleet, lab.device, "version_marker", {"data": "y"}) == "v2:y"
    events = [e["event"] for e in lab.tool("history", "--limit", "50")["history"]]
    assert events[-1] == "rolled_back"
    assert "healthy" in events

    # Restore the app for the tests that follow.
    (lab.app / "smarthome" / "echo.py").write_text(
        (lab.app / "smarthome" / "echo.py")
        .read_text()
        .replace("\nraise RuntimeError('this release is broken on purpose')\n", "")
    )


def _tamper_copy(src: Path, dest: Path, path: str) -> Path:
    import shutil

    shutil.copytree(src, dest)
    manifest = json.loads((dest / "bundle.json").read_text())
    entry = next(f for f in manifest["files"] if f["path"] == path)
    target = dest / "files" / entry["sha256"]
    data = target.read_bytes()
    target.chmod(0o644)
    target.write_bytes(data.replace(b"Brightness", b"Brightnesz", 1))
    return dest


def test_tampered_bundle_is_refused_before_install(lab: Lab) -> None:
    # A lamp.py the device has never seen (a file it has is never sent again, tampered or not).
    lamp = lab.app / "smarthome" / "lamp.py"
    original = lamp.read_text()
    lamp.write_text(original + f"\n# {uuid.uuid4().hex}\n")
    try:
        good = build(lab.config, "x86-64", lab.work / "t-good", lab.key, lab.cache)
    finally:
        lamp.write_text(original)
    before = lab.current()
    bad = _tamper_copy(good.folder, lab.work / "t-bad", "app/smarthome/lamp.py")
    with pytest.raises(RemoteError, match=r"app/smarthome/lamp\.py: SHA-256 differs"):
        lab.deploy(bad)
    assert lab.current() == before
    assert not (lab.root / "releases" / good.version).exists() or before == good.version

    # bundle.json itself edited after signing: the signature no longer verifies.
    import shutil

    edited = lab.work / "t-edited"
    shutil.copytree(good.folder, edited)
    text = (edited / "bundle.json").read_text().replace('"fleet": "', '"fleet": "x', 1)
    (edited / "bundle.json").write_text(text)
    with pytest.raises(RemoteError, match="minisig"):
        lab.deploy(edited)
    assert lab.current() == before


def test_unknown_key_and_unsigned_are_refused(lab: Lab) -> None:
    other_key, other_pub = lab.work / "other.key", lab.work / "other.pub"
    minisign.generate_keypair(other_key, other_pub)
    before = lab.current()
    b = build(lab.config, "x86-64", lab.work / "u1", other_key, lab.cache)
    # Deployed without trusting the other key: the device only trusts the fleet key.
    with pytest.raises(RemoteError, match=r"(?i)key"):
        lab.deploy(b.folder, trust=[])
    assert lab.current() == before
    (b.folder / "bundle.json.minisig").unlink()
    with pytest.raises(Exception, match=r"unsigned|missing"):
        lab.deploy(b.folder, trust=[])
    assert lab.current() == before


def test_profile_that_does_not_fit_the_device_is_refused(lab: Lab) -> None:
    with pytest.raises(ProfileMismatch, match=r"generic-arm64.*aarch64.*x86_64"):
        lab.deploy(lab.work / "b1", device="generic-arm64")
    with pytest.raises(ProfileMismatch, match="no device profile or family"):
        lab.deploy(lab.work / "b1", device="nosuch")


def test_unconfirmed_switch_is_undone_by_the_device(lab: Lab) -> None:
    """The deploy tool vanishes after the switch (no commit): the device rolls back alone."""
    status = lab.tool("status")
    releases = status["releases"]
    assert isinstance(releases, list)
    assert len(releases) >= 2
    cur = status["current"]
    other = next(v for v in reversed(releases) if v != cur)
    lab.tool("activate", str(other), "--confirm-within", "3")
    assert lab.current() == other
    deadline = time.monotonic() + 30
    while lab.current() != cur and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lab.current() == cur
    events = [e for e in lab.tool("history")["history"]]
    assert events[-1]["event"] == "rolled_back"
    assert "not confirmed" in events[-1]["reason"]


def test_an_earlier_switchs_timer_leaves_a_later_switch_alone(lab: Lab) -> None:
    """Switch to B (timer 3 s) and confirm it; a later switch is pending when B's timer fires
    (written here as the device tool writes it, so no agent can confirm it first): the timer
    finds another switch id pending and leaves it; before the fix it rolled that switch back."""
    status = lab.tool("status")
    cur = status["current"]
    releases = status["releases"]
    assert isinstance(releases, list)
    other = str(next(v for v in reversed(releases) if v != cur))
    lab.tool("activate", other, "--confirm-within", "3")
    lab.tool("commit", other)
    later = {"version": other, "switch": "later-switch", "previous": cur, "boot_id": "",
             "deadline": time.time() + 600}  # fmt: skip
    (lab.root / "pending.json").write_text(json.dumps(later))
    time.sleep(5)  # B's timer has fired by now (its process looks once a second)
    assert lab.current() == other
    assert lab.tool("status")["pending"] == later
    events = [e["event"] for e in lab.tool("history")["history"]]
    last_switch = len(events) - 1 - events[::-1].index("activated")
    assert "rolled_back" not in events[last_switch:], events[last_switch:]
    lab.tool("commit", other)
    assert lab.tool("status")["pending"] is None


def test_device_tool_refuses_hostile_manifests() -> None:
    ok = {
        "kind": "edgeagent-bundle",
        "format": 1,
        "version": "0.1.0+abc",
        "device": "d",
        "profile": "x86-64",
        "platform": {"arch": "x86_64", "python": "3.11"},
        "config": "app/agent.yaml",
        "env": "0" * 64,
        "files": [{"path": "app/agent.yaml", "sha256": "1" * 64, "size": 3, "role": "config"}],
    }
    devicetool.check_manifest(json.dumps(ok).encode())
    for path in ("../etc/passwd", "/etc/passwd", "app/../../x", "other/x", "app//x"):
        bad = json.loads(json.dumps(ok))
        bad["files"][0]["path"] = path
        bad["config"] = path
        with pytest.raises(devicetool.Refused, match="unsafe path"):
            devicetool.check_manifest(json.dumps(bad).encode())
    with pytest.raises(devicetool.Refused, match="not JSON"):
        devicetool.check_manifest(b"{")
    with pytest.raises(devicetool.Refused, match="format"):
        devicetool.check_manifest(json.dumps({**ok, "format": 99}).encode())
    with pytest.raises(devicetool.Refused, match="more than"):
        devicetool.check_manifest(b" " * (devicetool.MAX_BUNDLE_JSON + 1))


def test_cli_deploy_reports_unreachable_host(tmp_path: Path) -> None:
    from edgeagent.localbroker import free_port

    key = tmp_path / "k.key"
    minisign.generate_keypair(key, tmp_path / "k.pub")
    config = make_app(
        tmp_path / "app", device="d1", fleet="f", broker="mqtt://127.0.0.1:1", profile="x86-64"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeagent",
            "deploy",
            "--device",
            "x86-64",
            "--host",
            f"127.0.0.1:{free_port()}",
            "--key",
            str(key),
            str(config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "127.0.0.1" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(os.getuid() != 0, reason="creates a login user with sudo (needs root)")
def test_deploy_as_a_user_with_sudo(lab: Lab, tmp_path: Path) -> None:
    """Raspberry Pi OS's first user is not root but has passwordless sudo: that is enough."""
    import shutil

    user = "eadeploy"
    if subprocess.run(["id", user], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", user], check=True)
        subprocess.run(["usermod", "-p", "*", user], check=True)
    Path(f"/etc/sudoers.d/{user}").write_text(f"{user} ALL=(ALL) NOPASSWD: ALL\n")
    root = tmp_path / "root-for-sudo"
    try:
        config = make_app(tmp_path / "app", device=f"lamp-sudo-{uuid.uuid4().hex[:4]}",
                          fleet=lab.fleet, broker=lab.broker.url, profile="x86-64")  # fmt: skip
        b = build(config, "x86-64", lab.work / "sudo-b", lab.key, lab.cache)
        target = type(lab.host.target)(lab.host.host, lab.host.port, user)
        opts = lab.options(root=str(root))
        r = asyncio.run(deploy(b.folder, target, lab.host.options(), opts))
        assert r.healthy
        assert os.readlink(root / "current").endswith(b.version)
        # Content landed in the store owned by root, nothing left in the user's staging folder.
        store = list((root / "store").iterdir())
        assert store
        assert all(p.stat().st_uid == 0 for p in store)
        staging = Path(f"/home/{user}/.cache/edgeagent-staging/store")
        assert not staging.exists() or not list(staging.iterdir())
    finally:
        _stop_agent(root)
        Path(f"/etc/sudoers.d/{user}").unlink(missing_ok=True)
        shutil.rmtree(root, ignore_errors=True)


def test_interrupted_deploy_puts_the_old_release_back(lab: Lab) -> None:
    """Ctrl-C (task cancelled) after the switch, while waiting for health: rolled back at once."""
    before = lab.current()
    echo = lab.app / "smarthome" / "echo.py"
    original = echo.read_text()
    echo.write_text(original + f"\n# interrupted {uuid.uuid4().hex}\n")
    try:
        b = build(lab.config, "x86-64", lab.work / "int", lab.key, lab.cache)
    finally:
        echo.write_text(original)

    async def go() -> None:
        waiting = asyncio.Event()

        def progress(step: str, _msg: str) -> None:
            if step == "health":
                waiting.set()

        opts = lab.options(health_timeout=60.0, check=("nosuchskill", {}))
        task = asyncio.create_task(deploy(b.folder, lab.host.target, lab.host.options(), opts,
                                          progress))  # fmt: skip
        await asyncio.wait_for(waiting.wait(), 60)
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert lab.current() == before
    last = lab.tool("history")["history"][-1]
    assert last["event"] == "rolled_back"
    assert last["reason"] == "deploy interrupted"


def test_watch_redeploys_each_saved_change(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeagent.deploy.runner import DeployJob, watch_loop

    monkeypatch.setenv("EDGEAGENT_CACHE", str(lab.cache))
    job = DeployJob(lab.host.target, lab.options(), lab.config, None, lab.key)
    lines: list[dict[str, object]] = []
    first = asyncio.Event()
    echo = lab.app / "smarthome" / "echo.py"
    original = echo.read_text()
    marker = uuid.uuid4().hex[:8]

    def out(line: str) -> None:
        lines.append(json.loads(line))
        first.set()

    async def save() -> None:
        await first.wait()
        await asyncio.sleep(0.3)
        echo.write_text(original + EXTRA_WATCH.replace("MARK", marker))

    async def go() -> None:
        saver = asyncio.create_task(save())
        await watch_loop(job, lab.host.options(), as_json=True, echo=out, max_rounds=2)
        await saver

    try:
        asyncio.run(go())
    finally:
        echo.write_text(original)
    assert [line["healthy"] for line in lines] == [True, True]
    assert lines[1]["sent_files"] == 1
    assert 0 < float(lines[1]["save_to_healthy_s"]) < 30  # type: ignore[arg-type]
    assert call(lab.broker.url, lab.fleet, lab.device, "watch_marker", {}) == marker


EXTRA_WATCH = '''

@skill
async def watch_marker() -> str:
    """Added while `deploy --watch` runs."""
    return "MARK"
'''


def test_many_devices_in_parallel_each_with_its_result(lab: Lab, tmp_path: Path) -> None:
    from dataclasses import replace

    from edgeagent.deploy.runner import DeployJob, run_jobs

    jobs = []
    roots = []
    with SshHost() as second:
        for i, host in enumerate((lab.host, second)):
            config = make_app(tmp_path / f"app{i}", device=f"lamp-par{i}-{uuid.uuid4().hex[:4]}",
                              fleet=lab.fleet, broker=lab.broker.url, profile="x86-64")  # fmt: skip
            b = build(config, "x86-64", tmp_path / f"b{i}", lab.key, lab.cache)
            roots.append(tmp_path / f"root{i}")
            opts = replace(lab.options(), root=str(roots[-1]))
            jobs.append((DeployJob(host.target, opts, None, b.folder, lab.key), host))
        # One host the deploy cannot reach: reported, the others unaffected.
        from edgeagent.deploy.ssh import SshTarget
        from edgeagent.localbroker import free_port

        dead = DeployJob(SshTarget("127.0.0.1", free_port()), lab.options(), None,
                         tmp_path / "b0", lab.key)  # fmt: skip
        lines: list[str] = []

        known = tmp_path / "known_hosts"
        known.write_text(lab.host.known_hosts.read_text() + second.known_hosts.read_text())
        ssh = lab.host.options(identity_files=[lab.host.client_key, second.client_key],
                               known_hosts=known)  # fmt: skip

        async def go() -> list[dict[str, object]]:
            return await run_jobs([j for j, _ in jobs] + [dead], ssh, parallel=2,
                                  as_json=True, echo=lines.append)  # fmt: skip

        try:
            results = asyncio.run(go())
        finally:
            for root in roots:
                _stop_agent(root)
    by_host = {r["host"]: r for r in results}
    assert [by_host[str(j.target)]["healthy"] for j, _ in jobs] == [True, True]
    assert by_host[str(dead.target)]["healthy"] is False
    assert "cannot" in str(by_host[str(dead.target)]["error"])
    steps = [json.loads(line) for line in lines]
    assert {s.get("host") for s in steps if "step" in s} >= {str(j.target) for j, _ in jobs}


def test_inventory_file_is_checked(tmp_path: Path) -> None:
    from edgeagent.deploy.errors import DeployError
    from edgeagent.deploy.runner import DeployJob

    inv = tmp_path / "hosts.yaml"
    inv.write_text("hosts:\n  - host: pi@10.0.0.5\n    device: pi4\n  - pi@10.0.0.6:2222\n")
    jobs = DeployJob.from_cli([], inv, tmp_path / "a.yaml", None, "pi", tmp_path / "k", [],
                              "/opt/edgeagent", None, 30, None, 3, None)  # fmt: skip
    assert [(str(j.target), j.options.device) for j in jobs] == [
        ("pi@10.0.0.5", "pi4"),
        ("pi@10.0.0.6:2222", "pi"),
    ]
    inv.write_text("hosts:\n  - host: x\n    colour: red\n")
    with pytest.raises(DeployError, match="colour"):
        DeployJob.from_cli([], inv, tmp_path / "a.yaml", None, "pi", tmp_path / "k", [],
                           "/opt/edgeagent", None, 30, None, 3, None)  # fmt: skip
