"""The one-time enrolment an image carries, and the agent config its bundle is built from.

The enrolment file (``edgeagent/enrolment.json`` on the boot partition, removed by the first
boot) holds the device id, fleet, broker URL and CA, the device's own credential and the trusted
bundle keys::

    {"kind": "edgeagent-enrolment", "format": 1, "device": ..., "fleet": ..., "root": ...,
     "profile": ..., "release": ..., "service_user": "edgeagent",
     "broker": {"url": ..., "auth": "cert" | "password" | "none", "username": ...},
     "credentials": {"dir": "/etc/edgeagent/DEVICE", "files": {"ca.crt": PEM, ...}},
     "trusted_keys": [minisign public key texts]}

The credential comes from the fleet folder when one is given (``FleetDir.enroll``: a client
certificate and key issued by the fleet CA), else from the agent config's ``broker:`` section
(username and password, and the TLS files it names). Either way the secret never enters the
signed bundle: the bundle's ``agent.yaml`` points at the files the first boot writes
(``/etc/edgeagent/DEVICE/``, mode 0600, owned by the agent's service user) and reads a password
from ``$EDGEAGENT_BROKER_PASSWORD``, which a systemd drop-in loads from ``broker.env`` there.
The same drop-in points ``$EDGEAGENT_BROKER_CONFIG`` at ``broker.yaml`` there (the device's broker
settings), which takes the place of the ``broker:`` section of whatever config the device runs:
a release deployed later from the user's own config keeps this device's broker and credential.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..broker import BrokerConfig
from ..config import AgentConfig, load_config
from ..errors import ConfigError
from .bootpart import ImageBuildError

ENROLMENT_KIND = "edgeagent-enrolment"
ENROLMENT_FORMAT = 1
CREDENTIALS_ROOT = "/etc/edgeagent"
PASSWORD_ENV = "EDGEAGENT_BROKER_PASSWORD"
SERVICE_USER = "edgeagent"
#: The broker settings file in the credentials folder (read by the agent through
#: ``EDGEAGENT_BROKER_CONFIG``, which the unit's drop-in sets).
BROKER_FILE = "broker.yaml"
BROKER_CONFIG_ENV = "EDGEAGENT_BROKER_CONFIG"
_TLS_FILES = {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}


@dataclass(slots=True)
class Enrolment:
    """The enrolment data (secret), the agent config for the bundle (not secret), and where the
    credential came from."""

    data: dict[str, Any]
    config_text: str
    auth: str
    source: str

    def to_json(self, release: str, profile: str, profiles: dict[str, Any] | None = None) -> bytes:
        """The enrolment file; ``profiles`` (an image for a family): per profile its release and
        board-model substrings, for the installer to pick from at first boot."""
        data = {**self.data, "release": release, "profile": profile}
        if profiles:
            data["profiles"] = profiles
        return (json.dumps(data, indent=1) + "\n").encode()

    @property
    def secrets(self) -> list[str]:
        """The secret values (for the tests and checks that they appear nowhere else)."""
        out = []
        for name, text in self.data["credentials"]["files"].items():
            if name.endswith(".key") or name == "broker.env":
                out.append(text.strip().removeprefix(f"{PASSWORD_ENV}="))
        return out


def _plain_url(broker: BrokerConfig) -> str:
    """The broker URL without user information."""
    scheme, host, port = broker.scheme, broker.host, broker.port
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def _read_tls(path: Path, base: Path, field: str, config: Path) -> str:
    p = path if path.is_absolute() else base / path
    try:
        return p.read_text()
    except OSError as exc:
        raise ImageBuildError(f"{config}: broker.tls.{field}: cannot read {p}: {exc}") from exc


def prepare(
    config: Path,
    trusted_keys: list[str],
    *,
    fleet_dir: Path | None = None,
    reenrol: bool = False,
    service_user: str = SERVICE_USER,
) -> Enrolment:
    """The enrolment and the secret-free agent config the bundle is built from. With a fleet
    folder, only checked here (the certificate is issued by :func:`issue`); else the credentials
    are the config's own."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc
    raw = yaml.safe_load(config.read_text())
    if not isinstance(raw, dict):
        raise ImageBuildError(f"{config}: not a YAML mapping")
    creds = f"{CREDENTIALS_ROOT}/{cfg.device}"
    files: dict[str, str] = {}
    broker: dict[str, Any] = {}
    tls: dict[str, Any] = {}
    if fleet_dir is not None:
        url, auth, username, source = _from_fleet(cfg, config, fleet_dir, reenrol)
        tls = {"ca_file": f"{creds}/ca.crt"}
        if auth == "cert":
            tls |= {
                "cert_file": f"{creds}/{cfg.device}.crt",
                "key_file": f"{creds}/{cfg.device}.key",
            }
    else:
        source = f"the agent config {config}"
        url, auth, username = _from_config(cfg, config, creds, files, tls)
    broker["url"] = url
    if username:
        broker["username"] = username
    if "broker.env" in files:
        broker["password_env"] = PASSWORD_ENV
    if tls:
        broker["tls"] = tls
    for key in ("keepalive_s", "connect_timeout_s"):
        if isinstance(raw.get("broker"), dict) and key in raw["broker"]:
            broker[key] = raw["broker"][key]
    raw["broker"] = broker
    # The device's own broker settings, beside its credential: the agent's unit reads them
    # (EDGEAGENT_BROKER_CONFIG), so a release deployed later with another broker section (the
    # user's own config) still connects with this device's credential.
    files[BROKER_FILE] = (
        "# Written by `edgeagent image build`: this device's broker settings (no secret here).\n"
        + yaml.safe_dump({"broker": broker}, sort_keys=False)
    )
    text = "# Written by `edgeagent image build`: credentials are on the device, not here.\n"
    config_text = text + yaml.safe_dump(raw, sort_keys=False)
    data = {
        "kind": ENROLMENT_KIND,
        "format": ENROLMENT_FORMAT,
        "device": cfg.device,
        "fleet": cfg.fleet,
        "root": cfg.root,
        "service_user": service_user,
        "broker": {"url": url, "auth": auth, "username": username},
        "credentials": {"dir": creds, "files": files},
        "trusted_keys": trusted_keys,
    }
    return Enrolment(data, config_text, auth, source)


def _from_config(
    cfg: AgentConfig, config: Path, creds: str, files: dict[str, str], tls: dict[str, Any]
) -> tuple[str, str, str | None]:
    """The config's own credentials: URL, auth, username; the password and TLS files it names
    go into ``files`` (read here, they travel in the image) and their paths into ``tls``."""
    b = cfg.broker
    url = _plain_url(b)
    username, password = b.credentials()
    if b.password_env and not password:
        raise ImageBuildError(
            f"{config}: broker.password_env names ${b.password_env}, which is not set here: "
            "set it so the image can carry the password (or use --fleet-dir)"
        )
    auth = "password" if password else "none"
    if password:
        files["broker.env"] = f"{PASSWORD_ENV}={password}\n"
    if b.tls is not None:
        base = cfg.base_dir or config.resolve().parent
        for field, name in _TLS_FILES.items():
            path = getattr(b.tls, field)
            if path is not None:
                files[name] = _read_tls(path, base, field, config)
                tls[field] = f"{creds}/{name}"
        if b.tls.insecure:
            tls["insecure"] = True
    return url, auth, username


def _from_fleet(
    cfg: AgentConfig, config: Path, fleet_dir: Path, reenrol: bool
) -> tuple[str, str, str | None, str]:
    """Check the fleet folder can enrol the device (no change to it yet): URL, auth, source."""
    from ..fleetdir import FleetDir

    try:
        reg = FleetDir.open(fleet_dir).registry
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc
    if (reg.fleet, reg.root) != (cfg.fleet, cfg.root):
        raise ImageBuildError(
            f"{config}: fleet {cfg.fleet!r} (root {cfg.root!r}), but {fleet_dir} is fleet "
            f"{reg.fleet!r} (root {reg.root!r})"
        )
    old = reg.get(cfg.device)
    if old is not None and not reenrol:
        raise ImageBuildError(
            f"{cfg.device!r} is already enrolled in {fleet_dir} ({old.role}"
            f"{', revoked' if old.revoked else ''}): a re-flashed device: pass --reenrol "
            "(its old certificate goes on the CRL)"
        )
    host = reg.broker_hosts[0]
    url = f"mqtts://{f'[{host}]' if ':' in host else host}:{reg.broker.port}"
    return url, "cert", None, f"the fleet folder {fleet_dir}"


def issue(enrolment: Enrolment, config: Path, fleet_dir: Path, reenrol: bool) -> None:
    """Enrol the device in the fleet folder (a new certificate) and put it in the enrolment:
    done last, once everything else has succeeded, so a refused build enrols nothing."""
    from ..fleetdir import FleetDir, skills_from_config

    device = str(enrolment.data["device"])
    try:
        fd = FleetDir.open(fleet_dir)
        _, _, skills = skills_from_config(config)
        enrolled = fd.enroll(device, "device", skills=skills, force=reenrol)
    except ConfigError as exc:
        raise ImageBuildError(str(exc)) from exc
    folder = enrolled.folder
    files = enrolment.data["credentials"]["files"]
    files["ca.crt"] = (folder / "ca.crt").read_text()
    files[f"{device}.crt"] = (folder / f"{device}.crt").read_text()
    files[f"{device}.key"] = (folder / f"{device}.key").read_text()
    enrolment.source = f"the fleet folder {fleet_dir} (serial {enrolled.identity.serial})"


def bundle_config_path(config: Path) -> Path:
    """Where the bundle's config is written for the build: beside the original, so its skill
    modules and model paths resolve the same way (removed after the build)."""
    return config.resolve().parent / f".{config.stem}.image-{os.getpid()}.yaml"
