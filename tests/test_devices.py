"""Device profiles: the built-in data, user profiles by file and by $EDGEAGENT_PROFILES, the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from edgeagent.cli_devices import devices
from edgeagent.devices import (
    PROFILE_DIR,
    PROFILES_ENV,
    SOURCED_FIELDS,
    DeviceProfile,
    Figure,
    list_profiles,
    load_profile,
)
from edgeagent.errors import ConfigError

BUILTINS = ["generic-arm64", "jetson-orin-nano", "pi-zero-2w", "pi3b-plus", "pi4", "pi5", "x86-64"]
WITH_DOT_PRODUCT = {"pi5", "jetson-orin-nano", "x86-64"}


@pytest.fixture(autouse=True)
def _no_user_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start without the developer's own $EDGEAGENT_PROFILES."""
    monkeypatch.delenv(PROFILES_ENV, raising=False)


def _figures(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Figure]]:
    for field in type(model).model_fields:
        value = getattr(model, field)
        if isinstance(value, Figure):
            yield prefix + field, value
        elif isinstance(value, BaseModel):
            yield from _figures(value, f"{prefix}{field}.")


def _line_of(text: str, needle: str) -> int:
    """1-based number of the first line of ``text`` that, stripped, starts with ``needle``."""
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(needle):
            return number
    raise AssertionError(f"{needle!r} not in text")


def _user_profile(folder: Path, name: str, *, base: str = "pi4", **replace: str) -> Path:
    """A copy of built-in ``base`` named ``name`` in ``folder``, with text replacements."""
    text = (PROFILE_DIR / f"{base}.yaml").read_text()
    text = text.replace(f"\nname: {base}\n", f"\nname: {name}\n", 1)
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


# --- built-in data -------------------------------------------------------------------------


def test_builtin_profiles_are_exactly_the_documented_ones() -> None:
    assert sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")) == BUILTINS
    assert [p.name for p in list_profiles()] == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
def test_builtin_profile_loads_with_a_source_for_every_figure(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    figures = dict(_figures(profile))
    assert set(figures) == {
        "cores",
        "clock_ghz",
        "ram_mb",
        "model_budget_mb",
        "storage_budget_mb",
        "speed.fp32",
        "speed.int8",
        "speed.python",
    }
    for field, figure in figures.items():
        assert len(figure.source.split()) >= 3, f"{name}: {field} has no real source"
    assert set(profile.sources) == SOURCED_FIELDS, f"{name}: a plain field lacks its source"
    # Estimates say they are estimates; the reference's factors are a definition.
    for kind in ("fp32", "int8", "python"):
        source = getattr(profile.speed, kind).source.lower()
        assert ("definition" if name == "x86-64" else "estimate") in source, (name, kind)
    assert 1 <= profile.threads <= profile.cores.value
    assert profile.model_budget_mb.value <= profile.ram_mb.value
    assert profile.runtimes, name


def test_facts_from_the_issue() -> None:
    p = {name: load_profile(name) for name in BUILTINS}
    assert (p["pi-zero-2w"].cores.value, p["pi-zero-2w"].clock_ghz.value) == (4, 1.0)
    assert p["pi-zero-2w"].ram_mb.value == 512
    assert (p["pi3b-plus"].clock_ghz.value, p["pi3b-plus"].ram_mb.value) == (1.4, 1024)
    assert (p["pi4"].cpu.split()[0], p["pi4"].clock_ghz.value) == ("Cortex-A72", 1.5)
    assert (p["pi5"].cpu.split()[0], p["pi5"].clock_ghz.value) == ("Cortex-A76", 2.4)
    assert (p["jetson-orin-nano"].cores.value, p["jetson-orin-nano"].ram_mb.value) == (6, 8192)
    assert "GPU" in p["jetson-orin-nano"].notes
    assert p["x86-64"].arch == "x86_64"
    assert all(p[n].arch == "aarch64" for n in BUILTINS if n != "x86-64")


def test_int8_dot_product_only_where_the_cpu_has_it() -> None:
    for name in BUILTINS:
        profile = load_profile(name)
        assert profile.int8_dot_product == (name in WITH_DOT_PRODUCT), name
    assert "asimddp" in load_profile("pi5").features
    assert "asimddp" not in load_profile("pi4").features
    assert "avx512_vnni" in load_profile("x86-64").features


def test_int8_factor_reflects_the_dot_product() -> None:
    """Without a dot product int8 gains little, so it loses more ground to the reference."""
    ratio = {
        p.name: p.speed.int8.value / p.speed.fp32.value
        for p in list_profiles()
        if p.name != "x86-64"
    }
    worst_with = max(r for n, r in ratio.items() if n in WITH_DOT_PRODUCT)
    best_without = min(r for n, r in ratio.items() if n not in WITH_DOT_PRODUCT)
    assert best_without > 2 * worst_with, ratio


def test_reference_is_x86_64_with_factors_of_one() -> None:
    speed = load_profile("x86-64").speed
    assert (speed.fp32.value, speed.int8.value, speed.python.value) == (1.0, 1.0, 1.0)
    for profile in list_profiles():
        if profile.name != "x86-64":
            assert profile.speed.fp32.value > 1, profile.name
            assert profile.speed.python.value > 1, profile.name


def test_slower_boards_have_larger_factors() -> None:
    order = ["x86-64", "pi5", "pi4", "pi3b-plus", "pi-zero-2w"]
    for kind in ("fp32", "int8", "python"):
        values = [getattr(load_profile(n).speed, kind).value for n in order]
        assert values == sorted(values), (kind, values)
        assert len(set(values)) == len(values), (kind, values)


# --- user profiles -------------------------------------------------------------------------


def test_user_profile_by_path(tmp_path: Path) -> None:
    path = _user_profile(tmp_path, "bench-board", **{"threads: 3": "threads: 2"})
    profile = load_profile(str(path))
    assert (profile.name, profile.threads) == ("bench-board", 2)
    # A path need not be named after the profile.
    other = tmp_path / "anything.yml"
    other.write_text(path.read_text())
    assert load_profile(str(other)).name == "bench-board"


def test_user_profile_with_a_typo_names_file_line_and_field(tmp_path: Path) -> None:
    path = _user_profile(tmp_path, "typo", **{"\ncores:\n": "\ncoress:\n"})
    line = _line_of(path.read_text(), "coress:")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    assert f"{path}:{line}: coress: unknown field" in str(info.value)
    assert f"{path}:" in str(info.value)
    assert "cores: Field required" in str(info.value)


def test_nested_typo_and_bad_value_point_at_their_lines(tmp_path: Path) -> None:
    text = (PROFILE_DIR / "pi4.yaml").read_text()
    fp32_source = _line_of(text, "fp32:") + 2  # value, then source
    path = _user_profile(
        tmp_path,
        "nested",
        **{"threads: 3": "threads: 0", "    source: >-\n      Est": "    sourse: >-\n      Est"},
    )
    written = path.read_text()
    assert written.splitlines()[fp32_source - 1].strip().startswith("sourse:")
    with pytest.raises(ConfigError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert f"{path}:{_line_of(written, 'threads:')}: threads: " in message
    assert f"{path}:{fp32_source}: speed.fp32.sourse: unknown field" in message


def test_cross_field_checks(tmp_path: Path) -> None:
    many = _user_profile(tmp_path, "many", **{"threads: 3": "threads: 8"})
    with pytest.raises(ConfigError, match=r"threads: .*8 threads on 4 cores"):
        load_profile(str(many))
    big = _user_profile(tmp_path, "big", **{"value: 1024\n": "value: 5000\n"})
    with pytest.raises(ConfigError, match=r"model_budget_mb: .*more than the RAM"):
        load_profile(str(big))
    zero = _user_profile(tmp_path, "zero", **{"value: 8.0": "value: 0"})
    with pytest.raises(ConfigError, match=r"speed\.fp32\.value: .*greater than 0"):
        load_profile(str(zero))
    bad = _user_profile(tmp_path, "bad", **{"\nsources:\n": "\nsources:\n  clock: guess\n"})
    with pytest.raises(ConfigError, match=r"sources: .*'clock' is not a field"):
        load_profile(str(bad))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such profile file"):
        load_profile(str(tmp_path / "absent.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: broken\ntitle: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{broken}:\d+: invalid YAML"):
        load_profile(str(broken))


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        load_profile("pi6")
    message = str(info.value)
    assert "unknown device profile 'pi6'" in message
    for name in BUILTINS:
        assert name in message


def test_profiles_env_finds_user_profiles_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _user_profile(second, "lab-board", **{"threads: 3": "threads: 1"})
    monkeypatch.setenv(
        PROFILES_ENV, os.pathsep.join([str(tmp_path / "absent"), str(first), str(second)])
    )
    assert load_profile("lab-board").threads == 1
    # Built-ins only by default; with include_user the user's profile is listed too.
    assert "lab-board" not in [p.name for p in list_profiles()]
    names = [p.name for p in list_profiles(include_user=True)]
    assert names == sorted([*BUILTINS, "lab-board"])
    # The first directory wins, and a user profile replaces a built-in of the same name.
    _user_profile(first, "lab-board", **{"threads: 3": "threads: 2"})
    _user_profile(first, "pi4", **{"threads: 3": "threads: 4"})
    assert load_profile("lab-board").threads == 2
    assert load_profile("pi4").threads == 4
    # The unknown-name message lists user profiles and where they were searched for.
    with pytest.raises(ConfigError, match=r"known profiles: .*lab-board.*searched in"):
        load_profile("nope")


def test_profile_found_by_name_must_carry_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _user_profile(tmp_path, "right")
    path.rename(tmp_path / "wrong.yaml")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match=r"wrong\.yaml:\d+: name: 'right' does not match"):
        load_profile("wrong")


# --- CLI -----------------------------------------------------------------------------------


def test_cli_ls_table_and_json() -> None:
    runner = CliRunner()
    table = runner.invoke(devices, ["ls"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    for column in ("NAME", "TITLE", "ARCH", "CORES×GHZ", "RAM", "INT8-DOT", "RUNTIMES", "FP32"):
        assert column in lines[0]
    rows = {line.split()[0]: line for line in lines[1 : 1 + len(BUILTINS)]}
    assert sorted(rows) == BUILTINS
    assert "4×2.4" in rows["pi5"]
    assert " yes " in rows["pi5"]
    assert "4×1.5" in rows["pi4"]
    assert " no " in rows["pi4"]

    listed = runner.invoke(devices, ["ls", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert [d["name"] for d in data] == BUILTINS
    for item in data:
        assert DeviceProfile.model_validate(item) == load_profile(item["name"])


@pytest.mark.parametrize("name", BUILTINS)
def test_cli_show_json_matches_load_profile(name: str) -> None:
    result = CliRunner().invoke(devices, ["show", name, "--json"])
    assert result.exit_code == 0, result.output
    assert DeviceProfile.model_validate(json.loads(result.output)) == load_profile(name)


def test_cli_show_prints_every_field_with_its_source() -> None:
    profile = load_profile("pi5")
    result = CliRunner().invoke(devices, ["show", "pi5"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert str(PROFILE_DIR / "pi5.yaml") in result.output
    for field, figure in _figures(profile):
        assert f"{field} " in result.output
        assert " ".join(figure.source.split()) in flat, field
    for field, source in profile.sources.items():
        assert " ".join(source.split()) in flat, field
    assert "speed.int8 3.8× slower than the reference" in flat
    assert "int8_dot_product yes" in flat


def test_cli_errors_go_to_stderr_with_exit_1(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(devices, ["show", "pi6"])
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith("error: unknown device profile 'pi6'")
    assert "pi-zero-2w" in unknown.stderr
    assert unknown.stdout == ""

    path = _user_profile(tmp_path, "typo", **{"\nthreads:": "\nthread:"})
    typo = runner.invoke(devices, ["show", str(path)])
    assert typo.exit_code == 1
    assert f"{path}:{_line_of(path.read_text(), 'thread:')}: thread: unknown field" in typo.stderr


def test_cli_ls_marks_user_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user_profile(tmp_path, "lab-board")
    monkeypatch.setenv(PROFILES_ENV, str(tmp_path))
    result = CliRunner().invoke(devices, ["ls"])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("lab-board* ") for line in result.output.splitlines())
    assert f"${PROFILES_ENV}" in result.output
    listed = json.loads(CliRunner().invoke(devices, ["ls", "--json"]).output)
    assert "lab-board" in [d["name"] for d in listed]


def test_devices_cli_works_without_numpy_as_on_a_device() -> None:
    """A device's edgeagent has no numpy: the CLI (which the agent's entry point imports) and
    `devices ls/show` must work there; `devices calibrate` says what it needs."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "sys.modules['numpy'] = None\n"
        "from click.testing import CliRunner\n"
        "from edgeagent.cli import main\n"
        "for args in (['devices', 'ls'], ['devices', 'show', 'pi4'], ['devices', 'calibrate']):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    print(r.exit_code, r.output.strip().splitlines()[-1])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert out[0].startswith("0 ")
    assert out[1].startswith("0 ")
    assert out[2].startswith("1 error: fitting needs numpy")
