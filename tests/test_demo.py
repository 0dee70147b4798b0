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
    assert sorted(listed) == ["doorbell-front", "lamp-hall", "lamp-kitchen", "thermostat-living"]
    replies = [json.loads(m) for m in re.findall(r"-> (\{.*?\})  \(", out)]
    assert {"on": True, "brightness": 40} in replies
    assert any(r.get("target") == 21.5 for r in replies)
    assert re.search(r'event from doorbell-front: ring \{"who": "courier"', out)
    assert "-> error bad_request: invalid input: level" in out
    assert "Stopped 4 agents" in out
