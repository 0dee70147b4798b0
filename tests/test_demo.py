"""The README's quickstart: `edgeagent demo` runs a real fleet and shuts it down cleanly."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from tests.agents import ROOT

pytestmark = pytest.mark.broker


def test_demo_runs_a_fleet_and_calls_its_skills() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "edgeagent.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    listed = re.findall(r"^  (\S+)\s+online", out, flags=re.M)
    assert sorted(listed) == [
        "doorbell-front",
        "lamp-hall",
        "lamp-kitchen",
        "meter-basement",
        "pump-garage",
        "speaker-living",
        "thermostat-living",
    ]
    replies = [json.loads(m) for m in re.findall(r"-> (\{.*?\})  \(", out)]
    assert {"on": True, "brightness": 40} in replies
    assert any(r.get("target") == 21.5 for r in replies)
    assert re.search(r'event from doorbell-front: ring \{"who": "courier"', out)
    assert "-> error bad_request: invalid input: level" in out
    assert "Stopped 7 agents and the coordinator" in out
    # The coordinator: the doorbell rule lit the hall (and the kitchen follows), routing by
    # tags, fan-out, and a plain-language request carried out.
    assert 'lamp-hall -> {"on": true, "brightness": 80}' in out
    assert 'lamp-kitchen -> {"on": true, "brightness": 80}' in out
    assert re.search(r"--where room=hall -> \{[^}]*\} on lamp-hall", out)
    assert re.search(r'--all -> \{"lamp-hall": \{.*"lamp-kitchen"', out)
    assert re.search(r'ask "turn off the kitchen lights" -> turn_off where .*"on": false', out)
    # The model skills: a digit read by the meter's optimized model, a worn bearing flagged,
    # and a spoken command parsed and carried out.
    assert re.search(r"meter-basement\s+read_digit\s+model digits v1\+litert", out)
    assert '"digit": 3' in out
    assert re.search(r"worn bearing\) -> score [0-9.]+, anomalous=True", out)
    assert re.search(r"healthy pump\) -> score [0-9.]+, anomalous=False", out)
    assert "-> turn_off light in the kitchen" in out
