"""Where and how to connect: the SSH target (``[user@]host[:port]``), the options, and what a
command run and a session's statistics return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GLOBAL_KNOWN_HOSTS = Path("/etc/ssh/ssh_known_hosts")


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
