"""edgeagent's own wheel in the build cache: built once per source tree, never half-written, and
built again when the cached copy is damaged (deploy/wheelhouse.py)."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from edgeagent.deploy.wheelhouse import edgeagent_wheel


@pytest.mark.slow
def test_concurrent_builds_share_one_sound_wheel_and_a_damaged_one_is_rebuilt(
    tmp_path: Path,
) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(edgeagent_wheel(tmp_path))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(results) == 2
    assert results[0] == results[1]  # one build; the second caller found it cached
    wheel = results[0]
    with zipfile.ZipFile(wheel) as z:
        assert z.testzip() is None
    assert not list(wheel.parent.glob("*.tmp"))
    good = wheel.read_bytes()

    wheel.write_bytes(good[: len(good) // 2])  # a copy cut short (crash, full disk)
    said: list[str] = []
    again = edgeagent_wheel(tmp_path, log=said.append)
    assert again == wheel
    assert again.read_bytes() == good  # reproducible: the same bytes again
    assert any("damaged" in line for line in said), said
