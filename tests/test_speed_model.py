"""The device speed model: estimate arithmetic, thread scaling, precision fallbacks, the fit
(NNLS, determinism, held-out models), recorded runs, the committed profiles and the CLI."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgeagent.cli_calibrate import calibrate
from edgeagent.devices import (
    PROFILE_DIR,
    Calibration,
    DeviceProfile,
    PrecisionRates,
    RuntimeFactor,
    SpeedModel,
    estimate,
    list_profiles,
    load_profile,
)
from edgeagent.devices.calibrate import Observation, fit_device
from edgeagent.devices.calibrate_data import (
    DERIVED_FROM,
    PUBLISHED_FILE,
    WORKLOADS_FILE,
    load_holdout,
    load_published,
    load_workloads,
    replace_section,
    section_text,
)
from edgeagent.devices.calibrate_report import apply_records, derive_speed_model
from edgeagent.devices.nnls import nnls
from edgeagent.devices.workload import Workload

TRUE = {"conv": 4.0, "pw": 6.0, "dw": 1.5, "fc": 0.8, "el": 0.5, "node_us": 20.0, "p": 0.8}


def _rates(**over: float) -> PrecisionRates:
    values: dict[str, float] = {
        "conv_mmac": 4.0,
        "pointwise_mmac": 5.0,
        "depthwise_mmac": 2.0,
        "fc_mweights": 1.0,
        "elementwise_melems": 0.5,
        "node_us": 10.0,
        "parallel": 0.75,
        "spread": 0.2,
    }
    values.update(over)
    return PrecisionRates(**values, source="hand-made for the test")


def _profile(model: SpeedModel | None, name: str = "pi4") -> DeviceProfile:
    return load_profile(name).model_copy(update={"speed_model": model})


def _model(**precisions: PrecisionRates) -> SpeedModel:
    return SpeedModel(
        **precisions,
        runtimes=[
            RuntimeFactor(
                runtime="xnnpack", precision="fp32", factor=1.25, spread=0.0, source="test"
            )
        ],
        calibration=Calibration(
            basis="published", table="test", entries=10, threads_seen=[1, 4], date="2026-12-05"
        ),
    )


WORK = Workload(
    conv_mmac=40.0,
    pointwise_mmac=50.0,
    depthwise_mmac=4.0,
    fc_mweights=1.0,
    elementwise_melems=5.0,
    nodes=100,
)


def test_estimate_arithmetic_by_hand() -> None:
    profile = _profile(_model(fp32=_rates()))
    e = estimate(WORK, profile, threads=2, runtime="ncnn")
    assert e is not None
    work = 40 / 4 + 50 / 5 + 4 / 2 + 1 / 1 + 5 / 0.5  # ms on one thread: 33
    expected = work * (0.25 + 0.75 / 2) + 100 * 10 / 1000
    assert e.ms == pytest.approx(expected)
    assert e.low_ms == pytest.approx(expected / 1.2)
    assert e.high_ms == pytest.approx(expected * 1.2)
    assert e.notes == []
    litert = estimate(WORK, profile, threads=2, runtime="litert")
    assert litert is not None
    assert litert.ms == pytest.approx(expected * 1.25)


def test_threads_monotone_bounded_and_capped() -> None:
    profile = _profile(_model(fp32=_rates()))
    times = []
    for t in range(1, 9):
        e = estimate(WORK, profile, threads=t, runtime="ncnn")
        assert e is not None
        times.append(e.ms)
    assert all(a >= b for a, b in itertools.pairwise(times))
    floor = 33.0 * 0.25 + 0.1  # the serial part and the node cost never shrink
    assert min(times) > floor
    assert times[4:] == [times[3]] * 4  # 4 cores: more threads change nothing
    capped = estimate(WORK, profile, threads=8, runtime="ncnn")
    assert capped is not None
    assert capped.threads == 4
    assert "capped" in capped.notes[0]


def test_layer_size_effect_and_thread_overhead() -> None:
    """Big layers run faster per MAC; threads run slices of a layer (s / t), so the parallel
    part speeds up by t^(1 - exponent); a per-node fork/join cost can make extra threads a loss
    for a tiny model (as the published Pi 5 mobilenet figures show)."""
    big = Workload(pointwise_mmac=1000.0, nodes=10)  # 100 MMAC per op
    small = Workload(pointwise_mmac=100.0, nodes=10)  # 10 MMAC per op
    profile = _profile(_model(fp32=_rates(node_us=0.0, parallel=1.0, size_exponent=0.2)))
    runs = {}
    for name, work in (("big", big), ("small", small)):
        for t in (1, 4):
            e = estimate(work, profile, threads=t, runtime="ncnn")
            assert e is not None
            runs[name, t] = e.ms
    assert runs["big", 1] / 1000 < runs["small", 1] / 100  # ms per MMAC
    assert runs["small", 1] == pytest.approx(100 / 5.0)  # 10 MMAC per op: the rate as written
    assert runs["big", 1] / runs["big", 4] == pytest.approx(4**0.8)
    assert runs["small", 1] / runs["small", 4] == pytest.approx(4**0.8)
    sync = _profile(_model(fp32=_rates(node_us=0.0, node_thread_us=200.0)))
    tiny = Workload(pointwise_mmac=5.0, nodes=100)
    t1 = estimate(tiny, sync, threads=1, runtime="ncnn")
    t4 = estimate(tiny, sync, threads=4, runtime="ncnn")
    assert t1 is not None
    assert t4 is not None
    assert t4.ms > t1.ms


def test_precision_fallbacks_note_and_widen() -> None:
    fp16_only = _profile(_model(fp16=_rates(), int8=_rates(conv_mmac=8.0)), "pi5")
    derived = estimate(WORK, fp16_only, threads=1, precision="fp32", runtime="ncnn")
    direct16 = estimate(WORK, fp16_only, threads=1, precision="fp16", runtime="ncnn")
    assert derived is not None
    assert direct16 is not None
    assert derived.ms > direct16.ms
    assert derived.spread > direct16.spread
    assert any("derived from its fp16" in n for n in derived.notes)
    no_int8 = _profile(_model(fp32=_rates()))
    i8 = estimate(WORK, no_int8, threads=1, precision="int8", runtime="ncnn")
    f32 = estimate(WORK, no_int8, threads=1, precision="fp32", runtime="ncnn")
    assert i8 is not None
    assert f32 is not None
    assert i8.spread > f32.spread
    assert any("int8 derived" in n for n in i8.notes)
    both = _profile(_model(fp32=_rates(), fp16=_rates(conv_mmac=100.0)))
    plain = estimate(WORK, both, threads=1, runtime="ncnn")
    assert plain is not None
    assert plain.ms == pytest.approx(f32.ms)
    assert estimate(WORK, _profile(None)) is None
    assert estimate(WORK, _profile(_model(int8=_rates())), precision="fp32") is None


def test_runtime_without_figures_and_unknown_ops_widen() -> None:
    profile = _profile(_model(fp32=_rates()))
    ncnn = estimate(WORK, profile, runtime="ncnn")
    ort = estimate(WORK, profile, runtime="onnxruntime")
    odd = estimate(WORK.model_copy(update={"unknown_ops": ["Einsum"]}), profile, runtime="ncnn")
    assert ncnn is not None
    assert ort is not None
    assert odd is not None
    assert ort.spread > ncnn.spread
    assert any("assumed" in n for n in ort.notes)
    assert odd.spread > ncnn.spread
    assert any("Einsum" in n for n in odd.notes)


def test_nnls_matches_known_solution_and_constraint() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(0.1, 2.0, size=(30, 5))
    x_true = np.array([0.5, 0.0, 2.0, 1.5, 0.25])
    x = nnls(a, a @ x_true)
    assert np.allclose(x, x_true, atol=1e-8)
    # An unconstrained solution with a negative entry: NNLS must clamp it and stay optimal.
    b = a @ np.array([1.0, -1.0, 1.0, 0.0, 0.0])
    x = nnls(a, b)
    assert (x >= 0).all()
    # KKT: gradient is zero on the positive entries and points outwards on the zero ones.
    grad = a.T @ (a @ x - b)
    assert np.allclose(grad[x > 0], 0.0, atol=1e-8)
    assert (grad[x == 0] >= -1e-8).all()


def _synthetic(seed: int = 1) -> tuple[dict[str, Workload], list[Observation]]:
    rng = random.Random(seed)
    works: dict[str, Workload] = {}
    for i in range(12):
        works[f"m{i}"] = Workload(
            conv_mmac=rng.uniform(0, 800),
            pointwise_mmac=rng.uniform(20, 600),
            depthwise_mmac=rng.uniform(2, 80),
            fc_mweights=rng.uniform(0, 30),
            elementwise_melems=rng.uniform(1, 40),
            nodes=rng.randint(30, 300),
        )

    def true_ms(w: Workload, threads: int) -> float:
        body = (
            w.conv_mmac / TRUE["conv"]
            + w.pointwise_mmac / TRUE["pw"]
            + w.depthwise_mmac / TRUE["dw"]
            + w.fc_mweights / TRUE["fc"]
            + w.elementwise_melems / TRUE["el"]
        )
        return body * ((1 - TRUE["p"]) + TRUE["p"] / threads) + w.nodes * TRUE["node_us"] / 1e3

    obs = [
        Observation(m, "fp32", t, true_ms(w, t) * rng.uniform(0.98, 1.02), "ncnn")
        for m, w in works.items()
        for t in (1, 2, 4)
    ]
    obs += [
        Observation(m, "fp32", 4, true_ms(w, 4) * 1.3, "xnnpack")
        for m, w in list(works.items())[:5]
    ]
    return works, obs


def test_fit_recovers_known_rates_and_predicts_held_out() -> None:
    works, obs = _synthetic()
    model = fit_device(
        load_profile("pi4"), obs, works, {"m11"}, table="synthetic", date="2026-12-05"
    )
    fp32 = model.fp32
    assert fp32 is not None
    assert fp32.parallel == pytest.approx(TRUE["p"], abs=0.05)
    assert fp32.conv_mmac == pytest.approx(TRUE["conv"], rel=0.1)
    assert fp32.pointwise_mmac == pytest.approx(TRUE["pw"], rel=0.1)
    assert fp32.elementwise_melems == pytest.approx(TRUE["el"], rel=0.15)
    xnn = [r for r in model.runtimes if r.runtime == "xnnpack"]
    assert xnn
    assert xnn[0].factor == pytest.approx(1.3, rel=0.05)
    (stats,) = model.calibration.residuals
    assert stats.held_out_n == 3
    assert stats.held_out_worst is not None
    assert stats.held_out_worst < 0.06
    assert model.calibration.held_out == ["m11"]
    assert model.calibration.entries == 38


def test_fit_is_deterministic() -> None:
    works, obs = _synthetic()
    profile = load_profile("pi4")
    one = fit_device(profile, obs, works, {"m11"}, table="t", date="2026-12-05")
    two = fit_device(profile, list(obs), dict(works), {"m11"}, table="t", date="2026-12-05")
    assert section_text(one) == section_text(two)


def test_records_override_published() -> None:
    works, obs = _synthetic()
    profile = load_profile("pi4")
    published = fit_device(profile, obs, works, set(), table="t", date="2026-12-05")
    with_model = profile.model_copy(update={"speed_model": published})
    # A device 1.5x slower than the published figures, two models: one factor per precision.
    few = [Observation(o.model, "fp32", o.threads, o.ms * 1.5, "ncnn") for o in obs[:6]]
    rescaled = apply_records(with_model, few, works, table="rec.json", date="2026-12-06")
    assert rescaled.calibration.basis == "recorded"
    assert rescaled.fp32 is not None
    assert published.fp32 is not None
    assert rescaled.fp32.conv_mmac == pytest.approx(published.fp32.conv_mmac / 1.5, rel=0.03)
    # Records of >= 4 models: refit on the records alone.
    many = [
        Observation(o.model, "fp32", o.threads, o.ms * 2.0, "onnxruntime")
        for o in obs
        if o.runtime == "ncnn"
    ]
    refit = apply_records(with_model, many, works, table="rec.json", date="2026-12-06")
    assert refit.calibration.basis == "recorded"
    assert refit.fp32 is not None
    assert refit.fp32.pointwise_mmac == pytest.approx(TRUE["pw"] / 2.0, rel=0.12)


def test_replace_section_keeps_the_rest() -> None:
    path = PROFILE_DIR / "pi4.yaml"
    text = path.read_text(encoding="utf-8")
    works, obs = _synthetic()
    model = fit_device(load_profile("pi4"), obs, works, set(), table="t", date="2026-12-05")
    new = replace_section(text, model)
    assert replace_section(new, model) == new
    old_comments = [ln for ln in text.splitlines() if ln.lstrip().startswith("#")]
    new_comments = [ln for ln in new.splitlines() if ln.lstrip().startswith("#")]
    assert [c for c in new_comments if "speed_model" not in c and "refit" not in c] == [
        c for c in old_comments if "speed_model" not in c and "refit" not in c
    ]
    loaded = yaml.safe_load(new)
    assert SpeedModel.model_validate(loaded["speed_model"]) == model
    assert {k: v for k, v in loaded.items() if k != "speed_model"} == {
        k: v for k, v in yaml.safe_load(text).items() if k != "speed_model"
    }


# --- the committed tables and profiles -------------------------------------------------------

needs_tables = pytest.mark.skipif(
    not (PUBLISHED_FILE.is_file() and WORKLOADS_FILE.is_file()),
    reason="published.yaml / workloads.yaml not committed yet",
)


@needs_tables
def test_committed_profiles_reproduce_from_committed_tables() -> None:
    figures = load_published()
    workloads = load_workloads()
    held = load_holdout().holds
    fitted = {}
    for profile in list_profiles():
        if profile.name not in figures:
            continue
        assert profile.speed_model is not None, f"{profile.name}: fit not written"
        cal = profile.speed_model.calibration
        model = fit_device(
            profile, figures[profile.name], workloads, held, table=cal.table, date=cal.date
        )
        assert section_text(model) == section_text(profile.speed_model), profile.name
        fitted[profile.name] = profile.model_copy(update={"speed_model": model})
    assert {"pi4", "pi5", "pi3b-plus", "pi-zero-2w"} <= set(fitted)
    for name, donor in DERIVED_FROM.items():
        target = load_profile(name)
        assert target.speed_model is not None
        again = derive_speed_model(target, fitted[donor], date=target.speed_model.calibration.date)
        assert section_text(again) == section_text(target.speed_model), name
    assert load_profile("x86-64").speed_model is None


# --- CLI -------------------------------------------------------------------------------------


def _tables(tmp_path: Path) -> tuple[Path, Path]:
    works, obs = _synthetic()
    published = tmp_path / "published.yaml"
    figures = [
        {
            "device": "pi4",
            "model": o.model,
            "precision": o.precision,
            "threads": o.threads,
            "ms": round(o.ms, 3),
            "runtime": o.runtime,
            "bits": 64,
            "clock_ghz": 1.5,
            "source": "synthetic figures of a known model",
        }
        for o in obs
    ]
    published.write_text(yaml.safe_dump({"figures": figures}))
    workloads = tmp_path / "workloads.yaml"
    table = {
        n: {"workload": w.model_dump(), "input": "224x224x3", "source": "synthetic workload"}
        for n, w in works.items()
    }
    workloads.write_text(yaml.safe_dump({"models": table}))
    return published, workloads


def test_cli_json_and_user_profiles(tmp_path: Path) -> None:
    published, workloads = _tables(tmp_path)
    out = tmp_path / "profiles"
    args = ["pi4", "--published", str(published), "--workloads", str(workloads)]
    result = CliRunner().invoke(
        calibrate, [*args, "--json", "-o", str(out), "--date", "2026-12-05"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["models"]["pi4"]["calibration"]["entries"] == 41
    assert {r["model"] for r in payload["rows"]} == {f"m{i}" for i in range(12)}
    written = out / "pi4.yaml"
    loaded = DeviceProfile.model_validate(yaml.safe_load(written.read_text()))
    assert loaded.speed_model == SpeedModel.model_validate(payload["models"]["pi4"])
    assert "# Device profile: Raspberry Pi 4" in written.read_text()
    table = CliRunner().invoke(calibrate, args)
    assert table.exit_code == 0
    assert "RATIO" in table.output
    assert datetime.now(UTC).strftime("%Y-%m-%d") in json.dumps(
        json.loads(CliRunner().invoke(calibrate, [*args, "--json"]).output)["models"]
    )


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    published, workloads = _tables(tmp_path)
    bad = tmp_path / "broken.yaml"
    bad.write_text("- device: pi4\n  model: [unclosed\n")
    result = CliRunner().invoke(calibrate, ["pi4", "--published", str(bad)])
    assert result.exit_code == 1
    assert "broken.yaml" in result.output
    args = ["--published", str(published), "--workloads", str(workloads)]
    result = CliRunner().invoke(calibrate, ["nosuch", *args])
    assert result.exit_code == 1
    assert "unknown device profile 'nosuch'" in result.output
    result = CliRunner().invoke(calibrate, ["pi5", *args])
    assert result.exit_code == 1
    assert "pi5: no published figures" in result.output
    result = CliRunner().invoke(calibrate, ["x86-64", *args])
    assert result.exit_code == 1
    assert "reference machine" in result.output


def _tiny_onnx(path: Path) -> str:
    """A real conv net file (conv, relu, pool, gemm; 11 MMAC: inside the speed model's sizes);
    returns its sha256."""
    import hashlib

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((10, 16)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    onnx.save(helper.make_model(graph), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_records_override_published(tmp_path: Path) -> None:
    published, workloads = _tables(tmp_path)
    model = tmp_path / "tiny.onnx"
    sha = _tiny_onnx(model)
    record = {
        "created": "2026-12-05T10:00:00Z",
        "model_sha256": sha,
        "model": "tiny",
        "runtime": "onnxruntime",
        "precision": "fp32",
        "threads": 3,
        "p50_ms": 40.0,
        "p99_ms": 44.0,
        "runs": 50,
        "profile": "pi4",
        "reference": False,
        "machine": {
            "machine": "aarch64",
            "cpu": "Cortex-A72",
            "cores": 4,
            "system": "Linux",
            "python": "3.11",
            "packages": {},
        },
    }
    records = tmp_path / "records.json"
    records.write_text(json.dumps([record]))
    args = ["pi4", "--published", str(published), "--workloads", str(workloads), "--json"]
    missing = CliRunner().invoke(calibrate, [*args, "--records", str(records)])
    assert missing.exit_code == 1
    assert "records.json: record 0 (tiny" in missing.output
    assert "--model" in missing.output
    result = CliRunner().invoke(
        calibrate, [*args, "--records", str(records), "--model", str(model)]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    fitted = SpeedModel.model_validate(payload["models"]["pi4"])
    assert fitted.calibration.basis == "recorded"
    assert any("rescaled" in n and "1 recorded run" in n for n in fitted.calibration.notes)
    (row,) = [r for r in payload["rows"] if r["model"].startswith("tiny@")]
    # One record, one factor: the rescaled model reproduces it (the ONNX Runtime factor is 1).
    assert row["ratio"] == pytest.approx(1.0, rel=0.01)
    records.write_text("[{")
    broken = CliRunner().invoke(calibrate, [*args, "--records", str(records)])
    assert broken.exit_code == 1
    assert "records.json:1: invalid JSON" in broken.output
