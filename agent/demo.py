"""``edgeagent demo``: a small smart-home fleet on this machine, doing real work.

Starts a private mosquitto (unless ``--broker`` is given), runs the example agents as real
``edgeagent agent run`` processes, then calls their skills through the library the way any
application would, shows an event and a typed error, and shuts everything down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from .broker import BrokerConfig
from .client import Fleet
from .errors import CallError, EdgeAgentError
from .localbroker import Mosquitto

if TYPE_CHECKING:
    from .securebroker import SecureBroker

DEVICES = {
    "lamp-kitchen": "lamp-kitchen.yaml",
    "lamp-hall": "lamp-hall.yaml",
    "thermostat-living": "thermostat-living.yaml",
    "doorbell-front": "doorbell-front.yaml",
    "meter-basement": "meter-basement.yaml",
    "pump-garage": "pump-garage.yaml",
    "speaker-living": "speaker-living.yaml",
}
# An 8x8 "3" from scikit-learn's digits (0 paper … 16 ink), as a meter's camera would see it.
DIGIT_THREE = [
    0, 0, 7, 15, 13, 1, 0, 0, 0, 8, 13, 6, 15, 4, 0, 0, 0, 2, 1, 13, 13, 0, 0, 0, 0, 0, 2, 15,
    11, 1, 0, 0, 0, 0, 0, 1, 12, 12, 1, 0, 0, 0, 0, 0, 1, 10, 8, 0, 0, 0, 8, 4, 5, 14, 9, 0, 0,
    0, 7, 13, 13, 9, 0, 0,
]  # fmt: skip
DEMO_FLEET = "home"
#: Identities of the demo's coordinator and of the tour (an operator) on a secured broker.
DEMO_COORDINATOR = "demo-coordinator"
DEMO_OPERATOR = "demo-operator"


def find_examples(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else [Path.cwd() / "examples" / "smart-home"]
    if explicit is None:
        candidates.append(Path(__file__).resolve().parent.parent / "examples" / "smart-home")
    for c in candidates:
        if c is not None and (c / "lamp-kitchen.yaml").is_file():
            return c
    raise EdgeAgentError(
        "cannot find examples/smart-home: run from the repository root or pass --examples DIR"
    )


async def _wait_online(fleet: Fleet, names: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        online = {d.device for d in await fleet.devices() if d.online}
        if names <= online:
            return
        if time.monotonic() > deadline:
            raise EdgeAgentError(f"devices never came online: {', '.join(sorted(names - online))}")
        await asyncio.sleep(0.2)


async def _tour(
    broker: str | BrokerConfig,
    say: Callable[[str], None],
    keep: bool,
    broker_file: Path | None = None,
    ws_url: str | None = None,
) -> None:
    url = broker if isinstance(broker, str) else broker.url
    async with Fleet(broker, fleet=DEMO_FLEET) as fleet:
        await _wait_online(fleet, set(DEVICES), 30)
        for _ in range(100):  # the coordinator is ready once it routes a call
            try:
                await fleet.call_skill("get_state", where={"room": "hall"}, timeout=1)
                break
            except CallError:
                await asyncio.sleep(0.1)
        say("\nThe fleet (from retained state and manifests):")
        for d in await fleet.devices():
            tags = ",".join(f"{k}={v}" for k, v in sorted(d.tags.items()))
            say(f"  {d.device:<18} {d.status:<7} {tags:<28} {', '.join(s.name for s in d.skills)}")

        async def show(device: str, skill: str, arg: object = None, brief: bool = False) -> None:
            started = time.perf_counter()
            shown_arg = "(8x8 image of a 3)" if brief else json.dumps(arg) if arg else ""
            try:
                out = await fleet.call(device, skill, arg, timeout=5)
                ms = (time.perf_counter() - started) * 1000
                say(f"  call {device}/{skill} {shown_arg}\n    -> {json.dumps(out)}  ({ms:.1f} ms)")
            except CallError as exc:
                say(f"  call {device}/{skill} {json.dumps(arg)}\n    -> error {exc}")

        say("\nCalling skills over MQTT 5 request/response:")
        await show("lamp-kitchen", "set_brightness", {"level": 40})
        await show("lamp-hall", "get_state")
        await show("thermostat-living", "set_target", {"celsius": 21.5})
        await show("thermostat-living", "read_temperature")

        say("\nA doorbell press emits an event that anyone can subscribe to:")
        events = fleet.events("ring")
        waiter = asyncio.ensure_future(anext(events))
        await asyncio.sleep(0.1)  # let the subscription land before pressing
        await show("doorbell-front", "press", {"who": "courier"})
        event = await asyncio.wait_for(waiter, 5)
        say(f"  event from {event.device}: {event.name} {json.dumps(event.data)}")
        await events.aclose()
        say("  the coordinator's rules (examples/smart-home/rules.yaml) react to it:")
        for lamp in ("lamp-hall", "lamp-kitchen"):
            state = await _wait_lit(fleet, lamp, 80)
            say(f"  {lamp} -> {json.dumps(state)}")

        say("\nThe coordinator routes by skill and tags, or from plain language:")
        out, route = await fleet.call_skill(
            "set_brightness", {"level": 60}, where={"room": "hall"}, explain=True, timeout=5
        )
        (decision,) = route["decisions"]
        say(f"  call --skill set_brightness --where room=hall -> {json.dumps(out)} "
            f"on {decision['chosen']} ({decision['method']})")  # fmt: skip
        every = await fleet.call_skill("get_state", mode="all", where={"kind": "lamp"}, timeout=5)
        say(f"  call --skill get_state --all -> {json.dumps(every['results'])}")

        say("\nTiny local models, one per device, optimized for its profile:")
        for d in await fleet.devices():
            for s in d.skills:
                if s.model:
                    say(f"  {d.device:<16} {s.name:<15} model {s.model} v{s.model_version}")
        await show("meter-basement", "read_digit", {"pixels": DIGIT_THREE}, brief=True)
        from .models.zoo import vibration

        healthy, worn = (vibration.simulate(k, 1, _rng())[0] for k in ("healthy", "bearing"))
        for label, window in (("healthy pump", healthy), ("worn bearing", worn)):
            out = await fleet.call("pump-garage", "score_window", {"samples": window.tolist()})
            say(f"  pump-garage/score_window ({label}) -> score {out['score']:.2f}, "
                f"anomalous={out['anomalous']}, likely {out['likely']}")  # fmt: skip
        text = "turn off the kitchen lights"
        parsed = await fleet.call("speaker-living", "parse_command", {"text": text})
        say(f'  speaker-living heard "{text}" -> {parsed["intent"]} {parsed["kind"]} '
            f"in the {parsed['room']}")  # fmt: skip
        asked = await fleet.ask(text, timeout=5)
        i = asked.interpretation
        say(f'  ask "{text}" -> {i.skill} where {i.where} ({i.layer}) -> '
            f"{json.dumps(asked.output)}")  # fmt: skip

        say("\nBad input gets a typed error, and the device keeps serving:")
        await show("lamp-kitchen", "set_brightness", {"level": 250})
        await show("lamp-kitchen", "get_state")
        if keep:
            say(f"\nFleet running at {url} (fleet '{DEMO_FLEET}'). Try, from this folder:")
            for line in keep_commands(url, broker_file, ws_url):
                say(f"  {line}")
            say("Ctrl-C (or SIGTERM) stops the fleet.")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()


async def _wait_lit(fleet: Fleet, lamp: str, level: int) -> Any:
    state: Any = None
    for _ in range(100):
        state = await fleet.call(lamp, "get_state", timeout=5)
        if state["on"] and state["brightness"] == level:
            break
        await asyncio.sleep(0.05)
    return state


def cli_command() -> str:
    """How to run this very edgeagent from the current folder (``.venv/bin/edgeagent``)."""
    exe = Path(sys.executable).parent / "edgeagent"
    if not exe.is_file():
        return f"{shlex.quote(sys.executable)} -m edgeagent"
    found = shutil.which("edgeagent")
    if found is not None and Path(found).resolve() == exe.resolve():
        return "edgeagent"
    try:
        return shlex.quote(str(exe.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(exe))


def keep_commands(
    url: str, broker_file: Path | None = None, ws_url: str | None = None
) -> list[str]:
    """Ready-to-paste commands for the fleet ``demo --keep`` leaves running at ``url`` (on a
    secured broker: with the operator identity's ``broker_file``; with ``ws_url``, the private
    broker's MQTT over WebSockets listener, the web dashboard too)."""
    where = f"--broker {url}" if broker_file is None else f"--broker-config {broker_file}"
    ea = f"{cli_command()} {where} --fleet {DEMO_FLEET}"
    host, _, port = url.removeprefix("mqtt://").removeprefix("mqtts://").partition(":")
    rr = f"mosquitto_rr -V 5 -h {host} -p {port or 1883}"
    if broker_file is not None:
        folder = broker_file.parent
        rr += f" --cafile {folder / 'ca.crt'} --cert {folder / 'demo-operator.crt'}"
        rr += f" --key {folder / 'demo-operator.key'}"
    dashboard = [f"{ea} dashboard --ws-url {ws_url}"] if ws_url else []
    return [
        *dashboard,
        f"{ea} fleet ls",
        f"{ea} fleet watch",
        f"{ea} call lamp-kitchen set_brightness '{{\"level\": 40}}'",
        f"{ea} call --skill get_state --where room=hall --explain",
        f'{ea} ask "turn off the kitchen lights"',
        f"{rr} -t edgeagent/{DEMO_FLEET}/dev/lamp-hall/call/get_state -e my/replies -m '{{}}'",
    ]


def _sigterm_as_sigint(signum: int, frame: FrameType | None) -> None:
    """SIGTERM stops the demo as Ctrl-C does: whatever handles SIGINT now (asyncio.run's
    handler cancels the tour; otherwise KeyboardInterrupt) handles it."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _signals(term: Any, interrupt: Any) -> Iterator[None]:
    """Handle SIGTERM and SIGINT with ``term`` and ``interrupt`` inside the block (main thread
    only: elsewhere, such as a test's thread, the handlers are left alone)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, term), signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])


def _rng() -> Any:
    import numpy as np

    return np.random.default_rng(3)


def _secure_broker(folder: Path, say: Callable[[str], None]) -> SecureBroker:
    """A private mosquitto with TLS client certificates and the fleet's ACL, every demo agent,
    the coordinator and an operator enrolled (docs/security.md)."""
    from .fleetdir import skills_from_config
    from .securebroker import Wanted, start_secure

    wanted = []
    for device, cfg in DEVICES.items():
        _, _, skills = skills_from_config(folder / cfg)
        wanted.append(Wanted(device, "device", skills=skills))
    wanted += [Wanted(DEMO_COORDINATOR, "coordinator"), Wanted(DEMO_OPERATOR, "operator")]
    secure = start_secure(wanted, fleet=DEMO_FLEET)
    say(
        f"Started a private secured mosquitto at {secure.url} (TLS client certificates, ACL; "
        f"fleet folder {secure.fleet.path})"
    )
    return secure


def run_demo(
    broker: str | None,
    examples: Path | None,
    keep: bool,
    say: Callable[[str], None],
    secure: bool = False,
) -> None:
    """Run the demo; SIGTERM and SIGINT (Ctrl-C) at any point stop every process it started.
    ``secure``: on a private broker that requires each process's own certificate."""
    if secure and broker is not None:
        raise EdgeAgentError("--secure starts its own secured broker: leave out --broker")
    folder = find_examples(examples)
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # e.g. `demo --keep &` in a script
    interrupt = signal.SIG_IGN if ignored else signal.default_int_handler
    local: Mosquitto | None = None
    secured: SecureBroker | None = None
    procs: list[subprocess.Popen[bytes]] = []
    logs = Path(os.environ.get("TMPDIR", "/tmp")) / "edgeagent-demo"
    logs.mkdir(parents=True, exist_ok=True)
    log_files: list[Any] = []
    codes: list[int] = []
    with _signals(_sigterm_as_sigint, interrupt):
        try:
            if secure:
                secured = _secure_broker(folder, say)
                broker = secured.url
            elif broker is None:
                local = Mosquitto(websockets=True)  # the dashboard's listener (--keep)
                local.start()
                broker = local.url
                assert local.proc is not None
                say(f"Started a private mosquitto at {broker} (pid {local.proc.pid})")
            for device, cfg in DEVICES.items():
                log_files.append((logs / f"{device}.log").open("wb"))
                command = [
                    sys.executable,
                    "-m",
                    "edgeagent.cli",
                    *_broker_args(broker, secured, device),
                ]
                command += ["agent", "run", str(folder / cfg)]
                procs.append(
                    subprocess.Popen(command, stdout=log_files[-1], stderr=subprocess.STDOUT)
                )
                say(f"Started agent {device} (pid {procs[-1].pid}, log {logs / f'{device}.log'})")
            log_files.append((logs / "coordinator.log").open("wb"))
            rules = folder / "rules.yaml"
            command = [sys.executable, "-m", "edgeagent.cli"]
            command += _broker_args(broker, secured, DEMO_COORDINATOR)
            command += ["--fleet", DEMO_FLEET, "--log-level", "info"]
            command += ["coordinator", "run", "--rules", str(rules)]
            if secured is not None:
                command += ["--group", secured.fleet.registry.coordinator_group]
            procs.append(subprocess.Popen(command, stdout=log_files[-1], stderr=subprocess.STDOUT))
            say(
                f"Started the coordinator with {rules} (pid {procs[-1].pid}, "
                f"log {logs / 'coordinator.log'})"
            )
            if secured is None:
                ws_url = local.ws_url if local is not None else None
                asyncio.run(_tour(broker, say, keep, None, ws_url))
            else:
                operator = secured.fleet.identity_dir(DEMO_OPERATOR) / "broker.yaml"
                asyncio.run(_tour(secured.broker_config(DEMO_OPERATOR), say, keep, operator))
        except KeyboardInterrupt:
            pass
        finally:
            # Bounded (15 s per process, then SIGKILL), and not to be interrupted half-way.
            with _signals(signal.SIG_IGN, signal.SIG_IGN):
                codes = _stop_all(procs)
                for f in log_files:
                    f.close()
                say(
                    f"\nStopped {max(len(procs) - 1, 0)} agents and the coordinator "
                    "(SIGTERM: drain, publish offline, disconnect)."
                )
                if local is not None:
                    local.close()
                if secured is not None:
                    secured.close()
    if any(c != 0 for c in codes):
        raise EdgeAgentError(f"an agent exited with an error; see the logs in {logs}")


def _broker_args(url: str, secured: SecureBroker | None, identity: str) -> list[str]:
    if secured is None:
        return ["--broker", url]
    return ["--broker-config", str(secured.fleet.identity_dir(identity) / "broker.yaml")]


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every process still running, wait for each (15 s, then SIGKILL); exit codes."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(15))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait(5))
    return codes
