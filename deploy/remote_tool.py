"""The device tool (``deploy/devicetool.py``, uploaded as ``bin/edgeagent-device.py``) driven
over an SSH session: brought up to date by hash, started once as a ``serve`` process answering a
JSON line per command, under ``sudo -n`` for a non-root login (which uploads to a staging folder).
Apart from ``deployer`` (the order of a deploy) because it is the one place that knows how the
tool is run on the device.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from . import devicetool, remote_verify
from .errors import HostUnsuitable, RemoteError
from .ssh import LineChannel, SshSession

TOOL_NAME = "edgeagent-device.py"
_TOOL_FILES = {
    TOOL_NAME: Path(devicetool.__file__),
    "remote_verify.py": Path(remote_verify.__file__),
}


class Remote:
    """The device tool, run over an SSH session."""

    def __init__(self, session: SshSession, root: str) -> None:
        self.session = session
        self.root = root
        self.tool = f"{root}/bin/{TOOL_NAME}"
        self.sudo: list[str] = []
        self._chan: LineChannel | None = None
        self.staging: str | None = None
        """Where a non-root login uploads (``~/.cache/edgeagent-staging``); root: in place."""

    @property
    def upload_root(self) -> str:
        return self.staging or self.root

    async def start(self) -> dict[str, Any]:
        """Log in, bring the device tool up to date, start it and probe.

        One round trip and one interpreter start when the tool is current: the tool then runs
        as one process for the whole deploy (``serve``), answering a JSON line per command
        (each interpreter start costs about 0.7 s on an emulated device and a few hundred ms on
        a Pi Zero). Root runs the tool as root; anyone else needs passwordless sudo (Raspberry
        Pi OS's first user has it) and uploads to a staging folder the tool moves files in from.
        """
        chan = await self._open(with_checks=True)
        lines: list[str] = []
        while True:
            line = (await chan.readline(timeout=60)).decode(errors="replace").rstrip("\n")
            if line == "@@":
                break
            if not line and len(lines) > 200:
                break
            lines.append(line)
            if len(lines) > 200:
                await chan.close()
                raise RemoteError("the device's login shell printed too much before the tool")
        if len(lines) < 2:
            await chan.close()
            raise RemoteError("cannot run commands on the device (no answer from the shell)")
        uid, home = lines[0].strip(), lines[1].strip()
        if "NOSUDO" in lines:
            await chan.close()
            raise HostUnsuitable(
                f"{self.session.target}: the login user is not root and cannot use sudo "
                "without a password; log in as root or allow it passwordless sudo (as "
                "Raspberry Pi OS does for its first user)"
            )
        if uid != "0":
            self.sudo = ["sudo", "-n"]
            self.staging = f"{home}/.cache/edgeagent-staging"
        have = {}
        for line in lines[2:]:
            digest, _, path = line.partition("  ")
            have[path.rsplit("/", 1)[-1]] = digest
        send = [
            (src, name)
            for name, src in _TOOL_FILES.items()
            if have.get(name) != devicetool.file_sha256(src)
        ]
        if send:
            await chan.close()
            await self._upload_tool(send)
            chan = await self._open(with_checks=False)
        self._chan = chan
        return await self.call("probe")

    async def _open(self, *, with_checks: bool) -> LineChannel:
        names = " ".join(shlex.quote(f"{self.root}/bin/{n}") for n in _TOOL_FILES)
        serve = shlex.join(["python3", "-S", self.tool, "--root", self.root, "serve"])
        if with_checks:
            script = (
                f'id -u; echo "$HOME"; sha256sum {names} 2>/dev/null; '
                'if [ "$(id -u)" != 0 ] && ! sudo -n true 2>/dev/null; then '
                "echo NOSUDO; echo @@; exit 0; fi; echo @@; "
            )
        else:
            script = ""
        script += f'if [ "$(id -u)" = 0 ]; then exec {serve}; else exec sudo -n {serve}; fi'
        return await self.session.open_lines(script)

    async def close(self) -> None:
        if self._chan is not None:
            await self._chan.close()
            self._chan = None

    async def _upload_tool(self, send: list[tuple[Path, str]]) -> None:
        if not self.sudo:
            await self.session.run(["mkdir", "-p", f"{self.root}/bin"])
            await self.session.put_files([(src, f"{self.root}/bin/{n}") for src, n in send])
            return
        staged = [(src, f"{self.staging}/bin/{n}") for src, n in send]
        await self.session.put_files(staged)
        for (_, n), (_, path) in zip(send, staged, strict=True):
            await self.session.run(
                [*self.sudo, "install", "-D", "-m", "0644", path, f"{self.root}/bin/{n}"]
            )

    async def ingest(self) -> None:
        """Move what a non-root login uploaded into the store (checked by hash on the way)."""
        if self.staging is not None:
            await self.call("ingest", "--from", self.staging)

    async def call(
        self, *args: str, input: bytes | None = None, timeout: float = 900
    ) -> dict[str, Any]:
        if self._chan is not None:
            req = {"args": list(args), "input": input.decode() if input is not None else None}
            answer = await self._chan.ask(json.dumps(req).encode(), timeout=timeout)
            if not answer:
                self._chan = None
                raise RemoteError(f"device tool `{args[0]}`: the tool stopped answering")
            return self._parse(args[0], 0, answer.decode(errors="replace"), b"")
        cmd = [*self.sudo, "python3", "-S", self.tool, "--root", self.root, *args]
        res = await self.session.run(cmd, input=input, check=False, timeout=timeout)
        lines = res.stdout.decode(errors="replace").strip().splitlines()
        return self._parse(args[0], res.exit_status, lines[-1] if lines else "", res.stderr)

    @staticmethod
    def _parse(what: str, status: int | None, line: str, stderr: bytes) -> dict[str, Any]:
        try:
            data = json.loads(line)
        except ValueError:
            err = stderr.decode(errors="replace").strip()[-1500:]
            raise RemoteError(
                f"device tool `{what}` failed (exit {status}): {err or 'no output'}"
            ) from None
        if not isinstance(data, dict):
            raise RemoteError(f"device tool `{what}`: unexpected output")
        if "error" in data:
            raise RemoteError(f"{what}: {data['error']}")
        return data
