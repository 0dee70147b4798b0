"""The fleet registry (``fleet.yaml``): identities, roles, grants and the broker's settings.

Pure pydantic models (``extra="forbid"``, a description on every field) and the bounds a
registry may hold. Reading and writing the fleet folder, keys and certificates is
:mod:`~edgeagent.fleetdir`'s job; the broker policy (:mod:`~edgeagent.brokerconf`) reads only
these models, so no key material goes into it.
"""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, SideEffect, Topics, check_name

FLEET_DIR_ENV = "EDGEAGENT_FLEET_DIR"
DEFAULT_FLEET_DIR = "fleet"
REGISTRY_FILE = "fleet.yaml"

Role = Literal["device", "coordinator", "operator", "client"]
ROLES: tuple[Role, ...] = ("device", "coordinator", "operator", "client")
Auth = Literal["cert", "password"]

#: Most identities and skills per device a registry may hold: bounds what `broker config` and
#: the broker's ACL have to hold (an ACL of 100,000 users is about 30 MB in mosquitto).
MAX_IDENTITIES = 100_000
MAX_SKILLS = 1_000
MAX_GRANTS = 1_000


def check_grant(value: str) -> str:
    """A grant is ``SKILL`` (on any device, and through the coordinator) or ``DEVICE/SKILL``."""
    device, sep, skill = value.rpartition("/")
    if sep:
        check_name(device, "device in grant")
    check_name(skill, "skill in grant")
    return value


class Identity(BaseModel):
    """One enrolled identity."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Identity: certificate CN or username; a device's id.")
    role: Role = Field(description="device, coordinator, operator or client.")
    auth: Auth = Field(default="cert", description="cert: client certificate; password.")
    serial: str | None = Field(default=None, description="Certificate serial, hex.")
    revoked: bool = Field(default=False, description="True once revoked: refused by the broker.")
    revoked_at: float | None = Field(default=None, description="Unix time of the revocation.")
    created: float = Field(description="Unix time of the enrolment, seconds.")
    grants: list[str] = Field(
        default_factory=list,
        max_length=MAX_GRANTS,
        description="Actuate skills it may call: SKILL (any device, and via the coordinator) "
        "or DEVICE/SKILL (that device only).",
    )
    skills: dict[str, SideEffect] = Field(
        default_factory=dict,
        description="Devices: the skills the device serves and their side effect (read or "
        "actuate), from its agent config or --read/--actuate.",
    )
    password_hash: str | None = Field(
        default=None, description="mosquitto $7$ hash (password identities)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "identity name")

    @field_validator("grants")
    @classmethod
    def _grants(cls, v: list[str]) -> list[str]:
        return [check_grant(g) for g in v]

    @field_validator("skills")
    @classmethod
    def _skills(cls, v: dict[str, SideEffect]) -> dict[str, SideEffect]:
        if len(v) > MAX_SKILLS:
            raise ValueError(f"{len(v)} skills: at most {MAX_SKILLS}")
        for name in v:
            check_name(name, "skill name")
        return v


class BrokerSettings(BaseModel):
    """Where the broker listens (its config is generated from these)."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(default=8883, ge=1, le=65535, description="TLS + client certificates.")
    password_port: int = Field(
        default=8884, ge=1, le=65535, description="TLS + username/password (no certificate)."
    )
    bind: str | None = Field(default=None, description="Address to bind; None: every address.")
    config_dir: str | None = Field(
        default=None, description="Where `broker config` last wrote (rewritten on revoke)."
    )
    install_dir: str | None = Field(
        default=None, description="Where those files are on the broker host, if elsewhere."
    )


class FleetRegistry(BaseModel):
    """``fleet.yaml``."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    root: str = Field(default=DEFAULT_ROOT, description="Topic root.")
    fleet: str = Field(default=DEFAULT_FLEET, description="Fleet name.")
    broker_hosts: list[str] = Field(
        min_length=1, description="Host names / IPs in the broker certificate; the first is used "
        "in URLs."
    )  # fmt: skip
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    identities: list[Identity] = Field(default_factory=list, max_length=MAX_IDENTITIES)
    coordinator_group: str = Field(
        default_factory=lambda: f"edgeagent-coord-{secrets.token_hex(8)}",
        description="Shared-subscription group of the coordinators (`coordinator run --group`). "
        "Kept unguessable: mosquitto does not check subscriptions against its ACL, so an "
        "identity that knew the group could join it and take a share of the calls.",
    )
    retired: dict[str, float] = Field(
        default_factory=dict,
        description="Serials (hex) of certificates replaced by a re-enrolment -> Unix time; "
        "listed in the CRL.",
    )

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        return check_name(v, "fleet name")

    @property
    def topics(self) -> Topics:
        return Topics(self.root, self.fleet)

    def get(self, name: str) -> Identity | None:
        return next((i for i in self.identities if i.name == name), None)

    def active(self, role: Role | None = None) -> list[Identity]:
        """Identities not revoked (of ``role``), sorted by name."""
        return sorted(
            (i for i in self.identities if not i.revoked and role in (None, i.role)),
            key=lambda i: i.name,
        )
