"""Apps to deploy in tests: the example lamp copied into a folder of the test's own."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from edgeagent import Fleet
from edgeagent.deploy.bundle import BuildOptions, BuiltBundle, build_bundle

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"

EXTRA_SKILL = '''

@skill(side_effect="read")
async def version_marker(data: str) -> str:
    """Added by a test's second deploy: proves the new code runs."""
    return "v2:" + data
'''

BROKEN = "\nraise RuntimeError('this release is broken on purpose')\n"


def make_app(folder: Path, *, device: str, fleet: str, broker: str, profile: str) -> Path:
    """The smart-home skills package and a lamp config for ``device``; returns the config."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        EXAMPLES / "smarthome",
        folder / "smarthome",
        ignore=shutil.ignore_patterns("__pycache__"),
        dirs_exist_ok=True,
    )
    config = folder / "lamp.yaml"
    config.write_text(
        f"device: {device}\nfleet: {fleet}\nbroker: {broker}\nprofile: {profile}\n"
        "tags: {room: test, kind: lamp}\nhealth_interval_s: 2\ngrace_s: 1\n"
        "skills:\n  - module: smarthome.lamp:Lamp\n    options: {brightness: 70}\n"
        "  - module: smarthome.echo\n"
    )
    return config


def add_skill(folder: Path) -> None:
    """A one-file change: a new skill in smarthome/echo.py."""
    path = folder / "smarthome" / "echo.py"
    path.write_text(path.read_text() + EXTRA_SKILL)


def break_module(folder: Path) -> None:
    """Make smarthome/echo.py raise on import (only on the device: built with no import check)."""
    path = folder / "smarthome" / "echo.py"
    path.write_text(path.read_text() + BROKEN)


def build(
    config: Path, profile: str, out: Path, key: Path, cache: Path, *, check_import: bool = True
) -> BuiltBundle:
    return build_bundle(
        config,
        profile,
        out,
        key=key,
        options=BuildOptions(cache=cache, import_skills=check_import),
    )


async def fleet_call(
    broker: str, fleet: str, device: str, skill: str, data: Any, timeout: float = 5
) -> Any:
    async with Fleet(broker, fleet=fleet, timeout=timeout) as client:
        return await client.call(device, skill, data, timeout=timeout)


def call(broker: str, fleet: str, device: str, skill: str, data: Any, timeout: float = 5) -> Any:
    return asyncio.run(fleet_call(broker, fleet, device, skill, data, timeout))


async def _release(broker: str, fleet: str, device: str) -> str | None:
    async with Fleet(broker, fleet=fleet, timeout=3) as client:
        info = await client.device(device)
        return info.manifest.release if info and info.manifest and info.online else None


def announced_release(broker: str, fleet: str, device: str) -> str | None:
    return asyncio.run(_release(broker, fleet, device))
