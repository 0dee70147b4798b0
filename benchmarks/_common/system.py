"""What ran, on what: CPU time and memory of processes (``/proc``), the machine, the code.

A number in ``docs/benchmarks.md`` is only comparable with another taken on the same machine
with the same code, so every report carries :func:`machine_info` (CPU, cores, memory, load,
Python, package and mosquitto versions) and :func:`code_state` (the commit and which files
differ from it, read with read-only git commands).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import math
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CODE_PATHS = ("agent", "simulator", "deploy", "models", "devices", "images", "examples")
"""Where the measured code lives (the package's folders and the examples)."""
PACKAGES = ("paho-mqtt", "aiomqtt", "edgeagent")
"""Versions every report shows (flat keys, ``-`` as ``_``: ``paho_mqtt``)."""


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``; NaN once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_rss(pid: int) -> int:
    """Resident memory of process ``pid``, bytes (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def settled_rss() -> int:
    """This process's resident memory after a full garbage collection, bytes."""
    gc.collect()
    return pid_rss(os.getpid())


class CpuMeter:
    """CPU time per call of this process (``requester``) and of named other processes."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> dict[str, float]:
        snap = {"requester": time.process_time()}
        snap.update({name: process_cpu_s(pid) for name, pid in self.pids.items()})
        return snap

    def per_call(self, before: Mapping[str, float], calls: int) -> dict[str, float]:
        """µs per call of each process since ``before`` (a :meth:`snapshot`)."""
        after = self.snapshot()
        return {name: (after[name] - before[name]) / calls * 1e6 for name in before}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _cpuinfo_field(name: str) -> str | None:
    return next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith(name)
        ),
        None,
    )


def cpu_flags(wanted: Sequence[str]) -> list[str]:
    """Which of the ``wanted`` CPU flags (``/proc/cpuinfo``) this machine has, sorted."""
    have = set((_cpuinfo_field("flags") or "").split())
    return sorted(f for f in wanted if f in have)


def package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def mosquitto_version() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.splitlines()[0].removeprefix("mosquitto version ").strip() if out else "?"


def machine_info(packages: Sequence[str] = PACKAGES) -> dict[str, Any]:
    """CPU model and count, memory, kernel, load, Python, package and mosquitto versions."""
    mem_kb = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "cpu_model": _cpuinfo_field("model name") or platform.processor() or "unknown",
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
    }
    info.update({dist.replace("-", "_"): package_version(dist) for dist in packages})
    info["mosquitto"] = mosquitto_version()
    info["kernel"] = platform.release()
    info["loadavg"] = _read("/proc/loadavg").split()[:3]
    return info


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def code_state(paths: Sequence[str] = CODE_PATHS) -> dict[str, Any]:
    """The commit measured, the files under ``paths`` that differ from it (changed, and new
    ones git does not track yet), and a hash of those differences: two runs with the same
    commit and hash measured the same code."""
    diff = _git("diff", "HEAD", "--", *paths)
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *paths).split()
    digest = hashlib.sha1(diff.encode())
    for name in untracked:
        digest.update(name.encode())
        with contextlib.suppress(OSError):  # removed since ls-files listed it
            digest.update((REPO / name).read_bytes())
    return {
        "commit": _git("rev-parse", "--short", "HEAD") or "?",
        "modified": _git("diff", "HEAD", "--name-only", "--", *paths).split(),
        "untracked": untracked,
        "diff_sha1": digest.hexdigest()[:12],
    }
