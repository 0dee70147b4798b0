"""SSH to devices, over asyncssh: the one place where its errors become ours.

::

    EdgeAgentError
    └── SshError
        ├── HostUnreachable        DNS failure, refused, timeout, not SSH (host:port and cause)
        ├── HostKeyUnknown         the host is not in known_hosts (shows the key's SHA256
        │                          fingerprint and says to pass --accept-new-host-key)
        ├── HostKeyChanged         known_hosts has another key for this host (or the key is
        │                          @revoked): never authenticates, names the file:line to fix
        ├── AuthenticationFailed   no key was accepted (says which keys and agent were tried), or
        │                          an identity file cannot be used
        ├── RemoteCommandFailed    a command exited non-zero or timed out (.command, .exit_status,
        │                          .stdout, .stderr; the message ends with the last stderr lines)
        ├── TransferFailed         an SFTP upload or read failed (disk full, permissions, no SFTP)
        └── ConnectionLost         the connection dropped mid-operation

Host keys are checked like OpenSSH's ``StrictHostKeyChecking=yes`` (``accept-new`` with
``accept_new_host_key``), in the key exchange of the one real connection: asyncssh hands the
server's key to ``validate_host_public_key`` before any authentication, and we compare it with
known_hosts ourselves (plain, hashed ``|1|``, wildcard and negated patterns, ``@revoked``). An
unknown key is refused (or, with accept-new, remembered once the server has proved it holds the
key); a key that differs from the one(s) known for the host is refused always, so a changed key
never gets as far as authentication. Stricter than OpenSSH in one way: if the host is known only
with keys of other types and the server offers none of them, that counts as changed, not new.

``~/.ssh/config`` is not read (asyncssh would apply it to the connection but not to our host key
check); the target and options say everything.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import getpass
import hashlib
import hmac
import os
import posixpath
import re
import shlex
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncssh

from ..errors import EdgeAgentError

GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")
_DEFAULT_KEY_NAMES = (
    "id_ed25519_sk",
    "id_ecdsa_sk",
    "id_ed448",
    "id_ed25519",
    "id_ecdsa",
    "id_rsa",
)
# OpenSSH's preference for host key types on first contact; known types are moved to the front.
_HOST_KEY_ALGS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-ed448",
    "ssh-rsa",
)


class SshError(EdgeAgentError):
    """Base of SSH errors."""


class HostUnreachable(SshError):
    """The host cannot be reached (or does not speak SSH)."""


class HostKeyUnknown(SshError):
    """The host's key is not in known_hosts."""

    def __init__(self, message: str, *, fingerprint: str = "", known_hosts: Path | None = None):
        super().__init__(message)
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts


class HostKeyChanged(SshError):
    """known_hosts holds a different key for this host (or this key is revoked)."""

    def __init__(
        self,
        message: str,
        *,
        fingerprint: str = "",
        known_hosts: Path | None = None,
        line: int | None = None,
    ):
        super().__init__(message)
        self.fingerprint = fingerprint
        self.known_hosts = known_hosts
        self.line = line


class AuthenticationFailed(SshError):
    """No key was accepted, or an identity file cannot be used."""


class RemoteCommandFailed(SshError):
    """A remote command exited with a non-zero status (or timed out: ``exit_status`` None)."""

    def __init__(
        self,
        command: str,
        exit_status: int | None,
        stdout: bytes,
        stderr: bytes,
        *,
        reason: str | None = None,
    ):
        tail = "\n".join(stderr.decode(errors="replace").strip().splitlines()[-10:])
        why = reason or f"exit status {exit_status}"
        super().__init__(f"`{_short(command)}` failed ({why})" + (f":\n{tail}" if tail else ""))
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class TransferFailed(SshError):
    """An upload or a read over SFTP failed."""


class ConnectionLost(SshError):
    """The connection dropped mid-operation."""


def _short(command: str, limit: int = 200) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


def _cause(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return str(exc.reason)
    text = str(exc).strip()
    return text or type(exc).__name__


# --- target and options ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where to log in: ``[user@]host[:port]`` (``user`` None: the local user name)."""

    host: str
    port: int = 22
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> SshTarget:
        """``[user@]host[:port]``; IPv6 as ``[::1]:2222`` (or bare ``::1`` for port 22)."""
        bad = ValueError(f"{text!r}: expected [USER@]HOST[:PORT] (IPv6: [USER@][ADDR]:PORT)")
        user, sep, rest = text.strip().rpartition("@")
        if not sep:
            user, rest = "", text.strip()
        elif not user:
            raise bad
        port = 22
        if rest.startswith("["):
            host, close, tail = rest[1:].partition("]")
            if not close:
                raise bad
            if tail:
                if not tail.startswith(":"):
                    raise bad
                port = _port(tail[1:], text)
        elif rest.count(":") == 1:
            host, _, p = rest.partition(":")
            port = _port(p, text)
        else:
            host = rest  # a name, an IPv4 address or a bare IPv6 address
        if not host or host.startswith("-") or any(c.isspace() or c in "/@[]" for c in host):
            raise bad
        return cls(host, port, user or None)

    @property
    def address(self) -> str:
        """``host:port`` (``[v6addr]:port``), always with the port."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

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
    """How to connect. ``identity_files`` are ``-i`` keys; with none, asyncssh's default keys
    (``~/.ssh/id_ed25519`` …) are used. The agent (``SSH_AUTH_SOCK``) is used as well when
    ``use_agent``. ``known_hosts`` None: ``~/.ssh/known_hosts`` (plus, read only,
    ``/etc/ssh/ssh_known_hosts``)."""

    identity_files: list[Path] = field(default_factory=list)
    use_agent: bool = True
    known_hosts: Path | None = None
    accept_new_host_key: bool = False
    connect_timeout: float = 10.0
    keepalive_interval: float = 5.0

    def known_hosts_path(self) -> Path:
        """The file checked and appended to."""
        return self.known_hosts or Path.home() / ".ssh" / "known_hosts"

    def known_hosts_files(self) -> list[Path]:
        """Every file checked: ours, and the system-wide one when ours is the default."""
        files = [self.known_hosts_path()]
        if self.known_hosts is None:
            files.append(GLOBAL_KNOWN_HOSTS)
        return files


@dataclass(frozen=True, slots=True)
class RunResult:
    exit_status: int | None
    stdout: bytes
    stderr: bytes


@dataclass(frozen=True, slots=True)
class SshStatistics:
    """Payload bytes of this session as counted here (asyncssh exposes no wire counters):
    sent = uploads and command input, received = files read and command output."""

    bytes_sent: int
    bytes_received: int
    files_sent: int
    commands: int


# --- known_hosts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _KnownKey:
    path: Path
    line: int
    marker: str  # "", "@revoked" or "@cert-authority"
    key_type: str
    blob: bytes


def _host_name(target: SshTarget) -> str:
    """The name OpenSSH looks up and writes: ``host`` on port 22, else ``[host]:port``."""
    host = target.host.lower()
    return host if target.port == 22 else f"[{host}]:{target.port}"


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only, case-insensitive."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.IGNORECASE | re.DOTALL) is not None


def _hosts_match(field_: str, name: str) -> bool:
    if field_.startswith("|1|"):
        try:
            _, _, salt, digest = field_.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    matched = False
    for pattern in field_.split(","):
        if pattern.startswith("!"):
            if _glob(pattern[1:], name):
                return False  # a negated match rules the line out
        elif _glob(pattern, name):
            matched = True
    return matched


def _known_keys(files: Sequence[Path], name: str) -> list[_KnownKey]:
    """Every known_hosts line (of every file) whose host patterns match ``name``."""
    out = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            marker = parts.pop(0) if parts[0].startswith("@") else ""
            if len(parts) < 3 or not _hosts_match(parts[0], name):
                continue
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            out.append(_KnownKey(path, n, marker, parts[1], blob))
    return out


def _key_label(algo: str) -> str:
    """``ED25519``, ``ECDSA``, ``RSA`` … as OpenSSH names key types in its messages."""
    if algo.startswith("ecdsa-"):
        return "ECDSA"
    if algo.startswith("sk-"):
        return "ECDSA-SK" if "ecdsa" in algo else "ED25519-SK"
    return algo.removeprefix("ssh-").upper()


def _host_key_algs(known: Sequence[_KnownKey]) -> list[str]:
    first: list[str] = []
    for k in known:
        algs = (
            ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if k.key_type == "ssh-rsa" else [k.key_type]
        )
        first += [a for a in algs if a not in first]
    supported = {a.decode() for a in asyncssh.public_key.get_default_public_key_algs()}
    rest = [a for a in _HOST_KEY_ALGS if a not in first]
    return [a for a in first + rest if a in supported]


def _append_known_host(path: Path, line: str) -> None:
    """Append one line, creating the file 0600 (and its folder 0700) as OpenSSH does."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(f"{line}\n".encode())


class _HostKeyPolicy(asyncssh.SSHClient):
    """Decides on the server's host key during the key exchange, before any authentication."""

    def __init__(self, target: SshTarget, options: SshOptions, known: list[_KnownKey]) -> None:
        self.target = target
        self.options = options
        self.known = known
        self.error: SshError | None = None
        self.accepted: asyncssh.SSHKey | None = None
        self.remember: str | None = None  # the known_hosts line to append once the key is proven

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self.accepted is not None:  # a re-key: the key must not change within a connection
            return key.public_data == self.accepted.public_data
        try:
            self.remember = self._decide(key)
        except SshError as exc:
            self.error = exc
            return False
        self.accepted = key
        return True

    def _decide(self, key: asyncssh.SSHKey) -> str | None:
        algo = key.get_algorithm()
        fp = str(key.get_fingerprint("sha256"))
        name = _host_name(self.target)
        path = self.options.known_hosts_path()
        revoked = [k for k in self.known if k.marker == "@revoked" and k.blob == key.public_data]
        if revoked:
            r = revoked[0]
            raise HostKeyChanged(
                f"The {_key_label(algo)} host key of {self.target.address} ({fp}) is marked "
                f"@revoked in {r.path}:{r.line}. Not connecting.",
                fingerprint=fp,
                known_hosts=r.path,
                line=r.line,
            )
        plain = [k for k in self.known if not k.marker]
        if any(k.blob == key.public_data for k in plain):
            return None
        if plain:
            other = next((k for k in plain if k.key_type == algo), plain[0])
            raise HostKeyChanged(
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
                "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n"
                "It is also possible that the device was reinstalled and has a new host key.\n"
                f"The fingerprint for the {_key_label(algo)} key sent by {self.target.address} "
                f"is\n{fp}.\n"
                f"Offending {_key_label(other.key_type)} key in {other.path}:{other.line}\n"
                f"If the new key is right, remove the old one with:\n"
                f"  ssh-keygen -f '{other.path}' -R '{name}'\n"
                "and connect again with --accept-new-host-key.\n"
                f"Host key verification failed: not connecting to {self.target.address}.",
                fingerprint=fp,
                known_hosts=other.path,
                line=other.line,
            )
        if not self.options.accept_new_host_key:
            base = algo.removeprefix("ssh-").split("-")[0]
            raise HostKeyUnknown(
                f"The authenticity of host {self.target.address} can't be established: it is not "
                f"in {path}.\n{_key_label(algo)} key fingerprint is {fp}.\n"
                f"If that is the device's key (on the device: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{base}_key.pub), pass --accept-new-host-key to trust it and "
                "remember it.",
                fingerprint=fp,
                known_hosts=path,
            )
        return f"{name} {algo} {base64.b64encode(key.public_data).decode()}"

    def proven(self) -> None:
        """The key exchange finished (the server proved it holds the key): remember it."""
        if self.remember is not None:
            _append_known_host(self.options.known_hosts_path(), self.remember)
            self.remember = None


# --- authentication ------------------------------------------------------------------------


@dataclass(slots=True)
class _Credentials:
    keys: list[asyncssh.SSHKeyPair]
    tried: list[str]  # for the message when none is accepted
    agent: asyncssh.SSHAgentClient | None

    async def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
            await self.agent.wait_closed()
            self.agent = None


async def _credentials(options: SshOptions) -> _Credentials:
    """Identity files first (so a crowded agent does not use up the server's MaxAuthTries before
    they are offered), then the agent's keys; with no identity files, asyncssh's defaults."""
    keys: list[asyncssh.SSHKeyPair] = []
    tried: list[str] = []
    sock = os.environ.get("SSH_AUTH_SOCK", "") if options.use_agent else ""
    encrypted: list[Path] = []
    for path in options.identity_files:
        try:
            keys += asyncssh.load_keypairs([str(path)])
        except asyncssh.KeyImportError as exc:
            if "passphrase" not in str(exc).lower():
                raise AuthenticationFailed(f"identity file {path}: {_cause(exc)}") from exc
            encrypted.append(path)
        except OSError as exc:
            raise AuthenticationFailed(
                f"identity file {path}: {exc.strerror or _cause(exc)}"
            ) from exc
        tried.append(str(path))
    if encrypted and not sock:
        raise AuthenticationFailed(
            f"identity file {encrypted[0]} is passphrase-protected: load it into an ssh-agent "
            f"(ssh-add {encrypted[0]}) and keep SSH_AUTH_SOCK set"
        )
    for p in encrypted:
        tried[tried.index(str(p))] = f"{p} (passphrase-protected: only via the agent)"
    if not options.identity_files:
        home = Path.home() / ".ssh"
        defaults = [home / n for n in _DEFAULT_KEY_NAMES if (home / n).exists()]
        try:
            keys += asyncssh.public_key.load_default_keypairs()
        except asyncssh.KeyImportError as exc:
            tried.append(f"default keys (unreadable: {_cause(exc)})")
        tried += [str(p) for p in defaults]
    agent = None
    if sock:
        try:
            agent = asyncssh.SSHAgentClient(sock)
            agent_keys = await agent.get_keys()
        except (OSError, asyncssh.Error, ValueError) as exc:
            if agent is not None:
                agent.close()
                await agent.wait_closed()
            agent = None
            tried.append(f"the ssh-agent at {sock} (unusable: {_cause(exc)})")
        else:
            keys += agent_keys
            tried.append(f"{len(agent_keys)} key(s) of the ssh-agent at {sock}")
    elif options.use_agent:
        tried.append("no ssh-agent (SSH_AUTH_SOCK is not set)")
    return _Credentials(keys, tried, agent)


# --- connecting ----------------------------------------------------------------------------


async def connect(target: SshTarget, options: SshOptions) -> SshSession:
    """Open an SSH session after checking the host key. Use as ``async with await connect()``
    (or ``async with open_session()``)."""
    known = _known_keys(options.known_hosts_files(), _host_name(target))
    policy = _HostKeyPolicy(target, options, known)
    user = target.user or getpass.getuser()
    creds = await _credentials(options)
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            config=[],
            client_factory=lambda: policy,
            known_hosts=([], [], []),  # nothing trusted up front: every key goes to the policy
            server_host_key_algs=_host_key_algs([k for k in known if not k.marker]),
            username=user,
            client_keys=creds.keys or None,
            agent_path=None,  # the agent's keys are in creds.keys already
            connect_timeout=options.connect_timeout,
            keepalive_interval=options.keepalive_interval,
            keepalive_count_max=3,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise (policy.error or HostKeyChanged(f"{target.address}: {_cause(exc)}")) from exc
    except asyncssh.PermissionDenied as exc:
        with contextlib.suppress(OSError):
            policy.proven()  # the key exchange did finish
        raise _auth_failed(target, user, creds) from exc
    except asyncssh.DisconnectError as exc:
        if policy.error is not None:
            raise policy.error from exc
        if policy.accepted is not None and "authentication" in _cause(exc).lower():
            raise _auth_failed(target, user, creds, _cause(exc)) from exc
        raise HostUnreachable(f"{target.address}: SSH handshake failed: {_cause(exc)}") from exc
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        if policy.error is not None:
            raise policy.error from exc
        raise HostUnreachable(f"cannot connect to {target.address}: {_cause(exc)}") from exc
    finally:
        await creds.close()
    try:
        policy.proven()
    except OSError as exc:
        conn.close()
        await conn.wait_closed()
        raise SshError(
            f"cannot remember the host key in {options.known_hosts_path()}: {exc}"
        ) from exc
    return SshSession(target, conn)


def _auth_failed(
    target: SshTarget, user: str, creds: _Credentials, detail: str = ""
) -> AuthenticationFailed:
    tried = "; ".join(creds.tried) or "no keys at all (no -i, no ~/.ssh/id_*, no ssh-agent)"
    more = f" ({detail})" if detail else ""
    return AuthenticationFailed(
        f"{user}@{target.address}: no key was accepted{more}. Tried: {tried}. Add your public key "
        f"to ~{user}/.ssh/authorized_keys on the device, or pass -i KEY."
    )


@contextlib.asynccontextmanager
async def open_session(target: SshTarget, options: SshOptions) -> AsyncIterator[SshSession]:
    """``async with open_session(target, options) as session:`` — closed on the way out."""
    session = await connect(target, options)
    try:
        yield session
    finally:
        await session.close()


# --- the session ---------------------------------------------------------------------------


class LineChannel:
    """A remote process spoken to in lines: ``await ask(line)`` → the line it answers."""

    def __init__(self, target: SshTarget, proc: asyncssh.SSHClientProcess[bytes]) -> None:
        self.target = target
        self._proc = proc

    async def ask(self, line: bytes, *, timeout: float | None = None) -> bytes:
        try:
            self._proc.stdin.write(line.rstrip(b"\n") + b"\n")
            async with asyncio.timeout(timeout):
                answer = await self._proc.stdout.readline()
        except TimeoutError as exc:
            raise ConnectionLost(f"{self.target.address}: no answer in {timeout} s") from exc
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            raise ConnectionLost(f"{self.target.address}: connection lost: {exc}") from exc
        return answer

    async def readline(self, *, timeout: float | None = None) -> bytes:
        """The next line the process prints (b"" once it has ended)."""
        try:
            async with asyncio.timeout(timeout):
                return await self._proc.stdout.readline()
        except TimeoutError as exc:
            raise ConnectionLost(f"{self.target.address}: no answer in {timeout} s") from exc
        except (asyncssh.Error, OSError) as exc:
            raise ConnectionLost(f"{self.target.address}: connection lost: {exc}") from exc

    async def close(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
            self._proc.stdin.write_eof()
            async with asyncio.timeout(5):
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
        return ConnectionLost(f"{self.target.address}: connection lost {what}: {_cause(exc)}")

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
            raise self._lost(f"starting `{_short(cmd)}`", exc) from exc
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
            raise self._lost(f"running `{_short(cmd)}`", exc) from exc
        out, err = _as_bytes(done.stdout), _as_bytes(done.stderr)
        self._received += len(out) + len(err)
        if done.exit_status is None and done.exit_signal is None:
            # The channel closed without an exit status: the connection (or sshd) went away.
            raise ConnectionLost(
                f"{self.target.address}: `{_short(cmd)}` ended without an exit status "
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
                    f"{self.target.address}: no SFTP server on the device ({_cause(exc)})"
                ) from exc
        return self._sftp

    def _transfer_error(self, what: str, exc: BaseException) -> SshError:
        if isinstance(exc, asyncssh.SFTPConnectionLost | asyncssh.SFTPNoConnection):
            return self._lost(what, exc)
        if isinstance(exc, asyncssh.SFTPError | OSError):
            return TransferFailed(f"{self.target.address}: {what}: {_cause(exc)}")
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
