"""The skills SDK: typed functions become skills with schemas; configs load them or say why not."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import sys
import textwrap
import types
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

from edgeagent import SkillContext, SkillSet, skill
from edgeagent.config import AgentConfig, load_config, load_skills
from edgeagent.errors import ConfigError
from edgeagent.skills import Skill, build_skill, collect_skills, declared_events


def ctx_for(name: str = "s", emitted: list[tuple[str, Any]] | None = None) -> SkillContext:
    sink = emitted if emitted is not None else []
    return SkillContext(
        device="dev-1",
        skill=name,
        trace="t-1",
        deadline=None,
        emit=lambda event, data=None: sink.append((event, data)),
        log=logging.getLogger("test"),
    )


def call(s: Skill, payload: bytes, ctx: SkillContext | None = None) -> Any:
    """Validate a raw payload and run the skill, as the agent does (without MQTT)."""
    value = s.validate_input(payload)
    result = s.invoke(value, ctx or ctx_for(s.name))
    if s.is_async:
        assert inspect.iscoroutine(result)
        result = asyncio.run(result)
    return result


def make_module(monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    """Create an importable in-memory module from ``source``; returns its (unique) name."""
    name = f"ea_test_skills_{uuid.uuid4().hex[:8]}"
    module = types.ModuleType(name)
    exec(compile(textwrap.dedent(source), f"<{name}>", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, name, module)
    return name


def config(*sources: dict[str, Any], **extra: Any) -> AgentConfig:
    return AgentConfig(device="dev-1", skills=list(sources), **extra)


# --------------------------------------------------------------------------------------------
# Plain type hints -> an input model


async def add(a: int, b: int = 10) -> dict[str, int]:
    """Add two numbers.

    The second paragraph is not part of the description.
    """
    return {"sum": a + b}


def test_plain_hints_become_an_input_model_that_forbids_extra_fields() -> None:
    s = build_skill(add)
    assert s.name == "add"
    assert s.spread_input is True
    assert s.is_async is True
    assert s.input_model.model_config.get("extra") == "forbid"
    assert set(s.input_model.model_fields) == {"a", "b"}
    assert s.input_model.model_fields["a"].is_required()
    assert s.input_model.model_fields["b"].default == 10

    assert call(s, b'{"a": 1}') == {"sum": 11}
    assert call(s, b'{"a": 1, "b": 2}') == {"sum": 3}
    with pytest.raises(ValidationError) as extra:
        s.validate_input(b'{"a": 1, "c": 3}')
    assert extra.value.errors()[0]["type"] == "extra_forbidden"
    assert extra.value.errors()[0]["loc"] == ("c",)
    with pytest.raises(ValidationError) as missing:
        s.validate_input(b"")  # empty means {}
    assert missing.value.errors()[0]["type"] == "missing"
    assert missing.value.errors()[0]["loc"] == ("a",)
    with pytest.raises(ValidationError):
        s.validate_input(b'{"a": "one"}')


def test_plain_hints_give_json_schemas_for_input_and_output() -> None:
    spec = build_skill(add).spec
    assert spec.input_schema == {
        "title": "AddInput",
        "type": "object",
        "properties": {
            "a": {"title": "A", "type": "integer"},
            "b": {"title": "B", "type": "integer", "default": 10},
        },
        "required": ["a"],
        "additionalProperties": False,
    }
    assert spec.output_schema == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert spec.description == "Add two numbers."
    assert (spec.max_concurrency, spec.max_queue, spec.timeout_s) == (4, 64, 10.0)


def test_skill_without_parameters_takes_an_empty_object() -> None:
    @skill
    def ping() -> str:
        return "pong"

    s = build_skill(ping)
    assert s.is_async is False
    assert s.spec.input_schema["properties"] == {}
    assert s.spec.input_schema["additionalProperties"] is False
    assert s.spec.output_schema == {"type": "string"}
    assert call(s, b"") == "pong"
    assert call(s, b"{}") == "pong"
    with pytest.raises(ValidationError):
        s.validate_input(b'{"x": 1}')
    with pytest.raises(ValidationError):
        s.validate_input(b"[]")


class Point(BaseModel):
    x: int
    y: int


def test_output_is_validated_and_serialized_by_the_return_type() -> None:
    async def where() -> Point:
        return Point(x=1, y=2)

    s = build_skill(where)
    assert s.spec.output_schema["properties"] == {
        "x": {"title": "X", "type": "integer"},
        "y": {"title": "Y", "type": "integer"},
    }
    assert s.dump_output(Point(x=1, y=2)) == b'{"x":1,"y":2}'
    assert s.dump_output({"x": 3, "y": "4"}) == b'{"x":3,"y":4}'  # validated, then dumped
    with pytest.raises(ValidationError):
        s.dump_output({"x": "no"})
    with pytest.raises(ValidationError):
        s.dump_output("not a point")


def test_output_of_the_wrong_type_is_an_error_not_a_warning() -> None:
    async def count() -> int:
        return 0

    s = build_skill(count)
    assert s.dump_output(7) == b"7"
    assert s.dump_output("7") == b"7"  # lax validation, as for inputs
    with pytest.raises(ValidationError):
        s.dump_output("seven")


@pytest.mark.parametrize(
    ("annotation", "bad"),
    [(int, None), (str, None), (Point, None), (list[int], None), (list[int], [1, None])],
    ids=["int", "str", "model", "list", "list-item"],
)
def test_none_where_the_output_type_has_no_none_is_an_error(annotation: Any, bad: Any) -> None:
    """A skill that forgets its ``return`` must not answer ``ok`` with ``null``."""

    def forgot() -> None:
        return None

    forgot.__annotations__ = {"return": annotation}
    s = build_skill(forgot)
    assert "null" not in json.dumps(s.spec.output_schema)
    with pytest.raises(ValidationError):
        s.dump_output(bad)


# --------------------------------------------------------------------------------------------
# A single pydantic model parameter


class Level(BaseModel):
    level: int = Field(ge=0, le=100, description="Brightness, percent.")


async def set_level(req: Level) -> Level:
    return Level(level=100 - req.level)


def test_single_model_parameter_is_used_as_is() -> None:
    s = build_skill(set_level)
    assert s.input_model is Level
    assert s.spread_input is False
    assert s.input_param == "req"
    assert s.spec.input_schema == Level.model_json_schema()
    assert s.spec.input_schema["properties"]["level"]["maximum"] == 100
    assert s.spec.output_schema == Level.model_json_schema()
    assert call(s, b'{"level": 30}') == Level(level=70)
    with pytest.raises(ValidationError):
        s.validate_input(b'{"level": 101}')


def test_two_parameters_one_a_model_are_spread() -> None:
    async def two(req: Level, factor: int) -> int:
        return req.level * factor

    s = build_skill(two)
    assert s.spread_input is True
    assert s.input_model is not Level
    assert set(s.input_model.model_fields) == {"req", "factor"}
    assert call(s, b'{"req": {"level": 3}, "factor": 5}') == 15


# --------------------------------------------------------------------------------------------
# SkillContext injection


def test_skill_context_is_injected_and_kept_out_of_the_schema() -> None:
    seen: list[SkillContext] = []

    @skill(side_effect="actuate")
    async def ring(who: str, context: SkillContext) -> str:
        seen.append(context)
        context.emit("ring", {"who": who})
        return f"rang for {who}"

    s = build_skill(ring)
    assert s.ctx_param == "context"
    assert set(s.input_model.model_fields) == {"who"}
    assert set(s.spec.input_schema["properties"]) == {"who"}
    emitted: list[tuple[str, Any]] = []
    ctx = ctx_for("ring", emitted)
    assert call(s, b'{"who": "ann"}', ctx) == "rang for ann"
    assert seen == [ctx]
    assert emitted == [("ring", {"who": "ann"})]
    with pytest.raises(ValidationError):
        s.validate_input(b'{"who": "ann", "context": {}}')


def test_context_with_a_model_parameter_keeps_the_model_as_is() -> None:
    async def dim(req: Level, ctx: SkillContext) -> int:
        return req.level if ctx.device == "dev-1" else -1

    s = build_skill(dim)
    assert s.input_model is Level
    assert s.ctx_param == "ctx"
    assert call(s, b'{"level": 7}') == 7


def test_context_only_skill_has_no_input_fields() -> None:
    def who(ctx: SkillContext) -> str:
        return ctx.device

    s = build_skill(who)
    assert s.input_model.model_fields == {}
    assert call(s, b"") == "dev-1"


# --------------------------------------------------------------------------------------------
# Missing or unsupported type hints


def test_parameter_without_type_hint_is_a_helpful_type_error() -> None:
    async def untyped(a, b: int) -> int:  # type: ignore[no-untyped-def]
        return 0

    with pytest.raises(TypeError, match=r"skill untyped: parameter 'a' needs a type hint"):
        build_skill(untyped)


def test_missing_return_hint_is_a_helpful_type_error() -> None:
    async def no_return(a: int):  # type: ignore[no-untyped-def]
        return a

    with pytest.raises(TypeError, match=r"skill no_return: add a return type hint"):
        build_skill(no_return)


def test_var_args_are_rejected() -> None:
    def star(*args: int) -> int:
        return 0

    def kw(**kwargs: int) -> int:
        return 0

    with pytest.raises(TypeError, match=r"skill star: \*args/\*\*kwargs are not supported"):
        build_skill(star)
    with pytest.raises(TypeError, match=r"skill kw: \*args/\*\*kwargs are not supported"):
        build_skill(kw)


def test_unresolvable_type_hint_is_a_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    name = make_module(
        monkeypatch,
        """
        from __future__ import annotations

        async def broken(a: DoesNotExist) -> int:
            return 0
        """,
    )
    with pytest.raises(TypeError, match=r"skill broken: cannot resolve type hints.*DoesNotExist"):
        build_skill(sys.modules[name].broken)


# --------------------------------------------------------------------------------------------
# Options


def test_idempotent_defaults_follow_the_side_effect() -> None:
    @skill
    async def bare() -> None:
        return None

    @skill(side_effect="read")
    async def read() -> None:
        return None

    @skill(side_effect="actuate")
    async def act() -> None:
        return None

    @skill(side_effect="actuate", idempotent=True)
    async def act_idem() -> None:
        return None

    @skill(side_effect="read", idempotent=False)
    async def read_not_idem() -> None:
        return None

    def undecorated() -> None:
        return None

    got = {
        s.name: (s.spec.side_effect, s.spec.idempotent)
        for s in map(build_skill, [bare, read, act, act_idem, read_not_idem, undecorated])
    }
    assert got == {
        "bare": ("read", True),
        "read": ("read", True),
        "act": ("actuate", False),
        "act_idem": ("actuate", True),
        "read_not_idem": ("read", False),
        "undecorated": ("read", True),
    }


def test_decorator_options_reach_the_spec() -> None:
    @skill(
        name="renamed.skill-1",
        description="Explicit description.",
        tags={"kind": "test"},
        max_concurrency=2,
        max_queue=0,
        timeout_s=0.5,
        model="kws",
        model_version="3",
        ha={"component": "sensor", "unit_of_measurement": "W"},
    )
    def original() -> int:
        """Docstring loses to the explicit description."""
        return 1

    s = build_skill(original)
    assert s.name == "renamed.skill-1"
    assert s.spec.model_dump() == {
        "name": "renamed.skill-1",
        "description": "Explicit description.",
        "tags": {"kind": "test"},
        "side_effect": "read",
        "idempotent": True,
        "input_schema": s.input_model.model_json_schema(),
        "output_schema": {"type": "integer"},
        "max_concurrency": 2,
        "max_queue": 0,
        "timeout_s": 0.5,
        "model": "kws",
        "model_version": "3",
        "binary_input": None,
        "ha": {"component": "sensor", "unit_of_measurement": "W"},
    }
    assert s.input_model.__name__ == "RenamedSkill1Input"


@pytest.mark.parametrize(
    "kwargs",
    [{"max_concurrency": 0}, {"max_queue": -1}, {"timeout_s": 0}, {"timeout_s": -1.0}],
)
def test_invalid_options_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_concurrency >= 1"):
        skill(**kwargs)


@pytest.mark.parametrize("bad", ["a/b", "x+", "#", "has space"])
def test_invalid_skill_names_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid skill name"):
        skill(name=bad)


# --------------------------------------------------------------------------------------------
# SkillSet: bound methods, one instance per device


class Counter(SkillSet):
    events = {"counted": "The count changed."}  # noqa: RUF012 - as users write it

    def __init__(self, start: int = 0) -> None:
        self.count = start

    @skill(side_effect="actuate")
    async def increment(self, by: int = 1) -> int:
        """Add to the counter."""
        self.count += by
        return self.count

    @skill
    def read(self) -> int:
        return self.count

    def helper(self) -> int:  # not a skill
        return 0


def test_skillset_collects_bound_methods_with_per_instance_state() -> None:
    one, two = Counter(), Counter(start=100)
    skills_one = {s.name: s for s in collect_skills(one)}
    skills_two = {s.name: s for s in collect_skills(two)}
    assert set(skills_one) == {"increment", "read"}
    assert skills_one["increment"].func.__self__ is one  # type: ignore[attr-defined]
    assert skills_two["increment"].func.__self__ is two  # type: ignore[attr-defined]
    assert "self" not in skills_one["increment"].spec.input_schema["properties"]
    assert skills_one["increment"].spec.side_effect == "actuate"
    assert skills_one["increment"].spec.idempotent is False
    assert skills_one["increment"].spec.description == "Add to the counter."

    assert call(skills_one["increment"], b'{"by": 5}') == 5
    assert call(skills_one["increment"], b"") == 6
    assert call(skills_two["increment"], b"") == 101
    assert call(skills_one["read"], b"") == 6
    assert skills_one["read"].is_async is False
    assert declared_events(one) == {"counted": "The count changed."}


def test_example_lamp_skillset() -> None:
    from smarthome.lamp import Lamp, LampState

    lamp = Lamp(brightness=40)
    skills = {s.name: s for s in collect_skills(lamp)}
    assert set(skills) == {"turn_on", "turn_off", "set_brightness", "toggle", "get_state"}
    assert skills["set_brightness"].input_model.__name__ == "Brightness"
    assert skills["toggle"].spec.idempotent is False
    assert skills["set_brightness"].spec.idempotent is True
    emitted: list[tuple[str, Any]] = []
    assert call(skills["turn_on"], b"", ctx_for("turn_on", emitted)) == LampState(
        on=True, brightness=40
    )
    assert emitted == [("changed", LampState(on=True, brightness=40))]


def test_collect_skills_on_a_module_skips_imported_skills(monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_module(
        monkeypatch,
        """
        from edgeagent import skill

        @skill
        async def mine() -> int:
            return 1
        """,
    )
    second = make_module(
        monkeypatch,
        f"""
        from edgeagent import skill
        from {first} import mine

        @skill
        async def own() -> int:
            return 2

        async def not_a_skill() -> int:
            return 3
        """,
    )
    assert [s.name for s in collect_skills(sys.modules[first])] == ["mine"]
    assert [s.name for s in collect_skills(sys.modules[second])] == ["own"]


# --------------------------------------------------------------------------------------------
# load_skills / AgentConfig errors


def test_load_skills_from_module_and_skillset() -> None:
    cfg = config(
        {"module": "smarthome.echo"},
        {"module": "smarthome.lamp:Lamp", "options": {"brightness": 33}},
    )
    skills, sets, events = load_skills(cfg)
    assert skills[0].name == "echo"
    assert {s.name for s in skills} == {
        "echo",
        "slow_echo",
        "turn_on",
        "turn_off",
        "set_brightness",
        "toggle",
        "get_state",
    }
    from smarthome.lamp import Lamp

    assert len(sets) == 1
    assert isinstance(sets[0], Lamp)
    assert sets[0].state.brightness == 33
    assert events == {"changed": "The lamp's state changed (LampState)."}


def test_unknown_module_is_a_config_error_naming_the_field() -> None:
    cfg = config({"module": "smarthome.echo"}, {"module": "no_such_module_xyz"})
    with pytest.raises(ConfigError, match=r"skills\.1\.module: cannot import 'no_such_module_xyz'"):
        load_skills(cfg)


def test_module_that_raises_on_import_is_a_config_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "raises_on_import_xyz.py").write_text("raise RuntimeError('broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = config({"module": "smarthome.echo"}, {"module": "raises_on_import_xyz"})
    with pytest.raises(ConfigError, match=r"skills\.1\.module: importing 'raises_on_import_xyz' "
                       r"failed: RuntimeError: broken on purpose"):  # fmt: skip
        load_skills(cfg)


def test_unknown_class_is_a_config_error_naming_the_field() -> None:
    for target in ("smarthome.lamp:Nope", "smarthome.lamp:LampState"):
        with pytest.raises(ConfigError, match=r"skills\.0\.module: .* is not a SkillSet class"):
            load_skills(config({"module": target}))


def test_module_without_skills_is_a_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = make_module(monkeypatch, "def plain() -> int:\n    return 1\n")
    with pytest.raises(ConfigError, match=rf"skills\.0\.module: '{empty}' defines no @skill"):
        load_skills(config({"module": empty}))
    with pytest.raises(ConfigError, match=r"skills\.0\.module: 'smarthome' defines no @skill"):
        load_skills(config({"module": "smarthome"}))


def test_duplicate_skill_names_are_a_config_error_naming_the_field() -> None:
    cfg = config({"module": "smarthome.lamp:Lamp"}, {"module": "smarthome.lamp:Lamp"})
    with pytest.raises(ConfigError) as err:
        load_skills(cfg)
    message = str(err.value)
    assert "defined twice" in message
    assert "get_state" in message
    assert "turn_on" in message
    # Which entry of the `skills` list brings the clash (as every other skills error says).
    assert "skills.1" in message, message


def test_options_errors_name_the_options_field() -> None:
    with pytest.raises(ConfigError, match=r"skills\.0\.options: only a SkillSet class takes"):
        load_skills(config({"module": "smarthome.echo", "options": {"x": 1}}))
    with pytest.raises(ConfigError, match=r"skills\.0\.options: .*unexpected keyword.*wattage"):
        load_skills(config({"module": "smarthome.lamp:Lamp", "options": {"wattage": 9}}))


def test_badly_typed_skill_is_a_config_error_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = make_module(
        monkeypatch,
        """
        from edgeagent import skill

        @skill
        async def untyped(x) -> int:
            return 0
        """,
    )
    with pytest.raises(ConfigError, match=r"skills\.0\.module: skill untyped: parameter 'x'"):
        load_skills(config({"module": name}))


def test_skill_name_that_is_not_a_topic_level_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Python identifier need not be a valid skill name (non-ASCII letters)."""
    name = make_module(
        monkeypatch,
        """
        from edgeagent import skill

        @skill
        async def température() -> float:
            return 20.5
        """,
    )
    with pytest.raises(ConfigError, match=r"skills\.0\.module: .*température"):
        load_skills(config({"module": name}))


def test_modules_next_to_the_config_file_are_importable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_skills prepends base_dir
    module = f"ea_local_{uuid.uuid4().hex[:8]}"
    monkeypatch.delitem(sys.modules, module, raising=False)
    (tmp_path / f"{module}.py").write_text(
        "from edgeagent import skill\n\n\n@skill\nasync def hello(name: str) -> str:\n"
        "    return 'hi ' + name\n"
    )
    cfg_file = tmp_path / "agent.yaml"
    cfg_file.write_text(f"device: d1\nskills:\n  - module: {module}\n")
    cfg = load_config(cfg_file)
    assert cfg.base_dir == tmp_path.resolve()
    try:
        skills, _, _ = load_skills(cfg)
        assert [s.name for s in skills] == ["hello"]
        assert call(skills[0], b'{"name": "bo"}') == "hi bo"
    finally:
        sys.modules.pop(module, None)


def test_agent_config_validates_fields() -> None:
    with pytest.raises(ValidationError, match="skills"):
        AgentConfig(device="d", skills=[])
    with pytest.raises(ValidationError, match="invalid device id"):
        AgentConfig(device="a/b", skills=[{"module": "m"}])
    with pytest.raises(ValidationError, match="invalid fleet name"):
        AgentConfig(device="d", fleet="f+", skills=[{"module": "m"}])
    with pytest.raises(ValidationError, match="max_payload"):
        AgentConfig(device="d", skills=[{"module": "m"}], max_payload=10)
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        AgentConfig(device="d", skills=[{"module": "m", "modul": "x"}])
    cfg = AgentConfig(device="d", skills=[{"module": "m"}], broker="mqtt://h:1234")
    assert (cfg.broker.host, cfg.broker.port) == ("h", 1234)


# --------------------------------------------------------------------------------------------
# load_config: errors name the file, the line and the field


def write(tmp_path: Path, text: str, name: str = "lamp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_load_config_reads_a_valid_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        device: lamp-1
        fleet: home
        broker: mqtt://10.0.0.2:1884
        tags: {room: hall}
        health_interval_s: 2.5
        skills:
          - module: smarthome.lamp:Lamp
            options: {brightness: 10}
        """,
    )
    cfg = load_config(path)
    assert cfg.device == "lamp-1"
    assert cfg.fleet == "home"
    assert (cfg.broker.host, cfg.broker.port) == ("10.0.0.2", 1884)
    assert cfg.tags == {"room": "hall"}
    assert cfg.health_interval_s == 2.5
    assert cfg.skills[0].module == "smarthome.lamp:Lamp"
    assert cfg.skills[0].options == {"brightness": 10}
    assert cfg.base_dir == tmp_path.resolve()


def test_typo_in_a_top_level_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        device: lamp-1
        fleet: home
        helth_interval_s: 3
        skills:
          - module: smarthome.lamp:Lamp
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (
        f"{path}:3: helth_interval_s: unknown field (check the spelling; see --help or the docs "
        "for valid fields)"
    )


def test_typo_in_a_nested_field_names_its_line_and_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        device: lamp-1
        skills:
          - module: smarthome.echo
          - module: smarthome.lamp:Lamp
            optoins:
              brightness: 5
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:5: skills.1.optoins: unknown field" in str(err.value)


def test_typo_of_a_mapping_field_points_at_the_key_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        device: lamp-1
        brokr:
          url: mqtt://127.0.0.1:1884
        skills:
          - module: smarthome.echo
        """,
    )
    with pytest.raises(ConfigError, match=rf"^{path}:2: brokr: unknown field"):
        load_config(path)


def test_invalid_value_and_missing_field_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        device: lamp/1
        workers: 0
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert f"{path}:1: device: Value error, invalid device id 'lamp/1'" in lines[0]
    assert any(line.startswith(f"{path}:2: workers:") and "1" in line for line in lines)
    assert any(line.startswith(f"{path}") and "skills: Field required" in line for line in lines)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "device: x\nskills: [\n  - module: a\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, got list"):
        load_config(write(tmp_path, "- a\n- b\n"))
