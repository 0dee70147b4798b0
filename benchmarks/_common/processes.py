"""The processes a benchmark starts: the private mosquitto, ``edgeagent`` agents, helper copies
of the benchmark script itself; each stopped (terminated, then killed) when its block ends.

Only the tests' private mosquitto (``tests/broker/mosquitto.py``: the checked-in config, a free
port) is ever used, never the system broker on 1883. Waiting (for a broker, a child's
``ready`` line, a device online) goes through the package's clock, :data:`CLOCK`.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, Protocol, cast

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import Fleet  # type: ignore[import-not-found, unused-ignore]
from edgeagent.clock import SYSTEM_CLOCK  # type: ignore[import-not-found, unused-ignore]

REPO = Path(__file__).resolve().parents[2]
CLOCK = SYSTEM_CLOCK
"""Deadlines and waits (not measurements: those read ``time.perf_counter``)."""


class Broker(Protocol):
    """What the benchmarks use of ``tests.broker.mosquitto.Mosquitto``."""

    port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def url(self) -> str: ...

    def start(self) -> Broker: ...

    def close(self) -> None: ...

    def __enter__(self) -> Broker: ...

    def __exit__(self, *exc: object) -> None: ...


def private_broker(extra_config: str = "") -> Broker:
    """The tests' private mosquitto (a free port, the checked-in config plus ``extra_config``;
    never port 1883). Use it as a context manager, or ``start()`` and ``close()``."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    # Imported by name so that mypy checks the benchmarks, not the tests package.
    module = importlib.import_module("tests.broker.mosquitto")
    return cast(Broker, module.Mosquitto(extra_config=extra_config))


def edgeagent_command() -> list[str]:
    """How to run the ``edgeagent`` CLI: the installed script, else ``python -m edgeagent``."""
    exe = shutil.which("edgeagent")
    return [exe] if exe is not None else [sys.executable, "-m", "edgeagent"]


def agent_command(
    url: str, config: Path, *, fleet: str | None = None, log_level: str = "warning"
) -> list[str]:
    """``edgeagent [--fleet F] agent run CONFIG`` against the broker at ``url``."""
    cmd = [*edgeagent_command(), "--broker", url]
    if fleet is not None:
        cmd += ["--fleet", fleet]
    return [*cmd, "--log-level", log_level, "agent", "run", str(config)]


def with_pythonpath(*folders: Path) -> dict[str, str]:
    """Environment overrides putting ``folders`` first on a child's ``PYTHONPATH`` (an agent
    whose config is not next to its skills' package)."""
    paths = [str(f) for f in folders]
    paths += filter(None, [os.environ.get("PYTHONPATH")])
    return {"PYTHONPATH": os.pathsep.join(paths)}


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate ``proc``, then kill it if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def spawn(
    cmd: list[str], log: Path | IO[bytes], env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (in the repository, stdout discarded, stderr to ``log``, ``env`` over
    this process's environment), stopped when the block ends."""
    with ExitStack() as stack:
        out = stack.enter_context(log.open("wb")) if isinstance(log, Path) else log
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=out,
            cwd=REPO,
            env={**os.environ, **env} if env else None,
        )
        try:
            yield proc
        finally:
            stop_process(proc)


def wait_for_line(proc: subprocess.Popen[str], expect: str, timeout: float) -> None:
    """Read ``proc``'s stdout until the line ``expect``; RuntimeError if it exits or is late."""
    assert proc.stdout is not None
    deadline = CLOCK.monotonic() + timeout
    while CLOCK.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == expect:
            return
        if not line and proc.poll() is not None:
            raise RuntimeError(f"helper process exited with {proc.returncode}")
    raise RuntimeError(f"helper process did not print {expect!r}")


@contextmanager
def script_process(
    script: str, *args: str, ready: str = "ready"
) -> Iterator[subprocess.Popen[str]]:
    """``script`` (a benchmark file, run by this Python) with ``args``, e.g. as a responder;
    waits for it to print ``ready``, stops it when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(script).resolve()), *args], stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for_line(proc, ready, 20.0)
        yield proc
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


async def wait_online(
    url: str, fleet: str, devices: tuple[str, ...], timeout: float = 30.0
) -> None:
    """Until every one of ``devices`` has its retained state ``online`` (seen by a separate,
    throwaway client); TimeoutError after ``timeout`` seconds."""
    async with CLOCK.timeout(timeout), Fleet(url, fleet=fleet) as f:
        while True:
            infos = [await f.device(d) for d in devices]
            if all(i is not None and i.online for i in infos):
                return
            await CLOCK.sleep(0.05)
