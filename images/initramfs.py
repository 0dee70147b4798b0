"""The small busybox initramfs made on the host for a Debian arm64 root filesystem
(``images/rootfs.py``'s emulated device, ``images/debian.py``'s images): Debian's own
``update-initramfs`` takes about 8 minutes under emulation, this a fraction of a second. It loads
the modules to mount the root (dependencies from the root's modules.dep) and switch_roots.
Apart from the root filesystem's recipe because it is a format writer of its own (newc cpio).

Its /init script and default modules are part of the root filesystem's recipe (its cache key).
"""

from __future__ import annotations

import gzip
import lzma
from collections.abc import Sequence
from pathlib import Path

INITRAMFS_MODULES = (
    "virtio", "virtio_ring", "virtio_pci", "virtio_blk", "crc32c_generic", "ext4",
)  # fmt: skip

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "initramfs: $*"; ls -l /dev/vd* 2>&1; sleep 1; poweroff -f; }
for m in $(cat /modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
root=/dev/vda
for arg in $(cat /proc/cmdline); do case "$arg" in root=*) root="${arg#root=}";; esac; done
dev=""
i=0
while [ -z "$dev" ] && [ $i -lt 300 ]; do
  case "$root" in
    LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;;
    *) [ -b "$root" ] && dev="$root" ;;
  esac
  [ -n "$dev" ] || { sleep 0.05; i=$((i+1)); }
done
[ -n "$dev" ] || fail "root device $root not found"
mount -t ext4 -o rw,noatime "$dev" /newroot || fail "cannot mount $dev"
if data=$(findfs LABEL=edgedata 2>/dev/null); then
  mkdir -p /newroot/opt/edgeagent
  mount -t ext4 -o rw,relatime "$data" /newroot/opt/edgeagent || echo "cannot mount $data"
fi
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


def module_closure(root: Path, kver: str, wanted: Sequence[str]) -> list[str]:
    """The modules to load for ``wanted`` (names; built-in ones are skipped), dependencies
    first, as paths relative to ``lib/modules/KVER`` from the root filesystem's modules.dep."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (root / "lib/modules" / kver / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
        stem = name.rsplit("/", 1)[-1].split(".ko")[0]
        by_name[stem.replace("-", "_")] = name
    order: list[str] = []
    seen: set[str] = set()

    def add(mod: str) -> None:
        if mod in seen:
            return
        seen.add(mod)
        for dep in deps.get(mod, []):
            add(dep)
        order.append(mod)

    for want in wanted:
        path = by_name.get(want.replace("-", "_"))
        if path is not None:
            add(path)
    return order


def _cpio_newc(entries: Sequence[tuple[str, int, bytes, int, int]]) -> bytes:
    """A newc cpio archive of (path, mode, data, rdev major, rdev minor) entries."""
    out = bytearray()

    def pad() -> None:
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, major, minor) in enumerate(
        [*entries, ("TRAILER!!!", 0, b"", 0, 0)], 1
    ):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(nb), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.extend(nb)
        pad()
        out.extend(data)
        pad()
    return bytes(out)


def make_initramfs(root: Path, kver: str, modules: Sequence[str] = INITRAMFS_MODULES) -> bytes:
    """A gzipped newc initramfs: the root filesystem's static busybox, the modules to mount the
    root (by default on virtio; dependencies from its modules.dep) and an /init that mounts
    ``root=`` (``LABEL=``, ``UUID=`` or a device path, waiting up to 15 s) and switch_roots."""
    mods = module_closure(root, kver, modules)
    entries: list[tuple[str, int, bytes, int, int]] = [
        (d, 0o40755, b"", 0, 0)
        for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")
    ]
    entries.append(("dev/console", 0o20600, b"", 5, 1))
    entries.append(("bin/busybox", 0o100755, (root / "bin/busybox").read_bytes(), 0, 0))
    entries.append(("init", 0o100755, INIT_SCRIPT.encode(), 0, 0))
    made = {"lib/modules"}
    names: list[str] = []
    for mod in mods:
        data = (root / "lib/modules" / kver / mod).read_bytes()
        name = mod
        if mod.endswith(".ko.xz"):
            data, name = lzma.decompress(data), mod[: -len(".xz")]
        elif mod.endswith(".ko.gz"):
            data, name = gzip.decompress(data), mod[: -len(".gz")]
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "lib/modules/" + "/".join(parts[:i])
            if d not in made:
                entries.append((d, 0o40755, b"", 0, 0))
                made.add(d)
        entries.append((f"lib/modules/{name}", 0o100644, data, 0, 0))
        names.append(name)
    entries.append(("modules.order", 0o100644, "".join(f"{n}\n" for n in names).encode(), 0, 0))
    return gzip.compress(_cpio_newc(entries), compresslevel=9, mtime=0)
