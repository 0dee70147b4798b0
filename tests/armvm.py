"""An emulated arm64 device for tests: Debian 12 with systemd, sshd and Python 3.11, booted in
``qemu-system-aarch64 -M virt -cpu cortex-a72`` (no KVM: pure emulation).

The root filesystem is the one ``image build --base debian`` starts from
(``edgeagent.images.rootfs``): built once with ``mmdebstrap --arch=arm64`` and cached, keyed by a
hash of the recipe, in ``EDGEAGENT_VM_CACHE`` or ``~/.cache/edgeagent/vm``, with a tiny busybox
initramfs made on the host (the kernel's virtio and ext4 modules, mount ``root=LABEL=rootfs``,
``switch_root``).

Each boot runs on a fresh qcow2 overlay over the cached raw ext4 image, so every test gets a clean
device. SSH is forwarded to a free port on 127.0.0.1 (root, by key only, host key known in
advance); the guest reaches the host's 127.0.0.1 as 10.0.2.2 (qemu user networking), so a broker
on the host's 127.0.0.1:PORT is ``10.0.2.2:PORT`` from the device.

    image = ensure_image()            # minutes the first time, then cached
    with boot(image) as vm:           # about 15-25 s to SSH
        print(vm.run("uname -m").stdout)
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeagent.images import rootfs
from edgeagent.images.rootfs import (
    DEVICE_USER,
    HOSTNAME,
    PACKAGES,
    RECIPE_VERSION,
    ROOTFS_MB,
    apt_sources,
    default_cache_dir,
    make_initramfs,
    module_closure,
    recipe,
    recipe_key,
)
from edgeagent.images.rootfs import RootImage as VmImage
from edgeagent.images.rootfs import run as _run

__all__ = [
    "DEVICE_USER", "HOSTNAME", "PACKAGES", "RECIPE_VERSION", "ROOTFS_MB", "SSH_TIMEOUT", "Vm",
    "VmImage", "apt_sources", "boot", "default_cache_dir", "ensure_image", "free_port",
    "make_initramfs", "module_closure", "qemu_available", "recipe", "recipe_key", "run_once",
]  # fmt: skip

SSH_TIMEOUT = 180.0


def _log(msg: str) -> None:
    print(f"[armvm] {msg}", file=sys.stderr, flush=True)


def qemu_available() -> str | None:
    """None when an emulated device can be built (or is cached) and booted here, else why not."""
    for tool in ("qemu-system-aarch64", "qemu-img", "ssh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: qemu-system-arm qemu-utils openssh-client)"
    if rootfs.is_cached():
        return None  # built already: booting needs no more
    return rootfs.build_unavailable()


def ensure_image(cache_dir: Path | None = None) -> VmImage:
    """The cached image for the current recipe, built first if needed (minutes)."""
    return rootfs.ensure(cache_dir, _log)


# --------------------------------------------------------------------------------------------
# Booting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Vm:
    """A running emulated device. ``run()`` executes a shell command on it as root over SSH."""

    ssh_port: int
    key: Path
    known_hosts: Path
    serial_log: Path
    forwards: dict[int, int] = field(default_factory=dict)
    """Guest TCP port -> host port on 127.0.0.1 (from boot(forward=...))."""
    host: str = "127.0.0.1"
    user: str = "root"
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def ssh_args(self, *, tty: bool = False) -> list[str]:
        """The ``ssh`` command line up to the destination; append a remote command."""
        return [
            "ssh", "-q", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=10", "-o", "IdentitiesOnly=yes", "-i", str(self.key),
            "-p", str(self.ssh_port), *(["-t"] if tty else []), f"{self.user}@{self.host}",
        ]  # fmt: skip

    def run(
        self, cmd: str, *, timeout: float = 120, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` with the device's shell; stdout and stderr captured as text."""
        proc = subprocess.run(
            [*self.ssh_args(), cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"on the device, {cmd!r} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def wait_running(self, timeout: float = 120) -> str:
        """``systemctl is-system-running --wait``: ``running``, or ``degraded`` and so on."""
        return self.run("systemctl is-system-running --wait", timeout=timeout).stdout.strip()

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no serial output)"


def _ssh_banner(port: int) -> bool:
    """True when something on the forwarded port talks SSH (cheap: no ssh process)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(3)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextlib.contextmanager
def boot(
    image: VmImage,
    *,
    memory_mb: int = 1024,
    cpus: int = 2,
    extra_disk_mb: int | None = None,
    forward: Sequence[int | tuple[int, int]] | None = None,
    timeout: float = SSH_TIMEOUT,
    kernel_args: str = "",
    user: str = "root",
) -> Iterator[Vm]:
    """Boot a clean device (a fresh qcow2 overlay over the cached image); stopped on exit.

    ``extra_disk_mb``: attach a second virtio disk of that size (ext4, label ``edgedata``),
    mounted at /opt/edgeagent (by the initramfs, so the device boots with it mounted).
    ``forward``: more guest TCP ports to forward from 127.0.0.1, each a guest port (a free host
    port is chosen) or ``(host_port, guest_port)``; ``vm.forwards`` maps guest to host ports.
    ``kernel_args`` are added to the kernel command line (``root=LABEL=rootfs console=ttyAMA0
    panic=-1``). ``user``: who ``vm.run()`` logs in as (with ``image.ssh_key``). Raises
    RuntimeError with the serial console's tail when SSH does not answer within ``timeout`` s.
    """
    work = Path(tempfile.mkdtemp(prefix="armvm-boot-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        overlay = work / "overlay.qcow2"
        _run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.rootfs.resolve()),
              "-F", "raw", str(overlay)], "qemu-img create")  # fmt: skip
        drives = ["-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe"]
        if extra_disk_mb:
            data = work / "data.ext4"
            _run(["mkfs.ext4", "-q", "-F", "-L", "edgedata", str(data), f"{extra_disk_mb}M"],
                 "mkfs.ext4")  # fmt: skip
            drives += ["-drive", f"file={data},if=virtio,format=raw,cache=unsafe"]
        port = free_port()
        forwards: dict[int, int] = {}
        for spec in forward or []:
            host_port, guest_port = spec if isinstance(spec, tuple) else (free_port(), spec)
            forwards[guest_port] = host_port
        nic = f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22" + "".join(
            f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in forwards.items()
        )
        known = work / "known_hosts"
        known.write_text(image.known_hosts_line(port) + "\n")
        key = work / "id_ed25519"
        shutil.copyfile(image.ssh_key, key)
        key.chmod(0o600)
        serial = work / "serial.log"
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", str(cpus),
            "-m", str(memory_mb), "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
            "-no-reboot", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", f"root=LABEL=rootfs console=ttyAMA0 panic=-1 {kernel_args}".strip(),
            *drives, "-nic", nic, "-device", "virtio-rng-pci",
        ]  # fmt: skip
        t0 = time.monotonic()
        qemu_err = work / "qemu.stderr"
        with open(qemu_err, "wb") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        vm = Vm(
            ssh_port=port, key=key, known_hosts=known, serial_log=serial, forwards=forwards,
            user=user, _proc=proc,
        )  # fmt: skip
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"qemu exited ({proc.returncode}) before SSH answered: "
                    f"{_tail(qemu_err, 2000)}\n--- serial console ---\n{_tail(serial)}"
                )
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(
                    f"the emulated device gave no SSH in {timeout:g} s; serial console:\n"
                    f"{_tail(serial)}"
                )
            if _ssh_banner(port):
                try:
                    if vm.run("true", timeout=30).returncode == 0:
                        break
                except subprocess.TimeoutExpired:
                    pass
            time.sleep(0.5)
        _log(f"booted to SSH in {time.monotonic() - t0:.1f} s (127.0.0.1:{port})")
        if extra_disk_mb:
            check = "findmnt -n /opt/edgeagent || mount LABEL=edgedata /opt/edgeagent"
            for _ in range(20):
                if vm.run(check, timeout=30).returncode == 0:
                    break
                time.sleep(0.5)
            else:
                raise RuntimeError("the extra disk was not mounted at /opt/edgeagent")
        yield vm
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def run_once(image: VmImage, append: str, *, timeout: float, cpus: int = 2) -> str:
    """Boot ``image.rootfs`` itself (no overlay: what the boot writes stays) with the kernel
    command line ``append`` until the guest reboots or powers off (qemu runs with
    ``-no-reboot``); returns the serial console's text. A first boot that reboots when done
    (Raspberry Pi Imager's ``systemd.run_success_action=reboot`` hook) runs this way. Raises
    RuntimeError with the console's tail when it is still running after ``timeout`` s."""
    work = Path(tempfile.mkdtemp(prefix="armvm-once-"))
    try:
        serial = work / "serial.log"
        cmd = [
            "qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", str(cpus),
            "-m", "1024", "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
            "-no-reboot", "-kernel", str(image.kernel), "-initrd", str(image.initrd),
            "-append", append,
            "-drive", f"file={image.rootfs},if=virtio,format=raw,cache=writeback",
            "-nic", "user,model=virtio-net-pci", "-device", "virtio-rng-pci",
        ]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=False)  # fmt: skip
        _log(
            f"ran once to reboot/poweroff in {time.monotonic() - t0:.1f} s (exit {proc.returncode})"
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"qemu exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-2000:]}"
                f"\n--- serial console ---\n{_tail(serial)}"
            )
        return serial.read_text(errors="replace")
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(
            f"the device was still running after {timeout:g} s; serial console:\n"
            f"{_tail(work / 'serial.log')}"
        ) from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
