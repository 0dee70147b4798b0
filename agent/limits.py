"""The coordinator's bounds: everything a client or device on the broker can make it hold.

Every table the coordinator keeps grows only with what others publish (devices, manifests,
calls, events), so each has a limit with a safe default; past one, the message is dropped (and
logged, rate-limited) or the caller gets ``busy``/``bad_request`` at once. Set them with
``edgeagent coordinator run --limit NAME=VALUE`` (repeatable) or ``Coordinator(limits=…)``;
``docs/coordinator.md`` lists them.
"""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError


class CoordinatorLimits(BaseModel):
    """Bounds on what outside input can make a coordinator hold or do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_devices: int = Field(
        default=10_000, ge=1, description="Devices the registry holds; newcomers past it are "
        "ignored until one leaves."
    )  # fmt: skip
    max_manifest_bytes: int = Field(
        default=256 * 1024, ge=1024, description="Largest manifest taken in, bytes."
    )
    max_manifests_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="All manifests held together, bytes as "
        "received (objects take a few times that); a manifest past it is ignored."
    )  # fmt: skip
    max_message_bytes: int = Field(
        default=16 * 1024, ge=256, description="Largest state, health or event taken in, bytes."
    )
    max_skills: int = Field(default=256, ge=1, description="Skills one manifest may list.")
    max_tags: int = Field(default=32, ge=0, description="Tags one manifest may carry.")
    max_in_flight: int = Field(
        default=10_000, ge=1, description="Calls the coordinator serves at once (all callers)."
    )
    max_in_flight_per_caller: int = Field(
        default=1_000, ge=1, description="Calls in flight for one caller (one response topic)."
    )
    max_deadline_s: float = Field(
        default=300.0, gt=0, allow_inf_nan=False,
        description="Longest deadline honoured: a larger Message Expiry is cut to this.",
    )  # fmt: skip
    ping_interval_s: float = Field(
        default=1.0, gt=0, allow_inf_nan=False,
        description="Least time between two pings of one device that has not answered yet "
        "(newcomers and suspects are pinged before they get calls).",
    )  # fmt: skip
    max_pings: int = Field(
        default=16, ge=1, description="Pings in flight at once (a crowd of silent newcomers "
        "is pinged a few at a time)."
    )  # fmt: skip
    suspect_after: int = Field(
        default=3, ge=1, description="Timeouts in a row after which a device gets no calls "
        "(while others can serve) until it answers a ping again."
    )  # fmt: skip
    rule_max_depth: int = Field(
        default=4, ge=1, le=64, description="Longest chain of rule-made calls (event -> call -> "
        "event …); deeper events fire no rule and are reported as a cut loop."
    )  # fmt: skip
    rule_max_per_minute: int = Field(
        default=60, ge=0, description="Times one rule may fire per minute (0: no limit)."
    )


def parse_limits(pairs: Iterable[str], base: CoordinatorLimits | None = None) -> CoordinatorLimits:
    """``["max_devices=500", …]`` over ``base`` (the defaults); ConfigError names a bad one."""
    values = (base or CoordinatorLimits()).model_dump()
    known = set(CoordinatorLimits.model_fields)
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ConfigError(f"bad limit {pair!r}: use NAME=VALUE, e.g. max_devices=500")
        if name not in known:
            raise ConfigError(f"unknown limit {name!r}; known: {', '.join(sorted(known))}")
        values[name] = raw.strip()
    try:
        return CoordinatorLimits.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"limit {err['loc'][0]}: {err['msg']}") from None
