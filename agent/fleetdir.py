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

The registry's models live in :mod:`~edgeagent.fleet_registry` and are re-exported here.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .broker import BrokerConfig
from .errors import ConfigError
from .fleet_registry import (
    DEFAULT_FLEET_DIR,
    FLEET_DIR_ENV,
    MAX_GRANTS,
    MAX_IDENTITIES,
    MAX_SKILLS,
    REGISTRY_FILE,
    ROLES,
    Auth,
    BrokerSettings,
    FleetRegistry,
    Identity,
    Role,
    check_grant,
)
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, SideEffect, Topics, check_name
from .yamlconf import load_yaml_model

__all__ = [
    "DEFAULT_FLEET_DIR", "FLEET_DIR_ENV", "MAX_GRANTS", "MAX_IDENTITIES", "MAX_SKILLS",
    "REGISTRY_FILE", "ROLES", "Auth", "BrokerSettings", "Enrolment", "FleetDir", "FleetRegistry",
    "Identity", "Role", "check_grant", "default_dir", "skills_from_config",
]  # fmt: skip


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
