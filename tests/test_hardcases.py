"""Hard cases without a broker: the policy, privacy, and the bounded, crash-safe store."""

from __future__ import annotations

import base64
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from edgeagent import AgentConfig, ConfigError, load_config
from edgeagent.clock import ManualClock
from edgeagent.config import load_skills
from edgeagent.data_skills import CaseKeeper, Correction, HardCases
from edgeagent.errors import BadRequest, NotFound
from edgeagent.models.hardcase_store import HardCaseStore
from edgeagent.models.hardcases import (
    RAW_KEY,
    REDACTED,
    DataConfig,
    HardCase,
    SkillPolicy,
    decide,
    is_raw,
    make_case,
    new_case_id,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "smart-home"


def case(
    i: int, *, skill: str = "read_digit", reason: Any = "low_confidence", pad: int = 0
) -> HardCase:
    return HardCase(
        id=f"dev:{i:016x}",
        device="dev",
        skill=skill,
        reason=reason,
        confidence=0.5,
        input={"n": i, "note": "x" * pad},
        output={"digit": i % 10},
        ts=1000.0 + i,
    )


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("cases-*.jsonl"))


# policy ---------------------------------------------------------------------------------------


def test_nothing_is_kept_unless_the_skill_is_named(tmp_path: Path) -> None:
    keeper = CaseKeeper("m", DataConfig(), tmp_path)
    assert keeper.offer("read_digit", {"pixels": [1.0] * 64}, {"digit": 1}, confidence=0.01) is None
    assert keeper.store.statistics().cases == 0
    assert decide(None, confidence=0.0, disagreement=True, rng=random.Random(0)) is None
    # A skill set that keeps cases keeps nothing until an agent gives it a keeper.
    assert HardCases().offer("read_digit", {}, {}, confidence=0.0) is None
    # An agent without a data section serves no data.* skill.
    cfg = AgentConfig(device="m", skills=[{"module": "smarthome.meter:DigitReader"}])
    skills, _, _ = load_skills(cfg)
    assert not [s.name for s in skills if s.name.startswith("data.")]


def test_reasons_follow_the_policy() -> None:
    rng = random.Random(0)
    default = SkillPolicy()
    assert decide(default, confidence=0.59, rng=rng) == "low_confidence"
    assert decide(default, confidence=0.6, rng=rng) is None
    assert decide(default, confidence=float("nan"), rng=rng) is None
    assert decide(default, confidence=0.99, disagreement=True, rng=rng) == "disagreement"
    only_low = SkillPolicy(reasons=["low_confidence"], confidence_below=0.3)
    assert decide(only_low, confidence=0.99, disagreement=True, rng=rng) is None
    assert decide(only_low, confidence=0.29, rng=rng) == "low_confidence"
    sampled = SkillPolicy(reasons=["sampled"], sample_rate=0.25)
    kept = sum(decide(sampled, confidence=0.99, rng=rng) == "sampled" for _ in range(4000))
    assert 850 < kept < 1150, kept


# privacy --------------------------------------------------------------------------------------


def test_raw_inputs_are_digested_unless_keep_raw(tmp_path: Path) -> None:
    pixels = [float((i * 7) % 17) for i in range(64)]
    audio = bytes(range(200))
    cfg = DataConfig(skills={"read_digit": SkillPolicy(), "hear": SkillPolicy(keep_raw=True)})
    keeper = CaseKeeper("m", cfg, tmp_path, rng=random.Random(1))
    a = keeper.offer("read_digit", {"pixels": pixels, "clip": audio, "row": [1, 2]}, {"digit": 3},
                     confidence=0.2)  # fmt: skip
    b = keeper.offer("hear", {"pixels": pixels, "clip": audio}, {"ok": True}, confidence=0.2)
    assert a is not None
    assert b is not None
    cases = {c.id: c for c in keeper.store.page(0, limit=10, max_bytes=10**6).cases}
    private = cases[a].input
    assert is_raw(private["pixels"])
    assert private["pixels"][RAW_KEY]["shape"] == [64]
    assert is_raw(private["clip"])
    assert private["clip"][RAW_KEY]["bytes"] == 200
    assert private["row"] == [1, 2]  # a short list is no signal
    # The digest identifies the same image again without revealing it.
    again = make_case(policy=SkillPolicy(), reason="sampled", case_id="x", device="m",
                      skill="read_digit", input={"pixels": pixels}, output=None, now=0.0,
                      max_case_bytes=16384)  # fmt: skip
    assert again is not None
    assert again.input["pixels"] == private["pixels"]
    # On disk: nothing of the raw data in the private case's line.
    lines = [json.loads(x) for p in sorted(tmp_path.glob("m/cases-*.jsonl"))
             for x in p.read_text().splitlines()]  # fmt: skip
    line = next(x for x in lines if x["id"] == a)
    assert "pixels" in line["input"]
    assert pixels[:16] != line["input"]["pixels"]
    assert json.dumps(pixels[:8])[1:-1] not in json.dumps(line)
    # keep_raw: the same input kept whole (bytes as base64).
    kept = cases[b].input
    assert kept["pixels"] == pixels
    assert base64.b64decode(kept["clip"]["$bytes"]) == audio


def test_text_is_redacted_and_clipped(tmp_path: Path) -> None:
    policy = SkillPolicy(redact=[r"[\w.]+@[\w.]+", r"\b\d{4,}\b"], max_text_chars=60)
    keeper = CaseKeeper("spk", DataConfig(skills={"parse": policy}), tmp_path,
                        redact=lambda t: t.replace("Alice", "[name]"))  # fmt: skip
    text = "Alice says mail bob@example.com code 123456 " + "and more words " * 10
    cid = keeper.offer("parse", {"text": text}, {"intent": "notify", "echo": text},
                       confidence=0.1)  # fmt: skip
    assert cid is not None
    stored = keeper.store.find(cid)
    assert stored is not None
    for value in (stored.input["text"], stored.output["echo"]):
        assert "bob@example.com" not in value
        assert "123456" not in value
        assert "Alice" not in value
        assert value.startswith(f"[name] says mail {REDACTED} code {REDACTED}")
        assert len(value) == 60
        assert value.endswith("…")
    raw = (tmp_path / "spk").glob("cases-*.jsonl")
    assert all("bob@" not in p.read_text() for p in raw)


def test_bad_policies_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(
        "device: m\nskills:\n  - module: smarthome.meter:DigitReader\ndata:\n"
        "  skills:\n    read_digit: {reasons: [low_confidence, hunch]}\n"
    )
    with pytest.raises(ConfigError, match=r"agent.yaml:6.*reasons"):
        load_config(tmp_path / "agent.yaml")
    (tmp_path / "agent.yaml").write_text(
        "device: m\nskills:\n  - module: smarthome.meter:DigitReader\ndata:\n"
        "  skills:\n    read_digit: {redact: ['(unclosed']}\n"
    )
    with pytest.raises(ConfigError, match=r"redact\[0\].*regular expression"):
        load_config(tmp_path / "agent.yaml")
    cfg = AgentConfig(device="m", skills=[{"module": "smarthome.meter:DigitReader"}],
                      data={"dir": str(tmp_path), "skills": {"read_digits": {}}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"read_digits.*skills: read_digit"):
        load_skills(cfg)


def test_a_case_too_large_is_not_kept_and_raw_gives_way_first() -> None:
    big = [float(i) for i in range(3000)]
    kw: dict[str, Any] = dict(reason="sampled", case_id="d:1", device="d", skill="s",
                              output=None, now=0.0, max_case_bytes=2048)  # fmt: skip
    digested = make_case(policy=SkillPolicy(keep_raw=True), input={"x": big}, **kw)
    assert digested is not None
    assert is_raw(digested.input["x"])
    text = SkillPolicy(max_text_chars=100_000)
    assert make_case(policy=text, input={"t": "y" * 5000}, **kw) is None


# the store ------------------------------------------------------------------------------------


def test_the_store_keeps_the_newest_cases_within_the_count(tmp_path: Path) -> None:
    store = HardCaseStore(tmp_path, max_cases=20, max_bytes=10**6)
    for i in range(1, 58):
        store.append(case(i))
        assert store.statistics().cases <= 20
    stats = store.statistics()
    seqs = [c.seq for c in store.page(0, limit=100, max_bytes=10**6).cases]
    assert seqs == list(range(58 - len(seqs), 58))
    assert len(seqs) >= 20 - 20 // 8
    assert stats.dropped == 57 - len(seqs)
    assert stats.next_seq == 58
    reopened = HardCaseStore(tmp_path, max_cases=20, max_bytes=10**6)
    assert [c.seq for c in reopened.page(0, limit=100, max_bytes=10**6).cases] == seqs


def test_the_store_stays_within_its_bytes(tmp_path: Path) -> None:
    store = HardCaseStore(tmp_path, max_cases=10_000, max_bytes=8192)
    for i in range(1, 200):
        store.append(case(i, pad=i % 50))
        assert disk_bytes(tmp_path) <= 8192
        assert store.statistics().bytes == disk_bytes(tmp_path)
    kept = store.page(0, limit=1000, max_bytes=10**6).cases
    assert kept[-1].seq == 199
    assert disk_bytes(tmp_path) > 8192 * 7 // 8 - 400
    assert store.append(case(999, pad=9000)) is None  # alone larger than the store
    assert store.statistics().refused == 1


def test_a_torn_last_line_is_dropped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = HardCaseStore(tmp_path, max_cases=100, max_bytes=10**6)
    for i in range(1, 4):
        store.append(case(i))
    segment = sorted(tmp_path.glob("cases-*.jsonl"))[-1]
    whole = case(4).model_copy(update={"seq": 4}).model_dump_json()
    with segment.open("ab") as f:
        f.write(whole[: len(whole) // 2].encode())  # power cut mid-write
    with caplog.at_level(logging.WARNING):
        reopened = HardCaseStore(tmp_path, max_cases=100, max_bytes=10**6)
    assert "torn last line" in caplog.text
    assert reopened.statistics().skipped_lines == 1
    stored = reopened.append(case(5))
    assert stored is not None
    assert stored.seq == 4
    assert [c.id for c in reopened.page(0, limit=10, max_bytes=10**6).cases] == [
        case(i).id for i in (1, 2, 3, 5)
    ]
    # A line that does not parse, in the middle of a file, is skipped, not fatal.
    text = segment.read_text().splitlines()
    segment.write_text("\n".join([text[0], '{"id": "broken', *text[1:]]) + "\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = HardCaseStore(tmp_path, max_cases=100, max_bytes=10**6)
    assert "unreadable case skipped" in caplog.text
    assert len(again.page(0, limit=10, max_bytes=10**6).cases) == 4


def test_pages_are_bounded_and_the_cursor_moves_on(tmp_path: Path) -> None:
    store = HardCaseStore(tmp_path, max_cases=1000, max_bytes=10**7)
    for i in range(1, 41):
        store.append(case(i, skill="a" if i % 3 else "b", pad=300))
    seen: list[int] = []
    after, pages = 0, 0
    while True:
        page = store.page(after, limit=7, max_bytes=2000)
        pages += 1
        assert 1 <= len(page.cases) <= 7
        assert sum(len(c.model_dump_json()) + 1 for c in page.cases) <= 2000
        seen += [c.seq for c in page.cases]
        after = page.cursor
        if not page.more:
            break
    assert seen == list(range(1, 41))
    assert pages >= 40 // 5
    only_b = store.page(0, limit=1000, max_bytes=10**7, match=lambda c: c.skill == "b")
    assert [c.seq for c in only_b.cases] == list(range(3, 41, 3))
    assert only_b.cursor == 40
    tail = store.page(40, limit=10, max_bytes=10**6)
    assert (tail.cases, tail.cursor, tail.more) == ([], 40, False)


def test_clear_removes_up_to_the_cursor_and_seqs_never_repeat(tmp_path: Path) -> None:
    store = HardCaseStore(tmp_path, max_cases=80, max_bytes=10**6)
    for i in range(1, 31):
        store.append(case(i, skill="a" if i % 2 else "b"))
    assert store.clear(20, lambda c: c.skill == "b") == 10
    left = [c.seq for c in store.page(0, limit=100, max_bytes=10**6).cases]
    assert left == [s for s in range(1, 31) if s % 2 or s > 20]
    assert store.clear(30) == len(left)
    assert store.statistics().cases == 0
    reopened = HardCaseStore(tmp_path, max_cases=80, max_bytes=10**6)
    stored = reopened.append(case(31))
    assert stored is not None
    assert stored.seq == 31
    assert reopened.find(case(31).id) is not None
    assert reopened.find(case(3).id) is None


# corrections ----------------------------------------------------------------------------------


def test_corrections_are_kept_only_where_allowed(tmp_path: Path) -> None:
    clock = ManualClock(start=5000.0)
    cfg = DataConfig(
        skills={"read_digit": SkillPolicy(), "other": SkillPolicy(reasons=["sampled"])}
    )
    keeper = CaseKeeper("m", cfg, tmp_path, clock=clock, rng=random.Random(3))
    first = keeper.offer("read_digit", {"pixels": [0.0] * 64}, {"digit": 1}, confidence=0.3)
    assert first is not None
    fixed = keeper.correct(Correction(case=first, label=7))
    assert fixed is not None
    assert fixed != first
    stored = keeper.store.find(fixed)
    assert stored is not None
    assert (stored.reason, stored.label, stored.of, stored.confidence) == (
        "correction",
        7,
        first,
        0.3,
    )
    assert stored.ts == pytest.approx(clock.time(), abs=0.01)
    by_input = keeper.correct(Correction(skill="read_digit", input={"pixels": [1.0] * 64}, label=2))
    assert by_input is not None
    with pytest.raises(NotFound, match="no hard case"):
        keeper.correct(Correction(case=new_case_id("m", random.Random(9)), label=1))
    with pytest.raises(BadRequest, match="no corrections of 'other'"):
        keeper.correct(Correction(skill="other", input={}, label=1))
    with pytest.raises(BadRequest, match="give 'case'"):
        keeper.correct(Correction(label=1))


def test_data_skills_are_no_tools_entities_or_open_calls(tmp_path: Path) -> None:
    """Cases are operators' data: no MCP tool, no Home Assistant entity, and the broker's ACL
    leaves data.* out of the calls every identity may make."""
    from edgeagent import DeviceAgent
    from edgeagent.bridges.ha_map import map_device
    from edgeagent.bridges.ha_model import HaNames
    from edgeagent.bridges.mcp_tools import build_tools
    from edgeagent.fleet_view import DeviceInfo
    from edgeagent.protocol import OPERATOR_PREFIXES, Topics

    cfg = AgentConfig(device="m", skills=[{"module": "smarthome.meter:DigitReader"}],
                      data={"dir": str(tmp_path), "skills": {"read_digit": {}}})  # fmt: skip
    manifest = DeviceAgent(cfg).manifest()
    names = {s.name for s in manifest.skills}
    assert {"read_digit", "data.cases", "data.clear", "data.correct"} <= names
    info = DeviceInfo(device="m", status="online", manifest=manifest, skills=tuple(manifest.skills))
    assert [t.skill for t in build_tools([info]).tools] == ["read_digit"]
    ha = map_device(manifest, HaNames(Topics("edgeagent", "home")))
    skipped = {u.skill for u in ha.unmapped if "operators only" in u.reason}
    assert skipped == {"data.cases", "data.clear", "data.correct"}
    assert all(n.startswith(OPERATOR_PREFIXES) for n in skipped)
    # The secured broker: read skills are open to every identity, data.cases is not.
    from edgeagent.brokerconf import acl_text, coord_read_skills
    from edgeagent.fleetdir import FleetRegistry, Identity

    effects = {s.name: s.side_effect for s in manifest.skills}
    reg = FleetRegistry(fleet="home", broker_hosts=["broker.lan"], identities=[
        Identity(name="m", role="device", created=0.0, skills=effects)])  # fmt: skip
    assert coord_read_skills(reg) == ["read_digit"]
    assert "call/data." not in acl_text(reg)


def test_only_labelled_cases_within_the_vocabulary_become_examples() -> None:
    from edgeagent.dataset import digit_example, text_example

    said = {"input": {"text": "lights on in the hall"}}
    assert text_example({**said, "label": "turn_on"}) == {
        "text": "lights on in the hall", "intent": "turn_on"}  # fmt: skip
    full = {"intent": "turn_on", "kind": "light", "room": "hall"}
    assert text_example({**said, "label": full}) == {"text": "lights on in the hall", **full}
    assert text_example({**said, "label": {"intent": "dance"}}) is None
    assert text_example({**said, "label": {"intent": "turn_on", "room": "attic"}}) is None
    assert text_example(said) is None  # no label: nothing to learn
    assert text_example({"input": {"text": "x" * 201}, "label": "turn_on"}) is None
    pixels = [float(i % 17) for i in range(64)]
    assert digit_example({"input": {"pixels": pixels}, "label": 7}) == (pixels, 7)
    assert digit_example({"input": {"pixels": pixels}, "label": {"digit": 3}}) == (pixels, 3)
    digested = {"$raw": {"sha256": "0" * 64, "shape": [64], "kind": "array", "bytes": 300}}
    assert digit_example({"input": {"pixels": digested}, "label": 7}) is None  # not kept raw
    assert digit_example({"input": {"pixels": pixels}, "label": 10}) is None
    assert digit_example({"input": {"pixels": pixels}, "label": True}) is None
    assert digit_example({"input": {"pixels": pixels[:63]}, "label": 1}) is None


def test_the_documented_agent_config_loads(tmp_path: Path) -> None:
    doc = (EXAMPLES.parent.parent / "docs" / "data-loop.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "meter.yaml").write_text(block)
    cfg = load_config(tmp_path / "meter.yaml")
    assert cfg.data is not None
    assert cfg.data.skills["read_digit"].keep_raw
    skills, _, _ = load_skills(cfg)
    assert {"data.cases", "data.clear", "data.correct"} <= {s.name for s in skills}
    assert (tmp_path / "hard-cases" / "meter-basement").is_dir()  # beside the config
