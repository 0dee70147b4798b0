"""edgeagent.models.llm_estimate: which device profiles can run a language model, and how fast,
from figures measured on the reference machine; with the built-in profiles."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from edgeagent.devices import DeviceProfile, load_profile
from edgeagent.models.llm_estimate import (
    MEMORY_MARGIN,
    UNCERTAINTY,
    EstimateError,
    LlmMeasured,
    estimate,
    measured_from_card,
    speed_factor,
)

# A SmolLM2-135M-sized int4 model: figures of the order measured on the reference machine.
SMOL = LlmMeasured(
    tokens_per_s=85.0,
    first_token_ms=60.0,
    peak_memory_mb=300.0,
    model_bytes=86_500_000,
    precision="int4",
)


def test_reference_profile_reproduces_the_measurement() -> None:
    est = estimate(SMOL, load_profile("x86-64"))
    assert est.runs, est.reason
    assert est.factor == 1.0
    assert est.tokens_per_s.mid == pytest.approx(85.0)
    assert est.first_token_ms.mid == pytest.approx(60.0)
    assert est.tokens_per_s.low == pytest.approx(85.0 / UNCERTAINTY)
    assert est.tokens_per_s.high == pytest.approx(85.0 * UNCERTAINTY)
    assert est.memory_mb == pytest.approx(300.0 * MEMORY_MARGIN)


def test_int4_uses_the_int8_factor_only_with_a_dot_product() -> None:
    pi5, pi4 = load_profile("pi5"), load_profile("pi4")
    assert pi5.int8_dot_product
    assert not pi4.int8_dot_product
    assert speed_factor(pi5, "int4") == (pi5.speed.int8.value, "int8")
    assert speed_factor(pi4, "int4") == (pi4.speed.fp32.value, "fp32")
    assert speed_factor(pi5, "fp32") == (pi5.speed.fp32.value, "fp32")
    est = estimate(SMOL, pi4)
    assert est.tokens_per_s.mid == pytest.approx(85.0 / pi4.speed.fp32.value)
    assert est.first_token_ms.mid == pytest.approx(60.0 * pi4.speed.fp32.value)


def test_faster_devices_get_more_tokens_per_second() -> None:
    names = ["pi-zero-2w", "pi3b-plus", "pi4", "pi5", "x86-64"]
    speeds = [estimate(SMOL, load_profile(n)).tokens_per_s.mid for n in names]
    assert speeds == sorted(speeds), dict(zip(names, speeds, strict=True))


def test_memory_budget_decides_who_runs_it() -> None:
    zero = estimate(SMOL, load_profile("pi-zero-2w"))
    assert not zero.runs
    assert "model budget of 64 MiB" in zero.reason
    assert estimate(SMOL, load_profile("pi5")).runs
    assert estimate(SMOL, load_profile("pi4")).runs
    tiny = dataclasses.replace(SMOL, peak_memory_mb=20.0, model_bytes=300_000)
    assert estimate(tiny, load_profile("pi-zero-2w")).runs


def test_more_than_ram_and_storage_and_arch() -> None:
    pi3 = load_profile("pi3b-plus")
    huge = dataclasses.replace(SMOL, peak_memory_mb=5000.0)
    assert "more than the 1024 MiB of RAM" in estimate(huge, pi3).reason
    on_disk = dataclasses.replace(SMOL, peak_memory_mb=10.0, model_bytes=600 * 2**20)
    assert "storage budget" in estimate(on_disk, pi3).reason
    data = pi3.model_dump()
    data.update(name="armv7-board", arch="armv7l")
    est = estimate(dataclasses.replace(SMOL, peak_memory_mb=10.0), DeviceProfile(**data))
    assert not est.runs
    assert "armv7l" in est.reason


def test_summary_says_what_and_why() -> None:
    text = estimate(SMOL, load_profile("pi-zero-2w")).summary()
    assert text.startswith("pi-zero-2w: no (needs 330 MiB")
    assert "tokens/s" in text
    assert "first token" in text


@pytest.mark.parametrize(
    ("field", "value"),
    [("tokens_per_s", 0.0), ("first_token_ms", -1.0), ("peak_memory_mb", 0.0), ("model_bytes", 0)],
)
def test_bad_measurements_are_typed_errors(field: str, value: float) -> None:
    changes: dict[str, Any] = {field: value}
    with pytest.raises(EstimateError, match=field):
        dataclasses.replace(SMOL, **changes)


def test_bad_precision() -> None:
    with pytest.raises(EstimateError, match="precision"):
        LlmMeasured(1.0, 1.0, 1.0, 1, "fp8")  # type: ignore[arg-type]


def test_devices_show_lists_the_zoo_language_models() -> None:
    from click.testing import CliRunner

    from edgeagent.cli_devices import devices
    from edgeagent.models.zoo import llm_recipes

    card = llm_recipes()["tinyllm"].card()
    expected = estimate(measured_from_card(card), load_profile("pi3b-plus"))
    result = CliRunner().invoke(devices, ["show", "pi3b-plus"])
    assert result.exit_code == 0, result.output
    assert "language models (estimated from the zoo cards" in result.output
    line = next(x for x in result.output.splitlines() if "zoo:tinyllm:" in x)
    assert f"~{expected.tokens_per_s} tokens/s" in line
    assert line.strip().startswith("zoo:tinyllm: runs;")


def test_a_card_without_measurements_is_a_typed_error() -> None:
    with pytest.raises(EstimateError, match="card 'x': no usable measurements"):
        measured_from_card({"name": "x", "precision": "int4", "size_bytes": 10})
