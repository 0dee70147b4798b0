"""The fleet folder: its registry of identities (``fleet.yaml``), its CA and the credentials.

::

    fleet/                      default ./fleet, or $EDGEAGENT_FLEET_DIR, or --dir
      fleet.yaml                the registry: root, fleet, broker hosts/ports, identities
      ca.crt  ca.key (0600)     the fleet's certificate authority (EC P-256)
      broker.crt  broker.key    the broker's server certificate (SANs: the broker hosts)
      crl.pem                   revoked certificates (rewritten on every revocation)
      identities/NAME/          what NAME needs: NAME.crt, NAME.key (0600) or NAME.password,
                                ca.crt, broker.yaml (a ready `broker:` section, 0600)

An identity is a name (the certificate's CN, or the username), a role (``device``,
``coordinator``, ``operator``, ``client``), grants (actuate skills it may call) and, for a device,
the skills it serves with their side effect, so the broker policy (``brokerconf.py``) knows
which calls are actuations. Only the registry is read to make the broker config; no key
material goes into it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from .broker import BrokerConfig
from .errors import ConfigError
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, SideEffect, Topics, check_name
from .yamlconf import load_yaml_model

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


@dataclass(frozen=True, slots=True)
class Enrolment:
    """What ``enroll`` made: the identity, its folder and how it connects."""

    identity: Identity
    folder: Path
    url: str
    broker_file: Path
    password: str | None = None


def default_dir() -> Path:
    return Path(os.environ.get(FLEET_DIR_ENV) or DEFAULT_FLEET_DIR)


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write atomically with ``mode`` (a key is never readable by others, not even briefly)."""
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, raw)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def skills_from_config(path: Path) -> tuple[str, str, dict[str, SideEffect]]:
    """Load an agent config and import its skills: ``(device, fleet, {skill: side_effect})``."""
    from .config import load_config, load_skills

    cfg = load_config(path)
    skills, _, _ = load_skills(cfg, str(path))
    return cfg.device, cfg.fleet, {s.name: s.spec.side_effect for s in skills}


class FleetDir:
    """A fleet folder on disk. Use :meth:`create` or :meth:`open`."""

    def __init__(self, path: Path, registry: FleetRegistry) -> None:
        self.path = path
        self.registry = registry

    # Files -----------------------------------------------------------------------------------

    @property
    def ca_cert(self) -> Path:
        return self.path / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.path / "ca.key"

    @property
    def broker_cert(self) -> Path:
        return self.path / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.path / "broker.key"

    @property
    def crl(self) -> Path:
        return self.path / "crl.pem"

    def identity_dir(self, name: str) -> Path:
        return self.path / "identities" / check_name(name, "identity name")

    # Lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        fleet: str = DEFAULT_FLEET,
        root: str = DEFAULT_ROOT,
        hosts: Iterable[str] = ("localhost", "127.0.0.1"),
        port: int = 8883,
        password_port: int = 8884,
        force: bool = False,
    ) -> FleetDir:
        """Make a new fleet: CA, broker certificate, empty CRL and registry."""
        from . import fleetca

        if (path / REGISTRY_FILE).exists() and not force:
            raise ConfigError(
                f"{path} already holds a fleet ({REGISTRY_FILE}); pass --force to replace it "
                "(every credential issued from it stops working)"
            )
        Topics(root, fleet)  # names checked before anything is written
        host_list = [fleetca.check_host(h) for h in dict.fromkeys(hosts)]
        try:
            registry = FleetRegistry(
                root=root,
                fleet=fleet,
                broker_hosts=host_list,
                broker=BrokerSettings(port=port, password_port=password_port),
            )
        except ValueError as exc:
            raise ConfigError(f"fleet init: {exc}") from None
        if force and path.exists():
            shutil.rmtree(path / "identities", ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        ca = fleetca.make_ca(fleet)
        _write(path / "ca.key", ca.key_pem, 0o600)
        _write(path / "ca.crt", ca.cert_pem)
        server = fleetca.issue_server(ca.cert_pem, ca.key_pem, fleet, host_list)
        _write(path / "broker.key", server.key_pem, 0o600)
        _write(path / "broker.crt", server.cert_pem)
        fd = cls(path, registry)
        fd.write_crl()
        fd.save()
        return fd

    @classmethod
    def open(cls, path: Path | None = None) -> FleetDir:
        path = path or default_dir()
        if not (path / REGISTRY_FILE).is_file():
            raise ConfigError(
                f"no fleet in {path} (no {REGISTRY_FILE}): run `edgeagent fleet init` first, or "
                f"point --dir / ${FLEET_DIR_ENV} at the fleet folder"
            )
        return cls(path, load_yaml_model(path / REGISTRY_FILE, FleetRegistry))

    def save(self) -> None:
        data = self.registry.model_dump(mode="json", exclude_none=True)
        text = "# edgeagent fleet registry: edit with `edgeagent fleet …` commands.\n"
        _write(self.path / REGISTRY_FILE, text + yaml.safe_dump(data, sort_keys=False), 0o600)

    # Identities ------------------------------------------------------------------------------

    def enroll(
        self,
        name: str,
        role: Role,
        *,
        grants: Iterable[str] = (),
        skills: Mapping[str, SideEffect] | None = None,
        password: bool = False,
        force: bool = False,
    ) -> Enrolment:
        """Issue credentials for ``name``; refuses a name already enrolled unless ``force``
        (then the old certificate goes on the CRL and the old password stops working)."""
        from . import fleetca

        check_name(name, "device id" if role == "device" else "identity name")
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if skills and role != "device":
            raise ConfigError(f"{name}: only a device serves skills (role is {role})")
        old = self.registry.get(name)
        if old is not None and not force:
            raise ConfigError(
                f"{name!r} is already enrolled ({old.role}"
                f"{', revoked' if old.revoked else ''}); pass --force to issue new credentials"
            )
        if old is None and len(self.registry.identities) >= MAX_IDENTITIES:
            raise ConfigError(f"the registry holds {MAX_IDENTITIES} identities, the most allowed")
        try:
            identity = Identity(
                name=name,
                role=role,
                auth="password" if password else "cert",
                created=round(time.time(), 3),
                grants=sorted(set(grants)),
                skills=dict(sorted((skills or {}).items())),
            )
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        folder = self.identity_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        for stale in ("crt", "key", "password"):
            (folder / f"{name}.{stale}").unlink(missing_ok=True)
        ca_pem, ca_key_pem = self.ca_cert.read_bytes(), self.ca_key.read_bytes()
        secret: str | None = None
        if password:
            secret = fleetca.new_password()
            identity.password_hash = fleetca.hash_password(secret)
            _write(folder / f"{name}.password", secret + "\n", 0o600)
        else:
            issued = fleetca.issue_client(ca_pem, ca_key_pem, self.registry.fleet, name)
            identity.serial = format(issued.serial, "x")
            _write(folder / f"{name}.key", issued.key_pem, 0o600)
            _write(folder / f"{name}.crt", issued.cert_pem)
        _write(folder / "ca.crt", ca_pem)
        if old is not None:
            self.registry.identities.remove(old)
            if old.serial and not old.revoked:
                self.registry.retired[old.serial] = round(time.time(), 3)
        self.registry.identities.append(identity)
        broker = self.broker_config(identity)
        broker_file = folder / "broker.yaml"
        _write(
            broker_file,
            _broker_yaml(identity, broker, self.registry.fleet, self.registry.coordinator_group),
            0o600,
        )
        self.save()
        if old is not None and old.serial:
            self.write_crl()
            self.refresh_broker_config()
        return Enrolment(identity, folder, broker.url, broker_file, secret)

    def revoke(self, name: str) -> Identity:
        """Mark ``name`` revoked; rewrite the CRL and (if written before) the broker config."""
        identity = self.registry.get(name)
        if identity is None:
            known = ", ".join(i.name for i in self.registry.identities[:20]) or "none"
            raise ConfigError(f"no identity {name!r} in {self.path} (enrolled: {known})")
        if not identity.revoked:
            identity.revoked = True
            identity.revoked_at = round(time.time(), 3)
            self.save()
        self.write_crl()
        self.refresh_broker_config()
        return identity

    def broker_config(self, identity: Identity | str) -> BrokerConfig:
        """How ``identity`` connects: a :class:`BrokerConfig` with its URL and credentials."""
        ident = self.registry.get(identity) if isinstance(identity, str) else identity
        if ident is None:
            raise ConfigError(f"no identity {identity!r} in {self.path}")
        folder = self.identity_dir(ident.name).resolve()
        host = self.registry.broker_hosts[0]
        host = f"[{host}]" if ":" in host else host
        tls: dict[str, Path] = {"ca_file": folder / "ca.crt"}
        if ident.auth == "password":
            secret_file = folder / f"{ident.name}.password"
            secret = secret_file.read_text().strip() if secret_file.exists() else None
            return BrokerConfig(
                url=f"mqtts://{host}:{self.registry.broker.password_port}",
                username=ident.name,
                password=secret,
                tls=tls,
            )
        tls |= {"cert_file": folder / f"{ident.name}.crt", "key_file": folder / f"{ident.name}.key"}
        return BrokerConfig(url=f"mqtts://{host}:{self.registry.broker.port}", tls=tls)

    # CRL and broker config ---------------------------------------------------------------------

    def write_crl(self) -> None:
        from . import fleetca

        revoked = {int(s, 16): when for s, when in self.registry.retired.items()}
        for i in self.registry.identities:
            if i.revoked and i.serial:
                revoked[int(i.serial, 16)] = i.revoked_at or time.time()
        crl = fleetca.make_crl(self.ca_cert.read_bytes(), self.ca_key.read_bytes(), revoked)
        _write(self.crl, crl)

    def write_broker_config(
        self,
        out: Path,
        *,
        install_dir: str | None = None,
        port: int | None = None,
        password_port: int | None = None,
        bind: str | None = None,
        extra_global: str = "",
    ) -> list[Path]:
        """Write mosquitto.conf, acl, passwd and the TLS files into ``out``; remembered, so a
        revocation rewrites them. Paths inside mosquitto.conf are ``install_dir`` (where the
        files will be on the broker host) or ``out`` itself."""
        from .brokerconf import BrokerFiles, render

        settings = self.registry.broker.model_copy(
            update={
                "port": port or self.registry.broker.port,
                "password_port": password_port or self.registry.broker.password_port,
                "bind": bind if bind is not None else self.registry.broker.bind,
                "config_dir": str(out.resolve()),
                "install_dir": install_dir,
            }
        )
        where = Path(install_dir) if install_dir else out.resolve()
        files = BrokerFiles.under(str(where))
        rendered = render(self.registry, files, settings, extra_global=extra_global)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for src, dst, mode in (
            (self.ca_cert, "ca.crt", 0o644),
            (self.broker_cert, "broker.crt", 0o644),
            (self.broker_key, "broker.key", 0o600),
            (self.crl, "crl.pem", 0o644),
        ):
            _write(out / dst, src.read_bytes(), mode)
            written.append(out / dst)
        for fname, text in rendered.items():
            _write(out / fname, text, 0o600 if fname == "passwd" else 0o644)
            written.append(out / fname)
        if "passwd" not in rendered:
            (out / "passwd").unlink(missing_ok=True)
        self.registry.broker = settings
        self.save()
        return written

    def refresh_broker_config(self) -> list[Path]:
        """Rewrite the broker config where it was last written (nothing if never written)."""
        s = self.registry.broker
        if s.config_dir is None:
            return []
        return self.write_broker_config(Path(s.config_dir), install_dir=s.install_dir)


def _broker_yaml(identity: Identity, broker: BrokerConfig, fleet: str, group: str = "") -> str:
    data = broker.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    data["url"] = broker.url
    if identity.auth == "password":
        data["password"] = broker.password
    head = (
        f"# edgeagent identity {identity.name} (role {identity.role}) of fleet {fleet}.\n"
        "# Paste this `broker:` section into the agent config (paths are absolute: adjust them\n"
        "# if you copy this folder to the device). Keep this file and the key private.\n"
    )
    if identity.role == "device":
        head += f"# The agent config must say `device: {identity.name}` and `fleet: {fleet}`.\n"
    if identity.role == "coordinator" and group:
        head += f"# Run it with: edgeagent --fleet {fleet} coordinator run --group {group}\n"
    return head + yaml.safe_dump({"broker": data}, sort_keys=False)
