"""SSH to devices, over asyncssh: the one place where its errors become ours.

::

    SshError
    ├── HostUnreachable        no route, refused, DNS failure or timeout (host:port and cause)
    ├── HostKeyUnknown         the host is not in known_hosts (shows the key's fingerprint)
    ├── HostKeyChanged         known_hosts has another key for this host: never connects
    ├── AuthenticationFailed   no key was accepted
    ├── RemoteCommandFailed    a command exited non-zero (status and the end of stderr)
    ├── TransferFailed         an upload failed (disk full, permissions)
    └── ConnectionLost         the connection dropped mid-operation

Host keys are checked like OpenSSH's ``StrictHostKeyChecking=yes`` (or ``accept-new`` with
``accept_new_host_key``): the server's key is fetched first and compared with known_hosts
(plain and hashed entries); only an exactly known key is then trusted for the real connection,
so a changed key never gets as far as authentication.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import shlex
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncssh

from ..errors import EdgeAgentError


class SshError(EdgeAgentError):
    """Base of SSH errors."""


class HostUnreachable(SshError):
    """The host cannot be reached."""


class HostKeyUnknown(SshError):
    """The host's key is not in known_hosts."""


class HostKeyChanged(SshError):
    """known_hosts holds a different key for this host."""


class AuthenticationFailed(SshError):
    """No key was accepted."""


class RemoteCommandFailed(SshError):
    """A remote command exited with a non-zero status."""

    def __init__(self, command: str, exit_status: int | None, stdout: bytes, stderr: bytes):
        tail = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-8:])
        super().__init__(f"`{command}` failed (exit {exit_status}): {tail or 'no output'}")
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class TransferFailed(SshError):
    """An upload failed."""


class ConnectionLost(SshError):
    """The connection dropped mid-operation."""


@dataclass(frozen=True, slots=True)
class SshTarget:
    host: str
    port: int = 22
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        """``[user@]host[:port]``; IPv6 as ``[::1]:2222``."""
        user, sep, rest = text.rpartition("@")
        if not sep:
            user, rest = "", text
        port = 22
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = _port(tail[1:], text)
        elif rest.count(":") == 1:
            host, _, p = rest.partition(":")
            port = _port(p, text)
        else:
            host = rest
        if not host or any(c.isspace() for c in host):
            raise ValueError(f"{text!r}: expected [USER@]HOST[:PORT]")
        return cls(host, port, user or None)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        where = host if self.port == 22 else f"{host}:{self.port}"
        return f"{self.user}@{where}" if self.user else where


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{whole!r}: bad port {text!r}")
    return int(text)


@dataclass(slots=True)
class SshOptions:
    identity_files: list[Path] = field(default_factory=list)
    use_agent: bool = True
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0

    def known_hosts_path(self) -> Path:
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_status: int | None
    stdout: bytes
    stderr: bytes


def _host_names(target: SshTarget) -> list[str]:
    return [target.host] if target.port == 22 else [f"[{target.host}]:{target.port}"]


def _pattern_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("|1|"):
        try:
            _, _, salt, digest = pattern.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    return any(p == name for p in pattern.split(","))


def _known_keys(path: Path, target: SshTarget) -> list[tuple[int, str, str]]:
    """(line number, key type, base64 key) of every known_hosts line for this host."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    names = _host_names(target)
    out = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) < 3 or line.lstrip().startswith("#"):
            continue
        if parts[0].startswith("@"):
            continue  # @cert-authority / @revoked: not used here
        if any(_pattern_matches(parts[0], name) for name in names):
            out.append((n, parts[1], parts[2]))
    return out


def _fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


async def _server_key(
    target: SshTarget, options: SshOptions, known_types: Sequence[str]
) -> asyncssh.SSHKey:
    """The server's host key, of a type known_hosts has for it when it has any (as OpenSSH
    prefers known types)."""
    algs: list[str] = []
    for t in known_types:
        algs += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if t == "ssh-rsa" else [t]
    try:
        async with asyncio.timeout(options.connect_timeout):
            if algs:
                key = await asyncssh.get_server_host_key(
                    target.host, target.port, server_host_key_algs=algs
                )
            else:
                key = await asyncssh.get_server_host_key(target.host, target.port)
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise HostUnreachable(f"cannot reach {target}: {exc or type(exc).__name__}") from exc
    if key is None:
        raise HostUnreachable(f"{target} sent no host key")
    return key


async def _trusted_key(target: SshTarget, options: SshOptions) -> asyncssh.SSHKey:
    path = options.known_hosts_path()
    known = _known_keys(path, target)
    key = await _server_key(target, options, sorted({t for _, t, _ in known}))
    algo = key.get_algorithm()
    data = base64.b64encode(key.public_data).decode()
    if any(t == algo and k == data for _, t, k in known):
        return key
    same_type = [(n, t) for n, t, _ in known if t == algo]
    if same_type:
        raise HostKeyChanged(
            f"WARNING: the host key of {target} has CHANGED ({algo} {_fingerprint(key)}); "
            f"{path} line {same_type[0][0]} has another. Someone may be intercepting the "
            f"connection, or the device was reinstalled: check, then remove that line "
            f"(ssh-keygen -R '{_host_names(target)[0]}' -f {path})."
        )
    if not options.accept_new_host_key:
        raise HostKeyUnknown(
            f"{target} is not a known host ({algo} {_fingerprint(key)} is not in {path}); "
            "check the fingerprint and pass --accept-new-host-key to trust and remember it"
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{_host_names(target)[0]} {algo} {data}\n")
    return key


async def connect(target: SshTarget, options: SshOptions) -> SshSession:
    """Open an SSH session after checking the host key. Use as ``async with await connect()``."""
    key = await _trusted_key(target, options)
    kwargs: dict[str, object] = {
        "port": target.port,
        "known_hosts": ([key], [], []),
        "connect_timeout": options.connect_timeout,
        "keepalive_interval": options.keepalive_interval,
        "keepalive_count_max": 3,
    }
    if target.user:
        kwargs["username"] = target.user
    if options.identity_files:
        kwargs["client_keys"] = [str(p) for p in options.identity_files]
    if not options.use_agent:
        kwargs["agent_path"] = None
    try:
        conn = await asyncssh.connect(target.host, **kwargs)
    except asyncssh.PermissionDenied as exc:
        tried = ", ".join(str(p) for p in options.identity_files) or "default keys"
        agent = " and the ssh-agent" if options.use_agent else ""
        raise AuthenticationFailed(
            f"{target}: no key was accepted (tried {tried}{agent}); add your public key to the "
            "device's ~/.ssh/authorized_keys or pass -i KEY"
        ) from exc
    except asyncssh.HostKeyNotVerifiable as exc:
        raise HostKeyChanged(f"{target}: host key changed during connect: {exc}") from exc
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        raise HostUnreachable(f"cannot connect to {target}: {exc or type(exc).__name__}") from exc
    return SshSession(target, conn)


class SshSession:
    """Commands and uploads over one SSH connection."""

    def __init__(self, target: SshTarget, conn: asyncssh.SSHClientConnection) -> None:
        self.target = target
        self._conn = conn
        self._sftp: asyncssh.SFTPClient | None = None
        self.bytes_sent = 0

    async def __aenter__(self) -> SshSession:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._sftp is not None:
            self._sftp.exit()
            self._sftp = None
        self._conn.close()
        await self._conn.wait_closed()

    async def run(
        self,
        command: str | Sequence[str],
        *,
        input: bytes | None = None,
        check: bool = True,
        timeout: float | None = None,
    ) -> RunResult:
        cmd = command if isinstance(command, str) else shlex.join(command)
        try:
            proc = await self._conn.run(
                cmd, input=input, check=False, encoding=None, timeout=timeout
            )
        except asyncssh.TimeoutError as exc:
            raise RemoteCommandFailed(
                cmd, None, b"", f"timed out after {timeout} s".encode()
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(f"{self.target}: connection lost running `{cmd}`: {exc}") from exc
        out = proc.stdout if isinstance(proc.stdout, bytes) else b""
        err = proc.stderr if isinstance(proc.stderr, bytes) else b""
        result = RunResult(proc.exit_status, out, err)
        if check and proc.exit_status != 0:
            raise RemoteCommandFailed(cmd, proc.exit_status, out, err)
        return result

    async def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = await self._conn.start_sftp_client()
            except (asyncssh.Error, OSError) as exc:
                raise ConnectionLost(f"{self.target}: cannot start SFTP: {exc}") from exc
        return self._sftp

    async def put_files(
        self,
        files: Sequence[tuple[Path, str]],
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Upload each (local, remote path); each lands under its name only when complete."""
        sftp = await self._client()
        total = sum(p.stat().st_size for p, _ in files)
        done = 0
        dirs: set[str] = set()
        for local, remote in files:
            parent = remote.rsplit("/", 1)[0]
            tmp = f"{remote}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                if parent and parent not in dirs:
                    await sftp.makedirs(parent, exist_ok=True)
                    dirs.add(parent)
                await sftp.put(str(local), tmp)
                await sftp.posix_rename(tmp, remote)
            except (asyncssh.SFTPError, OSError) as exc:
                raise TransferFailed(
                    f"{self.target}: uploading {local.name} to {remote}: {exc}"
                ) from exc
            except asyncssh.Error as exc:
                raise ConnectionLost(f"{self.target}: connection lost uploading: {exc}") from exc
            done += local.stat().st_size
            if progress is not None:
                progress(done, total)
        self.bytes_sent += done
        return done

    async def put_bytes(self, data: bytes, remote_path: str, mode: int = 0o644) -> None:
        sftp = await self._client()
        tmp = f"{remote_path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            async with sftp.open(tmp, "wb") as f:
                await f.write(data)
            await sftp.chmod(tmp, mode)
            await sftp.posix_rename(tmp, remote_path)
        except (asyncssh.SFTPError, OSError) as exc:
            raise TransferFailed(f"{self.target}: writing {remote_path}: {exc}") from exc
        except asyncssh.Error as exc:
            raise ConnectionLost(f"{self.target}: connection lost writing: {exc}") from exc
        self.bytes_sent += len(data)

    async def read_file(self, remote_path: str) -> bytes | None:
        sftp = await self._client()
        try:
            async with sftp.open(remote_path, "rb") as f:
                data = await f.read()
        except asyncssh.SFTPNoSuchFile:
            return None
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(f"{self.target}: reading {remote_path}: {exc}") from exc
        return data if isinstance(data, bytes) else data.encode()
