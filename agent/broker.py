"""How to reach a broker: URL, TLS and credentials, shared by agent configs, clients and the CLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError

DEFAULT_BROKER_URL = "mqtt://127.0.0.1:1883"
BROKER_ENV = "EDGEAGENT_BROKER"

_DEFAULT_PORTS = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


class TlsConfig(BaseModel):
    """TLS settings; with no ``ca_file`` the system trust store is used."""

    model_config = ConfigDict(extra="forbid")

    ca_file: Path | None = Field(default=None, description="CA bundle (PEM) to verify the broker.")
    cert_file: Path | None = Field(default=None, description="Client certificate (PEM).")
    key_file: Path | None = Field(default=None, description="Client private key (PEM).")
    insecure: bool = Field(
        default=False, description="Skip hostname verification (testing only; never in prod)."
    )


class BrokerConfig(BaseModel):
    """Where the broker is and how to authenticate."""

    # Errors must not echo a URL or password back into logs and terminals.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: str = Field(
        default=DEFAULT_BROKER_URL,
        description="mqtt://host:port or mqtts://host:port (TLS); credentials may be in the URL.",
    )
    username: str | None = Field(default=None, description="MQTT username.")
    password: str | None = Field(default=None, repr=False, description="MQTT password.")
    password_env: str | None = Field(
        default=None, description="Name of an environment variable holding the password."
    )
    tls: TlsConfig | None = Field(default=None, description="TLS settings (implied by mqtts://).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive, seconds.")
    connect_timeout_s: float = Field(
        default=10.0, gt=0, description="How long one connection attempt may take, seconds."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parse_url(value)
        return value

    @property
    def scheme(self) -> Literal["mqtt", "mqtts"]:
        return parse_url(self.url)[0]

    @property
    def host(self) -> str:
        return parse_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_url(self.url)[2]

    def credentials(self) -> tuple[str | None, str | None]:
        _, _, _, url_user, url_password = _split(self.url)
        user = self.username or url_user
        password = self.password or url_password
        if self.password_env:
            password = os.environ.get(self.password_env, password)
        return user, password

    def use_tls(self) -> bool:
        return self.tls is not None or self.scheme == "mqtts"

    def display(self) -> str:
        """The URL without any password, for logs."""
        scheme, host, port = parse_url(self.url)
        return f"{scheme}://{host}:{port}"

    @classmethod
    def from_url(cls, url: str | None) -> BrokerConfig:
        """From a URL, else ``$EDGEAGENT_BROKER``, else the default; ConfigError if invalid."""
        chosen = url or os.environ.get(BROKER_ENV) or DEFAULT_BROKER_URL
        try:
            return cls(url=chosen)
        except ValidationError as exc:
            reason = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ConfigError(reason) from None


def _masked(url: str) -> str:
    """``url`` with any password replaced by ``***``, for error messages."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    return f"{scheme}{sep}{userinfo}{at}{hostpart}"


def _split(raw: str) -> tuple[str, str, int, str | None, str | None]:
    url = raw if "://" in raw else "mqtt://" + raw
    shown = _masked(raw)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(
            f"unsupported broker URL scheme {scheme!r} in {shown!r}: use mqtt or mqtts"
        )
    if not parts.hostname:
        raise ValueError(f"broker URL {shown!r} has no host")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(f"broker URL {shown!r} has an invalid port") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return scheme, parts.hostname, port, user, password


def parse_url(url: str) -> tuple[Literal["mqtt", "mqtts"], str, int]:
    """Parse ``mqtt://host:port`` (``tcp://``, ``mqtts://``, ``ssl://`` or bare ``host:port``)."""
    scheme, host, port, _, _ = _split(url)
    return ("mqtts" if scheme in ("mqtts", "ssl") else "mqtt"), host, port
