"""A private mosquitto running the fleet's secure configuration (tests, simulator, demo).

:func:`start_secure` makes a fleet in a temporary folder (or uses the one given), enrolls the
identities asked for, writes the generated config (``brokerconf.py``) and starts mosquitto on free
ports; :class:`SecureBroker` hands out each identity's :class:`~edgeagent.broker.BrokerConfig`.
Nothing touches the system broker on 1883.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .broker import BrokerConfig
from .fleetdir import FleetDir, Role
from .localbroker import Mosquitto, free_port
from .protocol import DEFAULT_FLEET, DEFAULT_ROOT, SideEffect

if TYPE_CHECKING:
    from .skills import Skill

#: Settings of the private broker (as in the packaged mosquitto.conf), besides the policy.
_LOCAL_SETTINGS = """\
persistence false
log_dest stderr
log_type error
log_type warning
max_inflight_messages 0
max_queued_messages 100000
set_tcp_nodelay true
"""


@dataclass(frozen=True, slots=True)
class Wanted:
    """An identity to enroll in a private secure fleet."""

    name: str
    role: Role
    grants: tuple[str, ...] = ()
    skills: Mapping[str, SideEffect] = field(default_factory=dict)
    password: bool = False


class _ConfiguredMosquitto(Mosquitto):
    """The launcher with a whole generated config instead of the packaged one."""

    def __init__(self, conf_text: str, port: int) -> None:
        super().__init__(port)
        self.conf.write_text(conf_text)


class SecureBroker:
    """A running private mosquitto with the fleet's TLS listeners, ACL and passwords."""

    def __init__(
        self, fleet: FleetDir, conf_dir: Path, tmp: tempfile.TemporaryDirectory[str] | None
    ):
        self.fleet = fleet
        self.conf_dir = conf_dir
        self._tmp = tmp
        self.port = fleet.registry.broker.port
        self.password_port = fleet.registry.broker.password_port
        self.mosquitto = self._make()

    def _make(self) -> _ConfiguredMosquitto:
        extra = _LOCAL_SETTINGS
        if os.geteuid() == 0:
            # As root, mosquitto drops to the `mosquitto` user before reading the ACL and the
            # password file, which that user cannot read in a 0700 temporary folder.
            extra += "user root\n"
        self.fleet.write_broker_config(self.conf_dir, bind="127.0.0.1", extra_global=extra)
        conf = (self.conf_dir / "mosquitto.conf").read_text()
        return _ConfiguredMosquitto(conf, self.port)

    @property
    def url(self) -> str:
        """The certificate listener."""
        return f"mqtts://127.0.0.1:{self.port}"

    @property
    def password_url(self) -> str:
        return f"mqtts://127.0.0.1:{self.password_port}"

    @property
    def ca_file(self) -> Path:
        return self.fleet.ca_cert

    def broker_config(self, name: str) -> BrokerConfig:
        """How identity ``name`` connects (URL, CA, its certificate or password)."""
        cfg = self.fleet.broker_config(name)
        url = self.password_url if cfg.username else self.url
        return cfg.model_copy(update={"url": url})

    def enroll(self, wanted: Wanted) -> None:
        """Enroll one more identity; takes effect at :meth:`restart` (the ACL is read at start)."""
        self.fleet.enroll(
            wanted.name,
            wanted.role,
            grants=wanted.grants,
            skills=wanted.skills,
            password=wanted.password,
        )

    def revoke(self, name: str) -> None:
        """Revoke ``name``; the broker refuses it after :meth:`restart`."""
        self.fleet.revoke(name)

    def start(self) -> SecureBroker:
        """Start mosquitto unless it already runs (``start_secure`` starts it by default)."""
        proc = self.mosquitto.proc
        if proc is None or proc.poll() is not None:
            self.mosquitto.start()
        return self

    def restart(self) -> None:
        """Regenerate the config from the registry and restart on the same ports."""
        self.mosquitto.close()
        self.mosquitto = self._make()
        self.mosquitto.restart()

    def stop(self) -> None:
        self.mosquitto.stop()

    def close(self) -> None:
        self.mosquitto.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> SecureBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_secure(
    identities: Iterable[Wanted] = (),
    *,
    fleet: str = DEFAULT_FLEET,
    root: str = DEFAULT_ROOT,
    fleet_dir: Path | None = None,
    start: bool = True,
) -> SecureBroker:
    """A private secure mosquitto for ``fleet`` with ``identities`` enrolled.

    With no ``fleet_dir`` the fleet (CA, keys, config) lives in a temporary folder removed by
    :meth:`SecureBroker.close`. Ports are free ports on 127.0.0.1.
    """
    tmp = None
    if fleet_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ea-fleet-")
        fleet_dir = Path(tmp.name) / "fleet"
    fd = FleetDir.create(
        fleet_dir,
        fleet=fleet,
        root=root,
        hosts=("127.0.0.1", "localhost"),
        port=free_port(),
        password_port=free_port(),
    )
    for w in identities:
        fd.enroll(w.name, w.role, grants=w.grants, skills=w.skills, password=w.password)
    broker = SecureBroker(fd, fleet_dir.parent / f"{fleet_dir.name}-broker", tmp)
    return broker.start() if start else broker


# --------------------------------------------------------------------------------------------
# The simulator's broker mode

#: Identities the simulator's own clients use on a secure broker.
SIM_OPERATOR = "sim-operator"
SIM_COORDINATOR = "sim-coordinator"


class _SimDevice(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def skills(self) -> Sequence[Skill]: ...


def start_secure_sim(
    devices: Iterable[_SimDevice], fleet: str, root: str
) -> tuple[SecureBroker, Callable[[str, Any], BrokerConfig]]:
    """A secure private broker for a simulated fleet: every device enrolled under its own id
    with its skills; the workload and monitor as an operator, coordinators as a coordinator.
    Returns the broker and ``identity(client_id, device)`` for the runner's transports."""
    wanted = [
        Wanted(d.id, "device", skills={s.name: s.spec.side_effect for s in d.skills})
        for d in devices
    ]
    wanted += [Wanted(SIM_OPERATOR, "operator"), Wanted(SIM_COORDINATOR, "coordinator")]
    secure = start_secure(wanted, fleet=fleet, root=root)
    cache: dict[str, BrokerConfig] = {}

    def identity(client_id: str, device: Any) -> BrokerConfig:
        if device is not None:
            name = str(device.id)
        else:
            name = SIM_COORDINATOR if client_id.startswith("sim-coord") else SIM_OPERATOR
        if name not in cache:
            cache[name] = secure.broker_config(name)
        return cache[name]

    return secure, identity
