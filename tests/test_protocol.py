"""The wire protocol: every message type round-trips, topics build and parse, names are checked,
error codes map to exception classes both ways, and MQTT topic filters match as the spec says."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import types
import typing
import warnings
from typing import Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from edgeagent import errors, protocol
from edgeagent.errors import CallError, CallTimeout, error_class
from edgeagent.protocol import (
    ERROR_CODES,
    MESSAGE_ADAPTER,
    ErrorCode,
    ErrorReply,
    Message,
    Ok,
    Topics,
    check_name,
    decode,
    decode_reply,
    encode,
)
from edgeagent.transport.base import strip_share, topic_matches, validate_filter

# On a failure, hypothesis's pytest plugin imports libcst (to suggest an explicit-example patch),
# and libcst's import emits a DeprecationWarning (mypy_extensions.TypedDict) that `-W error` turns
# into an INTERNALERROR hiding the real failure. Import it here once, quietly.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    importlib.import_module("libcst")  # optional: by name, so mypy needs no stubs for it

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------------------------
# Discovering the message types from the Message union itself


def message_classes() -> list[type[BaseModel]]:
    """Every member of ``Message`` (``Annotated[A | B | …, Field(discriminator=…)]``)."""
    alias: object = Message  # the runtime Annotated[...] object, not the union mypy sees
    assert get_origin(alias) is typing.Annotated
    union = get_args(alias)[0]
    assert get_origin(union) in (Union, types.UnionType)
    members = list(get_args(union))
    assert all(inspect.isclass(m) and issubclass(m, BaseModel) for m in members)
    return members


MESSAGE_CLASSES = message_classes()


def _tag(cls: type[BaseModel]) -> str:
    (tag,) = get_args(cls.model_fields["type"].annotation)
    return str(tag)


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != len(get_args(annotation)):
            inner = args[0] if len(args) == 1 else Union[tuple(args)]  # noqa: UP007
            return True, inner
    return False, annotation


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def strategy_for(annotation: Any) -> st.SearchStrategy[Any]:
    """A strategy for any field type the protocol uses; unknown types fail loudly."""
    optional, inner = _is_optional(annotation)
    if optional:
        return st.none() | strategy_for(inner)
    origin = get_origin(annotation)
    if annotation is Any:
        return JSON_VALUES
    if origin is Literal:
        return st.sampled_from(get_args(annotation))
    if annotation is str:
        return st.text(max_size=30)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        return st.integers(min_value=-(2**63), max_value=2**63 - 1)
    if annotation is float:
        # NaN and infinities are not JSON: pydantic writes them as null (documented limitation).
        return st.floats(allow_nan=False, allow_infinity=False)
    if origin is dict:
        key, value = get_args(annotation)
        return st.dictionaries(strategy_for(key), strategy_for(value), max_size=3)
    if origin is list:
        (item,) = get_args(annotation)
        return st.lists(strategy_for(item), max_size=3)
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return model_strategy(annotation)
    raise AssertionError(f"no strategy for field type {annotation!r}: extend strategy_for()")


def model_strategy(cls: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    fields = {name: strategy_for(f.annotation) for name, f in cls.model_fields.items()}
    return st.builds(cls, **fields)


def example_for(annotation: Any) -> Any:
    """A fixed, non-trivial value of any protocol field type (no randomness)."""
    optional, inner = _is_optional(annotation)
    if optional:
        return example_for(inner)
    origin = get_origin(annotation)
    if annotation is Any:
        return {"nested": [1, 2.5, "three", None, True], "empty": {}}
    if origin is Literal:
        return get_args(annotation)[-1]
    examples: dict[Any, Any] = {str: "värde/+#", bool: True, int: 42, float: 1.25}
    if annotation in examples:
        return examples[annotation]
    if origin is dict:
        key, value = get_args(annotation)
        return {example_for(key): example_for(value)}
    if origin is list:
        return [example_for(get_args(annotation)[0])]
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return example_instance(annotation)
    raise AssertionError(f"no example for field type {annotation!r}: extend example_for()")


def example_instance(cls: type[BaseModel]) -> BaseModel:
    return cls(**{name: example_for(f.annotation) for name, f in cls.model_fields.items()})


def test_message_union_is_discovered_and_well_formed() -> None:
    tags = [_tag(cls) for cls in MESSAGE_CLASSES]
    # The six message types the protocol documents; a new one only adds to this.
    assert {"state", "manifest", "health", "ok", "error", "event"} <= set(tags)
    assert len(tags) == len(set(tags)), "two message types share a tag"
    for cls in MESSAGE_CLASSES:
        assert cls.model_config.get("frozen") is True, cls


def test_every_tagged_message_model_is_in_the_union() -> None:
    """A model with a ``type`` tag that is left out of ``Message`` could never be decoded."""
    tagged = {
        obj
        for obj in vars(protocol).values()
        if inspect.isclass(obj)
        and issubclass(obj, BaseModel)
        and "type" in obj.model_fields
        and get_origin(obj.model_fields["type"].annotation) is Literal
    }
    assert tagged == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=_tag)
def test_every_message_type_round_trips(cls: type[BaseModel]) -> None:
    message = example_instance(cls)
    wire = encode(message)
    assert isinstance(wire, bytes)
    assert wire.startswith(b"{")
    assert f'"type":"{_tag(cls)}"'.encode() in wire
    back = decode(wire)
    assert type(back) is cls
    assert back == message
    assert decode(wire.decode()) == message  # str payloads too
    # Defaults alone (only required fields) round-trip as well.
    required = {
        name: example_for(f.annotation) for name, f in cls.model_fields.items() if f.is_required()
    }
    minimal = cls(**required)
    assert decode(encode(minimal)) == minimal


@SETTINGS
@given(st.sampled_from(MESSAGE_CLASSES).flatmap(model_strategy))
def test_generated_messages_round_trip(message: BaseModel) -> None:
    back = decode(encode(message))
    assert type(back) is type(message)
    assert back == message
    assert MESSAGE_ADAPTER.dump_json(back, exclude_none=True) == encode(message)


@SETTINGS
@given(model_strategy(Ok) | model_strategy(ErrorReply))
def test_generated_replies_round_trip_through_decode_reply(reply: BaseModel) -> None:
    assert decode_reply(encode(reply)) == reply


def test_encode_leaves_out_none_fields_but_keeps_nulls_inside_data() -> None:
    state = protocol.StateMessage(device="d", status="online")
    assert encode(state) == b'{"type":"state","device":"d","status":"online"}'
    ok = Ok(output={"a": None, "b": [None]})
    assert encode(ok) == b'{"type":"ok","output":{"a":null,"b":[null]}}'
    assert decode(encode(ok)) == ok


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[]",
        b'{"output": 1}',  # no type tag
        b'{"type": "nope"}',  # unknown tag
        b'{"type": "OK", "output": 1}',  # tags are case-sensitive
        b'{"type": "state", "device": "d", "status": "sleeping"}',
        b'{"type": "error", "code": "teapot", "message": "x"}',
    ],
)
def test_decode_rejects_invalid_messages(payload: bytes) -> None:
    with pytest.raises(ValidationError):
        decode(payload)


def test_decode_ignores_unknown_fields() -> None:
    """A newer peer may add fields; an older reader keeps what it knows."""
    assert decode(b'{"type": "ok", "output": 1, "added_later": 2}') == Ok(output=1)
    state = decode(b'{"type":"state","device":"d","status":"offline","v2_field":{"x":1}}')
    assert state == protocol.StateMessage(device="d", status="offline")
    assert b"added_later" not in encode(decode(b'{"type":"ok","added_later":2}'))


def test_decode_reply_rejects_non_reply_messages() -> None:
    wire = encode(protocol.StateMessage(device="d", status="online"))
    assert isinstance(decode(wire), protocol.StateMessage)
    with pytest.raises(ValidationError):
        decode_reply(wire)


def test_messages_are_frozen() -> None:
    ok = Ok(output=1)
    with pytest.raises(ValidationError):
        ok.output = 2  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Topics


def test_topics_build_the_documented_tree() -> None:
    t = Topics(fleet="home")
    assert t.base == "edgeagent/home"
    assert t.device("lamp") == "edgeagent/home/dev/lamp"
    assert t.state("lamp") == "edgeagent/home/dev/lamp/state"
    assert t.manifest("lamp") == "edgeagent/home/dev/lamp/manifest"
    assert t.health("lamp") == "edgeagent/home/dev/lamp/health"
    assert t.call("lamp", "turn_on") == "edgeagent/home/dev/lamp/call/turn_on"
    assert t.event("lamp", "changed") == "edgeagent/home/dev/lamp/event/changed"
    assert t.reply("cli1") == "edgeagent/home/client/cli1/reply"
    assert t.calls_filter("lamp") == "edgeagent/home/dev/lamp/call/+"
    assert t.all_states() == "edgeagent/home/dev/+/state"
    assert t.all_manifests() == "edgeagent/home/dev/+/manifest"
    assert t.all_health() == "edgeagent/home/dev/+/health"
    assert t.all_events() == "edgeagent/home/dev/+/event/+"
    assert t.all_events("ring") == "edgeagent/home/dev/+/event/ring"
    assert Topics() == Topics("edgeagent", "default")
    assert Topics(root="site/a", fleet="f").state("x") == "site/a/f/dev/x/state"


def test_topic_filters_match_the_topics_they_are_for() -> None:
    t = Topics(fleet="home")
    assert topic_matches(t.calls_filter("lamp"), t.call("lamp", "turn_on"))
    assert not topic_matches(t.calls_filter("lamp"), t.call("fan", "turn_on"))
    assert not topic_matches(t.calls_filter("lamp"), t.state("lamp"))
    assert topic_matches(t.all_states(), t.state("fan"))
    assert not topic_matches(t.all_states(), t.manifest("fan"))
    assert topic_matches(t.all_events(), t.event("bell", "ring"))
    assert topic_matches(t.all_events("ring"), t.event("bell", "ring"))
    assert not topic_matches(t.all_events("ring"), t.event("bell", "chime"))
    assert not topic_matches(Topics(fleet="other").all_states(), t.state("fan"))


def test_parse_device_topic() -> None:
    t = Topics(fleet="home")
    assert t.parse_device_topic(t.state("lamp")) == ("lamp", "state", None)
    assert t.parse_device_topic(t.manifest("lamp")) == ("lamp", "manifest", None)
    assert t.parse_device_topic(t.call("lamp", "turn_on")) == ("lamp", "call", "turn_on")
    assert t.parse_device_topic(t.event("bell", "ring")) == ("bell", "event", "ring")
    assert t.parse_device_topic("edgeagent/home/dev/lamp") is None
    assert t.parse_device_topic("edgeagent/home/dev/lamp/call/x/y") is None
    assert t.parse_device_topic(Topics(fleet="homes").state("lamp")) is None
    assert t.parse_device_topic(Topics(fleet="other").state("lamp")) is None
    assert t.parse_device_topic(t.reply("c")) is None


names = st.from_regex(protocol.NAME_PATTERN, fullmatch=True)


@SETTINGS
@given(fleet=names, device=names, leaf=names)
def test_built_topics_parse_back(fleet: str, device: str, leaf: str) -> None:
    t = Topics(fleet=fleet)
    assert t.parse_device_topic(t.state(device)) == (device, "state", None)
    assert t.parse_device_topic(t.call(device, leaf)) == (device, "call", leaf)
    assert t.parse_device_topic(t.event(device, leaf)) == (device, "event", leaf)
    assert topic_matches(t.calls_filter(device), t.call(device, leaf))


@pytest.mark.parametrize(
    ("root", "fleet"),
    [("edgeagent", "a/b"), ("edgeagent", "+"), ("edgeagent", "#"), ("edgeagent", ""),
     ("", "home"), ("a//b", "home"), ("a/+", "home"), ("#", "home")],
)  # fmt: skip
def test_topics_reject_bad_root_or_fleet(root: str, fleet: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Topics(root=root, fleet=fleet)


# --------------------------------------------------------------------------------------------
# Names


@pytest.mark.parametrize(
    "name",
    ["lamp", "lamp-kitchen", "a.b", "_private", "0", "L" * 128, "x_y.z-1"],
)
def test_check_name_accepts_valid_names(name: str) -> None:
    assert check_name(name, "device id") == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a/b",
        "/",
        "+",
        "a+",
        "#",
        "lamp#",
        "has space",
        "-lead",
        ".lead",
        "L" * 129,
        "lamp\n",  # a trailing newline is not a name character either
        "lamp\nx",
        "tab\t",
        "nul\x00",
        "ümlaut",
        "$SYS",
    ],
)
def test_check_name_rejects_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid device id"):
        check_name(name, "device id")


@SETTINGS
@given(st.text(max_size=40))
def test_check_name_accepts_exactly_one_safe_topic_level(value: str) -> None:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
    should_pass = 1 <= len(value) <= 128 and set(value) <= allowed and value[0] not in ".-"
    try:
        check_name(value, "thing")
    except ValueError:
        assert not should_pass, value
    else:
        assert should_pass, value


# --------------------------------------------------------------------------------------------
# Error codes <-> exception classes


def test_error_codes_match_the_error_code_type() -> None:
    assert set(ERROR_CODES) == set(get_args(ErrorCode))
    assert len(ERROR_CODES) == len(set(ERROR_CODES))


@pytest.mark.parametrize("code", ERROR_CODES)
def test_error_classes_map_to_and_from_error_replies(code: ErrorCode) -> None:
    cls = error_class(code)
    assert issubclass(cls, CallError)
    assert cls.code == code
    assert cls.__module__ == errors.__name__

    reply = ErrorReply(code=code, message="it broke", details={"skill": "x", "n": 1})
    exc = CallError.from_reply(reply)
    assert type(exc) is cls
    assert exc.message == "it broke"
    assert exc.details == {"skill": "x", "n": 1}
    assert str(exc) == f"{code}: it broke"
    assert exc.to_reply() == reply

    # Over the wire and back.
    wire = decode_reply(encode(cls("over the wire").to_reply()))
    assert isinstance(wire, ErrorReply)
    assert wire.code == code
    again = CallError.from_reply(wire)
    assert type(again) is cls
    assert again.message == "over the wire"
    assert again.details is None


def test_every_error_class_has_its_own_code() -> None:
    classes = {error_class(code) for code in ERROR_CODES}
    assert len(classes) == len(ERROR_CODES)
    defined = {
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and issubclass(obj, CallError) and obj is not CallError
    }
    assert defined == classes


def test_call_timeout_is_also_a_timeout_error() -> None:
    assert issubclass(CallTimeout, TimeoutError)
    assert isinstance(CallError.from_reply(ErrorReply(code="timeout", message="m")), TimeoutError)


def test_all_call_errors_are_edgeagent_errors() -> None:
    for code in ERROR_CODES:
        assert issubclass(error_class(code), errors.EdgeAgentError)
    assert issubclass(errors.ConfigError, errors.EdgeAgentError)
    assert issubclass(errors.TransportError, errors.EdgeAgentError)


# --------------------------------------------------------------------------------------------
# topic_matches / validate_filter


@pytest.mark.parametrize(
    ("flt", "topic", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),  # an empty level is a level
        ("+/+", "/x", True),
        ("+", "a", True),
        ("+", "a/b", False),
        ("a/+/c", "a/x/c", True),
        ("a/+/c", "a/x/d", False),
        ("#", "a", True),
        ("#", "a/b/c", True),
        ("a/#", "a", True),  # '#' also matches the parent level
        ("a/#", "a/b/c", True),
        ("a/#", "ab", False),
        ("a/b/#", "a", False),
        ("a/+/#", "a/b", True),
        ("#", "$SYS/x", False),  # '$' topics need a literal first level
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("$SYS/+", "$SYS/x", True),
        ("a/b", "a/b/", False),
    ],
)
def test_topic_matches(flt: str, topic: str, expected: bool) -> None:
    assert topic_matches(flt, topic) is expected


# MQTT topics are at least one character long.
levels = st.lists(st.text(alphabet="abc", max_size=2), min_size=1, max_size=5).filter(
    lambda parts: "/".join(parts) != ""
)


@SETTINGS
@given(levels, st.data())
def test_wildcarded_topic_always_matches(topic_levels: list[str], data: st.DataObject) -> None:
    topic = "/".join(topic_levels)
    flt_levels = [data.draw(st.sampled_from([lv, "+"])) for lv in topic_levels]
    cut = data.draw(st.integers(min_value=0, max_value=len(flt_levels)))
    flt = "/".join([*flt_levels[:cut], "#"]) if data.draw(st.booleans()) else "/".join(flt_levels)
    validate_filter(flt)
    assert topic_matches(flt, topic)
    # Adding a level to the topic breaks a filter without '#'.
    if "#" not in flt:
        assert not topic_matches(flt, topic + "/extra")


@pytest.mark.parametrize(
    "flt",
    ["a", "a/b", "+", "#", "a/+/b", "a/#", "+/+/#", "$share/g/a/+", "$share/g/#", "/a", "a//b"],
)
def test_validate_filter_accepts(flt: str) -> None:
    validate_filter(flt)


@pytest.mark.parametrize(
    "flt",
    ["", "a/#/b", "#/a", "a#", "a/b#", "a+", "a/+b", "a/b+/c", "$share/g/", "$share//a",
     "$share/g", "$share/g/a/#/b"],
)  # fmt: skip
def test_validate_filter_rejects(flt: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by problem
        validate_filter(flt)


@pytest.mark.parametrize(
    "flt",
    [
        # MQTT forbids U+0000 in topic filters; mosquitto answers with "Malformed packet" and
        # drops the connection, and the filter, kept for re-subscription, drops every reconnect.
        "a/\x00b",
        "\x00",
        "edgeagent/home/dev/+/event/ring\x00",
        # A share name must not contain '/', '+' or '#'; paho refuses "g#" with a ValueError
        # from inside the transport's (re)connect path.
        "$share/g#/a",
    ],
    ids=["nul-level", "nul-only", "nul-suffix", "share-name-hash"],
)
def test_validate_filter_rejects_what_the_broker_or_paho_refuse(flt: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by problem
        validate_filter(flt)


def test_strip_share() -> None:
    assert strip_share("$share/g/a/+") == ("g", "a/+")
    assert strip_share("$share/g/a/b/c") == ("g", "a/b/c")
    assert strip_share("a/b") == (None, "a/b")
    assert strip_share("$SYS/x") == (None, "$SYS/x")
