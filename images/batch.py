"""``edgeagent image build --count N --name PATTERN``: one image per device, from one config.

Device ``i`` (for ``i`` in ``START .. START+N-1``) gets the id ``PATTERN.format(n=i)`` in place
of the config's ``device:``, and with it its own credential (its enrolment, and with a fleet
folder its own certificate) and its own bundle (whose ``agent.yaml`` names it). Everything is
checked before the first image is started: the pattern, every id (valid, distinct), every output
path (distinct, not the base) and, with a fleet folder, that no device is enrolled already (all
of them listed), so a refused run writes no image and enrols nobody.

The images are then built one after the other by the single-image code
(``customize.build`` or ``debian.build``), each from a config written beside the original
(a hidden file, so module and profile paths resolve the same way; removed afterwards, also on
error). When one fails, the ones built before it stay (each is complete); the error
(:class:`BatchBuildError`) names the device that failed, those built and those not started.

The planning functions (:func:`device_ids`, :func:`output_paths`, :func:`hostnames`,
:func:`plan`) are pure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import string
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from ..errors import ConfigError, EdgeAgentError
from ..protocol import check_name
from .bootpart import ImageBuildError
from .customize import BuildRequest

#: Most images one ``--count`` builds.
MAX_COUNT = 1000
#: Names listed in one message before "and K more".
_SHOWN = 8

R = TypeVar("R")


class BatchBuildError(ImageBuildError):
    """Image ``index`` (1-based) of a ``--count`` run failed; ``built`` holds the results of the
    images before it (complete, kept), ``not_built`` the devices after it."""

    def __init__(
        self, message: str, *, index: int, device: str, built: list[Any], not_built: list[str]
    ) -> None:
        super().__init__(message)
        self.index = index
        self.device = device
        self.built = built
        self.not_built = not_built


@dataclass(frozen=True, slots=True)
class Planned:
    """One image of a run: its number, device id, output file and host name (None: from the
    device id)."""

    n: int
    device: str
    out: Path
    hostname: str | None = None


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def pattern_fields(text: str, allowed: Sequence[str], option: str) -> set[str]:
    """The replacement fields of a ``str.format`` pattern (``{n}``, ``{n:02d}``…); refuses a
    malformed pattern and any field not in ``allowed`` (``{}``, ``{0}``, ``{n.real}``, nested)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ImageBuildError(f"{option} {text!r}: not a format pattern: {exc}") from exc
    fields = set()
    names = ", ".join(f"{{{a}}}" for a in allowed)
    for _, name, spec, _ in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise ImageBuildError(
                f"{option} {text!r}: unknown field {{{name}}} (it may use {names})"
            )
        if spec and "{" in spec:
            raise ImageBuildError(f"{option} {text!r}: a field inside a format spec")
        fields.add(name)
    return fields


def _format(text: str, option: str, **values: Any) -> str:
    try:
        return text.format(**values)
    except (ValueError, TypeError) as exc:
        raise ImageBuildError(f"{option} {text!r}: {exc}") from exc


def device_ids(pattern: str, count: int, start: int = 1) -> list[str]:
    """``pattern.format(n=i)`` for ``i`` in ``start .. start+count-1``: refuses a pattern without
    ``{n}``, ids that are not valid device ids, and ids that repeat (each list complete)."""
    if not 1 <= count <= MAX_COUNT:
        raise ImageBuildError(f"--count {count}: from 1 to {MAX_COUNT}")
    if "n" not in pattern_fields(pattern, ["n"], "--name"):
        raise ImageBuildError(
            f"--name {pattern!r} has no {{n}}: every device would get the same id (use e.g. "
            "'lamp-{n}' or 'lamp-{n:02d}')"
        )
    ids = [_format(pattern, "--name", n=i) for i in range(start, start + count)]
    bad = []
    for device in ids:
        try:
            check_name(device, "device id")
        except ValueError:
            bad.append(repr(device))
    if bad:
        raise ImageBuildError(
            f"--name {pattern!r} makes invalid device ids: {_listed(bad)} (use 1-128 letters, "
            "digits, '_', '.', '-', starting with a letter, digit or '_')"
        )
    twice = [repr(d) for d, k in Counter(ids).items() if k > 1]
    if twice:
        raise ImageBuildError(
            f"--name {pattern!r} gives the same id to several devices: {_listed(twice)} "
            "(put {n} in it)"
        )
    return ids


def default_output(base: Path, device: str) -> Path:
    """``BASE-DEVICE.img`` beside the base (``.img``/``.img.xz`` dropped from its name)."""
    name = base.name.removesuffix(".xz").removesuffix(".img")
    return base.with_name(f"{name}-{device}.img")


def output_paths(out: Path | None, base: Path, devices: Sequence[tuple[int, str]]) -> list[Path]:
    """The output file of each ``(n, device)``: ``out`` formatted with ``{n}``/``{device}``;
    without a placeholder, a folder holding ``DEVICE.img`` for more than one device, else the
    file itself; without ``out``, :func:`default_output`. Refuses outputs that collide, with
    each other or with the base."""
    if out is None:
        paths = [default_output(base, d) for _, d in devices]
    else:
        text = str(out)
        if pattern_fields(text, ["n", "device"], "-o"):
            paths = [Path(_format(text, "-o", n=n, device=d)) for n, d in devices]
        elif len(devices) > 1:
            paths = [out / f"{d}.img" for _, d in devices]
        else:
            paths = [out]
    seen: dict[Path, str] = {}
    clashes = []
    base_at = base.resolve() if str(base) != "debian" else None
    for path, (_, device) in zip(paths, devices, strict=True):
        key = path.resolve()
        if key == base_at:
            raise ImageBuildError(f"-o: {device}'s image {path} would be the base image itself")
        if key in seen:
            clashes.append(f"{seen[key]} and {device} ({path})")
        seen[key] = device
    if clashes:
        raise ImageBuildError(
            f"-o {out}: several images would be written to one file: {_listed(clashes)} "
            "(put {device} or {n} in -o)"
        )
    return paths


def hostnames(hostname: str | None, devices: Sequence[tuple[int, str]]) -> list[str | None]:
    """``--hostname`` of each device: None (from the device id) when not given; formatted with
    ``{n}``/``{device}``; a fixed name only for one device (hosts on one network need their
    own names)."""
    if hostname is None:
        return [None] * len(devices)
    if pattern_fields(hostname, ["n", "device"], "--hostname"):
        return [_format(hostname, "--hostname", n=n, device=d) for n, d in devices]
    if len(devices) > 1:
        raise ImageBuildError(
            f"--hostname {hostname!r} would name all {len(devices)} devices the same: leave it "
            "out (each host name comes from its device id) or put {n} or {device} in it"
        )
    return [hostname]


def plan(
    *,
    config_device: str,
    base: Path,
    out: Path | None,
    count: int = 1,
    name: str | None = None,
    start: int = 1,
    hostname: str | None = None,
) -> list[Planned]:
    """The images of a run, checked (see the module docstring). Without ``name``, one image for
    the config's own device."""
    if not 1 <= count <= MAX_COUNT:
        raise ImageBuildError(f"--count {count}: from 1 to {MAX_COUNT}")
    if start < 0:
        raise ImageBuildError(f"--start {start}: 0 or more")
    if name is None:
        if count > 1:
            raise ImageBuildError(
                f"--count {count} needs --name PATTERN (e.g. --name 'lamp-{{n}}'): each device "
                f"needs its own id, and the config has one ({config_device!r})"
            )
        ids = [config_device]
    else:
        ids = device_ids(name, count, start)
    numbered = list(zip(range(start, start + count), ids, strict=True))
    outs = output_paths(out, base, numbered)
    hosts = hostnames(hostname, numbered)
    return [Planned(n, d, o, h) for (n, d), o, h in zip(numbered, outs, hosts, strict=True)]


def check_not_enrolled(fleet_dir: Path | None, devices: Sequence[str], reenrol: bool) -> None:
    """With a fleet folder and without ``--reenrol``: refuse if any device is enrolled already,
    listing all of them (nothing is enrolled or written)."""
    if fleet_dir is None or reenrol:
        return
    from ..fleetdir import FleetDir

    try:
        registry = FleetDir.open(fleet_dir).registry
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc
    enrolled = []
    for device in devices:
        old = registry.get(device)
        if old is not None:
            enrolled.append(f"{device} ({old.role}{', revoked' if old.revoked else ''})")
    if enrolled:
        raise ImageBuildError(
            f"already enrolled in {fleet_dir}: {_listed(enrolled)}: nothing built. Re-flashed "
            "devices: pass --reenrol (their old certificates go on the CRL); else pick other ids "
            "(--name, --start)"
        )


def derived_config_path(config: Path, device: str) -> Path:
    """Where device ``device``'s config is written: beside the original (hidden), so its skill
    modules and relative paths resolve the same way."""
    return config.resolve().parent / f".{config.stem}.{device}-{os.getpid()}.yaml"


@contextlib.contextmanager
def config_for(config: Path, device: str) -> Iterator[Path]:
    """The agent config with ``device:`` set to ``device``, written 0600 (it may hold a
    password) beside the original and removed on leaving, also on error."""
    try:
        raw = yaml.safe_load(config.read_text())
    except OSError as exc:
        raise ImageBuildError(f"--config {config}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ImageBuildError(f"--config {config}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ImageBuildError(f"--config {config}: not a YAML mapping")
    raw["device"] = device
    text = f"# {config.name} for {device}, written by `edgeagent image build --count`\n"
    path = derived_config_path(config, device)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + yaml.safe_dump(raw, sort_keys=False))
        yield path
    finally:
        path.unlink(missing_ok=True)


def build_many(
    req: BuildRequest,
    images: Sequence[Planned],
    build_one: Callable[[BuildRequest], R],
    *,
    config_device: str,
) -> list[R]:
    """Build each planned image with ``build_one`` (``customize.build``, ``debian.build``), in
    order, from ``req`` with the image's device, output and host name. Raises
    :class:`BatchBuildError` at the first failure; the images built before it stay. Messages and
    results name the user's config, not the derived one (which is gone when they are read)."""
    results: list[R] = []
    total = len(images)
    for k, item in enumerate(images, 1):
        req.log(f"image {k}/{total}: {item.device} -> {item.out}")
        derived = str(derived_config_path(req.config, item.device))
        named = f"{req.config} (device {item.device})"

        def log(message: str, derived: str = derived, named: str = named) -> None:
            req.log(message.replace(derived, named))

        try:
            item.out.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.ExitStack() as stack:
                config = req.config
                if item.device != config_device:
                    config = stack.enter_context(config_for(req.config, item.device))
                one = dataclasses.replace(
                    req, config=config, out=item.out, hostname=item.hostname, log=log
                )
                results.append(_renamed(build_one(one), derived, named))
        except (EdgeAgentError, OSError) as exc:
            done = [f"{p.device} ({p.out})" for p in images[: k - 1]]
            rest = [p.device for p in images[k:]]
            why = str(exc).replace(derived, named)
            message = f"image {k}/{total}, {item.device} ({item.out}), failed: {why}. " + (
                f"Built before it (complete, kept): {_listed(done)}" if done else "Nothing built"
            )
            if rest:
                message += f"; not built: {_listed(rest)}"
            raise BatchBuildError(
                message, index=k, device=item.device, built=results, not_built=rest
            ) from exc
    return results


def _renamed(result: R, derived: str, named: str) -> R:
    """``result`` with the derived config's path in its ``credential_source`` replaced."""
    source = getattr(result, "credential_source", None)
    if not (isinstance(source, str) and derived in source and dataclasses.is_dataclass(result)):
        return result
    changed: Any = dataclasses.replace(
        cast(Any, result), credential_source=source.replace(derived, named)
    )
    return cast(R, changed)
