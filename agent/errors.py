"""edgeagent's exceptions. Callers catch these, never paho's or pydantic's.

::

    EdgeAgentError
    ├── ConfigError              a config file or option is wrong (names the file and field)
    ├── TransportError           the broker cannot be reached or the connection broke
    └── CallError                a skill call failed; ``code`` is the wire error code
        ├── BadRequest           bad_request: malformed payload or input not matching the schema
        ├── NotFound             not_found: the device has no such skill, or (from the client,
        │                        at once) no device of that name ever announced itself
        ├── Busy                 busy: the skill's queue (or a coordinator bound) is full
        ├── CallTimeout          timeout: the deadline passed (also a subclass of TimeoutError);
        │                        a call to a device that is gone ends here too
        ├── Unavailable          unavailable: the device is shutting down (draining)
        └── InternalError        internal: the skill raised

Foreign errors are translated at one boundary each (the MQTT transport, the config loader, the
skill runner) with ``raise … from``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from .protocol import ErrorCode, ErrorReply


class EdgeAgentError(Exception):
    """Base of every error edgeagent raises on purpose."""


class ConfigError(EdgeAgentError):
    """A configuration file or option is invalid; the message names the file and field."""


class TransportError(EdgeAgentError):
    """The broker could not be reached, or the connection was lost."""


class CallError(EdgeAgentError):
    """A skill call failed. ``code`` is one of the protocol's error codes."""

    code: ClassVar[ErrorCode] = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.route: dict[str, Any] | None = None
        """For coordinator calls with explain: how the call was routed."""

    def to_reply(self) -> ErrorReply:
        return ErrorReply(code=self.code, message=self.message, details=self.details)

    @staticmethod
    def from_reply(reply: ErrorReply) -> CallError:
        cls = _BY_CODE.get(reply.code, InternalError)
        return cls(reply.message, details=reply.details)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class BadRequest(CallError):
    code = "bad_request"


class NotFound(CallError):
    code = "not_found"


class Busy(CallError):
    code = "busy"


class CallTimeout(CallError, TimeoutError):
    code = "timeout"


class Unavailable(CallError):
    code = "unavailable"


class InternalError(CallError):
    code = "internal"


_BY_CODE: dict[str, type[CallError]] = {
    cls.code: cls for cls in (BadRequest, NotFound, Busy, CallTimeout, Unavailable, InternalError)
}


def error_class(code: ErrorCode) -> type[CallError]:
    return _BY_CODE[code]
