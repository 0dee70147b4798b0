"""What a new user meets first: the README's two commands, the demo's hints, the CLI's errors,
and stopping what was started (issue 10, "The newcomer's two commands")."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent import Fleet
from edgeagent.cli import main
from edgeagent.config import AgentConfig, load_config, load_skills
from edgeagent.demo import DEVICES
from edgeagent.device import DeviceAgent
from edgeagent.errors import CallTimeout, ConfigError, NotFound
from edgeagent.localbroker import free_port
from tests.agents import EXAMPLES, ROOT, Retained

README = (ROOT / "README.md").read_text()
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _code_blocks(section: str) -> list[str]:
    """The ```sh blocks of the README section titled ``section``."""
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", body, flags=re.S)


def _commands(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


# The README's two commands ----------------------------------------------------------------------


def test_ci_runs_the_readme_commands_and_installs_nothing_by_hand() -> None:
    (first,) = _code_blocks("Quickstart")[0].split()[:1]
    (test_command,) = [c.strip() for c in _code_blocks("Run the tests")[0].strip().splitlines()]
    commands = _commands(ROOT / ".ci" / "run")
    assert "./" + test_command.removeprefix("./") in {"./" + c for c in commands}
    assert first.removeprefix("./") in [c.removeprefix("./") for c in commands]
    # Nothing installed into whatever python3 is on PATH: the README's commands set up .venv.
    assert not [c for c in commands if "pip install" in c], commands
    # The test command runs pytest with the project's .venv, never python3 from PATH.
    script = _commands(ROOT / test_command)
    assert script[-1] == 'exec .venv/bin/python -m pytest "$@"', script


@pytest.mark.timeout(900)
def test_venv_setup_installs_nothing_when_current() -> None:
    # The first run may install (a checkout without .venv, or pyproject.toml changed).
    first = subprocess.run(
        [ROOT / "scripts" / "venv", "dev"], capture_output=True, text=True, timeout=880
    )
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    again = subprocess.run(
        [ROOT / "scripts" / "venv", "dev"], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert again.stderr == "", again.stderr  # no "Installing…", no pip output
    assert again.stdout.strip() == str(VENV_PYTHON)
    assert time.monotonic() - started < 10


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_test_command_uses_the_venv_even_with_a_clean_python3_on_path(tmp_path: Path) -> None:
    """A python3 with neither edgeagent nor pytest (nor pip) first on PATH, as on a fresh
    machine: the README's test command still runs the suite, with .venv's Python."""
    clean = tmp_path / "clean"
    venv.EnvBuilder(with_pip=False).create(clean)
    probe = subprocess.run([clean / "bin" / "python3", "-c", "import pytest"], capture_output=True)
    assert probe.returncode != 0  # really clean
    env = {
        **os.environ,
        "PATH": f"{clean / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "EDGEAGENT_EXPECT_VENV": "1",
    }
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    (test_command,) = [c.strip() for c in _code_blocks("Run the tests")[0].strip().splitlines()]
    proc = subprocess.run(
        [*shlex.split(test_command), "-q", "-p", "no:cacheprovider",
         "tests/test_newcomer.py::test_suite_runs_in_the_project_venv"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=880,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"^1 passed", proc.stdout, flags=re.M), proc.stdout[-2000:]


def test_suite_runs_in_the_project_venv() -> None:
    """Run by the test above through the README's test command (skipped when run otherwise)."""
    if not os.environ.get("EDGEAGENT_EXPECT_VENV"):
        pytest.skip("only meaningful when run through scripts/test by the test above")
    import edgeagent

    assert Path(sys.prefix).resolve() == (ROOT / ".venv").resolve()
    assert Path(edgeagent.__file__).resolve().is_relative_to(ROOT)
    assert Path(pytest.__file__).resolve().is_relative_to(ROOT / ".venv")


# README and help text ---------------------------------------------------------------------------


def test_readme_installs_what_models_optimize_needs_before_using_it() -> None:
    (block,) = [b for b in _code_blocks("Tiny models") if "models optimize digits" in b]
    lines = block.splitlines()
    at = next(i for i, line in enumerate(lines) if "models optimize digits" in line)
    installs = [line for line in lines[:at] if "pip install" in line]
    assert installs, block
    # The zoo's data (scikit-learn: `train`) and the quantizer (onnx: `optimize`).
    extras = set(re.findall(r"\[([a-z,]+)\]", " ".join(installs))[0].split(","))
    assert {"optimize", "train"} <= extras or "dev" in extras, installs


def test_readme_use_it_points_at_the_demo_commands() -> None:
    use_it = README.split("## Use it\n", 1)[1].split("\n## ", 1)[0]
    assert "demo --keep" in use_it
    assert ".venv/bin/edgeagent" in use_it


def test_demo_help_counts_every_agent() -> None:
    words = {7: "seven", 8: "eight", 9: "nine", 10: "ten"}
    out = CliRunner().invoke(main, ["demo", "--help"]).output
    text = " ".join(out.split())
    assert f"the {words[len(DEVICES)]} example agents" in text, text
    assert "coordinator" in text
    assert "four" not in text


# Calling a device that never announced itself ---------------------------------------------------


def _echo_agent(url: str, fleet: str, device: str) -> DeviceAgent:
    cfg = AgentConfig(
        device=device, fleet=fleet, broker={"url": url}, skills=[{"module": "smarthome.echo"}]
    )
    return DeviceAgent(cfg)


@pytest.mark.broker
def test_call_to_an_unknown_device_is_not_found_at_once(broker_url: str, fleet_name: str) -> None:
    async def go() -> None:
        async with (
            _echo_agent(broker_url, fleet_name, "lamp-kitchen"),
            _echo_agent(broker_url, fleet_name, "lamp-hall"),
            _echo_agent(broker_url, fleet_name, "doorbell-front"),
            Fleet(broker_url, fleet=fleet_name) as fleet,
        ):
            started = time.monotonic()
            with pytest.raises(NotFound) as err:
                await fleet.call("lamp-kitchn", "echo", {"data": "x"}, timeout=10)
            assert time.monotonic() - started < 2
            message = str(err.value)
            assert message.startswith("not_found: no device 'lamp-kitchn' has announced itself")
            assert "did you mean 'lamp-kitchen'" in message
            # Close matches first, then every other known device.
            assert err.value.details is not None
            assert err.value.details["known"][0] == "lamp-kitchen"
            assert set(err.value.details["known"]) == {
                "lamp-kitchen",
                "lamp-hall",
                "doorbell-front",
            }
            # A known device is served; no round trip was added for it (the view is synced).
            assert await fleet.call("lamp-kitchen", "echo", {"data": "y"}, timeout=5) == "y"
            # Opting out sends the call anyway: nobody answers, the deadline decides.
            with pytest.raises(CallTimeout):
                await fleet.call("lamp-kitchn", "echo", {}, timeout=1, check_device=False)

    asyncio.run(go())


@pytest.mark.broker
def test_a_device_announced_after_the_view_was_synced_is_found(
    broker_url: str, fleet_name: str
) -> None:
    async def go() -> None:
        async with Fleet(broker_url, fleet=fleet_name) as fleet:
            with pytest.raises(NotFound, match=r"\(devices: none\)"):
                await fleet.call("late", "echo", {"data": "x"}, timeout=5)
            async with _echo_agent(broker_url, fleet_name, "late"):
                # Straight after the agent announced itself: no sleep, no retry.
                assert await fleet.call("late", "echo", {"data": "x"}, timeout=5) == "x"

    asyncio.run(go())


@pytest.mark.broker
def test_cli_call_to_an_unknown_device_fails_fast(
    broker_url: str, fleet_name: str, cli_env: dict[str, str]
) -> None:
    async def go() -> None:
        async with _echo_agent(broker_url, fleet_name, "echo-1"):
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgeagent.cli", "--fleet", fleet_name,
                "call", "echo-2", "echo", '{"data": "x"}', "--timeout", "20",
                env=cli_env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await proc.communicate()
            assert proc.returncode == 2
            assert time.monotonic() - started < 10  # interpreter start-up included
            assert "not_found: no device 'echo-2'" in err.decode()
            assert "'echo-1'" in err.decode()

    asyncio.run(go())


# Agent configs ----------------------------------------------------------------------------------


def test_unknown_profile_names_file_line_and_known_profiles(tmp_path: Path) -> None:
    cfg = tmp_path / "lamp.yaml"
    cfg.write_text(
        "device: lamp\nprofile: pi-4\nskills:\n  - module: smarthome.lamp:Lamp\n", "utf-8"
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{cfg}:2: profile: unknown device profile 'pi-4'"), message
    for known in ("pi4", "pi5", "pi-zero-2w", "x86-64"):
        assert known in message


def test_profile_file_next_to_the_config_is_accepted(tmp_path: Path) -> None:
    from edgeagent.devices import PROFILE_DIR

    (tmp_path / "boards").mkdir()
    (tmp_path / "boards" / "pi4.yaml").write_bytes((PROFILE_DIR / "pi4.yaml").read_bytes())
    cfg = tmp_path / "lamp.yaml"
    text = "device: lamp\nprofile: {}\nskills:\n  - module: smarthome.lamp:Lamp\n"
    cfg.write_text(text.format("boards/pi4.yaml"), "utf-8")
    assert load_config(cfg).profile == str(tmp_path / "boards" / "pi4.yaml")
    cfg.write_text(text.format("pi5"), "utf-8")
    assert load_config(cfg).profile == "pi5"


@pytest.fixture
def without_examples_on_path() -> Iterator[None]:
    """sys.path and sys.modules as in a fresh agent process: no examples/smart-home."""
    saved_path = list(sys.path)
    saved = {k: v for k, v in sys.modules.items() if k == "smarthome" or k.startswith("smarthome.")}
    # Any folder holding a `smarthome` package (the examples, or a copy an earlier test in this
    # process put on sys.path, such as a deployed bundle's) is not on a fresh agent's path.
    sys.path[:] = [
        p
        for p in sys.path
        if Path(p or ".").resolve() != EXAMPLES.resolve()
        and not (Path(p or ".") / "smarthome").is_dir()
    ]
    for name in saved:
        del sys.modules[name]
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.modules.update(saved)


def test_missing_skill_module_names_every_place_searched(
    tmp_path: Path, without_examples_on_path: None
) -> None:
    copied = tmp_path / "lamp-kitchen.yaml"
    copied.write_bytes((EXAMPLES / "lamp-kitchen.yaml").read_bytes())
    cfg = load_config(copied)
    with pytest.raises(ConfigError) as err:
        load_skills(cfg)
    message = str(err.value)
    line = next(i for i, text in enumerate(copied.read_text().splitlines(), 1) if "module:" in text)
    assert message.startswith(
        f"{copied}:{line}: skills.0.module: cannot import 'smarthome.lamp': "
        "no module named 'smarthome'"
    ), message
    assert f"{tmp_path} (the config's folder)" in message
    for entry in sys.path:  # every folder Python looked in, in order
        assert f"    {entry}" in message or (not entry and ". (the current folder)" in message)
    assert "next to the config" in message
    assert "PYTHONPATH" in message
    assert f"PYTHONPATH={EXAMPLES}" in message  # where this module really is


# Stopping what was started ----------------------------------------------------------------------


def _closed_broker() -> str:
    return f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there


def _wait_for_text(proc: subprocess.Popen[str], text: str, timeout: float) -> str:
    """Read ``proc``'s stderr until a line holds ``text``; everything read so far."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} not seen within {timeout} s:\n{seen}")


def _stops_within(proc: subprocess.Popen[str], sig: int, seconds: float) -> float:
    started = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
        raise AssertionError(
            f"still running {seconds} s after {signal.Signals(sig).name}"
        ) from None
    return time.monotonic() - started


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("command", ["agent", "coordinator"])
def test_service_stops_on_signal_while_retrying_the_broker(
    sig: signal.Signals, command: str
) -> None:
    args = ["agent", "run", str(EXAMPLES / "echo.yaml")] if command == "agent" else []
    args = args or ["coordinator", "run"]
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent.cli", "--broker", _closed_broker(), *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_for_text(proc, "retrying in", 30)  # connecting failed at least once
        _wait_for_text(proc, "retrying in", 30)  # and now it is retrying
        assert _stops_within(proc, sig, 5) < 5
        assert proc.returncode == 0
        assert proc.stderr is not None
        assert f"{sig.name} before the broker" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.broker
def test_agent_stops_on_sigterm_when_serving_and_says_offline(
    broker_url: str, fleet_name: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES), "PYTHONUNBUFFERED": "1"}
    state = f"edgeagent/{fleet_name}/dev/echo-1/state"
    watch = Retained(broker_url, state)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent.cli", "--broker", broker_url, "--fleet", fleet_name,
         "agent", "run", str(EXAMPLES / "echo.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        watch.wait_for(state, "status", "online")
        assert _stops_within(proc, signal.SIGTERM, 10) < 10
        assert proc.returncode == 0
        watch.wait_for(state, "status", "offline")
    finally:
        watch.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stderr is not None
        proc.stderr.close()


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.broker
@pytest.mark.timeout(180)
def test_demo_keep_prints_working_commands_and_stops_everything_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeagent.cli", "demo", "--keep"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    children: set[int] = set()
    try:
        assert proc.stdout is not None
        out = ""
        deadline = time.monotonic() + 120
        while "stops the fleet" not in out and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
        assert "stops the fleet" in out, out
        url = re.search(r"Fleet running at (mqtt://127\.0\.0\.1:\d+)", out)
        assert url is not None, out
        commands = re.findall(r"^  (\S*edgeagent .*)$", out, flags=re.M)
        assert commands
        assert all(f"--broker {url[1]} --fleet home" in c for c in commands)
        # Copy-paste ready: run two of them as printed, from the same folder.
        ls = next(c for c in commands if c.endswith("fleet ls"))
        listed = subprocess.run(
            shlex.split(ls), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert listed.returncode == 0, listed.stderr
        assert "lamp-kitchen" in listed.stdout
        assert "online" in listed.stdout
        call = next(c for c in commands if " call lamp-kitchen set_brightness " in c)
        called = subprocess.run(
            shlex.split(call), cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert called.returncode == 0, called.stderr
        assert '"brightness": 40' in called.stdout or '"brightness":40' in called.stdout
        children = _children(proc.pid)
        assert len(children) >= len(DEVICES) + 2  # agents, the coordinator, mosquitto

        assert _stops_within(proc, signal.SIGTERM, 40) < 40
        rest = proc.stdout.read()
        assert f"Stopped {len(DEVICES)} agents and the coordinator" in rest, rest
        assert proc.returncode == 0, rest
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()
