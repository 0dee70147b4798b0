"""The skills SDK: turn a typed Python function into a skill other devices can call over MQTT.

::

    from pydantic import BaseModel, Field
    from edgeagent import skill, SkillContext

    class Level(BaseModel):
        level: int = Field(ge=0, le=100, description="Brightness, percent.")

    @skill(side_effect="actuate", idempotent=True, description="Set the lamp's brightness.")
    async def set_brightness(req: Level, ctx: SkillContext) -> Level:
        ...

Input: a single pydantic-model parameter is the request body; otherwise the parameters
themselves (with type hints and defaults) become an input model that forbids extra fields.
Output: whatever the return annotation says, validated and serialized by pydantic. A parameter
annotated :class:`SkillContext` receives the call context (emit events, trace id, deadline).

Async skills run on the event loop; plain functions run in the agent's worker threads, so they
never block it. Skills that need per-device state live on a :class:`SkillSet` subclass: one
instance per agent, so a simulator can host many devices in one process.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, TypeVar, get_type_hints, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from .protocol import SideEffect, SkillSpec, check_name

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__edgeagent_skill__"


class Emitter(Protocol):
    def __call__(self, name: str, data: dict[str, Any] | BaseModel | None = None) -> None: ...


@dataclass(slots=True)
class SkillContext:
    """What a running skill knows about its call and can do."""

    device: str
    skill: str
    trace: str | None
    deadline: float | None
    """Monotonic time (the agent clock's) after which nobody waits for the answer."""
    emit: Emitter
    """``ctx.emit("ring", {"who": "person"})`` publishes on ``…/event/ring``."""
    log: logging.Logger


@dataclass(frozen=True, slots=True)
class SkillOptions:
    name: str | None
    description: str | None
    side_effect: SideEffect
    idempotent: bool
    tags: dict[str, str]
    max_concurrency: int
    max_queue: int
    timeout_s: float
    model: str | None
    model_version: str | None
    ha: dict[str, Any] | None


@overload
def skill(func: F, /) -> F: ...


@overload
def skill(
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    idempotent: bool | None = None,
    tags: dict[str, str] | None = None,
    max_concurrency: int = 4,
    max_queue: int = 64,
    timeout_s: float = 10.0,
    model: str | None = None,
    model_version: str | None = None,
    ha: dict[str, Any] | None = None,
) -> Callable[[F], F]: ...


def skill(
    func: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    side_effect: SideEffect = "read",
    idempotent: bool | None = None,
    tags: dict[str, str] | None = None,
    max_concurrency: int = 4,
    max_queue: int = 64,
    timeout_s: float = 10.0,
    model: str | None = None,
    model_version: str | None = None,
    ha: dict[str, Any] | None = None,
) -> Any:
    """Mark a function (or a :class:`SkillSet` method) as a skill.

    ``side_effect`` is ``read`` (default) or ``actuate``; ``idempotent`` defaults to True for
    ``read`` skills and False for ``actuate`` ones (the coordinator never retries a
    non-idempotent actuation). ``max_concurrency`` calls run at once and up to ``max_queue``
    wait; past that callers get ``busy`` at once. ``timeout_s`` bounds one run. ``ha`` is a hint
    for the Home Assistant bridge when the mapping cannot be inferred from the schemas, for
    example ``ha={"component": "switch"}`` (docs/bridges.md); it travels in the manifest.
    """
    if max_concurrency < 1 or max_queue < 0 or timeout_s <= 0:
        raise ValueError("max_concurrency >= 1, max_queue >= 0 and timeout_s > 0 are required")
    opts = SkillOptions(
        name=check_name(name, "skill name") if name else None,
        description=description,
        side_effect=side_effect,
        idempotent=(side_effect == "read") if idempotent is None else idempotent,
        tags=dict(tags or {}),
        max_concurrency=max_concurrency,
        max_queue=max_queue,
        timeout_s=timeout_s,
        model=model,
        model_version=model_version,
        ha=dict(ha) if ha else None,
    )

    def mark(f: F) -> F:
        setattr(f, _MARK, opts)
        return f

    return mark(func) if func is not None else mark


class _Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass(slots=True)
class Skill:
    """A skill ready to serve: bound function, input/output adapters and its announcement."""

    name: str
    func: Callable[..., Any]
    options: SkillOptions
    input_model: type[BaseModel]
    output_adapter: TypeAdapter[Any]
    is_async: bool
    spread_input: bool
    input_param: str
    ctx_param: str | None
    description: str
    spec: SkillSpec = field(init=False)

    def __post_init__(self) -> None:
        o = self.options
        self.spec = SkillSpec(
            name=self.name,
            description=self.description,
            tags=o.tags,
            side_effect=o.side_effect,
            idempotent=o.idempotent,
            input_schema=self.input_model.model_json_schema(),
            output_schema=self.output_adapter.json_schema(),
            max_concurrency=o.max_concurrency,
            max_queue=o.max_queue,
            timeout_s=o.timeout_s,
            model=o.model,
            model_version=o.model_version,
            binary_input=_bytes_field(self.input_model),
            ha=o.ha,
        )

    @property
    def binary_field(self) -> str | None:
        return self.spec.binary_input

    def validate_binary_input(self, payload: bytes, other_json: str | None) -> BaseModel:
        """Validate a binary request: ``payload`` fills the bytes field, the rest is JSON.

        Raises ``ValueError`` if the skill has no bytes field, ``ValidationError`` otherwise.
        """
        field_name = self.binary_field
        if field_name is None:
            raise ValueError(f"skill {self.name!r} takes no binary input; send JSON")
        others: Any = json.loads(other_json) if other_json else {}
        if not isinstance(others, dict):
            raise ValueError("the 'input' user property must hold a JSON object")
        others[field_name] = payload
        return self.input_model.model_validate(others)

    def validate_input(self, payload: bytes) -> BaseModel:
        """Parse a request payload; raises ``pydantic.ValidationError``. Empty means ``{}``."""
        return self.input_model.model_validate_json(payload or b"{}")

    def invoke(self, value: BaseModel, ctx: SkillContext) -> Any:
        """Call the function: returns a coroutine for async skills, the result otherwise."""
        kwargs: dict[str, Any] = (
            {k: getattr(value, k) for k in type(value).model_fields}
            if self.spread_input
            else {self.input_param: value}
        )
        if self.ctx_param is not None:
            kwargs[self.ctx_param] = ctx
        return self.func(**kwargs)

    def dump_output(self, result: Any) -> bytes:
        """Serialize a result as the declared output type.

        The value is validated first (cheap for a model instance, which is not re-validated), so
        a dict is accepted for a model and a skill that returns the wrong thing, ``None``
        included, raises ``ValidationError`` instead of answering ``ok`` with it.
        """
        adapter = self.output_adapter
        return adapter.dump_json(adapter.validate_python(result))


_BUILT: dict[Callable[..., Any], Skill] = {}
"""Skills built from a decorated function with its own options, by function: another instance
of the same SkillSet (a simulated fleet has thousands) gets a copy bound to it, sharing the
models and schemas instead of building them again."""


def build_skill(func: Callable[..., Any], options: SkillOptions | None = None) -> Skill:
    """Build a :class:`Skill` from a decorated (or plain) function or bound method."""
    opts: SkillOptions | None = options or getattr(func, _MARK, None)
    if opts is None:
        opts = SkillOptions(None, None, "read", True, {}, 4, 64, 10.0, None, None, None)
    raw = getattr(func, "__func__", func)
    cacheable = options is None and opts is getattr(raw, _MARK, None)
    if cacheable and (built := _BUILT.get(raw)) is not None:
        clone = copy.copy(built)
        clone.func = func
        return clone
    skill = _build(func, raw, opts)
    if cacheable:
        _BUILT[raw] = skill
    return skill


def _build(func: Callable[..., Any], raw: Any, opts: SkillOptions) -> Skill:
    name = opts.name or raw.__name__
    check_name(name, f"skill name (from function {raw.__qualname__})")
    try:
        hints = get_type_hints(raw, include_extras=True)
    except NameError as exc:
        raise TypeError(f"skill {name}: cannot resolve type hints: {exc}") from exc
    sig = inspect.signature(func)
    ctx_param: str | None = None
    params: list[inspect.Parameter] = []
    for p in sig.parameters.values():
        hint = hints.get(p.name)
        if hint is SkillContext:
            ctx_param = p.name
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"skill {name}: *args/**kwargs are not supported")
        if hint is None:
            raise TypeError(f"skill {name}: parameter {p.name!r} needs a type hint")
        params.append(p)
    spread = True
    input_param = ""
    if (
        len(params) == 1
        and inspect.isclass(hints[params[0].name])
        and issubclass(hints[params[0].name], BaseModel)
    ):
        input_model: type[BaseModel] = hints[params[0].name]
        spread = False
        input_param = params[0].name
        # Remember which keyword receives the model without mutating the user's class.
    else:
        fields: dict[str, Any] = {
            p.name: (hints[p.name], ... if p.default is p.empty else p.default) for p in params
        }
        input_model = create_model(f"{_camel(name)}Input", __base__=_Forbid, **fields)
    if "return" not in hints:
        raise TypeError(f"skill {name}: add a return type hint (use -> None for no output)")
    output_adapter: TypeAdapter[Any] = TypeAdapter(hints["return"])
    doc = inspect.getdoc(raw) or ""
    description = opts.description or (doc.split("\n\n")[0].replace("\n", " ") if doc else "")
    return Skill(
        name=name,
        func=func,
        options=opts,
        input_model=input_model,
        output_adapter=output_adapter,
        is_async=inspect.iscoroutinefunction(raw),
        spread_input=spread,
        input_param=input_param,
        ctx_param=ctx_param,
        description=description,
    )


def _bytes_field(model: type[BaseModel]) -> str | None:
    """The one field typed ``bytes`` (optionally ``bytes | None``), if there is exactly one."""
    found = [
        name
        for name, f in model.model_fields.items()
        if f.annotation is bytes or f.annotation == (bytes | None)
    ]
    return found[0] if len(found) == 1 else None


def _camel(name: str) -> str:
    return "".join(
        part.capitalize() for part in name.replace("-", "_").replace(".", "_").split("_")
    )


class SkillSet:
    """A group of skills sharing per-device state: one instance per agent.

    Subclass it, decorate methods with :func:`skill`, and optionally override :meth:`run`
    for background work (a sensor loop that emits events). Options from the agent config's
    ``skills[].options`` are passed to ``__init__`` as keyword arguments.
    """

    events: ClassVar[dict[str, str]] = {}
    """Events this set may emit: name -> description (announced in the manifest)."""

    async def run(self, device: DeviceHandle) -> None:
        """Background work for the agent's lifetime; cancelled on shutdown. Default: none."""
        return None

    def model_info(self, skill_name: str) -> tuple[str, str] | None:
        """``(model name, version)`` a skill runs, when known only once the set is built.

        Overrides the decorator's ``model``/``model_version``: a set that loads its model from
        an option reports what it actually loaded (manifest and health show it).
        """
        return None


class DeviceHandle(Protocol):
    """What a :class:`SkillSet`'s background task can do with its device."""

    @property
    def device_id(self) -> str: ...

    def emit(self, name: str, data: dict[str, Any] | BaseModel | None = None) -> None: ...


def collect_skills(obj: object) -> list[Skill]:
    """Find every skill on a module, class instance or single function."""
    if callable(obj) and hasattr(obj, _MARK) and not isinstance(obj, type):
        return [build_skill(obj)]
    found: list[Skill] = []
    names = dir(obj)
    for attr in names:
        if attr.startswith("__"):
            continue
        value = getattr(obj, attr)
        if callable(value) and hasattr(value, _MARK) and not isinstance(value, type):
            if inspect.ismodule(obj) and getattr(value, "__module__", None) != obj.__name__:
                continue  # imported from elsewhere, not defined here
            built = build_skill(value)
            info = obj.model_info(built.name) if isinstance(obj, SkillSet) else None
            if info is not None:
                opts = replace(built.options, model=info[0], model_version=info[1])
                built = build_skill(value, opts)
            found.append(built)
    return found


def declared_events(obj: object) -> dict[str, str]:
    events = getattr(obj, "events", None) or getattr(obj, "EVENTS", None) or {}
    return dict(events) if isinstance(events, dict) else {}


AsyncSkillFunc = Callable[..., Awaitable[Any]]
