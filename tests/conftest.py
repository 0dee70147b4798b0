"""Shared fixtures: a private mosquitto per test session, unique fleets per test."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "smart-home"

# The example skill modules import as `smarthome.*` in tests, as they do next to their configs.
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A mosquitto on a free port, from tests/broker/mosquitto.conf (never the system one)."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def broker_url(mosquitto: Mosquitto) -> str:
    return mosquitto.url


@pytest.fixture
def restartable_broker() -> Iterator[Mosquitto]:
    """A broker of the test's own, so restarting it disturbs no other test."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def fleet_name() -> str:
    """A fleet name unique to the test: topics never cross between tests."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cli_env(broker_url: str, fleet_name: str) -> dict[str, str]:
    env = dict(os.environ)
    env["EDGEAGENT_BROKER"] = broker_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(EXAMPLES), env.get("PYTHONPATH")]))
    return env
