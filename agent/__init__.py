"""edgeagent: intelligent objects on small computers.

Typed skills over MQTT 5, a device agent, a client library and CLI; tiny local models, a
coordinator and a fleet simulator build on them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .broker import BrokerConfig, TlsConfig
from .client import AskResult, DeviceInfo, Fleet
from .config import AgentConfig, load_config
from .coordinator import Coordinator
from .device import DeviceAgent
from .errors import (
    BadRequest,
    Busy,
    CallError,
    CallTimeout,
    ConfigError,
    EdgeAgentError,
    InternalError,
    NotFound,
    TransportError,
    Unavailable,
)
from .local_routing import LocalRouter
from .results import CallMode, CallResult, RouteVia
from .skills import SkillContext, SkillSet, skill

__all__ = [
    "AgentConfig",
    "AskResult",
    "BadRequest",
    "BrokerConfig",
    "Busy",
    "CallError",
    "CallMode",
    "CallResult",
    "CallTimeout",
    "ConfigError",
    "Coordinator",
    "DeviceAgent",
    "DeviceInfo",
    "EdgeAgentError",
    "Fleet",
    "InternalError",
    "LocalRouter",
    "NotFound",
    "RouteVia",
    "SkillContext",
    "SkillSet",
    "TlsConfig",
    "TransportError",
    "Unavailable",
    "__version__",
    "load_config",
    "skill",
]
