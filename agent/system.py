"""The system skills a deployed agent serves (issue 12): ``system.info``, ``system.update``,
``system.rollback``, ``system.restart``; callable by any MQTT 5 client (restricted to operators by
the broker's ACL once the fleet is secured).

The agent runs unprivileged (and, under systemd, sandboxed: it cannot write its own install), so
an update is split: the agent fetches the content files its release lacks over its own MQTT
connection (or HTTP) into its spool folder, stages the signed manifest and writes
``request.json``; the device tool (``deploy/devicetool.py apply``), as root through a systemd path
unit or as the agent's own user in process mode, verifies the signature and every file, installs
and switches with a deadline to confirm. The new release's agent checks itself (its skills
loaded, a call to itself answered through the broker) and asks for the commit; a release that
never does is rolled back by the tool's timer, also after a crash loop or a power cut.

Progress and outcome are published retained on ``…/dev/{device}/update``: a restarted operator
tool sees where every device stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .errors import EdgeAgentError, Unavailable
from .skills import SkillSet, skill
from .system_models import (
    MAX_MANIFEST,
    Done,
    SystemInfo,
    UpdateAccepted,
    UpdateRequest,
    UpdateState,
    device_root,
    last_rollback,
    parse_manifest,
)
from .transport.base import Props

log = logging.getLogger("edgeagent.system")

#: The old private names (simulator/sysskills.py's docstring points at ``_parse_manifest``).
_parse_manifest = parse_manifest
_last_rollback = last_rollback
__all__ = [
    "APPLY_WAIT",
    "MAX_MANIFEST",
    "SELF_TEST_TIMEOUT",
    "STARTING",
    "Done",
    "SystemInfo",
    "SystemSkills",
    "UpdateAccepted",
    "UpdateRequest",
    "UpdateState",
    "device_root",
]

SELF_TEST_TIMEOUT = 10.0
APPLY_WAIT = 60.0
#: What a system skill answers (``unavailable``) before :meth:`SystemSkills.run` has taken hold
#: of the agent: the agent announces itself online while it connects, a moment before that.
STARTING = "the system skills are starting (retry in a moment)"


class SystemSkills(SkillSet):
    """One per agent; needs the device layout of ``edgeagent deploy`` (``device_root``)."""

    def __init__(self, root: Path, release: str | None, spool: Path | None = None) -> None:
        self.root = root
        self.release = release
        state_dir = os.environ.get("STATE_DIRECTORY")  # systemd's StateDirectory=
        self.spool = spool or (Path(state_dir) / "spool" if state_dir else root / "spool")
        self._agent: Any = None
        self._task: asyncio.Task[None] | None = None
        self._accepted: UpdateAccepted | None = None  # the answer that started self._task
        self._started = time.monotonic()
        self._last: dict[str, Any] | None = None
        self._reported = 0.0  # when download progress was last published (monotonic)

    @property
    def started(self) -> bool:
        """Whether :meth:`run` has the agent: until then every system skill is ``unavailable``."""
        return self._agent is not None

    @property
    def update_task(self) -> asyncio.Task[None] | None:
        """The task of the last update accepted (running or done); None until one is."""
        return self._task

    @property
    def last_report(self) -> dict[str, Any] | None:
        """The last update status published (``system.info`` returns it as ``update``)."""
        return self._last

    # facts ---------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "device.json").read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _link(self, name: str) -> str | None:
        try:
            return Path(os.readlink(self.root / name)).name
        except OSError:
            return None

    def _pending(self) -> str | None:
        try:
            data = json.loads((self.root / "pending.json").read_text())
        except (OSError, ValueError):
            return None
        return str(data.get("version")) if isinstance(data, dict) else None

    def verifying(self) -> str | None:
        """The reason to start as ``updating`` when this release is a switch still to be
        confirmed (its agent proves it first: :meth:`run`), else None."""
        pending = self._pending()
        return f"verifying {pending}" if pending is not None and pending == self.release else None

    def _ready(self) -> Any:
        """The agent, once :meth:`run` has it; until then every system skill is
        ``unavailable``: an update accepted before could never be reported (nor fetch)."""
        if self._agent is None:
            raise Unavailable(STARTING)
        return self._agent

    @skill(name="system.info", side_effect="read", description="Release, uptime, space, Python.")
    async def info(self) -> SystemInfo:
        self._ready()
        try:
            free: int | None = shutil.disk_usage(self.root).free
        except OSError:
            free = None
        return SystemInfo(
            device=self._device_id(),
            release=self.release,
            previous=self._link("previous"),
            pending=self._pending(),
            uptime_s=round(time.monotonic() - self._started, 3),
            python=platform.python_version(),
            platform=sys.platform,
            machine=platform.machine(),
            free_bytes=free,
            service=self._info().get("service"),
            update=self._last,
        )

    # update --------------------------------------------------------------------------------

    @skill(
        name="system.update",
        side_effect="actuate",
        description="Update to a signed bundle: fetch what is missing, verify, switch, self-check.",
    )
    async def update(self, req: UpdateRequest) -> UpdateAccepted:
        self._ready()
        manifest = parse_manifest(req.manifest)
        version = str(manifest["version"])
        self._check_fits(manifest)
        if version == self.release:
            self._publish("current", version, rollout=req.rollout)
            return UpdateAccepted(version=version, state="current", missing_files=0,
                                  missing_bytes=0)  # fmt: skip
        running = self.running(version)
        if running is not None:
            return running
        if req.server is None and req.url is None:
            raise ValueError("give `server` (MQTT file server) or `url` (HTTP) for the files")
        wanted = self._missing(manifest)
        self._task = asyncio.get_running_loop().create_task(
            self._run_update(req, manifest, wanted), name=f"update-{version}"
        )
        self._accepted = UpdateAccepted(
            version=version,
            state="downloading",
            missing_files=len(wanted),
            missing_bytes=sum(size for _, size in wanted),
        )
        return self._accepted

    def _check_fits(self, manifest: dict[str, Any]) -> None:
        """Refuse (ValueError) a bundle this device cannot take: another profile."""
        info = self._info()
        if info.get("profile") and manifest.get("profile") != info["profile"]:
            raise ValueError(
                f"bundle is for profile {manifest.get('profile')}, this device is {info['profile']}"
            )

    def running(self, version: str) -> UpdateAccepted | None:
        """The answer to an update asked for again while it runs (the operator asks again when
        a device it saw go offline mid-download comes back: after a lost connection the update
        may still be running); an update to another version meanwhile is refused."""
        if self._task is None or self._task.done():
            return None
        if self._task.get_name() != f"update-{version}" or self._accepted is None:
            raise RuntimeError("an update to another release is already running on this device")
        return self._accepted

    def _missing(self, manifest: dict[str, Any]) -> list[tuple[str, int]]:
        seen: set[str] = set()
        out = []
        for f in manifest["files"]:
            sha = str(f["sha256"])
            if sha in seen or (self.root / "store" / sha).is_file():
                continue
            seen.add(sha)
            out.append((sha, int(f["size"])))
        return out

    async def _run_update(
        self, req: UpdateRequest, manifest: dict[str, Any], wanted: list[tuple[str, int]]
    ) -> None:
        version = str(manifest["version"])
        total = sum(size for _, size in wanted)
        stage = self.spool / "stage"
        store = stage / "store"
        switching = False
        try:
            store.mkdir(parents=True, exist_ok=True)
            self._publish("downloading", version, rollout=req.rollout, total=total, done=0)

            def progress(done: int, _total: int) -> None:
                now = time.monotonic()
                if now - self._reported >= 1.0:  # at most once a second
                    self._reported = now
                    self._publish("downloading", version, rollout=req.rollout, total=total,
                                  done=done)  # fmt: skip

            if req.server is not None:
                from .deploy.transfer_mqtt import fetch_files

                await fetch_files(
                    self._agent.transport,
                    root=self._agent.topics.root,
                    fleet=self._agent.topics.fleet,
                    device=self._device_id(),
                    server=req.server,
                    files=wanted,
                    store=store,
                    partial_dir=self.spool / "partial",  # not in the staged store: ingested
                    progress=progress,
                )
            else:
                from .deploy.transfer_http import fetch_files_http

                assert req.url is not None
                await asyncio.to_thread(
                    fetch_files_http, req.url, wanted, store,
                    partial_dir=self.spool / "partial", progress=progress,
                )  # fmt: skip
            incoming = stage / "incoming" / version
            incoming.mkdir(parents=True, exist_ok=True)
            (incoming / "bundle.json").write_text(req.manifest)
            (incoming / "bundle.json.minisig").write_text(req.signature)
            self._publish("applying", version, rollout=req.rollout, total=total, done=total)
            switching = True  # about to restart: coordinators stop routing to this device
            await self._set_updating(True, f"updating to {version}")
            result = await self._apply(
                {"action": "update", "version": version, "confirm_within": req.confirm_within_s}
            )
            if result is not None and not result.get("ok"):
                self._publish("failed", version, rollout=req.rollout, error=result.get("error"))
            if result is None or not result.get("ok"):
                # Not switched (or no word from the tool in time, and this process lives on):
                # serving as before.
                await self._set_updating(False)
            # On success the tool restarts the agent into the new release, which self-checks.
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported, never raised: the agent keeps serving
            log.warning("update to %s failed: %s", version, exc)
            self._publish("failed", version, rollout=req.rollout, error=str(exc)[:500])
            if switching:
                await self._set_updating(False)

    async def _set_updating(self, updating: bool, reason: str = "updating") -> None:
        """The agent's retained state: ``updating`` while the tool switches releases, else
        ``online`` (agent/device.py ``DeviceAgent.set_updating``); best effort."""
        try:
            await self._ready().set_updating(updating, reason)
        except EdgeAgentError as exc:
            log.warning("state %s not published: %s", "updating" if updating else "online", exc)

    async def _apply(
        self, request: dict[str, Any], wait: float = APPLY_WAIT
    ) -> dict[str, Any] | None:
        """Hand ``request`` to the device tool and wait for its result (None: this process was
        replaced first, or no result in time)."""
        self.spool.mkdir(parents=True, exist_ok=True)
        result_path = self.spool / "result.json"
        result_path.unlink(missing_ok=True)
        tmp = self.spool / ".request.tmp"
        tmp.write_text(json.dumps(request))
        os.replace(tmp, self.spool / "request.json")
        if self._info().get("service") != "systemd":
            # Process mode: run the tool ourselves, in its own session so that it outlives
            # this process when it restarts the agent. (systemd: a path unit runs it as root.)
            tool = self.root / "bin" / "edgeagent-device.py"
            log_file = self.root / "log" / "apply.log"
            log_file.parent.mkdir(parents=True, exist_ok=True)
            with log_file.open("ab") as out:
                await asyncio.create_subprocess_exec(
                    sys.executable, "-S", str(tool), "--root", str(self.root), "apply",
                    "--spool", str(self.spool),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                )  # fmt: skip
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                data = json.loads(result_path.read_text())
                if isinstance(data, dict):
                    return data
            await asyncio.sleep(0.2)
        return None

    @skill(
        name="system.rollback", side_effect="actuate", description="Back to the previous release."
    )
    async def rollback(self) -> Done:
        self._ready()
        await self._set_updating(True, "rolling back")
        try:
            result = await self._apply({"action": "rollback", "reason": "system.rollback"})
        except Exception:
            await self._set_updating(False)
            raise
        if result is None or not result.get("ok"):
            await self._set_updating(False)  # not replaced (yet): serving as before
        if result is None:
            return Done(ok=True, detail="rolling back (this agent is being replaced)")
        return Done(ok=bool(result.get("ok")), detail=str(result.get("error") or result))

    @skill(name="system.restart", side_effect="actuate", description="Restart the agent.")
    async def restart(self) -> Done:
        self._ready()
        result = await self._apply({"action": "restart"}, wait=2.0)
        return Done(ok=result is None or bool(result.get("ok")), detail="restarting")

    # lifecycle -----------------------------------------------------------------------------

    async def run(self, device: Any) -> None:
        """At start: a release switched to and not yet confirmed is this one? Check and commit.
        A failed or rolled-back update is reported."""
        self._agent = device
        pending = self._pending()
        if pending is not None and pending == self.release:
            await self._confirm(pending)
            return
        last = last_rollback(self.root)
        if last is not None and last.get("version") == self.release and last.get("failed"):
            self._publish("rolled_back", str(last["failed"]), error=str(last.get("reason")))

    async def _confirm(self, version: str) -> None:
        # Not routable until it has proven itself: a release that fails its self-test is never
        # handed calls by a coordinator before the tool's timer takes it back.
        await self._set_updating(True, f"verifying {version}")  # (announced so from the start)
        self._publish("verifying", version)
        # The transport's one connect callback is the agent's: poll (briefly, once per start).
        while not self._agent.transport.connected:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        try:
            await self.self_test()
        except Exception as exc:
            log.warning("self-test of %s failed: %s (the tool's timer rolls back)", version, exc)
            self._publish("failed", version, error=f"self-test: {exc}")
            return
        result = await self._apply({"action": "commit", "version": version})
        if result is not None and result.get("ok"):
            await self._set_updating(False)
            self._publish("healthy", version)
        else:
            error = (result or {}).get("error", "no answer from the device tool")
            self._publish("failed", version, error=f"commit: {error}")

    async def self_test(self) -> None:
        """A call to this agent's own ``_ping`` through the broker: subscriptions, skill
        dispatch and the connection all work."""
        agent = self._agent
        me = self._device_id()
        reply_topic = f"{agent.topics.device(me)}/update/self-test"
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        def on_reply(msg: Any) -> None:
            if not got.done():
                got.set_result(bytes(msg.payload))

        await agent.transport.subscribe(reply_topic, on_reply, qos=1)
        try:
            corr = os.urandom(8)
            props = Props(response_topic=reply_topic, correlation_data=corr, message_expiry=10)
            await agent.transport.publish(agent.topics.call(me, "_ping"), b"{}", props=props)
            async with asyncio.timeout(SELF_TEST_TIMEOUT):
                payload = await got
        finally:
            with contextlib.suppress(Exception):
                await agent.transport.unsubscribe(reply_topic)
        data = json.loads(payload)
        if not data.get("ok", True) or data.get("output", {}).get("release") != self.release:
            raise RuntimeError(f"unexpected self-test reply {payload[:200]!r}")

    # reporting -----------------------------------------------------------------------------

    def _device_id(self) -> str:
        agent = self._agent
        return str(agent.device_id) if agent is not None else str(self._info().get("device"))

    def _publish(self, state: UpdateState, version: str, **fields: Any) -> None:
        status = {"device": self._device_id(), "state": state, "version": version,
                  "release": self.release, "ts": round(time.time(), 3)}  # fmt: skip
        status.update({k: v for k, v in fields.items() if v is not None})
        self._last = status
        agent = self._agent
        if agent is None or not agent.transport.connected:
            return
        topic = f"{agent.topics.device(self._device_id())}/update"
        agent.transport.publish_nowait(topic, json.dumps(status).encode(), qos=1, retain=True)
