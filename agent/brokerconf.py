"""The fleet's broker policy as a mosquitto configuration: a pure function of the registry.

:func:`render` turns a :class:`~edgeagent.fleetdir.FleetRegistry` into ``mosquitto.conf``,
``acl`` and (when some identity uses a password) ``passwd``; nothing here reads or writes files.
The policy (``docs/security.md`` has it in prose, and for EMQX and HiveMQ), with
``B = {root}/{fleet}``:

every enrolled identity (``pattern`` lines: they apply to every authenticated client)
    reads ``B/dev/+/state``, ``…/manifest``, ``…/health``, ``B/dev/+/event/+``;
    reads and writes its own ``B/client/{client id}/#`` (replies, sync marker, forwards);
    calls read skills: ``B/dev/D/call/S`` for each skill S device D serves as ``read`` (see
    :func:`read_calls`), and ``B/coord/call/S`` when every device serving S serves it as
    ``read``.
a device D (``user D``)
    writes ``B/dev/D/state``, ``…/manifest`` (both retained), ``…/health``, ``B/dev/D/event/+``;
    reads ``B/dev/D/call/+``; writes replies to ``B/client/+/reply`` and ``B/client/+/fwd``.
    For updates (agent/system.py, deploy/transfer_mqtt.py): writes its reports on
    ``B/dev/D/update`` and file requests on ``B/files/+/get``, reads its file replies on
    ``B/dev/D/files/in``; its self-test calls its own ``B/dev/D/call/_ping`` and is answered on
    ``B/dev/D/update/self-test``.
a coordinator
    reads (and shares) ``B/coord/call/+`` and the events its rules follow; forwards to
    ``B/dev/+/call/+`` except the system skills (a ``deny`` line each: mosquitto applies denials
    before grants); replies to ``B/client/+/reply``.
an operator
    calls anything: ``B/dev/+/call/+`` and ``B/coord/call/+``, the system skills too (only
    operators may). Rollouts (deploy/rollout_io.py): reads and writes ``B/rollout/#`` (states,
    driver records, control); reads the devices' ``B/dev/+/update`` reports; serves files: reads
    ``B/files/+/get``, writes ``B/dev/+/files/in``.
grants (devices and clients)
    ``SKILL``: ``B/dev/+/call/SKILL`` and ``B/coord/call/SKILL``; ``DEVICE/SKILL``:
    ``B/dev/DEVICE/call/SKILL``. A grant of a system skill (``system.*``) gives nothing but an
    operator; nor is a system skill ever opened to everyone as a read skill.

A skill no enrolled device declares is treated as ``actuate``: only operators, coordinators and
grantees may call it. mosquitto's ACL is an allow-list: anything not listed is refused (a refused
PUBLISH is dropped; MQTT 5 QoS 1 gets a PUBACK "not authorized"; a refused SUBSCRIBE gets that
reason in its SUBACK). Revoked identities get no rules (and their certificate is on the CRL).
"""

from __future__ import annotations

from dataclasses import dataclass

from .fleetdir import BrokerSettings, FleetRegistry, Identity
from .protocol import OPERATOR_PREFIXES, SYSTEM_PREFIX, SYSTEM_SKILLS

#: Shared-subscription groups matched by the coordinator's rules (any group name).
_ANY_GROUP = "$share/+/"


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """Paths of the broker's files as the broker host sees them."""

    ca: str
    cert: str
    key: str
    crl: str
    acl: str
    passwd: str

    @classmethod
    def under(cls, folder: str) -> BrokerFiles:
        f = folder.rstrip("/")
        return cls(
            f"{f}/ca.crt",
            f"{f}/broker.crt",
            f"{f}/broker.key",
            f"{f}/crl.pem",
            f"{f}/acl",
            f"{f}/passwd",
        )


def skill_effects(registry: FleetRegistry) -> dict[str, dict[str, str]]:
    """``{device: {skill: side_effect}}`` over the active devices; the system and data skills
    left out (only operators call them, whatever a device declares)."""
    return {
        d.name: {s: e for s, e in d.skills.items() if not s.startswith(OPERATOR_PREFIXES)}
        for d in registry.active("device")
    }


def coord_read_skills(registry: FleetRegistry) -> list[str]:
    """Skills anyone may call through the coordinator: read on every device that serves them."""
    seen: dict[str, bool] = {}
    for skills in skill_effects(registry).values():
        for name, effect in skills.items():
            seen[name] = seen.get(name, True) and effect == "read"
    return sorted(name for name, ok in seen.items() if ok)


def read_calls(registry: FleetRegistry) -> list[str]:
    """Call topics open to every enrolled identity: read skills, on devices and coordinators.

    A skill read on every device that serves it is opened as ``dev/+/call/S`` when every active
    device has declared its skills (one line per skill name instead of one per device); if some
    device's skills are unknown, its skills could be anything, so lines stay per device.
    """
    base = registry.topics.base
    effects = skill_effects(registry)
    declared = all(d.skills for d in registry.active("device"))
    everywhere = set(coord_read_skills(registry)) if declared else set()
    calls = [f"{base}/dev/+/call/{s}" for s in sorted(everywhere)]
    for device, skills in sorted(effects.items()):
        calls += [
            f"{base}/dev/{device}/call/{s}"
            for s, effect in sorted(skills.items())
            if effect == "read" and s not in everywhere
        ]
    return calls + [f"{base}/coord/call/{s}" for s in coord_read_skills(registry)]


def _grant_lines(base: str, grants: list[str]) -> list[str]:
    lines = []
    for g in grants:
        device, sep, skill = g.rpartition("/")
        if skill.startswith(SYSTEM_PREFIX):
            lines.append(f"# grant {g} ignored: only operators call the system skills")
        elif sep:
            lines.append(f"topic write {base}/dev/{device}/call/{skill}")
        else:
            lines += [
                f"topic write {base}/dev/+/call/{skill}",
                f"topic write {base}/coord/call/{skill}",
            ]
    return lines


def _user_lines(base: str, ident: Identity) -> list[str]:
    lines: list[str]
    if ident.role == "device":
        dev = f"{base}/dev/{ident.name}"
        lines = [
            f"topic write {dev}/state",
            f"topic write {dev}/manifest",
            f"topic write {dev}/health",
            f"topic write {dev}/event/+",
            f"topic read {dev}/call/+",
            f"topic write {base}/client/+/reply",
            f"topic write {base}/client/+/fwd",
            f"topic write {dev}/update",
            f"topic write {dev}/call/_ping",
            f"topic readwrite {dev}/update/self-test",
            f"topic write {base}/files/+/get",
            f"topic read {dev}/files/in",
        ]
    elif ident.role == "coordinator":
        lines = [
            f"topic read {base}/coord/call/+",
            f"topic read {_ANY_GROUP}{base}/coord/call/+",
            f"topic read {_ANY_GROUP}{base}/dev/+/event/+",
            f"topic write {base}/dev/+/call/+",
            f"topic write {base}/client/+/reply",
            *[f"topic deny {base}/dev/+/call/{s}" for s in SYSTEM_SKILLS],
        ]
    elif ident.role == "operator":
        return [  # it calls everything: grants add nothing
            f"topic write {base}/dev/+/call/+",
            f"topic write {base}/coord/call/+",
            f"topic readwrite {base}/rollout/#",
            f"topic read {base}/dev/+/update",
            f"topic read {base}/files/+/get",
            f"topic write {base}/dev/+/files/in",
        ]
    else:
        lines = []
    return lines + _grant_lines(base, ident.grants)


def acl_text(registry: FleetRegistry) -> str:
    """The mosquitto ``acl_file`` for ``registry``."""
    base = registry.topics.base
    out = [
        f"# edgeagent broker policy for fleet {registry.fleet!r} (topics under {base}/).",
        "# Generated by `edgeagent broker config`; edit the fleet, not this file.",
        "# Anything not allowed here is refused.",
        "",
        "# Every enrolled identity: read the fleet's state, manifests, health and events,",
        "# use its own client folder, and call read-only skills.",
        f"pattern read {base}/dev/+/state",
        f"pattern read {base}/dev/+/manifest",
        f"pattern read {base}/dev/+/health",
        f"pattern read {base}/dev/+/event/+",
        f"pattern readwrite {base}/client/%c/#",
    ]
    out += [f"pattern write {call}" for call in read_calls(registry)]
    for ident in registry.active():
        lines = _user_lines(base, ident)
        if lines:
            out += ["", f"# {ident.role} {ident.name}", f"user {ident.name}", *lines]
    return "\n".join(out) + "\n"


def passwd_text(registry: FleetRegistry) -> str:
    """The mosquitto ``password_file``: active password identities and their ``$7$`` hashes."""
    return "".join(
        f"{i.name}:{i.password_hash}\n"
        for i in registry.active()
        if i.auth == "password" and i.password_hash
    )


def mosquitto_conf(
    registry: FleetRegistry,
    files: BrokerFiles,
    settings: BrokerSettings,
    *,
    extra_global: str = "",
) -> str:
    """``mosquitto.conf``: TLS listener requiring a fleet certificate (CN = identity), a TLS
    password listener when some identity uses a password, no anonymous access, the ACL."""
    bind = f" {settings.bind}" if settings.bind else ""
    with_passwords = bool(passwd_text(registry))
    tls = [f"cafile {files.ca}", f"certfile {files.cert}", f"keyfile {files.key}"]
    lines = [
        f"# mosquitto (2.0+) configuration for edgeagent fleet {registry.fleet!r}.",
        "# Generated by `edgeagent broker config`; regenerate instead of editing.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {files.acl}",
    ]
    if with_passwords:
        lines.append(f"password_file {files.passwd}")
    if extra_global.strip():
        lines += ["", extra_global.strip()]
    lines += [
        "",
        "# Identities with a certificate from the fleet CA; the certificate's CN is the username.",
        f"listener {settings.port}{bind}",
        *tls,
        f"crlfile {files.crl}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",
    ]
    if with_passwords:
        lines += [
            "",
            "# Identities with a username and password (TLS, no client certificate).",
            f"listener {settings.password_port}{bind}",
            *tls,
            "require_certificate false",
            "tls_version tlsv1.2",
        ]
    return "\n".join(lines) + "\n"


def render(
    registry: FleetRegistry,
    files: BrokerFiles,
    settings: BrokerSettings | None = None,
    *,
    extra_global: str = "",
) -> dict[str, str]:
    """Every generated file: ``{"mosquitto.conf": …, "acl": …[, "passwd": …]}``."""
    settings = settings or registry.broker
    out = {
        "mosquitto.conf": mosquitto_conf(registry, files, settings, extra_global=extra_global),
        "acl": acl_text(registry),
    }
    passwd = passwd_text(registry)
    if passwd:
        out["passwd"] = passwd
    return out
