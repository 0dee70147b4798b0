"""What the coordinator believes of the fleet's own messages: a pure check of each one.

The registry is fed by retained state, manifest and health messages that any device on the
broker may publish. The topic is the identity (the broker's ACL decides who may publish there),
so a message naming another device, of the wrong kind for its topic, or with names and counts
out of bounds is not believed: :func:`fleet_problem` says why, and the coordinator drops it.
"""

from __future__ import annotations

from .limits import CoordinatorLimits
from .logutil import clip
from .protocol import Health, Manifest, Message, StateMessage, check_name

__all__ = ["fleet_problem"]

_KINDS: dict[str, type[StateMessage | Manifest | Health]] = {
    "state": StateMessage,
    "manifest": Manifest,
    "health": Health,
}


def fleet_problem(
    device: str, kind: str, message: Message, limits: CoordinatorLimits
) -> str | None:
    """Why a state, manifest or health message on ``device``'s ``kind`` topic cannot be
    believed (None: it can)."""
    expected = _KINDS.get(kind)
    if expected is None or not isinstance(message, expected):
        return f"a {getattr(message, 'type', '?')} message on a {kind} topic"
    assert isinstance(message, StateMessage | Manifest | Health)
    if message.device != device:
        return f"it names device {clip(message.device, 60)!r}, the topic {device!r}"
    try:
        check_name(device, "device id")
        if isinstance(message, Manifest):
            if len(message.skills) > limits.max_skills:
                return f"{len(message.skills)} skills (limit {limits.max_skills})"
            if len(message.tags) > limits.max_tags:
                return f"{len(message.tags)} tags (limit {limits.max_tags})"
            for spec in message.skills:
                check_name(spec.name, "skill name")
            for key, value in message.tags.items():
                check_name(key, "tag name")
                check_name(value, "tag value")
    except ValueError as exc:
        return clip(str(exc))
    return None
