"""A rollout through a broker restart (issue 12): two deployed devices in process mode and the
operator CLI as processes on a broker of the test's own, restarted while the canary updates. The
devices reconnect and report, the operator reconnects and carries on: the rollout completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.mosquitto import Mosquitto
from tests.deployapp import announced_release, call
from tests.updatelab import (
    Device,
    build_set,
    install_first,
    new_fleet,
    pinned_edgeagent_wheel,
    set_echo,
    share_env,
    update_state,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


@pytest.fixture
def fleet(tmp_path: Path, restartable_broker: Mosquitto) -> Iterator[list[Device]]:
    with pinned_edgeagent_wheel():
        devices = new_fleet(tmp_path, restartable_broker.url, 2)
        try:
            first = build_set(devices, tmp_path / "rel-a", tmp_path / "cache")
            share_env(devices[1], first[devices[1].device], devices[0])
            for d in devices:
                install_first(d, first[d.device])
            for d in devices:
                wait_for(f"{d.device} on A", lambda d=d: announced_release(
                    d.broker, d.fleet, d.device) == first[d.device].version, 90)  # fmt: skip
            yield devices
        finally:
            for d in devices:
                d.stop()


def test_rollout_survives_a_broker_restart(
    fleet: list[Device], restartable_broker: Mosquitto, tmp_path: Path
) -> None:
    devices = fleet
    broker, name = restartable_broker.url, devices[0].fleet
    for d in devices:
        set_echo(d, "v2")
    with pinned_edgeagent_wheel():
        target = build_set(devices, tmp_path / "rel-b", tmp_path / "cache")
    argv = [sys.executable, "-m", "edgeagent.cli", "--broker", broker, "--fleet", name,
            "rollout", "start", str(tmp_path / "rel-b"), "--canary", "1", "--waves", "100%",
            "--confirm-within", "60", "--deadline", "120", "--wait-offline", "60",
            "--id", "r-bounce", "--json"]  # fmt: skip
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        wait_for("the canary updating", lambda: any((update_state(d) or {}).get("version")
                 == target[d.device].version for d in devices), 60)  # fmt: skip
        assert proc.poll() is None  # the rollout is under way
        restartable_broker.restart(1.0)  # everyone loses the broker mid-rollout
        out, err = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    status = json.loads(out)
    assert status["phase"] == "done"
    assert status["counts"]["healthy"] == 2, status["counts"]
    assert status["failures"] == 0
    for d in devices:
        wait_for(f"{d.device} on B", lambda d=d: announced_release(
            broker, name, d.device) == target[d.device].version, 30)  # fmt: skip
        assert call(broker, name, d.device, "version_marker", {"data": "x"}, timeout=10) == "v2:x"
