"""`image build --device pi`: one image for every 64-bit Raspberry Pi its base boots, and which
boards a base boots (its device trees); the first-boot installer picks the board's bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgeagent.deploy.bundle import verify_bundle
from edgeagent.devices import list_profiles, load_profile
from edgeagent.images import boards
from edgeagent.images.bootpart import ImageBuildError
from edgeagent.images.customize import BuildRequest, build
from edgeagent.images.installer import Failed, Installer
from tests.deployapp import make_app
from tests.test_image_build import CMDLINE, extract_boot, keys, make_image

__all__ = ["keys"]  # the module fixture, shared

pytestmark = [
    pytest.mark.skipif(shutil.which("mcopy") is None, reason="mtools is not installed"),
    pytest.mark.timeout(600),
]

PI_OS_DTBS = ("bcm2710-rpi-zero-2-w.dtb", "bcm2710-rpi-3-b-plus.dtb", "bcm2711-rpi-4-b.dtb")
PROFILES = list_profiles()


def _request(base: Path, out: Path, config: Path, key: Path, profile: str) -> BuildRequest:
    return BuildRequest(base=base, out=out, profile=profile, config=config, key=key, python="3.11")


def test_which_boards_a_boot_partition_boots() -> None:
    names = ["cmdline.txt", "config.txt", *PI_OS_DTBS]
    assert boards.boots("pi4", names) is True
    assert boards.boots("pi5", names) is False
    assert boards.boots("pi3b-plus", ["bcm2837-rpi-3-b-plus.dtb"]) is True  # Debian's name
    assert boards.boots("pi4", ["cmdline.txt"]) is None  # no device trees: nothing to tell

    family = boards.targets("pi", PROFILES, names)
    assert [p.name for p in family.profiles] == ["pi-zero-2w", "pi3b-plus", "pi4"]
    assert family.family == "pi"
    assert family.notes == ("pi5 left out: no bcm2712-rpi-5-b.dtb",)
    single = boards.targets("pi4", PROFILES, names)
    assert ([p.name for p in single.profiles], single.family, single.notes) == (["pi4"], None, ())
    with pytest.raises(ImageBuildError, match=r"--device pi5: .* no bcm2712-rpi-5-b\.dtb"):
        boards.targets("pi5", PROFILES, names)
    trusted = boards.targets("pi5", PROFILES, ["cmdline.txt"])
    assert trusted.notes == ("no device trees on the boot partition: pi5 taken on trust",)
    assert [p.name for p in boards.targets("x86-64", PROFILES, names).profiles] == ["x86-64"]
    with pytest.raises(ImageBuildError, match=r"--device pc: no such profile or family"):
        boards.targets("pc", PROFILES, names)
    with pytest.raises(ImageBuildError, match=r"boots none of the family's 64-bit boards"):
        boards.targets("pi", PROFILES, ["cmdline.txt", "bcm2708-rpi-b.dtb"])


def test_family_image_carries_a_bundle_per_board(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    key, pub = keys
    config = make_app(tmp_path / "app", device="lamp-9", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile="pi4")  # fmt: skip
    files = {"cmdline.txt": CMDLINE, "config.txt": "arm_64bit=1\n"}
    files |= {name: "device tree\n" for name in PI_OS_DTBS}
    base = make_image(tmp_path / "bookworm.img", files, boot_mib=200)
    out = tmp_path / "lamp.img"
    s = build(_request(base, out, config, key, "pi")).summary()
    assert s["profile"] == "pi"
    assert sorted(s["releases"]) == ["pi-zero-2w", "pi3b-plus", "pi4"]
    assert s["notes"] == ["pi5 left out: no bcm2712-rpi-5-b.dtb"]

    boot = extract_boot(out, tmp_path / "boot")
    bundle = boot / "edgeagent" / "bundle"
    enrol = json.loads((bundle.parent / "enrolment.json").read_text())
    assert enrol["profile"] == "pi"
    assert {p: c["release"] for p, c in enrol["profiles"].items()} == s["releases"]
    assert enrol["profiles"]["pi4"]["match"] == load_profile("pi4").match
    # One shared store: every profile's manifest verifies against it, and a file every
    # profile has (the wheels, the config) is there once.
    store = sorted(p.name for p in (bundle / "files").iterdir())
    assert len(store) == len(set(store))
    sizes = 0
    for profile, release in s["releases"].items():
        folder = tmp_path / f"check-{profile}"
        folder.mkdir()
        (folder / "files").symlink_to(bundle / "files")
        for name in ("bundle.json", "bundle.json.minisig"):
            shutil.copyfile(bundle / "profiles" / profile / name, folder / name)
        manifest, _ = verify_bundle(folder, [pub], profile=load_profile(profile))
        assert manifest["version"] == release
        assert manifest["profile"] == profile
        sizes += sum(int(f["size"]) for f in manifest["files"])
    assert s["bundle_bytes"] < sizes / 2  # shared, not three copies

    # At first boot the board's model picks its bundle.
    fake = tmp_path / "fake"
    model = fake / "proc" / "device-tree" / "model"
    model.parent.mkdir(parents=True)
    inst = Installer(boot, fake, "process")
    for text, profile in (("Raspberry Pi 4 Model B Rev 1.4", "pi4"),
                          ("Raspberry Pi Zero 2 W Rev 1.0", "pi-zero-2w"),
                          ("Raspberry Pi 3 Model B Plus Rev 1.3", "pi3b-plus")):  # fmt: skip
        model.write_bytes(text.encode() + b"\0")
        assert inst.choose(enrol) == (profile, s["releases"][profile],
                                      bundle / "profiles" / profile)  # fmt: skip
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\0")
    with pytest.raises(Failed, match=r"this board \(Raspberry Pi 5 Model B Rev 1\.0\) is none"):
        inst.choose(enrol)
    model.unlink()
    with pytest.raises(Failed, match=r"no device-tree model"):
        inst.choose(enrol)


def test_one_profile_the_base_cannot_boot_is_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    key, _ = keys
    config = make_app(tmp_path / "app", device="lamp-5", fleet="home",
                      broker="mqtt://127.0.0.1:1", profile="pi5")  # fmt: skip
    files = {"cmdline.txt": CMDLINE, **{name: "dt\n" for name in PI_OS_DTBS}}
    base = make_image(tmp_path / "bookworm.img", files)
    out = tmp_path / "lamp.img"
    with pytest.raises(ImageBuildError, match=r"cannot boot Raspberry Pi 5.*bcm2712-rpi-5-b"):
        build(_request(base, out, config, key, "pi5"))
    assert not out.exists()
