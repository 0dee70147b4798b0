"""``edgeagent call`` and ``edgeagent ask``: one skill by device or by skill, plain language.

Registered on the main command in ``cli.py``. Errors come back typed (``CallError``) and leave
with exit code 2; ``ask`` leaves with 3 when it is not sure and did nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from .cli_common import Ctx, run
from .client import Fleet
from .errors import CallError


def read_input(raw: str | None) -> bytes:
    if raw is None:
        return b"{}"
    if raw == "-":
        return sys.stdin.buffer.read()
    if raw.startswith("@"):
        try:
            return Path(raw[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {raw[1:]}: {exc}") from exc
    try:
        json.loads(raw)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc}); quote it: '{{\"level\": 40}}'") from exc
    return raw.encode()


@click.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, metavar="DEVICE SKILL [JSON] | --skill SKILL [JSON]")
@click.option(
    "--skill", "by_skill", default=None, help="Route by skill (through the coordinator: --via)."
)
@click.option(
    "--via",
    type=click.Choice(["coordinator", "local"]),
    default="coordinator",
    show_default=True,
    help="With --skill: who routes. 'local': this command picks the device with the "
    "coordinator's rules (tags, load, failover, hedging) and calls it directly, one broker "
    "crossing instead of two; needs no coordinator, but its identity must be allowed to call "
    "the skill (docs/coordinator.md).",
)
@click.option(
    "--where", default=None, metavar="K=V,…", help="With --skill: only devices with these tags."
)
@click.option("--all", "fan_out", is_flag=True, help="With --skill: call every matching device.")
@click.option("--explain", is_flag=True, help="With --skill: print how the call was routed.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--trace", default=None, help="Trace id to attach (echoed by the device).")
@click.option("--time", "show_time", is_flag=True, help="Print the round-trip time to stderr.")
@click.option(
    "--unannounced",
    is_flag=True,
    help="Send the call even if DEVICE has never announced itself (a plain MQTT responder); "
    "without it, an unknown device is not_found at once.",
)
@click.pass_obj
def call(
    obj: Ctx,
    args: tuple[str, ...],
    by_skill: str | None,
    via: str,
    where: str | None,
    fan_out: bool,
    explain: bool,
    timeout: float,
    trace: str | None,
    show_time: bool,
    unannounced: bool,
) -> None:
    """Call a skill and print its JSON output.

    \b
    edgeagent call DEVICE SKILL [JSON]                 one device, directly
    edgeagent call --skill SKILL [--where room=kitchen] [--all] [--explain] [JSON]
                                                       any device that has it, via the coordinator
    edgeagent call --skill SKILL --via local [JSON]    routed by this command, no coordinator

    JSON may be '-' to read stdin or '@FILE'. Exits 2 with the typed error (bad_request,
    not_found, busy, timeout, unavailable, internal) on failure.
    """
    from .routing import parse_where

    device, skill, raw = _call_args(args, by_skill, where, fan_out, explain, via, unannounced)
    try:
        tags = parse_where(where)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--where") from exc
    payload = read_input(raw)

    async def go() -> Any:
        async with obj.make_fleet(timeout) as fleet:
            started = time.perf_counter()
            try:
                if by_skill is not None:
                    return await _call_by_skill(
                        fleet, skill, payload, where=tags, fan_out=fan_out, timeout=timeout,
                        trace=trace, explain=explain, via=via,
                    )  # fmt: skip
                return await fleet.call(
                    device, skill, payload, timeout=timeout, trace=trace,
                    check_device=not unannounced,
                )  # fmt: skip
            except CallError as exc:
                if exc.code == "timeout":
                    await _explain_timeout(exc, fleet, obj.fleet, device, by_skill, via)
                raise
            finally:
                if show_time:
                    click.echo(f"{(time.perf_counter() - started) * 1000:.2f} ms", err=True)

    result = run(go())
    click.echo(json.dumps(result, indent=2 if sys.stdout.isatty() else None))


def _call_args(
    args: tuple[str, ...],
    by_skill: str | None,
    where: str | None,
    fan_out: bool,
    explain: bool,
    via: str,
    unannounced: bool,
) -> tuple[str, str, str | None]:
    """(device, skill, raw JSON) from the arguments, or a usage error for a bad combination."""
    if by_skill is None:
        if len(args) not in (2, 3):
            raise click.UsageError("give DEVICE SKILL [JSON], or --skill SKILL [JSON]")
        device, skill, raw = args[0], args[1], (args[2] if len(args) == 3 else None)
    else:
        if len(args) > 1:
            raise click.UsageError("with --skill, give at most one argument: the JSON input")
        device, skill, raw = "", by_skill, (args[0] if args else None)
    if (where or fan_out or explain or via != "coordinator") and by_skill is None:
        raise click.UsageError("--where, --all, --explain and --via go with --skill")
    if unannounced and by_skill is not None:
        raise click.UsageError("--unannounced goes with DEVICE SKILL, not --skill")
    return device, skill, raw


async def _call_by_skill(
    fleet: Fleet,
    skill: str,
    payload: bytes,
    *,
    where: dict[str, str],
    fan_out: bool,
    timeout: float,
    trace: str | None,
    explain: bool,
    via: str,
) -> Any:
    """A call routed by skill; with ``explain`` the route goes to stderr, even on failure."""
    try:
        out = await fleet.call_skill(
            skill, payload, where=where, mode="all" if fan_out else "one",
            timeout=timeout, trace=trace, explain=explain,
            via="local" if via == "local" else "coordinator",
        )  # fmt: skip
    except CallError as exc:
        if explain and exc.route:
            click.echo(json.dumps({"route": exc.route}, indent=2), err=True)
        raise
    if explain:
        output, route = out
        click.echo(json.dumps({"route": route}, indent=2), err=True)
        return output
    return out


async def _explain_timeout(
    exc: CallError, fleet: Fleet, fleet_name: str, device: str, by_skill: str | None, via: str
) -> None:
    """Raise a timeout again with the likely cause (device unknown or offline, no coordinator).

    Returns without raising when there is nothing to add; the caller then re-raises ``exc``.
    """
    if by_skill is None:
        info = await fleet.device(device)
        if info is None:
            raise type(exc)(
                f"{exc.message}; no device {device!r} has announced itself in fleet {fleet_name!r}"
            ) from exc
        if not info.online:
            raise type(exc)(f"{exc.message}; device {device!r} is {info.status}") from exc
    if by_skill is not None and via == "coordinator":
        raise type(exc)(
            f"{exc.message}; is a coordinator running (edgeagent coordinator run)?"
        ) from exc


@click.command()
@click.argument("text")
@click.option("--threshold", default=0.6, show_default=True, help="Least confidence to act on.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--json", "as_json", is_flag=True, help="Print what was understood and the output.")
@click.option(
    "--llm",
    default=None,
    metavar="MODEL",
    help="Add the LLM layer (zoo:tinyllm, zoo:smollm2, a genai folder): asked when the other "
    "layers are unsure; it may read a plan of several steps (docs/llm-routing.md).",
)
@click.option(
    "--explain", is_flag=True, help="Print the plan to stderr before anything is carried out."
)
@click.option("--dry-run", is_flag=True, help="Print the plan and carry out nothing.")
@click.pass_obj
def ask(
    obj: Ctx,
    text: str,
    threshold: float,
    timeout: float,
    as_json: bool,
    llm: str | None,
    explain: bool,
    dry_run: bool,
) -> None:
    """Do what TEXT asks ("turn off the kitchen lights") through the coordinator.

    A layered router (exact skill syntax, a grammar, then the zoo's tiny intent model, and with
    --llm an on-device LLM) maps the text to a skill, its input and the devices it is about, or
    with the LLM to a short plan of such calls, carried out in order (stopping at the first
    failure: exit 2). Only a command understood with certainty is carried out; otherwise (below
    --threshold, a question back such as "which lamp?", a statement or condition) nothing is
    done: the question back is printed, the best candidates go to stderr, and the exit code is 3.
    """
    from .plan_run import describe, plan_lines

    def show(reading: Any) -> None:
        if explain or dry_run:
            click.echo("\n".join(plan_lines(reading)), err=True)

    async def go() -> Any:
        async with obj.make_fleet(timeout) as fleet:
            return await fleet.ask(
                text, threshold=threshold, timeout=timeout, llm=llm, dry_run=dry_run, before=show
            )

    result = run(go())
    if result.unsure is not None:
        _print_unsure(result.unsure, as_json, explain or dry_run)
        sys.exit(3)
    reading = result.plan or result.interpretation
    if dry_run:
        if as_json:
            click.echo(json.dumps({"dry_run": True, "plan": describe(reading)}, indent=2))
        return
    if result.plan is not None:
        _print_steps(result, as_json)
        return
    i = result.interpretation
    if as_json:
        click.echo(json.dumps({
            "skill": i.skill, "input": i.input, "where": i.where, "mode": i.mode,
            "confidence": i.confidence, "layer": i.layer, "explanation": i.explanation,
            "plan": describe(i), "output": result.output,
        }, indent=2))  # fmt: skip
        return
    where = ",".join(f"{k}={v}" for k, v in sorted(i.where.items())) or "any device"
    click.echo(f"{i.skill} {json.dumps(i.input)} on {where} ({i.mode}; {i.layer}, "
               f"confidence {i.confidence:.2f})", err=True)  # fmt: skip
    click.echo(json.dumps(result.output))


def _print_unsure(unsure: Any, as_json: bool, explain: bool) -> None:
    """Nothing was done: the question back on stdout, why and the candidates on stderr."""
    from .plan_run import describe, plan_lines

    cands = [
        {"skill": c.skill, "input": c.input, "where": c.where, "confidence": c.confidence}
        for c in unsure.candidates
    ]
    question = getattr(unsure, "question", None)
    plan = getattr(unsure, "plan", None)
    if as_json:
        click.echo(json.dumps({"unsure": True, "reason": unsure.reason, "question": question,
                               "candidates": cands,
                               "plan": describe(plan) if plan is not None else None},
                              indent=2))  # fmt: skip
        return
    if question:
        click.echo(question)  # the question back, on stdout: nothing was done
    click.echo(f"not sure what you mean: {unsure.reason}", err=True)
    for c in cands:
        click.echo(f"  maybe: {c['skill']} {json.dumps(c['input'])} where {c['where']} "
                   f"({c['confidence']:.2f})", err=True)  # fmt: skip
    if explain and plan is not None:
        click.echo("\n".join(["not carried out:", *plan_lines(plan)]), err=True)


def _print_steps(result: Any, as_json: bool) -> None:
    """A plan's per-step results; exit 2 when a step failed (the later ones did not run)."""
    from .plan_run import describe

    steps = [s.as_json() for s in result.steps]
    failed = next((s for s in result.steps if not s.ok), None)
    total = len(result.plan.steps)
    if as_json:
        click.echo(json.dumps({"plan": describe(result.plan), "steps": steps,
                               "completed": sum(s.ok for s in result.steps), "of": total},
                              indent=2))  # fmt: skip
    else:
        for s in result.steps:
            line = json.dumps(s.output) if s.ok else f"failed: {s.error}"
            click.echo(f"{s.index + 1}. {s.skill}: {line}")
    if failed is not None:
        ran = ", ".join(str(s.index + 1) for s in result.steps if s.ok) or "none"
        click.echo(f"step {failed.index + 1} of {total} failed ({failed.error}); steps that ran: "
                   f"{ran}; not run: {total - len(result.steps)}", err=True)  # fmt: skip
        sys.exit(2)
