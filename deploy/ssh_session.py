"""An open SSH session: commands (with typed failures), line-by-line processes, atomic uploads
over SFTP, reads, and what went over the wire (:meth:`SshSession.statistics`).
"""

from __future__ import annotations

import contextlib
import posixpath
import shlex
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import asyncssh

from ..clock import SYSTEM_CLOCK
from .ssh_errors import (
    ConnectionLost,
    RemoteCommandFailed,
    SshError,
    TransferFailed,
    describe_cause,
    short_command,
)
from .ssh_target import RunResult, SshStatistics, SshTarget


class LineChannel:
    """A remote process spoken to in lines: ``await ask(line)`` → the line it answers."""

    def __init__(self, target: SshTarget, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.target = target
        self._proc = proc

    async def ask(self, line: bytes, *, timeout: float | None = None) -> bytes:
        try:
            self._proc.stdin.write(line.rstrip(b"\n") + b"\n")
            async with SYSTEM_CLOCK.timeout(timeout):
                answer = await self._proc.stdout.readline()
        except TimeoutError as exc:
            raise ConnectionLost(f"{self.target.address}: no answer in {timeout} s") from exc
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise ConnectionLost(f"{self.target.address}: connection lost: {exc}") from exc
        return answer

    async def readline(self, *, timeout: float | None = None) -> bytes:
        """The next line the process prints (b"" once it has ended)."""
        try:
            async with SYSTEM_CLOCK.timeout(timeout):
                return await self._proc.stdout.readline()
        except TimeoutError as exc:
            raise ConnectionLost(f"{self.target.address}: no answer in {timeout} s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(f"{self.target.address}: connection lost: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
            self._proc.stdin.write_eof()
            async with SYSTEM_CLOCK.timeout(5):
                await self._proc.wait()
        self._proc.close()


class SshSession:
    """Commands and uploads over one SSH connection."""

    def __init__(self, target: SshTarget, conn: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self._conn = conn
        self._sftp: asyncssh.SFTPClient | None = None
        self._sent = 0
        self._received = 0
        self._files = 0
        self._commands = 0
        self._closed = False

    async def __aenter__(self) -> SshSession:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open_lines(self, command: str | Sequence[str]) -> LineChannel:
        """Start a long-running command to talk to line by line (stdin/stdout, bytes)."""
        cmd = command if isinstance(command, str) else shlex.join(command)
        try:
            proc = await self._conn.create_process(cmd, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(f"{self.target.address}: cannot start `{cmd}`: {exc}") from exc
        self._commands += 1
        return LineChannel(self.target, proc)

    async def close(self) -> None:
        """Close SFTP and the connection and wait until they are closed (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._sftp is not None:
            self._sftp.exit()
            with contextlib.suppress(asyncssh.Error, OSError):
                await self._sftp.wait_closed()
            self._sftp = None
        self._conn.close()
        await self._conn.wait_closed()

    def statistics(self) -> SshStatistics:
        return SshStatistics(self._sent, self._received, self._files, self._commands)

    def _lost(self, what: str, exc: BaseException) -> ConnectionLost:
        return ConnectionLost(
            f"{self.target.address}: connection lost {what}: {describe_cause(exc)}"
        )

    async def run(
        self,
        command: str | Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> RunResult:
        """Run ``command`` (a list is quoted with ``shlex.join``) through the login shell;
        stdin is ``input`` or empty. ``check``: a non-zero exit raises RemoteCommandFailed;
        a timeout always raises it (the command is sent SIGKILL and its channel closed)."""
        cmd = command if isinstance(command, str) else shlex.join(command)
        self._commands += 1
        try:
            if input:
                proc = await self._conn.create_process(cmd, input=input, encoding=None)
                self._sent += len(input)
            else:
                proc = await self._conn.create_process(cmd, stdin=asyncssh.DEVNULL, encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(f"starting `{short_command(cmd)}`", exc) from exc
        try:
            done = await proc.wait(timeout=timeout)
        except asyncssh.TimeoutError as exc:
            with contextlib.suppress(asyncssh.Error, OSError):
                proc.send_signal("KILL")
            proc.close()
            raise RemoteCommandFailed(
                cmd,
                None,
                _as_bytes(exc.stdout),
                _as_bytes(exc.stderr),
                reason=f"timed out after {timeout} s",
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            proc.close()
            raise self._lost(f"running `{short_command(cmd)}`", exc) from exc
        out, err = _as_bytes(done.stdout), _as_bytes(done.stderr)
        self._received += len(out) + len(err)
        if done.exit_status is None and done.exit_signal is None:
            # The channel closed without an exit status: the connection (or sshd) went away.
            raise ConnectionLost(
                f"{self.target.address}: `{short_command(cmd)}` ended without an exit status "
                "(connection or sshd gone)"
            )
        status = done.exit_status
        if done.exit_signal is not None:
            status = None
        result = RunResult(status, out, err)
        if check and status != 0:
            reason = f"killed by signal {done.exit_signal[0]}" if done.exit_signal else None
            raise RemoteCommandFailed(cmd, status, out, err, reason=reason)
        return result

    async def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = await self._conn.start_sftp_client()
            except asyncssh.ChannelOpenError as exc:
                raise self._lost("opening an SFTP channel", exc) from exc
            except (asyncssh.Error, OSError) as exc:
                if self._conn.is_closed():
                    raise self._lost("starting SFTP", exc) from exc
                raise TransferFailed(
                    f"{self.target.address}: no SFTP server on the device ({describe_cause(exc)})"
                ) from exc
        return self._sftp

    def _transfer_error(self, what: str, exc: BaseException) -> SshError:
        if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
            return self._lost(what, exc)
        if isinstance(exc, asyncssh.SFTPError | OSError):
            return TransferFailed(f"{self.target.address}: {what}: {describe_cause(exc)}")
        return self._lost(what, exc)

    async def _finish(self, sftp: asyncssh.SFTPClient, tmp: str, final: str) -> None:
        """Move ``tmp`` over ``final`` atomically (rename(2) via posix-rename, else ``mv``)."""
        try:
            await sftp.posix_rename(tmp, final)
        except asyncssh.SFTPOpUnsupported:
            await self.run(["mv", "-f", "--", tmp, final])

    async def _discard(self, sftp: asyncssh.SFTPClient, tmp: str) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            await sftp.remove(tmp)

    async def put_files(
        self,
        files: Sequence[tuple[Path, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Upload each (local file, remote path), creating parent folders; modes are normalised
        as git does (0755 if the local file is executable, else 0644), whatever the builder's
        umask. Each file is written to ``PATH.tmp-XXXXXXXX`` and renamed over PATH
        only when complete, so PATH is never half written. Returns the bytes sent;
        ``progress(bytes_done, bytes_total)`` is called as blocks go out."""
        try:
            sizes = [(local, remote, local.stat()) for local, remote in files]
        except OSError as exc:
            raise TransferFailed(f"cannot upload: {exc}") from exc
        total = sum(st.st_size for _, _, st in sizes)
        sftp = await self._client()
        done = 0
        made: set[str] = set()
        for local, remote, st in sizes:
            parent = posixpath.dirname(remote)
            tmp = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
            base = done

            def step(_src: bytes, _dst: bytes, copied: int, _size: int, base: int = base) -> None:
                if progress is not None:
                    progress(base + copied, total)

            try:
                if parent and parent not in made:
                    await sftp.makedirs(parent, exist_ok=True)
                    made.add(parent)
                await sftp.put(str(local), tmp, progress_handler=step)
                await sftp.chmod(tmp, 0o755 if st.st_mode & 0o111 else 0o644)
                await self._finish(sftp, tmp, remote)
            except (asyncssh.Error, OSError) as exc:
                await self._discard(sftp, tmp)
                raise self._transfer_error(f"uploading {local} to {remote}", exc) from exc
            done += st.st_size
            self._sent += st.st_size
            self._files += 1
            if progress is not None and st.st_size == 0:
                progress(done, total)
        return done

    async def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path`` the same atomic way (parents created)."""
        sftp = await self._client()
        parent = posixpath.dirname(remote_path)
        tmp = f"{remote_path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            if parent:
                await sftp.makedirs(parent, exist_ok=True)
            async with sftp.open(tmp, "wb", attrs=asyncssh.SFTPAttrs(permissions=mode)) as f:
                await f.write(data)
            await sftp.chmod(tmp, mode)
            await self._finish(sftp, tmp, remote_path)
        except (asyncssh.Error, OSError) as exc:
            await self._discard(sftp, tmp)
            raise self._transfer_error(f"writing {remote_path}", exc) from exc
        self._sent += len(data)
        self._files += 1

    async def read_file(self, remote_path: str) -> bytes | None:
        """The file's bytes, or None if it does not exist."""
        sftp = await self._client()
        try:
            async with sftp.open(remote_path, "rb") as f:
                data = await f.read()
        except asyncssh.SFTPNoSuchFile:
            return None
        except (asyncssh.Error, OSError) as exc:
            raise self._transfer_error(f"reading {remote_path}", exc) from exc
        raw = _as_bytes(data)
        self._received += len(raw)
        return raw


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode()
    return b""
