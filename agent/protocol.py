"""The wire protocol: topic tree, message models and their codec, in one place.

Every message that edgeagent itself publishes is a pydantic model tagged by a ``Literal`` ``type``
and decoded with one :data:`MESSAGE_ADAPTER`. Skill *requests* are the one exception: the payload of
``…/call/{skill}`` is the skill's input JSON object itself, so that any MQTT 5 client (for example
``mosquitto_rr``) can call a skill without wrapping anything.

Topic tree (``root`` defaults to ``edgeagent``, ``fleet`` to ``default``)::

    {root}/{fleet}/dev/{device}/state        retained  StateMessage (last will: offline)
    {root}/{fleet}/dev/{device}/manifest     retained  Manifest
    {root}/{fleet}/dev/{device}/health       periodic  Health
    {root}/{fleet}/dev/{device}/call/{skill} requests  skill input JSON; reply: Ok | ErrorReply
    {root}/{fleet}/dev/{device}/event/{name} events    Event
    {root}/{fleet}/client/{client}/reply     where our client asks for replies
    {root}/{fleet}/client/{client}/sync      our client's retained-replay marker (to itself)

``docs/protocol.md`` is the prose version of this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

PROTOCOL_VERSION = 1
DEFAULT_ROOT = "edgeagent"
DEFAULT_FLEET = "default"

#: User Property carrying the trace id of a call (echoed on the reply).
TRACE_PROPERTY = "trace"
JSON_CONTENT_TYPE = "application/json"
#: A request with this Content Type carries raw bytes for the skill's one ``bytes`` input field
#: (announced as ``binary_input``); its other inputs travel as JSON in the ``input`` User Property.
BINARY_CONTENT_TYPE = "application/octet-stream"
#: User Property holding the JSON of the other inputs of a binary request.
INPUT_PROPERTY = "input"
#: User Property with a caller's idempotency key: an agent answers a repeated key with the first
#: run's reply instead of running the skill again (so retries are safe for any skill).
IDEMPOTENCY_PROPERTY = "idem"
#: Longest idempotency key accepted, characters; a longer one is a ``bad_request``.
MAX_IDEMPOTENCY_KEY = 128
#: User Property the coordinator adds to the calls it forwards: who the call is for (the
#: original caller's response topic, or ``rule/{name}``). An agent scopes idempotency keys by
#: it (by the request's own response topic when it is absent), so two callers never share a key.
CALLER_PROPERTY = "caller"
#: User Property counting how many rule-made calls led to this one: an agent copies the hop
#: of the call a skill is serving onto the events that skill emits, and the coordinator adds one
#: for each call a rule makes, so a chain of rules (a loop among them) is cut at a set depth.
HOP_PROPERTY = "hop"
#: Coordinator call properties: tag filter ("room=kitchen,kind=lamp"), mode ("one" | "all"),
#: and "1" to get the routing decision back in the reply's ``route``.
WHERE_PROPERTY = "where"
MODE_PROPERTY = "mode"
EXPLAIN_PROPERTY = "explain"

ErrorCode = Literal["bad_request", "not_found", "busy", "timeout", "unavailable", "internal"]
ERROR_CODES: tuple[ErrorCode, ...] = (
    "bad_request",
    "not_found",
    "busy",
    "timeout",
    "unavailable",
    "internal",
)
SideEffect = Literal["read", "actuate"]
#: The skills of a deployed agent (agent/system.py); the broker's ACL lets only operators call
#: them (agent/brokerconf.py). Names starting with this prefix are reserved for them.
SYSTEM_PREFIX = "system."
SYSTEM_SKILLS = ("system.info", "system.update", "system.rollback", "system.restart")
#: The data loop's skills (agent/data_skills.py: a device's kept hard cases): for operators too.
DATA_PREFIX = "data."
#: Skills that are no MCP tools or Home Assistant entities (nor, meant to be, LLM tools), and
#: that the broker's ACL opens to operators only.
OPERATOR_PREFIXES = (SYSTEM_PREFIX, DATA_PREFIX)

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
NAME_PATTERN = _NAME_RE.pattern


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it can be one topic level (no ``/``, ``+``, ``#``), else raise."""
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            f"invalid {what} {value!r}: use 1-128 letters, digits, '_', '.', '-' "
            "(no '/', '+', '#' or spaces), starting with a letter, digit or '_'"
        )
    return value


# --------------------------------------------------------------------------------------------
# Topics


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses the topic tree for one ``root`` and ``fleet``."""

    root: str = DEFAULT_ROOT
    fleet: str = DEFAULT_FLEET

    def __post_init__(self) -> None:
        for part in self.root.split("/"):
            check_name(part, "topic root level")
        check_name(self.fleet, "fleet name")

    @property
    def base(self) -> str:
        return f"{self.root}/{self.fleet}"

    def device(self, device: str) -> str:
        return f"{self.base}/dev/{device}"

    def state(self, device: str) -> str:
        return f"{self.base}/dev/{device}/state"

    def manifest(self, device: str) -> str:
        return f"{self.base}/dev/{device}/manifest"

    def health(self, device: str) -> str:
        return f"{self.base}/dev/{device}/health"

    def call(self, device: str, skill: str) -> str:
        return f"{self.base}/dev/{device}/call/{skill}"

    def event(self, device: str, name: str) -> str:
        return f"{self.base}/dev/{device}/event/{name}"

    def reply(self, client_id: str) -> str:
        return f"{self.base}/client/{client_id}/reply"

    def coord_call(self, skill: str) -> str:
        """Where any MQTT 5 client asks the coordinator to route a call of ``skill``."""
        return f"{self.base}/coord/call/{skill}"

    def coord_calls_filter(self, group: str | None = None) -> str:
        plain = f"{self.base}/coord/call/+"
        return f"$share/{group}/{plain}" if group else plain

    # Filters -----------------------------------------------------------------------------------

    def calls_filter(self, device: str) -> str:
        return f"{self.base}/dev/{device}/call/+"

    def all_states(self) -> str:
        return f"{self.base}/dev/+/state"

    def all_manifests(self) -> str:
        return f"{self.base}/dev/+/manifest"

    def all_health(self) -> str:
        return f"{self.base}/dev/+/health"

    def all_events(self, name: str = "+") -> str:
        return f"{self.base}/dev/+/event/{name}"

    # Parsing -----------------------------------------------------------------------------------

    def parse_device_topic(self, topic: str) -> tuple[str, str, str | None] | None:
        """Split ``{base}/dev/{device}/{kind}[/{name}]`` into ``(device, kind, name)``.

        Returns None for topics outside this fleet's device tree.
        """
        prefix = f"{self.base}/dev/"
        if not topic.startswith(prefix):
            return None
        parts = topic[len(prefix) :].split("/")
        if len(parts) == 2:
            return parts[0], parts[1], None
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        return None


# --------------------------------------------------------------------------------------------
# Messages


class _Message(BaseModel):
    # Unknown fields are ignored, not rejected: a newer device may add fields, and an older
    # client must still read what it knows (see "Versioning" in docs/protocol.md).
    model_config = ConfigDict(extra="ignore", frozen=True)


class StateMessage(_Message):
    """Retained on ``…/state``; the last will publishes the ``offline`` form."""

    type: Literal["state"] = "state"
    device: str = Field(description="Device id.")
    status: Literal["online", "offline", "draining", "updating"] = Field(
        description="online: serving; draining: finishing in-flight calls; offline: gone; "
        "updating: about to restart into another release, or a new release not yet confirmed "
        "(still answers calls made to it, coordinators route none to it)."
    )
    ts: float | None = Field(default=None, description="Unix time of the change, seconds.")
    reason: str | None = Field(default=None, description="Why the state changed, if known.")


class SkillSpec(_Message):
    """One skill as announced in a manifest."""

    name: str = Field(description="Skill name, one topic level.")
    description: str = Field(default="", description="What the skill does, for people and NLU.")
    tags: dict[str, str] = Field(default_factory=dict, description="Free-form skill tags.")
    side_effect: SideEffect = Field(
        description="read: no effect on the world; actuate: changes it."
    )
    idempotent: bool = Field(description="True if running the same call twice is harmless.")
    input_schema: dict[str, Any] = Field(description="JSON Schema of the request payload.")
    output_schema: dict[str, Any] = Field(description="JSON Schema of `output` in an ok reply.")
    max_concurrency: int = Field(description="Calls run at once; more wait in the queue.")
    max_queue: int = Field(description="Calls that may wait; past it callers get `busy`.")
    timeout_s: float = Field(description="Longest a call may run before `timeout`, seconds.")
    model: str | None = Field(default=None, description="Model the skill runs, if any.")
    model_version: str | None = Field(default=None, description="Version of that model.")
    binary_input: str | None = Field(
        default=None,
        description="The input field that may be sent as raw bytes (Content Type "
        "application/octet-stream) instead of inside the JSON body.",
    )
    ha: dict[str, Any] | None = Field(
        default=None,
        description="Hint for the Home Assistant bridge when the mapping cannot be inferred "
        'from the schemas, e.g. {"component": "switch"} (docs/bridges.md).',
    )


class EventSpec(_Message):
    """An event a device may emit on ``…/event/{name}``."""

    name: str
    description: str = ""


class Manifest(_Message):
    """Retained on ``…/manifest``: who the device is and what it can do."""

    type: Literal["manifest"] = "manifest"
    protocol: int = Field(default=PROTOCOL_VERSION, description="Protocol version.")
    device: str = Field(description="Device id.")
    fleet: str = Field(description="Fleet the device belongs to.")
    profile: str | None = Field(default=None, description="Device profile name (e.g. pi4).")
    tags: dict[str, str] = Field(default_factory=dict, description="Device tags (room, kind…).")
    skills: list[SkillSpec] = Field(default_factory=list)
    events: list[EventSpec] = Field(default_factory=list)
    max_payload: int = Field(description="Largest request payload accepted, bytes.")
    agent_version: str = Field(description="edgeagent version of the device agent.")
    release: str | None = Field(
        default=None,
        description="Release (bundle) version the agent runs, when installed by `edgeagent "
        "deploy`; null for an agent run by hand.",
    )


class SkillHealth(_Message):
    calls: int = Field(description="Calls that ran (ok or error).")
    errors: int = Field(description="Calls that ended in an error reply.")
    rejected: int = Field(default=0, description="Calls refused with `busy`.")
    in_flight: int = Field(default=0, description="Calls running now.")
    queued: int = Field(default=0, description="Calls waiting now.")
    p50_ms: float | None = Field(default=None, description="Median run time, milliseconds.")
    p95_ms: float | None = Field(default=None, description="95th percentile run time, ms.")
    model: str | None = Field(default=None, description="Model the skill runs, if any.")
    model_version: str | None = Field(default=None, description="Version of that model.")


class Health(_Message):
    """Published every ``health_interval_s`` seconds on ``…/health`` (not retained)."""

    type: Literal["health"] = "health"
    device: str
    ts: float = Field(description="Unix time, seconds.")
    uptime_s: float = Field(description="Seconds since the agent started.")
    calls_served: int = Field(description="Calls answered ok since start.")
    calls_failed: int = Field(description="Calls answered with an error since start.")
    calls_dropped: int = Field(description="Requests dropped unanswered (expired, no reply topic).")
    in_flight: int = Field(description="Calls running now, all skills.")
    queue_depth: int = Field(description="Calls waiting now, all skills.")
    memory_rss_bytes: int | None = Field(default=None, description="Resident memory, bytes.")
    skills: dict[str, SkillHealth] = Field(default_factory=dict)


class Ok(_Message):
    """A successful reply: ``output`` validates against the skill's output schema."""

    type: Literal["ok"] = "ok"
    output: Any = None
    route: dict[str, Any] | None = Field(
        default=None, description="Coordinator calls with explain=1: how the call was routed."
    )


class ErrorReply(_Message):
    """A failed call, with a code a program can act on and a message a person can read."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str
    details: dict[str, Any] | None = None
    route: dict[str, Any] | None = Field(
        default=None, description="Coordinator calls with explain=1: how the call was routed."
    )


class Event(_Message):
    """What a skill emits on ``…/event/{name}`` for others to react to."""

    type: Literal["event"] = "event"
    device: str
    name: str
    ts: float = Field(description="Unix time, seconds.")
    data: dict[str, Any] = Field(default_factory=dict)
    id: str | None = Field(
        default=None,
        description="Unique per device (a random boot id and a counter): a rule's call key. "
        "Older agents leave it out.",
    )


Message = Annotated[
    StateMessage | Manifest | Health | Ok | ErrorReply | Event, Field(discriminator="type")
]
Reply = Annotated[Ok | ErrorReply, Field(discriminator="type")]

MESSAGE_ADAPTER: TypeAdapter[Message] = TypeAdapter(Message)
REPLY_ADAPTER: TypeAdapter[Reply] = TypeAdapter(Reply)


def encode(message: BaseModel) -> bytes:
    """Serialize a protocol message to compact JSON bytes (``None`` fields left out)."""
    return message.model_dump_json(exclude_none=True).encode()


def decode(payload: bytes | str) -> Message:
    """Decode any protocol message; raises ``pydantic.ValidationError`` on bad input."""
    return MESSAGE_ADAPTER.validate_json(payload)


def decode_reply(payload: bytes | str) -> Ok | ErrorReply:
    return REPLY_ADAPTER.validate_json(payload)
