"""The deploy's pure decisions: which profile a device is, can it run a release, what to send."""

from __future__ import annotations

from typing import Any

import pytest

from edgeagent.deploy.errors import ProfileMismatch
from edgeagent.deploy.plan import HealthWatch, choose_profile, host_problems, plan_upload
from edgeagent.devices import list_profiles

PROFILES = list_profiles()


def probe(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "arch": "aarch64", "python": "3.11.2", "model": "Raspberry Pi 4 Model B Rev 1.4",
        "os": {"ID": "debian", "PRETTY_NAME": "Debian 12"}, "venv": True, "openssl": True,
        "free_bytes": 10**10, "root": "/opt/edgeagent", "envs": [],
    }  # fmt: skip
    base.update(kw)
    return base


def test_family_reads_the_board_and_names_are_checked() -> None:
    assert choose_profile("pi", probe(), PROFILES).profile.name == "pi4"
    assert (
        choose_profile("pi", probe(model="Raspberry Pi 5 Model B Rev 1.0"), PROFILES).profile.name
        == "pi5"
    )
    assert choose_profile("pi4", probe(), PROFILES).profile.name == "pi4"
    with pytest.raises(ProfileMismatch, match=r"pi5.*Raspberry Pi 4 Model B"):
        choose_profile("pi5", probe(), PROFILES)
    with pytest.raises(ProfileMismatch, match="no pi profile matches"):
        choose_profile("pi", probe(model="linux,dummy-virt"), PROFILES)
    assert (
        choose_profile("generic-arm64", probe(model=""), PROFILES).profile.name == "generic-arm64"
    )
    with pytest.raises(ProfileMismatch, match="x86_64"):
        choose_profile("generic-arm64", probe(arch="x86_64"), PROFILES)


def manifest(**kw: Any) -> dict[str, Any]:
    m: dict[str, Any] = {
        "platform": {"arch": "aarch64", "python": "3.11"}, "env": "e" * 64,
        "files": [
            {"path": "app/a.py", "sha256": "a" * 64, "size": 10, "role": "app"},
            {"path": "app/b.py", "sha256": "a" * 64, "size": 10, "role": "app"},
            {"path": "wheels/x.whl", "sha256": "b" * 64, "size": 1000, "role": "wheel"},
        ],
    }  # fmt: skip
    m.update(kw)
    return m


def test_host_problems_say_what_is_wrong() -> None:
    assert host_problems(probe(), manifest(), 0, 0) == []
    problems = host_problems(
        probe(arch="armv7l", python="3.13.5", venv=False, openssl=False, free_bytes=1000),
        manifest(), 10**6, 0,
    )  # fmt: skip
    text = "\n".join(problems)
    for word in ("architecture", "Python 3.11", "python3-venv", "openssl", "disk space"):
        assert word in text


def test_upload_sends_each_missing_content_once() -> None:
    up = plan_upload(manifest(), ["a" * 64])
    assert [f["path"] for f in up.files] == ["app/a.py"]
    assert (up.bytes, up.bundle_bytes) == (10, 1020)


def test_health_needs_online_version_ping_and_check() -> None:
    w = HealthWatch("v2", need_check=True)
    w.saw_device("online", "v1")
    assert not w.healthy
    assert "announced release v1" in w.missing()
    w.saw_device("online", "v2")
    w.pinged = True
    assert not w.healthy
    assert "smoke-test" in w.missing()
    w.checked = True
    assert w.healthy
