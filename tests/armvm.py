"""An emulated arm64 device for tests: Debian 12 with systemd, sshd and Python 3.11, booted in
``qemu-system-aarch64 -M virt`` (no KVM: pure emulation).

The root filesystem is built once with ``mmdebstrap --arch=arm64`` (about 3 minutes) and cached,
keyed by the recipe: ``EDGEAGENT_VM_CACHE`` or ``~/.cache/edgeagent/vm``. ``update-initramfs`` is
diverted during the build (under emulation it takes about 8 minutes); a tiny busybox initramfs is
made on the host instead (the kernel's virtio and ext4 modules, mount the root, switch_root). Each
boot runs on a fresh qcow2 overlay, so every test gets a clean device; SSH is forwarded to a free
port on 127.0.0.1 and the guest reaches the host's 127.0.0.1 as 10.0.2.2.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgeagent.localbroker import free_port

RECIPE_VERSION = 4
PACKAGES = [
    "systemd", "systemd-sysv", "udev", "dbus", "python3", "python3-venv", "openssh-server",
    "openssl", "rsync", "iproute2", "ca-certificates", "procps", "linux-image-arm64",
    "busybox-static",
]  # fmt: skip
MIRROR = "http://deb.debian.org/debian"
ROOTFS_MB = 2048


def _log(msg: str) -> None:
    print(f"[armvm] {msg}", file=sys.stderr, flush=True)


def qemu_available() -> str | None:
    """None when an emulated device can be built and booted here, else why not."""
    for tool in ("qemu-system-aarch64", "qemu-img", "mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: qemu-system-arm qemu-utils mmdebstrap)"
    if (
        not Path("/usr/bin/qemu-aarch64-static").exists()
        and not Path("/usr/libexec/qemu-binfmt/aarch64-binfmt-P").exists()
    ):
        return "qemu-user-static is not installed (needed to build an arm64 root filesystem)"
    if os.getuid() != 0:
        return "building the emulated device's root filesystem needs root"
    return None


@dataclass(frozen=True, slots=True)
class VmImage:
    kernel: Path
    initrd: Path
    rootfs: Path
    ssh_key: Path
    host_key: str
    """The guest's ed25519 host key line (type and base64)."""


def cache_dir() -> Path:
    env = os.environ.get("EDGEAGENT_VM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "edgeagent" / "vm"


def _recipe_key() -> str:
    blob = f"{RECIPE_VERSION}|{' '.join(PACKAGES)}|{MIRROR}|{ROOTFS_MB}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _enable_binfmt() -> None:
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"],
            check=False,
            capture_output=True,
        )
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        subprocess.run(
            ["update-binfmts", "--enable", "qemu-aarch64"], check=False, capture_output=True
        )


def ensure_image(cache: Path | None = None) -> VmImage:
    """The cached image, built first if needed (a lock keeps concurrent builds to one)."""
    folder = (cache or cache_dir()) / _recipe_key()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "complete").is_file():
            _build(folder)
    return VmImage(
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd.gz",
        rootfs=folder / "rootfs.ext4",
        ssh_key=folder / "id_ed25519",
        host_key=(folder / "host_key.pub").read_text().strip(),
    )


def _build(folder: Path) -> None:
    t0 = time.monotonic()
    _enable_binfmt()
    work = Path(tempfile.mkdtemp(prefix="armvm-", dir=folder.parent))
    try:
        root = work / "root"
        _log("building the arm64 root filesystem with mmdebstrap (about 3 minutes)…")
        cmd = [
            "mmdebstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--aptopt=Apt::Install-Recommends \"false\"",
            "--essential-hook=chroot \"$1\" dpkg-divert --local --rename --add "
            "/usr/sbin/update-initramfs; ln -sf /bin/true \"$1/usr/sbin/update-initramfs\"",
            "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd ssh",
            "--customize-hook=chroot \"$1\" systemctl mask apt-daily.timer "
            "apt-daily-upgrade.timer e2scrub_reap.service getty@tty1.service "
            "serial-getty@ttyAMA0.service",
            "bookworm", str(root), MIRROR,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed:\n{proc.stderr[-3000:]}")
        _log(f"root filesystem built in {time.monotonic() - t0:.0f} s; configuring")
        (root / "etc/hostname").write_text("edge-arm64\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 edge-arm64\n")
        (root / "etc/systemd/network/20-wired.network").write_text(
            "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n"
        )
        (root / "etc/fstab").write_text("LABEL=rootfs / ext4 defaults,noatime 0 1\n")
        key = folder.parent / f".key-{os.getpid()}"
        for p in (key, Path(f"{key}.pub")):
            p.unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            capture_output=True,
        )
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        (ssh_dir / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
        (root / "etc/ssh/sshd_config.d/edgeagent-test.conf").write_text(
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
        )
        host_pub = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()
        kernel_ver = sorted(p.name for p in (root / "lib/modules").iterdir())[-1]
        out = work / "out"
        out.mkdir()
        shutil.copyfile(root / f"boot/vmlinuz-{kernel_ver}", out / "vmlinuz")
        (out / "initrd.gz").write_bytes(_initramfs(root, kernel_ver))
        _log("making the ext4 image")
        subprocess.run(
            ["mkfs.ext4", "-q", "-L", "rootfs", "-d", str(root), str(out / "rootfs.ext4"),
             f"{ROOTFS_MB}M"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        (out / "host_key.pub").write_text(f"{host_pub[0]} {host_pub[1]}\n")
        shutil.move(key, out / "id_ed25519")
        shutil.move(f"{key}.pub", out / "id_ed25519.pub")
        (out / "complete").write_text(f"built in {time.monotonic() - t0:.0f} s\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(out, folder)
        _log(f"image ready in {time.monotonic() - t0:.0f} s: {folder}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


_INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /lib/modules/$m 2>/dev/null; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
mount -t ext4 -o rw,noatime /dev/vda /newroot || { echo "cannot mount /dev/vda"; sh; }
umount /sys /proc
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


def _module_closure(root: Path, ver: str, wanted: list[str]) -> list[str]:
    """The modules to load, dependencies first (relative paths from modules.dep)."""
    base = root / "lib/modules" / ver
    deps: dict[str, list[str]] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        name, _, rest = line.partition(":")
        deps[name] = rest.split()
    order: list[str] = []

    def add(mod: str) -> None:
        if mod in order:
            return
        for d in deps.get(mod, []):
            add(d)
        order.append(mod)

    for w in wanted:
        for name in deps:
            stem = name.rsplit("/", 1)[-1].split(".ko")[0]
            if stem == w:
                add(name)
    return order


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (path, mode, data) entries (directories have mode 0o40755)."""
    out = io.BytesIO()

    def pad(n: int) -> None:
        out.write(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        nb = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0]
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        out.write(nb)
        pad(110 + len(nb))
        out.write(data)
        pad(len(data))
    return out.getvalue()


def _initramfs(root: Path, ver: str) -> bytes:
    wanted = ["virtio", "virtio_ring", "virtio_pci", "virtio_blk", "crc32c_generic", "ext4"]
    mods = _module_closure(root, ver, wanted)
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o40755, b"") for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")
    ]
    entries.append(("bin/busybox", 0o100755, (root / "bin/busybox").read_bytes()))
    entries.append(("init", 0o100755, _INIT.encode()))
    entries.append(("modules.order", 0o100644, "\n".join(mods).encode() + b"\n"))
    made = {"lib/modules"}
    for m in mods:
        parts = m.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "lib/modules/" + "/".join(parts[:i])
            if d not in made:
                entries.append((d, 0o40755, b""))
                made.add(d)
        entries.append(
            (f"lib/modules/{m}", 0o100644, (root / "lib/modules" / ver / m).read_bytes())
        )
    return gzip.compress(_cpio_newc(entries), compresslevel=6, mtime=0)


@dataclass
class Vm:
    host: str
    ssh_port: int
    user: str
    key: Path
    known_hosts: Path
    serial_log: Path
    _proc: subprocess.Popen[bytes]
    _dir: Path

    def ssh_args(self) -> list[str]:
        return [
            "ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=5", "-i", str(self.key),
            "-p", str(self.ssh_port), f"{self.user}@{self.host}",
        ]  # fmt: skip

    def run(self, cmd: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.ssh_args(), cmd], capture_output=True, text=True, timeout=timeout, check=False
        )

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@contextlib.contextmanager
def boot(
    image: VmImage,
    *,
    memory_mb: int = 1024,
    cpus: int = 2,
    extra_disk_mb: int | None = None,
    timeout: float = 240,
) -> Iterator[Vm]:
    """Boot a clean device (a fresh overlay over the cached image); stopped on exit."""
    work = Path(tempfile.mkdtemp(prefix="armvm-boot-"))
    overlay = work / "overlay.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs), "-F", "raw",
         str(overlay)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    drives = ["-drive", f"file={overlay},if=virtio,format=qcow2"]
    if extra_disk_mb:
        data = work / "data.ext4"
        subprocess.run(
            ["mkfs.ext4", "-q", "-L", "edgedata", str(data), f"{extra_disk_mb}M"],
            check=True,
            capture_output=True,
        )
        drives += ["-drive", f"file={data},if=virtio,format=raw"]
    port = free_port()
    known = work / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {image.host_key}\n")
    key = work / "id_ed25519"
    shutil.copyfile(image.ssh_key, key)
    key.chmod(0o600)
    serial = work / "serial.log"
    cmd = [
        "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", str(cpus),
        "-m", str(memory_mb), "-display", "none", "-monitor", "none",
        "-serial", f"file:{serial}", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", "console=ttyAMA0 root=/dev/vda rw quiet", *drives,
        "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22",
    ]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    vm = Vm("127.0.0.1", port, "root", key, known, serial, proc, work)
    try:
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise RuntimeError(f"qemu exited: {err[-2000:]}")
            if time.monotonic() - t0 > timeout:
                tail = serial.read_text(errors="replace")[-3000:] if serial.exists() else ""
                raise RuntimeError(f"the emulated device gave no SSH in {timeout:g} s:\n{tail}")
            try:
                if vm.run("true", timeout=15).returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        _log(f"booted to SSH in {time.monotonic() - t0:.1f} s (port {port})")
        if extra_disk_mb:
            mounted = vm.run("mkdir -p /opt/edgeagent && mount /dev/vdb /opt/edgeagent")
            if mounted.returncode != 0:
                raise RuntimeError(f"cannot mount the small disk: {mounted.stderr}")
        yield vm
    finally:
        vm.stop()
        shutil.rmtree(work, ignore_errors=True)
