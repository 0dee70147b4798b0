"""Deploy: from a one-line skill change to "healthy on the device", against a hand-rolled loop.

One run, one emulated arm64 device (qemu ``-M virt``, Debian 12, systemd; ``tests/armvm.py``),
one private mosquitto on this machine:

1. setup: the first ``edgeagent deploy`` (bootstrap, environment built on the device), and a
   second agent, the **baseline**, installed by hand in ``/opt/handrolled`` with its own systemd
   unit and the same virtual environment, so both run the same code on the same device.
2. **deploy**: ``--rounds`` times, change one line of a skill file and run a whole ``deploy``
   (build the bundle, connect over SSH, probe, send the missing files, verify the signature and
   hashes on the device, build the release, switch, restart, health-check over MQTT: online, the
   new version announced, ``_ping`` answered); time from the save to "healthy".
3. **watch**: the same through ``deploy --watch``'s loop (one SSH connection kept, change
   detected by polling every 0.2 s); time from the save (file mtime) to "healthy".
4. **baseline**: a competent hand-rolled loop: ``rsync -a`` of the app folder over SSH
   (connection multiplexing on, as a user who does this daily would have it),
   ``ssh systemctl restart``, then wait for the agent's retained ``state: online`` message
   stamped after the restart. No signature, no health check, no rollback.

Rounds of the three loops are interleaved (deploy, watch, baseline, deploy, …) so a slow spell
of the emulator hits all of them. Also reported: bytes sent for the one-file change as a share
of the bundle. Needs root, qemu, mmdebstrap (as the tests do). Prints JSON and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import _common as common
from edgeagent import Fleet
from edgeagent.deploy import minisign
from edgeagent.deploy.bundle import BuildOptions, build_bundle
from edgeagent.deploy.deployer import DeployOptions, deploy
from edgeagent.deploy.runner import DeployJob, watch_loop
from edgeagent.deploy.ssh import SshOptions, SshTarget
from edgeagent.protocol import StateMessage, Topics, decode
from edgeagent.transport.base import Inbound
from edgeagent.transport.mqtt import MqttTransport
from tests.armvm import Vm, boot, ensure_image
from tests.deployapp import make_app

PROFILE = "generic-arm64"


def bump(app: Path, n: int) -> None:
    """Change one line of one skill file (the echo skill's docstring)."""
    path = app / "smarthome" / "echo.py"
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip().startswith('"""Return `data` unchanged.'):
            lines[i] = f'    """Return `data` unchanged. (edit {n})"""\n'
            break
    else:
        raise RuntimeError("echo.py: docstring line not found")
    path.write_text("".join(lines))


async def wait_online_after(broker: str, fleet: str, device: str, after: float) -> float:
    """Seconds (wall clock) when a retained/live state `online` stamped after ``after`` came."""
    topics = Topics("edgeagent", fleet)
    got: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    def on_state(msg: Inbound) -> None:
        try:
            state = decode(msg.payload)
        except ValueError:
            return
        if not isinstance(state, StateMessage) or state.status != "online":
            return
        if state.ts is not None and state.ts > after and not got.done():
            got.set_result(time.time())

    t = MqttTransport(Fleet(broker).broker, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    await t.subscribe(topics.state(device), on_state, qos=1)
    await t.connect()
    try:
        async with common.CLOCK.timeout(180):
            return await got
    finally:
        await t.close()


def setup_baseline(vm: Vm, app: Path, env_dir: str, broker_port: int, fleet: str) -> str:
    """A second agent installed by hand: its own folder, config and unit; the same venv."""
    device = f"hand-{uuid.uuid4().hex[:4]}"
    cfg = app / "hand.yaml"
    cfg.write_text(
        f"device: {device}\nfleet: {fleet}\nbroker: mqtt://10.0.2.2:{broker_port}\n"
        "profile: generic-arm64\nhealth_interval_s: 10\ngrace_s: 1\n"
        "skills:\n  - module: smarthome.lamp:Lamp\n  - module: smarthome.echo\n"
    )
    unit = (
        "[Unit]\nDescription=hand-rolled agent\n[Service]\n"
        f"ExecStart={env_dir}/bin/edgeagent agent run /opt/handrolled/app/hand.yaml\n"
        "WorkingDirectory=/opt/handrolled/app\nRestart=on-failure\n"
    )
    vm.run(f"mkdir -p /opt/handrolled/app && cat > /etc/systemd/system/handrolled.service <<'E'\n"
           f"{unit}E\nsystemctl daemon-reload")  # fmt: skip
    return device


def rsync_cmd(vm: Vm, app: Path, control: Path) -> list[str]:
    ssh = " ".join(
        ["ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={vm.known_hosts}",
         "-i", str(vm.key), "-p", str(vm.ssh_port), "-o", "ControlMaster=auto",
         "-o", f"ControlPath={control}", "-o", "ControlPersist=120"]
    )  # fmt: skip
    return ["rsync", "-a", "--exclude", "__pycache__", "-e", ssh, f"{app}/",
            "root@127.0.0.1:/opt/handrolled/app/"]  # fmt: skip


def ssh_cmd(vm: Vm, control: Path, command: str) -> list[str]:
    return [
        "ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={vm.known_hosts}",
        "-i", str(vm.key), "-p", str(vm.ssh_port), "-o", "ControlMaster=auto",
        "-o", f"ControlPath={control}", "-o", "ControlPersist=120", "root@127.0.0.1", command,
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    key, pub = work / "k.key", work / "k.pub"
    minisign.generate_keypair(key, pub)
    fleet = f"b{uuid.uuid4().hex[:6]}"
    device = f"lamp-{uuid.uuid4().hex[:4]}"
    image = ensure_image()
    control = work / "cm.sock"
    results: dict[str, Any] = {
        "machine": common.machine_info(),
        "code": common.code_state(),
        "rounds": args.rounds,
    }
    with common.private_broker() as broker, boot(image) as vm:
        app = work / "app"
        config = make_app(app, device=device, fleet=fleet,
                          broker=f"mqtt://10.0.2.2:{broker.port}", profile=PROFILE)  # fmt: skip
        target = SshTarget(vm.host, vm.ssh_port, vm.user)
        ssh = SshOptions(identity_files=[vm.key], known_hosts=vm.known_hosts, use_agent=False)
        opts = DeployOptions(device=PROFILE, broker=broker.url, health_timeout=150,
                             trust=[pub])  # fmt: skip
        cache = work / "cache"

        async def build(profile: str) -> Path:
            out = work / "bundle"
            b = await asyncio.to_thread(
                build_bundle, config, profile, out, key=key, options=BuildOptions(cache=cache)
            )
            return b.folder

        t0 = common.CLOCK.monotonic()
        first = asyncio.run(deploy(build, target, ssh, opts))
        results["first_deploy_s"] = round(common.CLOCK.monotonic() - t0, 2)
        results["bundle_bytes"] = first.bundle_bytes
        print(f"first deploy (bootstrap + environment): {results['first_deploy_s']} s",
              file=sys.stderr)  # fmt: skip
        manifest = json.loads((work / "bundle" / "bundle.json").read_text())
        env_dir = f"/opt/edgeagent/envs/{manifest['env']}"
        hand = setup_baseline(vm, app, env_dir, broker.port, fleet)
        subprocess.run(rsync_cmd(vm, app, control), check=True)
        vm.run("systemctl start handrolled.service")

        times: dict[str, list[float]] = {"deploy": [], "watch": [], "baseline": []}
        sent: list[tuple[int, int]] = []
        steps: list[dict[str, float]] = []
        n = 0
        for r in range(args.rounds):
            # deploy
            n += 1
            bump(app, n)
            t = time.time()
            res = asyncio.run(deploy(build, target, ssh, opts))
            times["deploy"].append(time.time() - t)
            sent.append((res.sent_files, res.sent_bytes))
            steps.append(res.timings)
            # watch: one round of the loop per change, over a kept connection
            n += 1
            times["watch"].append(asyncio.run(_watch_once(config, target, ssh, opts, key, app, n)))
            # baseline
            n += 1
            bump(app, n)
            t = time.time()
            subprocess.run(rsync_cmd(vm, app, control), check=True)
            subprocess.run(ssh_cmd(vm, control, "systemctl restart handrolled.service"),
                           check=True)  # fmt: skip
            done = asyncio.run(wait_online_after(broker.url, fleet, hand, t))
            times["baseline"].append(done - t)
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
                  file=sys.stderr)  # fmt: skip
        subprocess.run(ssh_cmd(vm, control, "true"), check=False)
        subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "x"],
                       capture_output=True, check=False)  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    for k, v in times.items():
        results[k] = {"median_s": round(statistics.median(v), 2),
                      "min_s": round(min(v), 2), "max_s": round(max(v), 2),
                      "all_s": [round(x, 2) for x in v]}  # fmt: skip
    base = results["baseline"]["median_s"]
    results["deploy_vs_baseline"] = round(results["deploy"]["median_s"] / base, 2)
    results["watch_vs_baseline"] = round(results["watch"]["median_s"] / base, 2)
    results["deploy_steps_s"] = steps
    results["one_file_change"] = {
        "files": [s[0] for s in sent],
        "bytes": [s[1] for s in sent],
        "share_of_bundle": round(max(s[1] for s in sent) / results["bundle_bytes"], 5),
    }
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


async def _watch_once(
    config: Path, target: SshTarget, ssh: SshOptions, opts: DeployOptions, key: Path,
    app: Path, n: int,
) -> float:  # fmt: skip
    """Run the --watch loop: its first round deploys what is there; then one saved change."""
    job = DeployJob(target, opts, config, None, key)
    lines: list[dict[str, Any]] = []
    changed = asyncio.Event()

    def echo(line: str) -> None:
        data = json.loads(line)
        lines.append(data)
        if len(lines) == 1:
            changed.set()

    async def saver() -> None:
        await changed.wait()
        await asyncio.sleep(0.5)
        bump(app, n)

    task = asyncio.create_task(saver())
    await watch_loop(job, ssh, as_json=True, echo=echo, max_rounds=2)
    await task
    last = lines[-1]
    if not last.get("healthy"):
        raise RuntimeError(f"watch round failed: {last}")
    return float(last["save_to_healthy_s"])


if __name__ == "__main__":
    main()
