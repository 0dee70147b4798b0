"""Two coordinator replicas share the calls; one dies mid-run and no idempotent call is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from edgeagent import AgentConfig, DeviceAgent, Fleet

pytestmark = pytest.mark.broker


def replica(url: str, fleet: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgeagent.cli", "--broker", url, "--fleet", fleet,
         "--log-level", "info", "coordinator", "run"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ},
    )  # fmt: skip


def echo(url: str, fleet: str, device: str) -> DeviceAgent:
    cfg = AgentConfig(
        device=device,
        fleet=fleet,
        broker={"url": url},
        skills=[{"module": "smarthome.echo"}],
    )
    return DeviceAgent(cfg)


def test_killing_one_replica_loses_no_idempotent_call(broker_url: str, fleet_name: str) -> None:
    replicas = [replica(broker_url, fleet_name) for _ in range(2)]
    try:

        async def main() -> tuple[list[object], int]:
            async with (
                echo(broker_url, fleet_name, "e1"),
                echo(broker_url, fleet_name, "e2"),
                Fleet(broker_url, fleet=fleet_name) as fleet,
            ):
                # Both replicas are up when each answers a call (shared subscription: either may).
                for _ in range(50):
                    try:
                        await fleet.call_skill("echo", {"data": "ready"}, timeout=1)
                        break
                    except Exception:
                        await asyncio.sleep(0.1)
                await asyncio.sleep(1.0)  # let the second replica finish its start-up too
                done = 0
                results: list[object] = []
                sem = asyncio.Semaphore(16)
                halfway = asyncio.Event()

                async def one(i: int) -> object:
                    nonlocal done
                    async with sem:
                        try:
                            out = await fleet.call_skill(
                                "echo", {"data": f"m{i}"}, timeout=15, retry_after=1.0
                            )
                        except Exception as exc:  # recorded, asserted below
                            return exc
                        done += 1
                        if done == 150:
                            halfway.set()
                        return out

                async def killer() -> None:
                    await halfway.wait()
                    replicas[0].send_signal(signal.SIGKILL)

                results_f = asyncio.gather(*(one(i) for i in range(600)))
                await asyncio.gather(results_f, killer())
                results = results_f.result()
                return results, done

        results, done = asyncio.run(main())
        assert done == 600
        errors = [r for r in results if isinstance(r, BaseException)]
        assert errors == []
        assert results == [f"m{i}" for i in range(600)]
        assert replicas[0].wait(10) == -signal.SIGKILL
        assert replicas[1].poll() is None  # the survivor kept serving
    finally:
        for p in replicas:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
            if p.stderr is not None:
                p.stderr.close()
