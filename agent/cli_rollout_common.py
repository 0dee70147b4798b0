"""What the ``edgeagent rollout`` commands share: the connection from the global options, running
a coroutine with outcomes mapped to exit codes, stopping on a signal, and the final status.

Exit codes: 0 done with no failure, 1 halted, aborted, failures or an error, 2 bad input, 130
stopped driving (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .cli_rollout_view import format_status
from .errors import EdgeAgentError

if TYPE_CHECKING:
    from .cli_common import Ctx
    from .deploy.rollout_run import Conn, Outcome

T = TypeVar("T")


def fail(message: object, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def conn_of(obj: Ctx) -> Conn:
    """The rollout connection of the global options (bad settings exit 2)."""
    from .deploy.rollout_run import Conn

    try:
        return Conn(obj.broker_config(), obj.root, obj.fleet)
    except (EdgeAgentError, ValueError) as exc:
        fail(exc, 2)


def run(coro: Coroutine[Any, Any, T], bad_input: int = 1) -> T:
    """Run ``coro``; a refused input (RolloutError, BundleInvalid) exits ``bad_input``, any
    other edgeagent error 1."""
    from .deploy.errors import BundleInvalid
    from .deploy.rollout_state import RolloutError

    try:
        return asyncio.run(coro)
    except (RolloutError, BundleInvalid) as exc:
        fail(exc, bad_input)
    except (EdgeAgentError, ValueError) as exc:
        fail(exc)
    except KeyboardInterrupt:
        sys.exit(130)


async def with_stop(
    body: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
) -> T:
    """Run ``body(stop)``: the first SIGINT/SIGTERM sets ``stop`` (stop driving, cleanly), a
    second one cancels."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal() -> None:
        if stop.is_set() and task is not None:
            task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await body(stop)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def finish(outcome: Outcome, as_json: bool, ctx_fleet: str, bundle: Path) -> NoReturn:
    """Print the final status (and how to carry on when interrupted); exit with its code."""
    if as_json:
        click.echo(json.dumps(outcome.status, indent=1))
    else:
        click.echo(format_status(outcome.status))
    if outcome.interrupted:
        rid = outcome.status["id"]
        click.echo(
            f"stopped driving rollout {rid} (it stays {outcome.status['phase']}; devices "
            f"mid-update finish by themselves). Carry on, from any machine, with:\n"
            f"  edgeagent --fleet {ctx_fleet} rollout resume {rid} --bundle {bundle}",
            err=True,
        )
    sys.exit(outcome.code)
