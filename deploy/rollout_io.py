"""A rollout's inputs and records on the broker: the release to roll out, the topics, the
retained state's encoding, and one-shot reads of retained messages.

The release is a bundle folder (``bundle.json``, ``bundle.json.minisig``, ``files/``) or a folder
of them, one per device (``RELEASE/lamp-1/bundle.json``…, content files in each bundle's
``files/`` or shared in ``RELEASE/files/``). A bundle holds its agent's config and the device
tool installs it only on the device it names, so a fleet rollout carries one bundle per device;
each device gets the bundle that names it. The rollout's target (the planner's ``version``) is
that bundle's version for a single bundle, else ``set-`` and 12 hex digits of a hash over every
``device=version``; the runtime maps each device's own version onto it (:meth:`Release.norm`).

Topics, under ``{root}/{fleet}``::

    rollout/{id}            the planner's state (``Rollout.to_json``), retained, QoS 1; zlib when
                            over 256 KiB (Content Type ``application/zlib``, User Property
                            ``encoding: zlib``)
    rollout/{id}/driver     which process drives it: {"alive", "host", "pid", "since"}, retained;
                            the driver's last will says ``alive: false``
    rollout/{id}/control    {"command": "pause" | "resume" | "abort"}, QoS 1, not retained: the
                            driving process obeys
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TransportError
from ..protocol import Topics, check_name
from ..transport.base import Inbound, Props, Transport, topic_matches
from . import devicetool
from .errors import BundleInvalid
from .rollout_plan import Rollout
from .rollout_state import RolloutError

#: A state larger than this is compressed (brokers' packet limits start at 256 KiB on some).
COMPRESS_OVER = 256 * 1024
#: Largest state a reader inflates (a 100,000-device state is about 2 MB).
MAX_STATE = 64 * 1024 * 1024
ZLIB_TYPE = "application/zlib"
JSON_TYPE = "application/json"
COMMANDS = ("pause", "resume", "abort")


# Topics ------------------------------------------------------------------------------------


def state_topic(topics: Topics, rollout_id: str) -> str:
    return f"{topics.base}/rollout/{check_name(rollout_id, 'rollout id')}"


def driver_topic(topics: Topics, rollout_id: str) -> str:
    return state_topic(topics, rollout_id) + "/driver"


def control_topic(topics: Topics, rollout_id: str) -> str:
    return state_topic(topics, rollout_id) + "/control"


def all_states(topics: Topics) -> str:
    return f"{topics.base}/rollout/+"


def all_drivers(topics: Topics) -> str:
    return f"{topics.base}/rollout/+/driver"


def update_topics(topics: Topics) -> str:
    """Every device's update report (``…/dev/{device}/update``, see agent/system.py)."""
    return f"{topics.base}/dev/+/update"


def rollout_id_of(topic: str) -> str:
    """``…/rollout/{id}`` or ``…/rollout/{id}/driver`` → id."""
    parts = topic.split("/")
    return parts[parts.index("rollout") + 1] if "rollout" in parts else ""


def server_name(rollout_id: str) -> str:
    """The rollout's file server (``…/files/{name}/get``)."""
    return check_name(f"rollout-{rollout_id}"[:128], "file server name")


# The state's encoding ------------------------------------------------------------------------


def encode_state(text: str, compress_over: int = COMPRESS_OVER) -> tuple[bytes, Props]:
    raw = text.encode()
    if len(raw) <= compress_over:
        return raw, Props(content_type=JSON_TYPE)
    return zlib.compress(raw, 6), Props(
        content_type=ZLIB_TYPE, user_properties=(("encoding", "zlib"),)
    )


def decode_state(payload: bytes, props: Props) -> str:
    """The state's JSON text; RolloutError if it does not inflate (or inflates past 64 MiB)."""
    if props.content_type == ZLIB_TYPE or props.user_property("encoding") == "zlib":
        d = zlib.decompressobj()
        try:
            raw = d.decompress(payload, MAX_STATE)
        except zlib.error as exc:
            raise RolloutError(f"rollout state: bad zlib data: {exc}") from None
        if d.unconsumed_tail:
            raise RolloutError(f"rollout state inflates past {MAX_STATE} bytes")
        payload = raw
    try:
        return payload.decode()
    except UnicodeDecodeError:
        raise RolloutError("rollout state is not UTF-8 text") from None


def load_state(msg: Inbound) -> Rollout:
    return Rollout.from_json(decode_state(msg.payload, msg.props))


def driver_record(alive: bool, since: float, reason: str | None = None) -> bytes:
    rec: dict[str, Any] = {"alive": alive, "host": socket.gethostname(), "pid": os.getpid(),
                           "since": round(since, 3), "ts": round(time.time(), 3)}  # fmt: skip
    if reason:
        rec["reason"] = reason
    return json.dumps(rec).encode()


def parse_json(payload: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def whoami() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def describe_driver(driver: Mapping[str, Any] | None) -> str:
    if not driver or not driver.get("alive"):
        return "none"
    return f"{driver.get('host')} pid {driver.get('pid')}"


# Retained reads ------------------------------------------------------------------------------


async def sync(transport: Transport, topics: Topics, timeout: float = 5.0) -> None:
    """Return once every message the broker queued for us before now has arrived: a marker
    published after the subscriptions comes back after their retained messages."""
    marker_topic = f"{topics.base}/client/{transport.client_id}/rollout-sync"
    token = uuid.uuid4().bytes
    arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_marker(msg: Inbound) -> None:
        if msg.payload == token and not arrived.done():
            arrived.set_result(None)

    await transport.subscribe(marker_topic, on_marker, qos=1)
    try:
        await transport.publish(marker_topic, token, qos=1)
        async with asyncio.timeout(timeout):
            await arrived
    except TimeoutError:
        raise TransportError(f"the broker did not answer a sync marker in {timeout:g} s") from None
    finally:
        with contextlib.suppress(TransportError):
            await transport.unsubscribe(marker_topic)


async def read_retained(
    transport: Transport, topics: Topics, filters: Iterable[str]
) -> dict[str, Inbound]:
    """Every retained message on ``filters`` now, by topic (subscribed, read, unsubscribed)."""
    got: dict[str, Inbound] = {}
    flist = list(filters)

    def on_msg(msg: Inbound) -> None:
        if msg.payload:
            got[msg.topic] = msg
        else:
            got.pop(msg.topic, None)

    for f in flist:
        await transport.subscribe(f, on_msg, qos=1)
    try:
        await sync(transport, topics)
    finally:
        for f in flist:
            with contextlib.suppress(TransportError):
                await transport.unsubscribe(f)
    return {t: m for t, m in got.items() if any(topic_matches(f, t) for f in flist)}


@dataclass(slots=True)
class Known:
    """What the broker holds about one rollout."""

    rollout: Rollout | None
    driver: dict[str, Any] | None
    error: str | None = None

    @property
    def driven(self) -> bool:
        return bool(self.driver and self.driver.get("alive"))

    @property
    def started_at(self) -> float:
        return self.rollout.started_at if self.rollout is not None else 0.0

    @property
    def finished(self) -> bool:
        """Nothing left for a driver to do (an unreadable state counts as finished)."""
        return self.rollout is None or self.rollout.finished


async def read_rollouts(
    transport: Transport, topics: Topics, rollout_id: str | None = None
) -> dict[str, Known]:
    """The retained rollouts of the fleet (or the one named), with their drivers; a state that
    does not parse is kept with its error (``rollout`` None)."""
    if rollout_id is None:
        filters = [all_states(topics), all_drivers(topics)]
    else:
        filters = [state_topic(topics, rollout_id), driver_topic(topics, rollout_id)]
    msgs = await read_retained(transport, topics, filters)
    out: dict[str, Known] = {}
    for topic, msg in sorted(msgs.items()):
        rid = rollout_id_of(topic)
        k = out.setdefault(rid, Known(None, None))
        if topic.endswith("/driver"):
            k.driver = parse_json(msg.payload)
            continue
        try:
            k.rollout = load_state(msg)
        except RolloutError as exc:
            k.error = str(exc)
    return {rid: k for rid, k in out.items() if k.rollout is not None or k.error is not None}


def claims_of(known: Mapping[str, Known], exclude: str | None = None) -> dict[str, str]:
    """device → the other rollout that holds it (``Rollout.claims``)."""
    claimed: dict[str, str] = {}
    for rid, k in known.items():
        if k.rollout is not None and rid != exclude:
            for d in k.rollout.claims():
                claimed.setdefault(d, rid)
    return claimed


# The release -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceBundle:
    device: str
    folder: Path
    version: str
    profile: str


@dataclass(frozen=True, slots=True)
class Release:
    """What a rollout installs: one bundle per device it names (see the module docstring)."""

    path: Path
    label: str
    content_hash: str
    bundles: Mapping[str, DeviceBundle]
    stores: tuple[Path, ...]

    def target(self, device: str) -> str | None:
        b = self.bundles.get(device)
        return None if b is None else b.version

    def norm(self, device: str, release: str | None) -> str | None:
        """A device's release as the planner sees it: the rollout's label when it is the
        device's own target version."""
        return self.label if release is not None and release == self.target(device) else release

    def request(self, device: str) -> tuple[str, str]:
        """``bundle.json`` and its signature, as ``system.update`` takes them."""
        folder = self.bundles[device].folder
        try:
            return (
                (folder / "bundle.json").read_text(),
                (folder / "bundle.json.minisig").read_text(),
            )
        except OSError as exc:
            raise BundleInvalid(f"{folder}: {exc.strerror}: {exc.filename}") from None


def load_release(path: Path) -> Release:
    """Read and check the bundle (or folder of bundles) at ``path``: manifests, signatures
    present, every content file present with its size. Signatures are checked by the devices."""
    if not path.is_dir():
        raise BundleInvalid(f"{path}: not a folder (give a bundle folder or a folder of bundles)")
    if (path / "bundle.json").is_file():
        folders = [path]
    else:
        folders = sorted(p for p in path.iterdir() if (p / "bundle.json").is_file())
        if not folders:
            raise BundleInvalid(f"{path}: no bundle.json, neither there nor in its subfolders")
    bundles: dict[str, DeviceBundle] = {}
    sizes: dict[str, int] = {}
    stores: list[Path] = []
    for folder in folders:
        try:
            raw = (folder / "bundle.json").read_bytes()
            data = devicetool.check_manifest(raw)
        except devicetool.Refused as exc:
            raise BundleInvalid(f"{folder}: {exc}") from None
        if not (folder / "bundle.json.minisig").is_file():
            raise BundleInvalid(f"{folder}/bundle.json.minisig: missing (the bundle is unsigned)")
        device = str(data["device"])
        if device in bundles:
            raise BundleInvalid(
                f"{folder}: a second bundle for {device} (the first: {bundles[device].folder})"
            )
        bundles[device] = DeviceBundle(device, folder, str(data["version"]), str(data["profile"]))
        if (folder / "files").is_dir():
            stores.append(folder / "files")
        for f in data["files"]:
            sizes[str(f["sha256"])] = int(f["size"])
    if path != folders[0] and (path / "files").is_dir():
        stores.append(path / "files")
    if not stores:
        raise BundleInvalid(f"{path}: no files/ folder with the content files")
    for sha, size in sizes.items():
        if not any(_size(s / sha) == size for s in stores):
            raise BundleInvalid(f"{path}: content file {sha} ({size} bytes) is missing or cut")
    pairs = sorted((d, b.version) for d, b in bundles.items())
    versions = {v for _, v in pairs}
    digest = hashlib.sha256("".join(f"{d}={v}\n" for d, v in pairs).encode()).hexdigest()
    label = versions.pop() if len(versions) == 1 else f"set-{digest[:12]}"
    return Release(path, label, digest, bundles, tuple(stores))


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return -1
