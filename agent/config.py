"""The device agent's configuration file (YAML), validated with ``extra="forbid"``.

::

    device: lamp-kitchen            # one topic level: letters, digits, _ . -
    fleet: home                     # default: "default"
    broker: mqtt://127.0.0.1:1883   # or a mapping: {url, username, password_env, tls: {...}}
    profile: pi4                    # device profile name (see `edgeagent devices ls`)
    tags: {room: kitchen, kind: lamp}
    skills:
      - module: lamp                # a module of @skill functions, or module:SkillSetClass
        options: {watts: 9}         # keyword arguments for a SkillSet class
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .broker import BrokerConfig
from .errors import ConfigError
from .models.hardcases import DataConfig
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, check_name
from .skills import Skill, SkillSet, collect_skills, declared_events
from .yamlconf import load_yaml_model, node_at

DEFAULT_MAX_PAYLOAD = 256 * 1024


class SkillSource(BaseModel):
    """Where skills come from: a module path, optionally ``:ClassName`` of a SkillSet."""

    model_config = ConfigDict(extra="forbid")

    module: str = Field(
        description="Importable module ('lamp', 'pkg.skills') or 'module:SkillSetClass'. "
        "Modules next to the config file are importable."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the SkillSet class."
    )


class AgentConfig(BaseModel):
    """One device agent."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    device: str = Field(description="Device id, unique in the fleet; one topic level.")
    fleet: str = Field(default=DEFAULT_FLEET, description="Fleet name; one topic level.")
    root: str = Field(default=DEFAULT_ROOT, description="Topic root.")
    broker: BrokerConfig = Field(default_factory=BrokerConfig, description="Broker to use.")
    profile: str | None = Field(
        default=None,
        description="Device profile: a name (`edgeagent devices ls`, e.g. pi4) or a profile YAML "
        "file. Checked when the config is loaded from a file.",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Device tags: room, kind…")
    skills: list[SkillSource] = Field(min_length=1, description="Where the skills come from.")
    max_payload: int = Field(
        default=DEFAULT_MAX_PAYLOAD, ge=64, description="Largest request payload accepted, bytes."
    )
    health_interval_s: float = Field(default=10.0, gt=0, description="Health period, seconds.")
    grace_s: float = Field(
        default=5.0, ge=0, description="On SIGTERM, how long in-flight calls may finish, seconds."
    )
    workers: int = Field(default=4, ge=1, le=64, description="Threads for synchronous skills.")
    release: str | None = Field(
        default=None,
        description="Release (bundle) version, announced in the manifest; set by `agent run` from "
        "EDGEAGENT_RELEASE, which a deployed device's service sets.",
    )
    system_skills: bool = Field(
        default=True,
        description="On a deployed device, serve the system skills (system.info, system.update, "
        "system.rollback, system.restart: docs/rollouts.md).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve Prometheus metrics on http://metrics_host:PORT/metrics (0: a free "
        "port); off when absent (docs/metrics.md).",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics server listens on (0.0.0.0: every interface).",
    )
    data: DataConfig | None = Field(
        default=None,
        description="Keep model skills' hard cases and serve them (data.cases…); off when "
        "absent (docs/data-loop.md).",
    )
    base_dir: Path | None = Field(
        default=None, exclude=True, description="Set by the loader: the config file's folder."
    )
    source_file: Path | None = Field(
        default=None, exclude=True, description="Set by the loader: the config file."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        return check_name(v, "device id")

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        return check_name(v, "fleet name")

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str | None, info: ValidationInfo) -> str | None:
        """A profile must exist (checked when loading a file: ``context["base_dir"]``). A
        relative file path may be relative to the config's folder; it is then made absolute."""
        base = (info.context or {}).get("base_dir")
        if v is None or base is None:
            return v
        from .devices import find_profile

        try:
            find_profile(v)
        except ConfigError as exc:
            beside = Path(base) / v
            path_like = "/" in v or v.endswith((".yaml", ".yml"))
            if path_like and not Path(v).is_absolute() and beside.is_file():
                return str(beside)
            raise PydanticCustomError("unknown_profile", "{reason}", {"reason": str(exc)}) from exc
        return v

    @model_validator(mode="before")
    @classmethod
    def _broker_string(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("broker"), str):
            data = {**data, "broker": {"url": data["broker"]}}
        return data


def load_config(path: str | Path) -> AgentConfig:
    """Load and validate an agent config; errors name the file, line and field (an unknown
    ``profile`` included, with the known ones)."""
    base = Path(path).resolve().parent
    cfg = load_yaml_model(path, AgentConfig, context={"base_dir": base})
    return cfg.model_copy(update={"base_dir": base, "source_file": Path(path)})


def _where(cfg: AgentConfig, source: str, index: int) -> str:
    """``file:line`` of ``skills[index]`` when the config came from a file, else ``source``."""
    path = cfg.source_file
    if source != "config" or path is None:
        return source
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return str(path)
    if root is None:
        return str(path)
    return f"{path}:{node_at(root, ('skills', index, 'module')).start_mark.line + 1}"


def _not_found(cfg: AgentConfig, module: str, missing: str) -> str:
    """Why ``module`` cannot be imported (``missing`` is not found): every folder searched, in
    order, and how to fix it."""
    top = missing.split(".")[0]
    env = [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e]
    searched = []
    for entry in sys.path:
        folder = Path(entry or ".").resolve()
        if cfg.base_dir is not None and folder == cfg.base_dir:
            searched.append(f"{entry} (the config's folder)")
        elif any(folder == Path(e).resolve() for e in env):
            searched.append(f"{entry} (PYTHONPATH)")
        else:
            searched.append(entry or ". (the current folder)")
    lines = [
        f"cannot import {module!r}: no module named {missing!r}. Searched, in order:",
        *(f"    {s}" for s in searched),
    ]
    here = f"next to the config ({cfg.base_dir})" if cfg.base_dir else "in one of these folders"
    fix = f"  Fix: put {top}/ (a package) or {top}.py {here}, or add the folder that holds it to "
    fix += "PYTHONPATH"
    holder = _found_elsewhere(top)
    if holder is not None:
        fix += f" (it is in {holder}: PYTHONPATH={holder})"
    return "\n".join([*lines, fix + "."])


def _found_elsewhere(top: str) -> Path | None:
    """The example folder (./examples/*/ or the checkout's) holding a package or module ``top``."""
    roots = [Path.cwd() / "examples", Path(__file__).resolve().parent.parent / "examples"]
    for root in roots:
        if not root.is_dir():
            continue
        for example in sorted(root.iterdir()):
            for candidate in (example / top / "__init__.py", example / f"{top}.py"):
                if candidate.is_file():
                    return example
    return None


def _takes(cls: type, name: str) -> bool:
    try:
        return name in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def load_skills(
    cfg: AgentConfig, source: str = "config"
) -> tuple[list[Skill], list[SkillSet], dict[str, str]]:
    """Import every skill source. Returns (skills, SkillSet instances, declared events)."""
    if cfg.base_dir is not None and str(cfg.base_dir) not in sys.path:
        sys.path.insert(0, str(cfg.base_dir))
    skills: list[Skill] = []
    sets: list[SkillSet] = []
    events: dict[str, str] = {}
    for i, src in enumerate(cfg.skills):
        where = f"{_where(cfg, source, i)}: skills.{i}.module"
        mod_name, _, attr = src.module.partition(":")
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and (mod_name + ".").startswith(exc.name + "."):
                raise ConfigError(f"{where}: {_not_found(cfg, mod_name, exc.name)}") from exc
            raise ConfigError(f"{where}: cannot import {mod_name!r}: {exc}") from exc
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {mod_name!r}: {exc}") from exc
        except Exception as exc:  # the module's own code failed while it was imported
            raise ConfigError(
                f"{where}: importing {mod_name!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
        target: object = module
        if attr:
            cls = getattr(module, attr, None)
            if not (inspect.isclass(cls) and issubclass(cls, SkillSet)):
                raise ConfigError(f"{where}: {src.module!r} is not a SkillSet class")
            options = dict(src.options)
            if cfg.profile and "profile" not in options and _takes(cls, "profile"):
                options["profile"] = cfg.profile  # a model skill set picks its device's variant
            try:
                target = cls(**options)
            except TypeError as exc:
                raise ConfigError(f"skills.{i}.options: {exc}") from exc
            sets.append(target)
        elif src.options:
            raise ConfigError(f"skills.{i}.options: only a SkillSet class takes options")
        try:
            found = collect_skills(target)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if not found:
            raise ConfigError(f"{where}: {src.module!r} defines no @skill functions")
        dupes = sorted({s.name for s in found} & {s.name for s in skills})
        if dupes:
            raise ConfigError(
                f"{where}: skill names defined twice (also by an earlier entry): {', '.join(dupes)}"
            )
        skills.extend(found)
        events.update(declared_events(target))
    from .data_skills import attach_data  # the data.* skills, when cfg.data asks for them

    skills, sets = attach_data(cfg, skills, sets)
    return skills, sets, events
