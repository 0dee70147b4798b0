"""SSH to devices, over asyncssh: the one place where its errors become ours.

The parts: the errors (:mod:`~edgeagent.deploy.ssh_errors`), target and options
(:mod:`~edgeagent.deploy.ssh_target`), the host key check (:mod:`~edgeagent.deploy.ssh_hostkeys`)
and the open session (:mod:`~edgeagent.deploy.ssh_session`); this module authenticates and
connects (:func:`connect`, :func:`open_session`) and re-exports the public names of the others.

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

import contextlib
import getpass
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .ssh_errors import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteCommandFailed,
    SshError,
    TransferFailed,
    describe_cause,
)
from .ssh_hostkeys import HostKeyPolicy, host_key_algs, host_name, known_keys
from .ssh_session import LineChannel, SshSession
from .ssh_target import GLOBAL_KNOWN_HOSTS, RunResult, SshOptions, SshStatistics, SshTarget

__all__ = [
    "GLOBAL_KNOWN_HOSTS", "AuthenticationFailed", "ConnectionLost", "HostKeyChanged",
    "HostKeyUnknown", "HostUnreachable", "LineChannel", "RemoteCommandFailed", "RunResult",
    "SshError", "SshOptions", "SshSession", "SshStatistics", "SshTarget", "TransferFailed",
    "connect", "open_session",
]  # fmt: skip

_DEFAULT_KEY_NAMES = (
    "id_ed25519_sk",
    "id_ecdsa_sk",
    "id_ed448",
    "id_ed25519",
    "id_ecdsa",
    "id_rsa",
)

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
                raise AuthenticationFailed(f"identity file {path}: {describe_cause(exc)}") from exc
            encrypted.append(path)
        except OSError as exc:
            raise AuthenticationFailed(
                f"identity file {path}: {exc.strerror or describe_cause(exc)}"
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
            tried.append(f"default keys (unreadable: {describe_cause(exc)})")
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
            tried.append(f"the ssh-agent at {sock} (unusable: {describe_cause(exc)})")
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
    known = known_keys(options.known_hosts_files(), host_name(target))
    policy = HostKeyPolicy(target, options, known)
    user = target.user or getpass.getuser()
    creds = await _credentials(options)
    try:
        conn = await asyncssh.connect(
            target.host,
            target.port,
            config=[],
            client_factory=lambda: policy,
            known_hosts=([], [], []),  # nothing trusted up front: every key goes to the policy
            server_host_key_algs=host_key_algs([k for k in known if not k.marker]),
            username=user,
            client_keys=creds.keys or None,
            agent_path=None,  # the agent's keys are in creds.keys already
            connect_timeout=options.connect_timeout,
            keepalive_interval=options.keepalive_interval,
            keepalive_count_max=3,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        raise (policy.error or HostKeyChanged(f"{target.address}: {describe_cause(exc)}")) from exc
    except asyncssh.PermissionDenied as exc:
        with contextlib.suppress(OSError):
            policy.proven()  # the key exchange did finish
        raise _auth_failed(target, user, creds) from exc
    except asyncssh.DisconnectError as exc:
        if policy.error is not None:
            raise policy.error from exc
        if policy.accepted is not None and "authentication" in describe_cause(exc).lower():
            raise _auth_failed(target, user, creds, describe_cause(exc)) from exc
        raise HostUnreachable(
            f"{target.address}: SSH handshake failed: {describe_cause(exc)}"
        ) from exc
    except (TimeoutError, OSError, asyncssh.Error) as exc:
        if policy.error is not None:
            raise policy.error from exc
        raise HostUnreachable(f"cannot connect to {target.address}: {describe_cause(exc)}") from exc
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
