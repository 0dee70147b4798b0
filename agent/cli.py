"""The ``edgeagent`` command: a thin click layer over the library."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .broker import BROKER_ENV, DEFAULT_BROKER_URL, BrokerConfig
from .client import DeviceInfo, Fleet
from .config import load_config
from .errors import CallError, EdgeAgentError
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, Health, Manifest, StateMessage

if TYPE_CHECKING:
    from .config import AgentConfig
    from .device import DeviceAgent

T = TypeVar("T")


class Ctx:
    def __init__(
        self,
        broker: str | None,
        fleet: str,
        root: str,
        broker_file: BrokerConfig | None = None,
    ) -> None:
        self.broker = broker
        self.fleet = fleet
        self.root = root
        self.broker_file = broker_file

    def broker_config(self) -> BrokerConfig:
        """--broker-config's settings (TLS files, credentials), with --broker's URL over them."""
        if self.broker_file is None:
            return BrokerConfig.from_url(self.broker)
        if self.broker:
            return self.broker_file.model_copy(update={"url": self.broker})
        return self.broker_file

    def make_fleet(self, timeout: float = 10.0) -> Fleet:
        return Fleet(self.broker_config(), fleet=self.fleet, root=self.root, timeout=timeout)


def _load_broker_file(path: Path) -> BrokerConfig:
    """A YAML file with a ``broker:`` section (as ``fleet enroll`` writes) or the bare settings."""
    import yaml
    from pydantic import BaseModel, ConfigDict

    from .errors import ConfigError
    from .yamlconf import parse_yaml_model

    class BrokerFile(BaseModel):
        model_config = ConfigDict(extra="ignore")
        broker: BrokerConfig

    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read broker settings: {exc}") from exc
    if isinstance(data, dict) and "broker" in data:
        return parse_yaml_model(text, BrokerFile, source=str(path)).broker
    return parse_yaml_model(text, BrokerConfig, source=str(path))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn our errors into a one-line message and a non-zero exit."""
    try:
        return asyncio.run(coro)
    except CallError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except EdgeAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


class _StopSignals:
    """SIGTERM and SIGINT for a service command (``agent run``, ``coordinator run``).

    Until :meth:`serving` (connecting, or retrying a broker that is not there), a signal cancels
    the task that made this object: the start is abandoned at once and :meth:`abandoned` says
    so. Once serving, a signal sets :attr:`stop`, and the service drains and leaves cleanly.
    """

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.signal: signal.Signals | None = None
        self._serving = False
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        first = self.signal is None
        self.signal = sig
        if self._serving:
            self.stop.set()
        elif first and self._task is not None:
            self._task.cancel()

    def serving(self) -> None:
        self._serving = True

    def abandoned(self) -> bool:
        """In ``except CancelledError`` around the start: True (and the cancellation taken
        back) when a signal cancelled it, False when the cancellation came from elsewhere."""
        if self.signal is None or self._serving or self._task is None:
            return False
        self._task.uncancel()
        return True


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="edgeagent")
@click.option(
    "--broker",
    envvar=BROKER_ENV,
    default=None,
    metavar="URL",
    help=f"MQTT broker URL, mqtt://host:port or mqtts://… [env {BROKER_ENV}; "
    f"default {DEFAULT_BROKER_URL}]",
)
@click.option(
    "--broker-config",
    "broker_file",
    envvar="EDGEAGENT_BROKER_CONFIG",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML with the broker settings (TLS certificates, credentials), e.g. the broker.yaml "
    "`fleet enroll` writes for an identity [env EDGEAGENT_BROKER_CONFIG].",
)
@click.option("--fleet", default=DEFAULT_FLEET, show_default=True, help="Fleet name.")
@click.option("--root", default=DEFAULT_ROOT, show_default=True, help="Topic root.")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    show_default=True,
    help="Log verbosity (agents log at info unless told otherwise).",
)
@click.pass_context
def main(
    ctx: click.Context,
    broker: str | None,
    broker_file: Path | None,
    fleet: str,
    root: str,
    log_level: str,
) -> None:
    """edgeagent: intelligent objects on small computers.

    Devices run an agent that exposes typed skills over MQTT 5; this command runs agents, calls
    skills and watches the fleet. Any MQTT 5 client can call skills too: see docs/protocol.md.
    """
    if ctx.get_parameter_source("log_level") is click.core.ParameterSource.DEFAULT and (
        ctx.invoked_subcommand in ("agent", "demo")
    ):
        log_level = "info"
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        loaded = _load_broker_file(broker_file) if broker_file is not None else None
    except EdgeAgentError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.obj = Ctx(broker, fleet, root, loaded)


# agent -------------------------------------------------------------------------------------------


@main.group()
def agent() -> None:
    """Run a device agent."""


def _device_agent(cfg: AgentConfig) -> DeviceAgent:
    """The agent for ``agent run``: on a deployed device (``edgeagent deploy``'s layout), with
    the system skills (docs/rollouts.md) beside the config's."""
    from .config import load_skills
    from .device import DeviceAgent
    from .skills import collect_skills
    from .system import SystemSkills, device_root

    root = device_root() if cfg.system_skills else None
    if root is None:
        return DeviceAgent(cfg)
    skills, sets, events = load_skills(cfg)
    system = SystemSkills(root, cfg.release)
    return DeviceAgent(cfg, skills=[*skills, *collect_skills(system)], skill_sets=[*sets, system],
                       events=events, updating=system.verifying())  # fmt: skip


@agent.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.pass_obj
def agent_run(obj: Ctx, config: Path) -> None:
    """Run the device agent described by CONFIG (YAML) until SIGTERM or Ctrl-C.

    --broker and --fleet, when given, override the config file. On SIGTERM the agent stops
    taking calls, lets in-flight calls finish within grace_s, publishes offline and disconnects.
    """

    try:
        cfg = load_config(config)
        updates: dict[str, Any] = {}
        if obj.broker_file is not None:
            updates["broker"] = obj.broker_config()
        elif obj.broker:
            BrokerConfig.from_url(obj.broker)  # validates, with a clear error
            updates["broker"] = cfg.broker.model_copy(update={"url": obj.broker})
        if obj.fleet != DEFAULT_FLEET:
            updates["fleet"] = obj.fleet
        if obj.root != DEFAULT_ROOT:
            updates["root"] = obj.root
        if os.environ.get("EDGEAGENT_RELEASE"):
            updates["release"] = os.environ["EDGEAGENT_RELEASE"]
        cfg = cfg.model_copy(update=updates)
        device = _device_agent(cfg)
    except (EdgeAgentError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    async def serve() -> None:
        signals = _StopSignals()
        try:
            await device.start()  # retries until the broker answers
        except asyncio.CancelledError:
            if not signals.abandoned():
                raise
            await device.stop(grace_s=0)  # releases what the start had set up
            assert signals.signal is not None
            click.echo(
                f"{cfg.device}: {signals.signal.name} before the broker at "
                f"{cfg.broker.display()} answered; stopped",
                err=True,
            )
            return
        signals.serving()
        try:
            click.echo(
                f"{cfg.device}: online at {cfg.broker.display()} (fleet {cfg.fleet}), "
                f"skills: {', '.join(s.name for s in device.manifest().skills)}",
                err=True,
            )
            await signals.stop.wait()
            click.echo(f"{cfg.device}: stopping (grace {cfg.grace_s:g} s)", err=True)
        finally:
            await device.stop()

    _run(serve())


# demo --------------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--examples",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the smart-home example (default: ./examples/smart-home).",
)
@click.option("--keep", is_flag=True, help="Keep the fleet running after the tour (Ctrl-C ends).")
@click.option(
    "--secure",
    is_flag=True,
    help="On a private broker that requires TLS client certificates and enforces the fleet's "
    "ACL: each agent, the coordinator and the tour use their own enrolled identity.",
)
@click.pass_obj
def demo(obj: Ctx, examples: Path | None, keep: bool, secure: bool) -> None:
    """Run a small smart-home fleet locally and call its skills.

    Starts a private mosquitto on a free port (unless --broker is given), the seven example
    agents of examples/smart-home as real processes (two lamps, a thermostat, a doorbell, and
    three with tiny models: a meter, a pump, a speaker) and a coordinator with the example rules,
    then lists the fleet, calls skills, shows an event, a rule, routing by tags, a plain-language
    request and a typed error, and stops everything cleanly. With --keep it prints ready-to-paste
    commands for the running fleet; SIGTERM or Ctrl-C stops it all.
    """
    from .demo import run_demo

    logging.getLogger().setLevel(logging.WARNING)
    try:
        run_demo(obj.broker, examples, keep, click.echo, secure=secure)
    except (EdgeAgentError, RuntimeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)


# call --------------------------------------------------------------------------------------------


def _read_input(raw: str | None) -> bytes:
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


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, metavar="DEVICE SKILL [JSON] | --skill SKILL [JSON]")
@click.option("--skill", "by_skill", default=None, help="Route by skill through the coordinator.")
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

    JSON may be '-' to read stdin or '@FILE'. Exits 2 with the typed error (bad_request,
    not_found, busy, timeout, unavailable, internal) on failure.
    """
    from .routing import parse_where

    if by_skill is None:
        if len(args) not in (2, 3):
            raise click.UsageError("give DEVICE SKILL [JSON], or --skill SKILL [JSON]")
        device, skill, raw = args[0], args[1], (args[2] if len(args) == 3 else None)
    else:
        if len(args) > 1:
            raise click.UsageError("with --skill, give at most one argument: the JSON input")
        device, skill, raw = "", by_skill, (args[0] if args else None)
    if (where or fan_out or explain) and by_skill is None:
        raise click.UsageError("--where, --all and --explain go with --skill")
    if unannounced and by_skill is not None:
        raise click.UsageError("--unannounced goes with DEVICE SKILL, not --skill")
    try:
        tags = parse_where(where)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--where") from exc
    payload = _read_input(raw)

    async def go() -> Any:
        async with obj.make_fleet(timeout) as fleet:
            started = time.perf_counter()
            try:
                if by_skill is not None:
                    try:
                        out = await fleet.call_skill(
                            skill, payload, where=tags, mode="all" if fan_out else "one",
                            timeout=timeout, trace=trace, explain=explain,
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
                return await fleet.call(
                    device, skill, payload, timeout=timeout, trace=trace,
                    check_device=not unannounced,
                )  # fmt: skip
            except CallError as exc:
                if exc.code == "timeout" and by_skill is None:
                    info = await fleet.device(device)
                    if info is None:
                        raise type(exc)(
                            f"{exc.message}; no device {device!r} has announced itself in fleet "
                            f"{obj.fleet!r}"
                        ) from exc
                    if not info.online:
                        raise type(exc)(
                            f"{exc.message}; device {device!r} is {info.status}"
                        ) from exc
                if exc.code == "timeout" and by_skill is not None:
                    raise type(exc)(
                        f"{exc.message}; is a coordinator running (edgeagent coordinator run)?"
                    ) from exc
                raise
            finally:
                if show_time:
                    click.echo(f"{(time.perf_counter() - started) * 1000:.2f} ms", err=True)

    result = _run(go())
    click.echo(json.dumps(result, indent=2 if sys.stdout.isatty() else None))


@main.command()
@click.argument("text")
@click.option("--threshold", default=0.6, show_default=True, help="Least confidence to act on.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds to wait for a reply.")
@click.option("--json", "as_json", is_flag=True, help="Print what was understood and the output.")
@click.pass_obj
def ask(obj: Ctx, text: str, threshold: float, timeout: float, as_json: bool) -> None:
    """Do what TEXT asks ("turn off the kitchen lights") through the coordinator.

    A layered router (exact skill syntax, a grammar, then the zoo's tiny intent model) maps the
    text to a skill, its input and the devices it is about. Only a command understood with
    certainty is carried out; otherwise (below --threshold, a question back such as "which
    lamp?", a statement or condition) nothing is done: the question back is printed, the best
    candidates go to stderr, and the exit code is 3.
    """

    async def go() -> Any:
        async with obj.make_fleet(timeout) as fleet:
            return await fleet.ask(text, threshold=threshold, timeout=timeout)

    result = _run(go())
    if result.unsure is not None:
        cands = [
            {"skill": c.skill, "input": c.input, "where": c.where, "confidence": c.confidence}
            for c in result.unsure.candidates
        ]
        question = getattr(result.unsure, "question", None)
        if as_json:
            click.echo(json.dumps({"unsure": True, "reason": result.unsure.reason,
                                   "question": question, "candidates": cands},
                                  indent=2))  # fmt: skip
        else:
            if question:
                click.echo(question)  # the question back, on stdout: nothing was done
            click.echo(f"not sure what you mean: {result.unsure.reason}", err=True)
            for c in cands:
                click.echo(f"  maybe: {c['skill']} {json.dumps(c['input'])} where {c['where']} "
                           f"({c['confidence']:.2f})", err=True)  # fmt: skip
        sys.exit(3)
    i = result.interpretation
    if as_json:
        click.echo(json.dumps({
            "skill": i.skill, "input": i.input, "where": i.where, "mode": i.mode,
            "confidence": i.confidence, "layer": i.layer, "explanation": i.explanation,
            "output": result.output,
        }, indent=2))  # fmt: skip
        return
    where = ",".join(f"{k}={v}" for k, v in sorted(i.where.items())) or "any device"
    click.echo(f"{i.skill} {json.dumps(i.input)} on {where} ({i.mode}; {i.layer}, "
               f"confidence {i.confidence:.2f})", err=True)  # fmt: skip
    click.echo(json.dumps(result.output))


# coordinator --------------------------------------------------------------------------------------


@main.group()
def coordinator() -> None:
    """Route calls between devices by skill and tags."""


@coordinator.command("run")
@click.option("--group", default="edgeagent-coord", show_default=True,
              help="Shared-subscription group: replicas in one group share the calls.")  # fmt: skip
@click.option("--retry-budget", default=2, show_default=True, help="Failovers per call.")
@click.option("--no-hedge", is_flag=True, help="Do not hedge slow read calls.")
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Automations (YAML): when an event happens, call a skill. See examples/smart-home.",
)
@click.option(
    "--limit",
    "limit_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="Change a bound (repeatable), e.g. --limit max_devices=500. The bounds and their "
    "defaults: docs/coordinator.md.",
)
@click.pass_obj
def coordinator_run(
    obj: Ctx,
    group: str,
    retry_budget: int,
    no_hedge: bool,
    rules_file: Path | None,
    limit_pairs: tuple[str, ...],
) -> None:
    """Run a coordinator until SIGTERM or Ctrl-C. Run several for scale-out and failover.

    Any MQTT 5 client can then call {root}/{fleet}/coord/call/SKILL with the skill's input, a
    Response Topic, and User Properties where=room=kitchen, mode=one|all, explain=1.
    """
    from .coordinator import Coordinator
    from .limits import parse_limits
    from .rules import load_rules
    from .transport.mqtt import MqttTransport

    try:
        rules = load_rules(rules_file) if rules_file is not None else None
        limits = parse_limits(limit_pairs)
    except EdgeAgentError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)

    async def serve() -> None:
        signals = _StopSignals()
        broker = obj.broker_config()
        transport = MqttTransport(broker, retry_first_connect=True)
        coord = Coordinator(
            transport, root=obj.root, fleet=obj.fleet, group=group,
            retry_budget=retry_budget, hedge=not no_hedge, rules=rules, limits=limits,
        )  # fmt: skip
        try:
            await coord.start()  # retries until the broker answers
        except asyncio.CancelledError:
            if not signals.abandoned():
                raise
            await coord.stop()
            assert signals.signal is not None
            click.echo(
                f"coordinator: {signals.signal.name} before the broker at {broker.display()} "
                "answered; stopped",
                err=True,
            )
            return
        signals.serving()
        try:
            if rules is not None:
                click.echo(f"coordinator: {len(rules)} rules from {rules_file}", err=True)
                for warning in rules.check(coord.registry.skills()):
                    click.echo(f"warning: {warning}", err=True)
            devices = len(coord.registry.devices)
            click.echo(
                f"coordinator: routing for fleet {obj.fleet} at {broker.display()} "
                f"({devices} devices known, group {group})",
                err=True,
            )
            await signals.stop.wait()
        finally:
            await coord.stop()

    _run(serve())


# fleet -------------------------------------------------------------------------------------------


@main.group()
def fleet() -> None:
    """See the devices of a fleet."""


def _device_row(d: DeviceInfo) -> dict[str, Any]:
    return {
        "device": d.device,
        "status": d.status,
        "since": d.since,
        "profile": d.manifest.profile if d.manifest else None,
        "release": d.manifest.release if d.manifest else None,
        "tags": d.tags,
        "skills": [s.name for s in d.skills],
    }


@fleet.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one array) instead of a table.")
@click.option("--online", is_flag=True, help="Only devices that are online.")
@click.pass_obj
def fleet_ls(obj: Ctx, as_json: bool, online: bool) -> None:
    """List devices: online state, profile, tags and skills (from retained messages)."""

    async def go() -> list[DeviceInfo]:
        async with obj.make_fleet() as f:
            return await f.devices(include_offline=not online)

    devices = _run(go())
    if as_json:
        click.echo(json.dumps([_device_row(d) for d in devices], indent=2))
        return
    if not devices:
        click.echo(f"no devices in fleet {obj.fleet!r}", err=True)
        return
    rows = [
        (
            d.device,
            d.status,
            (d.manifest.profile or "-") if d.manifest else "-",
            (d.manifest.release or "-") if d.manifest else "-",
            ",".join(f"{k}={v}" for k, v in sorted(d.tags.items())) or "-",
            ", ".join(s.name for s in d.skills) or "-",
        )
        for d in devices
    ]
    header = ("DEVICE", "STATUS", "PROFILE", "RELEASE", "TAGS", "SKILLS")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])


@fleet.command("show")
@click.argument("device")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.pass_obj
def fleet_show(obj: Ctx, device: str, as_json: bool) -> None:
    """Show one device's manifest: skills with their input and output schemas."""

    async def go() -> DeviceInfo | None:
        async with obj.make_fleet() as f:
            return await f.device(device)

    info = _run(go())
    if info is None or info.manifest is None:
        click.echo(f"error: no device {device!r} in fleet {obj.fleet!r}", err=True)
        sys.exit(1)
    m = info.manifest
    if as_json:
        click.echo(json.dumps({"status": info.status, **m.model_dump(mode="json")}, indent=2))
        return
    click.echo(f"{m.device} ({info.status})  profile={m.profile or '-'}  tags={m.tags}")
    for s in m.skills:
        flags = f"{s.side_effect}{', idempotent' if s.idempotent else ''}"
        click.echo(f"  {s.name} [{flags}]  {s.description}")
        click.echo(f"    input:  {json.dumps(s.input_schema.get('properties', {}))}")
        click.echo(f"    output: {json.dumps(s.output_schema)}")
    for e in m.events:
        click.echo(f"  event {e.name}: {e.description}")


@fleet.command("watch")
@click.option("--json", "as_json", is_flag=True, help="One JSON message per line.")
@click.option("--count", type=int, default=None, help="Stop after this many updates.")
@click.pass_obj
def fleet_watch(obj: Ctx, as_json: bool, count: int | None) -> None:
    """Follow devices' state and health live (Ctrl-C to stop)."""

    async def go() -> None:
        seen = 0
        async with obj.make_fleet() as f:
            async for msg in f.watch():
                if as_json:
                    click.echo(msg.model_dump_json(exclude_none=True))
                else:
                    click.echo(_describe(msg))
                seen += 1
                if count is not None and seen >= count:
                    return

    _run(go())


def _describe(msg: Any) -> str:
    stamp = time.strftime("%H:%M:%S")
    if isinstance(msg, StateMessage):
        return f"{stamp} {msg.device:<20} state   {msg.status}" + (
            f" ({msg.reason})" if msg.reason else ""
        )
    if isinstance(msg, Manifest):
        return f"{stamp} {msg.device:<20} skills  {', '.join(s.name for s in msg.skills)}"
    if isinstance(msg, Health):
        lat = ", ".join(
            f"{k} p50={v.p50_ms}ms p95={v.p95_ms}ms" for k, v in msg.skills.items() if v.calls
        )
        mem = f"{msg.memory_rss_bytes / 1e6:.0f}MB" if msg.memory_rss_bytes else "-"
        return (
            f"{stamp} {msg.device:<20} health  up={msg.uptime_s:.0f}s served={msg.calls_served} "
            f"failed={msg.calls_failed} queue={msg.queue_depth} mem={mem} {lat}"
        )
    return f"{stamp} {msg!r}"


from .cli_deploy import bundle, deploy, keys  # noqa: E402
from .cli_devices import devices  # noqa: E402 - subcommand groups live in their own modules
from .cli_fleet import broker, fleet_commands  # noqa: E402
from .cli_image import image  # noqa: E402
from .cli_models import models  # noqa: E402
from .cli_rollout import rollout  # noqa: E402
from .cli_sim import sim  # noqa: E402

main.add_command(bundle)
main.add_command(deploy)
main.add_command(keys)
main.add_command(devices)
main.add_command(models)
main.add_command(sim)
main.add_command(broker)
main.add_command(image)
main.add_command(rollout)
for _command in fleet_commands:
    fleet.add_command(_command)


if __name__ == "__main__":  # pragma: no cover - `python -m edgeagent.cli`
    main()
