"""What the ``keys``, ``bundle`` and ``deploy`` commands share: the default signing key, errors
as one line and an exit code, running a coroutine, and the SSH options.

The deploy tooling's third-party parts (``cryptography`` for signatures, ``asyncssh`` for SSH)
are imported when a command needs them, with an error naming the extra to install
(:data:`EXTRA_HINT`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .errors import EdgeAgentError

T = TypeVar("T")

EXTRA_HINT = "the deploy tools need the `deploy` extra: pip install 'edgeagent[deploy]'"


def default_key() -> Path:
    env = os.environ.get("EDGEAGENT_KEY")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "edgeagent" / "keys" / "edgeagent.key"


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; our errors become one clear line and exit status 1."""
    try:
        return fn()
    except ModuleNotFoundError as exc:
        if exc.name in ("cryptography", "asyncssh"):
            fail(f"{exc.name} is not installed: {EXTRA_HINT}")
        raise
    except (EdgeAgentError, OSError, ValueError) as exc:
        fail(str(exc))
        raise AssertionError from exc  # unreachable


def ssh_error_types() -> tuple[type[BaseException], ...]:
    from .deploy import minisign, ssh  # type: ignore[attr-defined,unused-ignore]

    return (ssh.SshError, minisign.SignatureError)


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        fail("interrupted", 130)
        raise AssertionError from None


def ssh_options(identity: tuple[Path, ...], known_hosts: Path | None, accept_new: bool) -> Any:
    from .deploy.ssh import SshOptions

    return SshOptions(
        identity_files=list(identity),
        known_hosts=known_hosts,
        accept_new_host_key=accept_new,
    )


def ssh_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--root", default="/opt/edgeagent", show_default=True, help="Install root on the device."
    )(f)
    f = click.option(
        "--accept-new-host-key",
        is_flag=True,
        help="Trust and remember a host key seen for the first time.",
    )(f)
    f = click.option(
        "--known-hosts",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="known_hosts file (default ~/.ssh/known_hosts).",
    )(f)
    f = click.option(
        "-i",
        "--identity",
        multiple=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="SSH private key (repeatable); the ssh-agent is used too.",
    )(f)
    return f
