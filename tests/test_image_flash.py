"""``edgeagent image flash``: the safety decisions on a fake machine (a /sys and /proc tree made
here), and real writes with read-back to files and loop devices (root and losetup, else skipped
with the reason)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import lzma
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeagent.cli_image_flash import flash as flash_cmd
from edgeagent.images.flash import (
    BlockDev,
    FlashIOError,
    FlashRefused,
    Image,
    ImageUnreadable,
    Mount,
    SystemView,
    Target,
    VerifyMismatch,
    decide,
)
from edgeagent.images.flash_io import (
    BLOCK,
    flash,
    plan,
    probe_image,
    verify,
    write_image,
)
from edgeagent.images.flash_sys import probe_target, read_view
from edgeagent.images.flash_xz import XzReader, xz_uncompressed_size

GiB = 1024**3
MiB = 1024**2
ROOT = os.geteuid() == 0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_file(path: Path, size: int, seed: int = 1) -> bytes:
    """Incompressible-ish but reproducible data, not a multiple of the block size."""
    data = hashlib.shake_256(f"image {seed}".encode()).digest(size)
    path.write_bytes(data)
    return data


# a fake machine --------------------------------------------------------------------------------


class FakeMachine:
    """A /sys and /proc tree laid out the way Linux lays them out (symlinks and all)."""

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.proc = root / "proc"
        (self.sys / "block").mkdir(parents=True)
        (self.sys / "dev" / "block").mkdir(parents=True)
        (self.proc / "self").mkdir(parents=True)
        self.mountinfo: list[str] = []
        self.swaps = ["Filename\tType\tSize\tUsed\tPriority"]

    def _link(self, at: Path, to: Path) -> None:
        at.symlink_to(os.path.relpath(to, at.parent))

    def disk(
        self,
        name: str,
        devpath: str,
        devnum: str,
        gib: float,
        *,
        removable: bool = False,
        ro: bool = False,
        vendor: str = "",
        model: str = "",
        parts: tuple[tuple[str, str], ...] = (),
        slaves: tuple[str, ...] = (),
        backing: str = "",
    ) -> None:
        real = self.sys / "devices" / devpath / "block" / name
        real.mkdir(parents=True)
        (real / "size").write_text(f"{int(gib * GiB) // 512}\n")
        (real / "removable").write_text("1\n" if removable else "0\n")
        (real / "ro").write_text("1\n" if ro else "0\n")
        (real / "dev").write_text(devnum + "\n")
        (real / "device").mkdir()
        if vendor:
            (real / "device" / "vendor").write_text(vendor.ljust(8) + "\n")
        if model:
            (real / "device" / "model").write_text(model.ljust(16) + "\n")
        (real / "slaves").mkdir()
        for s in slaves:
            (real / "slaves" / s).touch()
        if backing:
            (real / "loop").mkdir()
            (real / "loop" / "backing_file").write_text(backing + "\n")
        self._link(self.sys / "block" / name, real)
        self._link(self.sys / "dev" / "block" / devnum, real)
        for i, (part, pnum) in enumerate(parts, 1):
            (real / part).mkdir()
            (real / part / "partition").write_text(f"{i}\n")
            (real / part / "dev").write_text(pnum + "\n")
            self._link(self.sys / "dev" / "block" / pnum, real / part)

    def mount(self, devnum: str, point: str, source: str, fstype: str = "ext4") -> None:
        n = len(self.mountinfo) + 20
        self.mountinfo.append(f"{n} 1 {devnum} / {point} rw,relatime - {fstype} {source} rw")

    def swap(self, source: str) -> None:
        self.swaps.append(f"{source}\tpartition\t8388604\t0\t-2")

    def write(self) -> None:
        (self.proc / "self" / "mountinfo").write_text("\n".join(self.mountinfo) + "\n")
        (self.proc / "swaps").write_text("\n".join(self.swaps) + "\n")


USB = "pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
ATA = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0"


@pytest.fixture
def machine(tmp_path: Path) -> FakeMachine:
    """A laptop: LVM root on the SATA disk, a mounted USB disk, a card reader with a card,
    a swap disk, an NVMe disk, a read-only card, an empty reader, a btrfs USB stick, a loop."""
    m = FakeMachine(tmp_path / "fake")
    m.disk("sda", ATA, "8:0", 476.9, vendor="ATA", model="Samsung SSD 860",
           parts=(("sda1", "8:1"), ("sda2", "8:2")))  # fmt: skip
    m.disk("dm-0", "virtual", "253:0", 400, slaves=("sda2",))
    m.disk("sdb", USB, "8:16", 29.7, vendor="SanDisk", model="Extreme",
           parts=(("sdb1", "8:17"), ("sdb2", "8:18")))  # fmt: skip
    m.disk("sdc", USB.replace("2-1", "2-2").replace("host6", "host7"), "8:32", 29.7,
           removable=True, vendor="Generic-", model="SD/MMC",
           parts=(("sdc1", "8:33"), ("sdc2", "8:34")))  # fmt: skip
    m.disk("sdd", ATA.replace("ata1", "ata2"), "8:48", 931.5, parts=(("sdd1", "8:49"),))
    m.disk("sde", USB.replace("usb2", "usb3"), "8:64", 0, removable=True)
    m.disk("sdf", USB.replace("usb2", "usb4"), "8:80", 14.9, parts=(("sdf1", "8:81"),))
    m.disk("nvme0n1", "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0", "259:0", 238.5)
    m.disk("mmcblk0", "platform/fe340000.mmc/mmc_host/mmc0/mmc0:aaaa", "179:0", 14.8)
    m.disk("mmcblk1", "platform/fe350000.mmc/mmc_host/mmc1/mmc1:bbbb", "179:32", 14.8, ro=True)
    m.disk("loop0", "virtual", "7:0", 4, backing="/home/me/lamp.img")
    m.mount("253:0", "/", "/dev/mapper/vg-root")
    m.mount("8:1", "/boot/efi", "/dev/sda1", "vfat")
    m.mount("8:17", r"/media/me/boot\040fs", "/dev/sdb1", "vfat")
    m.mount("0:52", "/media/me/stick", "/dev/sdf1", "btrfs")  # btrfs: an anonymous 0:N
    m.mount("0:25", "/tmp", "tmpfs", "tmpfs")
    m.swap("/dev/sdd1")
    m.write()
    return m


IMG = Image("lamp.img", 2 * GiB)


def disk_target(view: SystemView, name: str) -> Target:
    d = view.disks[name]
    return Target(f"/dev/{name}", "disk", size=d.size, disk=d)


def decide_on(view: SystemView, name: str, *, force: bool = False) -> tuple[str, ...]:
    return decide(IMG, disk_target(view, name), view, force=force).refusals


def test_fake_sysfs_is_read_as_linux_lays_it_out(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    sdb = view.disks["sdb"]
    assert (sdb.transport, sdb.model, sdb.partitions) == (
        "usb",
        "SanDisk Extreme",
        ("sdb1", "sdb2"),
    )
    assert sdb.size == int(29.7 * GiB) // 512 * 512
    assert (view.disks["sda"].transport, view.disks["sdc"].removable) == ("ata", True)
    assert view.disks["mmcblk0"].transport == "mmc"
    assert view.disks["nvme0n1"].transport == "nvme"
    assert view.disks["mmcblk1"].read_only
    assert view.disks["dm-0"].slaves == ("sda2",)
    assert view.disks["loop0"].backing_file == "/home/me/lamp.img"
    mounts = {m.point: m.device for m in view.mounts}
    assert mounts["/media/me/boot fs"] == "sdb1"  # the octal escape undone
    assert mounts["/media/me/stick"] == "sdf1"  # found by its source, not its 0:N
    assert mounts["/tmp"] == ""
    assert view.swaps == ("sdd1",)


def test_system_disk_found_through_lvm_and_refused_even_with_force(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    assert view.system_disks() == {"sda": "/ is on dm-0"}
    refusals = decide_on(view, "sda", force=True)
    assert any("running system (/ is on dm-0)" in r for r in refusals), refusals


def test_boot_partition_makes_its_disk_the_system_disk() -> None:
    """A Pi booted from its SD card: / on a USB disk, /boot/firmware on mmcblk0p1."""
    view = SystemView(
        disks={
            "mmcblk0": BlockDev("mmcblk0", 32 * GiB, transport="mmc", partitions=("mmcblk0p1",)),
            "sda": BlockDev("sda", 64 * GiB, transport="usb", partitions=("sda1",)),
        },
        mounts=(Mount("/", "sda1"), Mount("/boot/firmware", "mmcblk0p1")),
    )
    assert view.system_disks() == {
        "sda": "/ is on sda1",
        "mmcblk0": "/boot/firmware is on mmcblk0p1",
    }
    assert any("running system" in r for r in decide_on(view, "mmcblk0", force=True))


def test_disks_in_use_are_refused_naming_what_uses_them(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    (mounted,) = decide_on(view, "sdb")
    assert "sdb1 is mounted on /media/me/boot fs" in mounted
    (btrfs,) = decide_on(view, "sdf")
    assert "sdf1 is mounted on /media/me/stick" in btrfs
    swap = decide_on(view, "sdd", force=True)
    assert swap == ("/dev/sdd is in use: sdd1 is in use as swap; unmount or release it first",)


def test_member_of_a_device_mapper_device_is_in_use() -> None:
    view = SystemView(
        disks={
            "sdb": BlockDev("sdb", 32 * GiB, transport="usb", partitions=("sdb1",)),
            "dm-3": BlockDev("dm-3", 30 * GiB, transport="dm", slaves=("sdb1",)),
        },
    )
    assert decide_on(view, "sdb") == (
        "/dev/sdb is in use: sdb1 is part of dm-3; unmount or release it first",
    )


def test_non_removable_disk_needs_force(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    (refusal,) = decide_on(view, "nvme0n1")
    assert "not removable (a nvme disk" in refusal
    assert "--force" in refusal
    forced = decide(IMG, disk_target(view, "nvme0n1"), view, force=True)
    assert forced.allowed
    assert any("--force" in n for n in forced.notes)


def test_removable_usb_sd_and_loop_targets_are_allowed(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    for name in ("sdc", "mmcblk0"):  # a card reader (removable flag), an SD slot (mmc)
        p = decide(IMG, disk_target(view, name), view)
        assert p.allowed, (name, p.refusals)
        assert p.overwrites
    loop = decide(Image("lamp.img", 3 * GiB), disk_target(view, "loop0"), view)
    assert loop.allowed
    assert loop.notes == ("loop0 is a loop device backed by /home/me/lamp.img",)
    usb_ssd = BlockDev("sdx", 64 * GiB, transport="usb")  # removable flag 0, but on USB
    assert decide_on(SystemView(disks={"sdx": usb_ssd}), "sdx") == ()


def test_too_small_read_only_and_empty_readers_are_refused(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    big = Image("big.img", 16 * GiB)
    (small,) = decide(big, disk_target(view, "mmcblk0"), view).refusals
    assert small.startswith("/dev/mmcblk0 is too small: 14.8 GiB")
    assert "for an image of 16.0 GiB (17,179,869,184 bytes)" in small
    (ro,) = decide_on(view, "mmcblk1")
    assert "read-only" in ro
    (empty,) = decide_on(view, "sde")
    assert "no medium" in empty


def test_every_reason_is_listed() -> None:
    disk = BlockDev("sdz", GiB, read_only=True, transport="ata", partitions=("sdz1",))
    view = SystemView(disks={"sdz": disk}, mounts=(Mount("/data", "sdz1"),))
    refusals = decide_on(view, "sdz")
    assert len(refusals) == 4, refusals
    for words in ("mounted on /data", "read-only", "too small", "not removable"):
        assert any(words in r for r in refusals), words


def test_partitions_and_odd_targets_are_refused(machine: FakeMachine) -> None:
    view = read_view(machine.sys, machine.proc)
    part = Target("/dev/sdc1", "partition", disk=view.disks["sdc"], partition="sdc1")
    (why,) = decide(IMG, part, view).refusals
    assert "flash the whole disk (/dev/sdc)" in why
    (folder,) = decide(IMG, Target("/tmp", "other", detail="a directory"), view).refusals
    assert folder.startswith("/tmp is a directory")


def test_file_targets_need_room_and_are_not_the_image() -> None:
    view = SystemView(disks={})
    img = Image("a.img", 100 * MiB, identity=(1, 2))
    assert decide(img, Target("out.img", "new", free=200 * MiB), view).allowed
    (room,) = decide(img, Target("out.img", "new", free=50 * MiB), view).refusals
    assert "not enough room" in room
    same = Target("a.img", "file", size=100 * MiB, free=GiB, identity=(1, 2))
    assert decide(img, same, view).refusals == ("a.img is the image itself",)
    assert not decide(img, Target("out.img", "new", free=GiB), view).overwrites
    assert decide(img, Target("o.img", "file", size=1, free=GiB), view).overwrites


@pytest.mark.skipif(not ROOT, reason="making a block device node needs root")
def test_plan_probes_a_device_node_against_the_fake_sysfs(
    machine: FakeMachine, tmp_path: Path
) -> None:
    """The whole probe: a /dev node (never opened) looked up by its major:minor in /sys."""
    image_file(tmp_path / "a.img", 1000)
    nodes = {"sdb": (8, 16), "sdc": (8, 32), "sdc1": (8, 33), "sda": (8, 0)}
    for name, (major, minor) in nodes.items():
        os.mknod(tmp_path / name, stat.S_IFBLK | 0o600, os.makedev(major, minor))

    def refusals(name: str) -> tuple[str, ...]:
        p = plan(str(tmp_path / "a.img"), str(tmp_path / name), sys_root=machine.sys,
                 proc_root=machine.proc)  # fmt: skip
        return p.refusals

    assert refusals("sdc") == ()
    assert "mounted on /media/me/boot fs" in refusals("sdb")[0]
    assert "partition (sdc1 of sdc)" in refusals("sdc1")[0]
    assert "running system" in refusals("sda")[0]
    view = read_view(machine.sys, machine.proc)
    t = probe_target(str(tmp_path / "sdc"), view, machine.sys)
    assert (t.kind, t.disk) == ("disk", view.disks["sdc"])


# real writes -------------------------------------------------------------------------------------


def test_flash_to_a_file_reads_back_and_matches(tmp_path: Path) -> None:
    data = image_file(tmp_path / "a.img", 2 * BLOCK + 12345)
    out = tmp_path / "out.img"
    out.write_bytes(b"\xff" * (3 * BLOCK))  # larger: replaced, not overwritten in place
    progress: list[tuple[str, int, int]] = []
    p = plan(str(tmp_path / "a.img"), str(out))
    assert p.allowed
    assert p.overwrites
    r = flash(p, progress=lambda *a: progress.append(a))
    assert r.sha256 == sha(data)
    assert r.bytes == len(data)
    assert out.read_bytes() == data
    assert r.verified
    assert r.verify_seconds is not None
    assert progress[-1] == ("verify", len(data), len(data))
    assert ("write", len(data), len(data)) in progress
    summary = r.to_json()
    assert summary["bytes"] == len(data)
    assert summary["write_mb_s"] > 0


def test_flash_no_verify_skips_the_read_back(tmp_path: Path) -> None:
    data = image_file(tmp_path / "a.img", 5000)
    r = flash(plan(str(tmp_path / "a.img"), str(tmp_path / "o")), verify_after=False)
    assert (r.verified, r.to_json()["verify_mb_s"]) == (False, None)
    assert (tmp_path / "o").read_bytes() == data


def test_corrupted_read_back_is_detected_with_its_offset(tmp_path: Path) -> None:
    """Written and flushed, then one byte changed on the target behind the writer's back."""
    data = image_file(tmp_path / "a.img", 3 * BLOCK)
    target = tmp_path / "out.img"
    p = plan(str(tmp_path / "a.img"), str(target))
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size, digest = write_image(p, fd)
        assert (size, digest) == (len(data), sha(data))
        verify(p, fd, digest)  # intact: passes
        where = BLOCK + 777
        with open(target, "r+b") as other:
            other.seek(where)
            other.write(bytes([data[where] ^ 0x01]))
        with pytest.raises(VerifyMismatch) as caught:
            verify(p, fd, digest)
    finally:
        os.close(fd)
    assert caught.value.offset == where
    assert f"from byte offset {where:,}" in str(caught.value)


def test_refused_plan_is_never_written(tmp_path: Path) -> None:
    image_file(tmp_path / "a.img", 100)
    p = plan(str(tmp_path / "a.img"), str(tmp_path / "a.img"))
    with pytest.raises(FlashRefused, match="is the image itself"):
        flash(p)


def xz_streams(*parts: bytes, padding: int = 0) -> bytes:
    """Concatenated xz streams (as `cat a.xz b.xz` makes) with optional stream padding."""
    return (b"\0" * padding).join(lzma.compress(part, preset=0) for part in parts)


def test_xz_image_is_decompressed_on_the_fly(tmp_path: Path) -> None:
    data = image_file(tmp_path / "raw", BLOCK + 999)
    text = b"lamp\n" * 200_000  # compresses well: several blocks of output per input chunk
    (tmp_path / "a.img.xz").write_bytes(xz_streams(data, text, padding=4) + b"\0" * 8)
    img = probe_image(str(tmp_path / "a.img.xz"))
    assert (img.compressed, img.size) == (True, len(data) + len(text))
    r = flash(plan(str(tmp_path / "a.img.xz"), str(tmp_path / "out")))
    assert (tmp_path / "out").read_bytes() == data + text
    assert r.sha256 == sha(data + text)


@pytest.mark.skipif(shutil.which("xz") is None, reason="the xz command is not installed")
def test_xz_size_agrees_with_xz_list(tmp_path: Path) -> None:
    raw = tmp_path / "raw.img"
    image_file(raw, 3 * MiB + 5)
    subprocess.run(["xz", "-0", "-T2", "--block-size=1MiB", "-k", str(raw)], check=True)
    listed = subprocess.run(
        ["xz", "--robot", "--list", f"{raw}.xz"], capture_output=True, text=True, check=True
    ).stdout
    (totals,) = [line.split("\t") for line in listed.splitlines() if line.startswith("totals")]
    with open(f"{raw}.xz", "rb") as f:
        assert xz_uncompressed_size(f) == int(totals[4]) == 3 * MiB + 5


def test_bad_images_are_named(tmp_path: Path) -> None:
    good = xz_streams(image_file(tmp_path / "raw", 300_000))
    (tmp_path / "cut.img.xz").write_bytes(good[:-30])
    with pytest.raises(ImageUnreadable, match=r"cut\.img\.xz is not a valid \.xz file"):
        probe_image(str(tmp_path / "cut.img.xz"))
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF  # inside the compressed data; the index is intact
    (tmp_path / "bad.img.xz").write_bytes(bytes(flipped))
    p = plan(str(tmp_path / "bad.img.xz"), str(tmp_path / "out"))
    with pytest.raises(ImageUnreadable, match=r"bad\.img\.xz is corrupt: xz data fails after"):
        flash(p)
    (tmp_path / "a.img.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\0" * 100)
    with pytest.raises(ImageUnreadable, match="gzip-compressed"):
        probe_image(str(tmp_path / "a.img.gz"))
    (tmp_path / "empty.img").write_bytes(b"")
    assert plan(str(tmp_path / "empty.img"), str(tmp_path / "o")).refusals[0].endswith("is empty")
    with pytest.raises(ImageUnreadable, match="cannot read the image"):
        probe_image(str(tmp_path / "missing.img"))


# loop devices -------------------------------------------------------------------------------------


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Callable[[int, Path | None], tuple[str, Path]]]:
    """Make loop devices of a given size (backed by files in tmp_path), detached at the end."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed (util-linux)")
    if not ROOT:
        pytest.skip("loop devices need root")
    made: list[str] = []

    def make(size: int, folder: Path | None = None) -> tuple[str, Path]:
        backing = (folder or tmp_path) / f"loop{len(made)}.bin"
        with open(backing, "wb") as f:
            f.truncate(size)
        proc = subprocess.run(
            ["losetup", "-f", "--show", str(backing)], capture_output=True, text=True, timeout=30
        )
        if proc.returncode != 0:
            pytest.skip(f"losetup -f failed: {proc.stderr.strip()}")
        made.append(proc.stdout.strip())
        return made[-1], backing

    yield make
    for dev in made:
        subprocess.run(["losetup", "-d", dev], timeout=30, check=False)


def test_flash_to_a_loop_device(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    data = image_file(tmp_path / "a.img", 3 * BLOCK + 4096 + 17)
    (tmp_path / "a.img.xz").write_bytes(xz_streams(data))
    dev, backing = loop_device(4 * BLOCK, None)
    p = plan(str(tmp_path / "a.img.xz"), dev)
    assert p.allowed, p.refusals
    assert p.target.kind == "disk"
    assert p.target.disk is not None
    assert p.target.disk.backing_file == str(backing)
    r = flash(p)
    assert r.sha256 == sha(data)
    with open(backing, "rb") as f:
        assert f.read(len(data)) == data


def test_read_back_reads_the_medium_not_the_page_cache(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    """The "medium" (the loop device's backing file) is changed under the device's cached
    pages after the write: only a read-back that bypasses the cache can see it."""
    data = image_file(tmp_path / "a.img", 2 * BLOCK)
    dev, backing = loop_device(2 * BLOCK, None)
    p = plan(str(tmp_path / "a.img"), dev)
    fd = os.open(dev, os.O_RDWR | os.O_EXCL)
    try:
        _, digest = write_image(p, fd)
        os.pread(fd, BLOCK, 0)  # cached again, as a read right after a write would be
        where = BLOCK // 2 + 5
        with open(backing, "r+b") as medium:
            medium.seek(where)
            medium.write(bytes([data[where] ^ 0x80]))
        with pytest.raises(VerifyMismatch) as caught:
            verify(p, fd, digest)
    finally:
        os.close(fd)
    assert caught.value.offset == where


def test_loop_device_too_small_is_refused_and_writing_past_its_end_names_the_offset(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    image_file(tmp_path / "a.img", 6 * MiB)
    dev, _ = loop_device(4 * MiB, None)
    p = plan(str(tmp_path / "a.img"), dev)
    (why,) = p.refusals
    assert "too small: 4.0 MiB" in why
    fd = os.open(dev, os.O_RDWR | os.O_EXCL)  # past the plan, straight to the writer
    try:
        with pytest.raises(FlashIOError) as caught:
            write_image(p, fd)
    finally:
        os.close(fd)
    assert (caught.value.offset, caught.value.errno) == (4 * MiB, errno.ENOSPC)
    assert "failed at byte offset 4,194,304" in str(caught.value)
    assert "(ENOSPC)" in str(caught.value)


def test_medium_failing_midway_names_the_range(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    """A "fake" card: a loop device bigger than the space behind it (a 6 MiB tmpfs)."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "flashtest", str(small)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        image_file(tmp_path / "a.img", 12 * MiB)
        dev, _ = loop_device(12 * MiB, small)
        p = plan(str(tmp_path / "a.img"), dev)
        assert p.allowed, p.refusals
        with pytest.raises(FlashIOError) as caught:
            flash(p, sync_every=BLOCK)
        subprocess.run(["losetup", "-d", dev], check=False, timeout=30)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False, timeout=30)
    assert caught.value.errno in (errno.EIO, errno.ENOSPC)
    assert caught.value.offset == BLOCK
    assert "between byte offsets 4,194,304 and 8,388,608" in str(caught.value)


def test_mounted_loop_device_is_refused(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    image_file(tmp_path / "a.img", MiB)
    dev, _ = loop_device(8 * MiB, None)
    subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True, timeout=60)
    point = tmp_path / "mnt"
    point.mkdir()
    subprocess.run(["mount", dev, str(point)], check=True, timeout=30)
    try:
        p = plan(str(tmp_path / "a.img"), dev)
    finally:
        subprocess.run(["umount", str(point)], check=True, timeout=30)
    name = Path(dev).name
    assert p.refusals == (
        f"{dev} is in use: {name} is mounted on {point}; unmount or release it first",
    )


# the command --------------------------------------------------------------------------------------


def test_cli_flashes_a_file_and_prints_json(tmp_path: Path) -> None:
    data = image_file(tmp_path / "a.img", BLOCK + 3)
    res = CliRunner().invoke(flash_cmd, [str(tmp_path / "a.img"), "--to", str(tmp_path / "o"),
                                         "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["bytes"], summary["sha256"], summary["verified"]) == (
        len(data),
        sha(data),
        True,
    )
    assert summary["verify_mb_s"] > 0
    assert "a new file" in res.stderr
    assert (tmp_path / "o").read_bytes() == data


def test_cli_will_not_prompt_without_a_terminal(tmp_path: Path) -> None:
    image_file(tmp_path / "a.img", 1000)
    (tmp_path / "o").write_bytes(b"keep me")
    res = CliRunner().invoke(flash_cmd, [str(tmp_path / "a.img"), "--to", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert "stdin is not a terminal" in res.stderr
    assert "pass --yes" in res.stderr
    assert (tmp_path / "o").read_bytes() == b"keep me"


def _run_on_terminal(args: list[str], answer: bytes) -> tuple[int, str]:
    """Run the command with a pseudo-terminal as stdin/stderr; type ``answer`` at the prompt."""
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from edgeagent.cli_image_flash import flash; flash()", *args],
        stdin=child,
        stdout=subprocess.PIPE,
        stderr=child,
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + 60
    while b"Overwrite" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 1)
        if ready:
            try:
                seen += os.read(main, 4096)
            except OSError:
                break
    os.write(main, answer)
    out, _ = proc.communicate(timeout=60)
    os.close(main)
    return proc.returncode, seen.decode() + out.decode()


def test_cli_asks_on_a_terminal_and_obeys(tmp_path: Path) -> None:
    data = image_file(tmp_path / "a.img", 5000)
    (tmp_path / "o").write_bytes(b"keep me")
    args = [str(tmp_path / "a.img"), "--to", str(tmp_path / "o")]
    code, text = _run_on_terminal(args, b"n\n")
    assert "a file of 7 bytes: it will be replaced" in text
    assert code == 1
    assert (tmp_path / "o").read_bytes() == b"keep me"
    code, text = _run_on_terminal(args, b"y\n")
    assert code == 0, text
    assert "verified" in text
    assert (tmp_path / "o").read_bytes() == data


def _root_disk() -> str | None:
    """The block device / is mounted from, as findmnt says (independently of our reading)."""
    if shutil.which("findmnt") is None:
        return None
    src = subprocess.run(["findmnt", "-no", "SOURCE", "/"], capture_output=True, text=True)
    path = src.stdout.strip()
    if not path.startswith("/dev/") or not os.path.exists(path):
        return None
    return path if stat.S_ISBLK(os.stat(path).st_mode) else None


def test_cli_refuses_the_system_disk(tmp_path: Path) -> None:
    root = _root_disk()
    if root is None:
        pytest.skip("/ is not on a block device here (findmnt)")
    image_file(tmp_path / "a.img", 1000)
    # No --yes: were the refusal ever missing, the prompt (no terminal) stops it before writing.
    res = CliRunner().invoke(flash_cmd, [str(tmp_path / "a.img"), "--to", root, "--force"])
    assert res.exit_code == 1
    assert "refused:" in res.stderr
    assert "holds the running system" in res.stderr
    assert "stdin is not a terminal" not in res.stderr


def test_cli_loop_device_end_to_end(
    tmp_path: Path, loop_device: Callable[[int, Path | None], tuple[str, Path]]
) -> None:
    data = image_file(tmp_path / "a.img", 2 * MiB + 1)
    (tmp_path / "a.img.xz").write_bytes(xz_streams(data))
    dev, backing = loop_device(4 * MiB, None)
    res = CliRunner().invoke(flash_cmd, [str(tmp_path / "a.img.xz"), "--to", dev, "--yes",
                                         "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["sha256"] == sha(data)
    assert "everything on it will be destroyed" in res.stderr
    with open(backing, "rb") as f:
        assert f.read(len(data)) == data


def test_cli_bad_image_is_one_clear_line(tmp_path: Path) -> None:
    res = CliRunner().invoke(flash_cmd, [str(tmp_path / "nope.img"), "--to", str(tmp_path / "o")])
    assert res.exit_code == 1
    assert res.stderr.strip().startswith("error: cannot read the image")
    assert "nope.img" in res.stderr
    assert not (tmp_path / "o").exists()


def test_xz_reader_handles_tiny_reads() -> None:
    """Unit check of the reader the writer uses: byte-sized output buffers, padded streams."""

    parts = [b"a" * 70_000, b"", b"bc" * 5]
    reader = XzReader(io.BytesIO(xz_streams(*parts, padding=8)))
    buf = memoryview(bytearray(3))
    out = b""
    while n := reader.readinto(buf):
        out += bytes(buf[:n])
    assert out == b"".join(parts)
