"""Rollouts in the fleet simulator: the real operator (rollout Driver + planner) updating simulated
devices through their system skills, with faults, in embedded mode (virtual time) and against a
real mosquitto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgeagent.errors import ConfigError
from edgeagent.simulator import simulate
from edgeagent.simulator.render import render_html, summary_table
from edgeagent.simulator.spec import FleetSpec, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"

BASE = """\
name: rollout-test
fleet: {fleet}
seed: 5
duration_s: {duration}
groups:
  - name: hub
    count: 40
    profile: pi4
    tags: {{kind: hub}}
    skills: [{{module: smarthome.echo}}]
    health_interval_s: 60
  - name: cam
    count: 10
    profile: x86-64
    tags: {{kind: cam}}
    skills: [{{module: smarthome.echo}}]
    health_interval_s: 60
    link: {{bandwidth_mbps: 2}}
rollout:
  release: "2.0.0"
  start_s: {start}
  canary: 2
  waves: "10%,50%,100%"
  parallel: 10
  size_bytes: 30000000
  changed_bytes: {changed}
{extra}
"""


def spec(extra: str = "", *, fleet: str = "rollsim", duration: int = 1800, start: int = 60,
         changed: int = 300_000, assertions: str = "") -> FleetSpec:  # fmt: skip
    base = BASE.format(fleet=fleet, duration=duration, start=start, extra="", changed=changed)
    # A rollout key given in ``extra`` replaces the base's (YAML keys must not repeat).
    keys = {line.split(":")[0] for line in extra.splitlines() if line.startswith("  ")}
    base = "".join(line for line in base.splitlines(True) if line.split(":")[0] not in keys)
    text = base + extra + "\n" + assertions
    return parse_spec(text, source="rollout.yaml", base_dir=EXAMPLES)


def run(s: FleetSpec, **kw: Any) -> dict[str, Any]:
    report: dict[str, Any] = simulate(s, **kw).report
    return report


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    return {a["text"]: a["passed"] for a in report["assertions"]}


CHECKS = """\
assertions:
  - {check: "rollout done < 30 min"}
  - {check: "no device without a working release"}
  - {check: "rollout failures == 0"}
  - {check: "rollout bytes_per_device_max <= 300000"}
"""


def test_good_rollout_updates_every_device_and_passes_its_assertions() -> None:
    report = run(spec(assertions=CHECKS))
    r = report["rollout"]
    assert r["phase"] == "done", r
    assert r["counts"]["healthy"] == 50
    assert r["failures"] == 0
    assert r["on_release"] == {"new": 50, "devices": 50}
    # The canary, then 10%, 50%, 100% of the 50: each wave starts once the last one is over.
    assert [w["size"] for w in r["waves"]] == [2, 3, 20, 25]
    assert r["waves"][0]["canary"]
    assert not r["waves"][1]["canary"]
    for a, b in zip(r["waves"], r["waves"][1:], strict=False):
        assert a["end_s"] is not None
        assert b["start_s"] >= a["end_s"] - 1e-6
    # One changed file of 300 kB per device, not the 30 MB release.
    assert r["bytes"]["total"] == 50 * 300_000
    assert r["bytes"]["per_device_max"] == 300_000
    # A 300 kB file at 2 Mbit/s takes 1.2 s: the cams' updates are not instant, nor long.
    assert 0 < r["duration_s"] < 1800
    assert all(verdicts(report).values()), report["assertions"]
    text = summary_table(report)
    assert "rollout sim: 1.0.0 -> 2.0.0  done" in text
    assert "wave 1/4 canary" in text
    assert 'id="rollout"' in render_html(report)


def test_full_release_moves_every_byte_and_takes_longer_on_a_slow_link() -> None:
    base = spec()
    assert base.rollout is not None
    change = {"changed_bytes": None, "group": "cam", "canary": 0, "waves": "100%"}
    report = run(base.model_copy(update={"rollout": base.rollout.model_copy(update=change)}))
    r = report["rollout"]
    assert r["phase"] == "done"
    assert r["selected"] == 10
    assert r["bytes"]["total"] == 10 * 30_000_000
    assert r["bytes"]["by_group"]["hub"]["total"] == 0  # not selected: untouched
    # 30 MB at 2 Mbit/s is 120 s of transfer per device, all ten at once.
    assert r["duration_s"] >= 120


def test_bad_release_halts_on_the_canary_and_leaves_the_rest_alone() -> None:
    checks = """\
assertions:
  - {check: "rollout halted"}
  - {check: "no device without a working release"}
  - {check: "rollout done"}
"""
    report = run(spec("  bad: {groups: [hub, cam]}\n  confirm_within_s: 30", assertions=checks))
    r = report["rollout"]
    assert r["phase"] == "halted", r
    assert r["halted"].startswith("canary failed"), r
    assert r["counts"]["rolled_back"] == 2
    assert r["counts"]["pending"] == 48
    assert {f["state"] for f in r["failed_devices"]} == {"rolled_back"}
    assert all("self-test" in f["reason"] for f in r["failed_devices"])
    assert r["bytes"]["devices"] == 2  # nobody past the canary fetched anything
    assert r["on_release"]["new"] == 0
    assert r["without_release"] == 0
    assert verdicts(report) == {
        "rollout halted": True, "no device without a working release": True,
        "rollout done": False,
    }  # fmt: skip


def test_a_small_share_of_bad_devices_is_tolerated_up_to_max_failures() -> None:
    extra = '  bad: {fraction: 0.1}\n  max_failures: "20%"\n  canary: 0\n  confirm_within_s: 30'
    r = run(spec(extra))["rollout"]
    # Not halted: 6 failures among 50 attempted is within 20%. Every bad device fails its
    # self-test and is switched back by its own timer; the driver, done once every device has an
    # outcome, may stop before the last ones report rolled_back (they stay "failed" to it), but
    # on the devices nobody is left without a working release.
    assert r["phase"] == "done"
    assert r["failures"] == r["counts"]["failed"] + r["counts"]["rolled_back"] > 0
    assert r["counts"]["healthy"] + r["failures"] == 50
    assert all("self-test" in f["reason"] for f in r["failed_devices"])
    assert r["on_release"]["new"] == r["counts"]["healthy"]
    assert r["without_release"] == 0


def test_crash_and_partition_mid_rollout() -> None:
    faults = """\
faults:
  - {name: cut off, kind: partition, group: hub, count: 3, at_s: 10, duration_s: 400}
  - {name: power cut, kind: crash, group: cam, at_s: 75, duration_s: 30}
"""
    # The crash hits every cam while the first wave updates (a full release: 120 s of transfer
    # at 2 Mbit/s), so some cam is cut mid-update; the partitioned hubs are offline at the start.
    extra = '  max_failures: "100%"\n  deadline_s: 200\n  canary: 0\n'
    checks = CHECKS.replace("failures == 0", "failures <= 10").replace("300000", "30000000")
    s = spec(extra + faults, changed=30_000_000, assertions=checks)
    report = run(s)
    r = report["rollout"]
    timeline = report["timeline"]
    cut = next(e for e in timeline if e.get("name") == "cut off")["targets"]
    assert len(cut) == 3
    assert r["phase"] == "done", r
    assert r["without_release"] == 0
    # Partitioned before the rollout started: offline at their turn, caught up on return.
    assert r["counts"]["pending"] == 0
    states = {f["device"]: f for f in r["failed_devices"]}
    assert not set(cut) & set(states)
    assert r["bytes"]["by_group"]["hub"]["total"] == 40 * 30_000_000
    # A cam cut mid-download comes back on its old release (its agent does not pick the update
    # up by itself); the operator, which saw it go away while downloading, asks again and the
    # transfer resumes from its partial files: every cam ends on the new release, and no byte
    # travelled twice.
    assert not states, states
    assert r["on_release"]["new"] == 50
    assert r["bytes"]["by_group"]["cam"]["total"] == 10 * 30_000_000
    assert verdicts(report)["no device without a working release"]


def test_same_seed_same_report() -> None:
    faults = "faults:\n  - {name: c, kind: crash, group: hub, count: 5, at_s: 90, duration_s: 30}\n"
    a = run(spec(faults))
    b = run(spec(faults))
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = run(spec(faults).model_copy(update={"seed": 6}))
    assert c["rollout"]["waves"] != a["rollout"]["waves"] or c["timeline"] != a["timeline"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("  bad: {groups: [attic]}", "rollout.bad.groups.0: no group 'attic'"),
        ("  bad: {devices: [hub-41]}", "rollout.bad.devices.0: no device 'hub-41'"),
        ('  waves: "50%,40%,100%"', "must grow"),
        ('  max_failures: "lots"', "neither a count"),
        ("  changed_bytes: 40000000", "changed_bytes 40000000 > size_bytes"),
        ("  group: attic", "rollout.group: no group 'attic'"),
    ],
)
def test_bad_rollout_specs_are_refused_with_the_field(change: str, message: str) -> None:
    text = BASE.format(fleet="x", duration=600, start=60, extra="", changed=300_000).replace(
        "  changed_bytes: 300000\n", f"  changed_bytes: 300000\n{change}\n"
    )
    if "waves" in change or "max_failures" in change or "changed_bytes: 4" in change:
        text = text.replace('  waves: "10%,50%,100%"\n', "").replace(
            "  changed_bytes: 300000\n", ""
        )
    with pytest.raises(ConfigError, match=message):
        parse_spec(text, source="rollout.yaml", base_dir=EXAMPLES)


def test_rollout_checks_need_a_rollout_and_no_scope() -> None:
    no_rollout = "name: x\ngroups: [{name: a, profile: pi4, skills: [{module: smarthome.echo}]}]\n"
    with pytest.raises(ConfigError, match="needs a 'rollout' section"):
        parse_spec(no_rollout + "assertions: [{check: rollout done}]\n", base_dir=EXAMPLES)
    with pytest.raises(ConfigError, match="takes no 'skill'"):
        spec(assertions="assertions: [{check: rollout done, skill: echo}]\n")
    with pytest.raises(ConfigError, match="rollout check"):
        spec(assertions="assertions: [{check: rollout finished soon}]\n")


@pytest.mark.broker
def test_broker_mode_rollout_on_a_real_mosquitto(broker_url: str, fleet_name: str) -> None:
    text = f"""\
name: rollout-broker
fleet: {fleet_name}
seed: 2
duration_s: 18
groups:
  - name: hub
    count: 20
    profile: x86-64
    tags: {{kind: hub}}
    skills: [{{module: smarthome.echo}}]
rollout:
  release: "2.0.0"
  start_s: 1
  canary: 1
  waves: "50%,100%"
  parallel: 20
  size_bytes: 2000000
  changed_bytes: 100000
  restart_s: 0.3
  confirm_within_s: 10
assertions:
  - {{check: "rollout done < 15 s"}}
  - {{check: "no device without a working release"}}
"""
    report = run(parse_spec(text, source="broker.yaml", base_dir=EXAMPLES), broker=broker_url)
    r = report["rollout"]
    assert report["mode"] == "broker"
    assert r["phase"] == "done", r
    assert r["counts"]["healthy"] == 20
    assert r["bytes"]["total"] == 20 * 100_000
    assert all(verdicts(report).values()), report["assertions"]


def test_the_example_scenario_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "rollout" / "fleet.yaml"
    s = load_spec(example)
    assert s.rollout is not None
    assert s.devices == 300
    assert s.rollout.changed < s.rollout.size_bytes
    assert {f.kind for f in s.faults} >= {"crash", "partition"}
    assert sum(a.is_rollout for a in s.assertions) == 4


def test_crash_after_the_switch_goes_back_unless_committed() -> None:
    # Every device updates at once at 60 s (300 kB: 0.24 s on the hubs' link, 1.2 s on the
    # cams'). A pi4 hub's agent restarts in 18 s, an x86-64 cam's in 3 s: at 70 s every hub is
    # switched but not yet confirmed, every cam has committed. Then everyone loses power.
    faults = """\
faults:
  - {name: hubs off, kind: crash, group: hub, at_s: 70, duration_s: 30}
  - {name: cams off, kind: crash, group: cam, at_s: 70, duration_s: 30}
"""
    extra = '  canary: 0\n  waves: "100%"\n  parallel: 50\n  max_failures: "100%"\n'
    r = run(spec(extra + faults))["rollout"]
    assert r["phase"] == "done", r
    assert r["counts"]["healthy"] == 10  # the cams: committed before the crash, still on it
    assert r["counts"]["rolled_back"] == 40  # the hubs: back on 1.0.0 when power returned
    assert r["on_release"]["new"] == 10
    assert r["without_release"] == 0
    assert {f["device_reason"] for f in r["failed_devices"]} == {"not confirmed before a restart"}
    assert r["failed_devices_more"] == 0
