"""The wire models of the system skills (``system.info``/``update``/``rollback``/``restart``:
agent/system.py) and the device-layout facts they read without an agent: where the install is,
whether a signed manifest is well formed, the device tool's last rollback. Apart from
:class:`SystemSkills` so that the models and checks read without the update machinery.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

UpdateState = Literal[
    "downloading", "applying", "verifying", "healthy", "failed", "rolled_back", "current"
]
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,127}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_MANIFEST = 4 * 1024 * 1024


class SystemInfo(BaseModel):
    device: str
    release: str | None
    previous: str | None = Field(description="The release a rollback returns to.")
    pending: str | None = Field(description="A switched release not yet confirmed healthy.")
    uptime_s: float
    python: str
    platform: str
    machine: str
    free_bytes: int | None = Field(description="Free space where releases are installed.")
    service: str | None = Field(description="systemd or process; None when not deployed.")
    update: dict[str, Any] | None = Field(description="The last update's state, as published.")


class UpdateRequest(BaseModel):
    manifest: str = Field(max_length=MAX_MANIFEST, description="bundle.json, as signed.")
    signature: str = Field(max_length=4096, description="bundle.json.minisig.")
    server: str | None = Field(
        default=None, description="File server id serving the content files over MQTT."
    )
    url: str | None = Field(default=None, description="Or an HTTP base URL serving them.")
    rollout: str | None = Field(default=None, max_length=128)
    confirm_within_s: float = Field(default=120.0, ge=10, le=3600)


class UpdateAccepted(BaseModel):
    version: str
    state: UpdateState
    missing_files: int
    missing_bytes: int


class Done(BaseModel):
    ok: bool
    detail: str


def device_root() -> Path | None:
    """The deployed install this agent runs from (``$EDGEAGENT_ROOT``, or the working folder
    ``ROOT/releases/VERSION/app`` the unit starts it in); None when not deployed."""
    env = os.environ.get("EDGEAGENT_ROOT")
    candidates = [Path(env)] if env else []
    cwd = Path.cwd().resolve()
    if cwd.name == "app" and cwd.parent.parent.name == "releases":
        candidates.append(cwd.parent.parent.parent)
    for root in candidates:
        if (root / "device.json").is_file():
            return root
    return None


def parse_manifest(text: str) -> dict[str, Any]:
    """A signed ``bundle.json``'s content, checked for what an update relies on (ValueError)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"manifest: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise ValueError("manifest: not a bundle.json (no files list)")
    if not _VERSION.fullmatch(str(data.get("version", ""))):
        raise ValueError(f"manifest: bad version {data.get('version')!r}")
    for f in data["files"]:
        if not isinstance(f, dict) or not _HEX64.fullmatch(str(f.get("sha256", ""))):
            raise ValueError("manifest: a file without a sha256")
        if not isinstance(f.get("size"), int) or f["size"] < 0:
            raise ValueError(f"manifest: file {f.get('sha256')}: bad size")
    return data


def last_rollback(root: Path) -> dict[str, Any] | None:
    """The device tool's latest switch event (history.jsonl), when it is a rollback."""
    try:
        lines = (root / "history.jsonl").read_text().splitlines()[-20:]
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") in ("activated", "healthy"):
                return None
            if isinstance(event, dict) and event.get("event") == "rolled_back":
                return event
    return None
