"""The SSH errors: asyncssh's failures as ours, each with a message that says what to do.

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
"""

from __future__ import annotations

from pathlib import Path

import asyncssh

from ..errors import EdgeAgentError


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
        super().__init__(
            f"`{short_command(command)}` failed ({why})" + (f":\n{tail}" if tail else "")
        )
        self.command = command
        self.exit_status = exit_status
        self.stdout = stdout
        self.stderr = stderr


class TransferFailed(SshError):
    """An upload or a read over SFTP failed."""


class ConnectionLost(SshError):
    """The connection dropped mid-operation."""


def short_command(command: str, limit: int = 200) -> str:
    """``command`` clipped to ``limit`` characters, for a message."""
    return command if len(command) <= limit else command[: limit - 1] + "…"


def describe_cause(exc: BaseException) -> str:
    """What went wrong, in a few words (asyncssh's disconnect reason, else the message)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return str(exc.reason)
    text = str(exc).strip()
    return text or type(exc).__name__
