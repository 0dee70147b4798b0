"""The emulated arm64 device itself (tests/armvm.py): what the deploy tests rely on.

Boots Debian 12 arm64 in qemu-system-aarch64 (pure emulation); the image is built on first use
(about 2.5 minutes) and cached. Skipped, with the reason, where qemu or mmdebstrap is missing.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from tests.armvm import DEVICE_USER, Vm, VmImage, boot, ensure_image, qemu_available

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(qemu_available() is not None, reason=str(qemu_available())),
    pytest.mark.timeout(900),
]


@pytest.fixture(scope="module")
def image() -> VmImage:
    return ensure_image()


@pytest.fixture(scope="module")
def vm(image: VmImage) -> Iterator[Vm]:
    with boot(image) as device:
        yield device


def test_arm64_debian_with_systemd_and_python(vm: Vm) -> None:
    assert vm.run("uname -m", check=True).stdout.strip() == "aarch64"
    state = vm.wait_running(timeout=180)
    failed = vm.run("systemctl --failed --no-legend --plain").stdout
    print(f"systemctl is-system-running: {state}; failed units: {failed.strip() or 'none'}")
    assert state in ("running", "degraded"), failed
    assert vm.run("hostname", check=True).stdout.strip() == "edge-arm64"
    version = vm.run("python3 -c 'import sys; print(sys.version_info[:2])'", check=True)
    assert version.stdout.strip() == "(3, 11)"
    assert vm.run("python3 -c 'import ensurepip, venv, ssl'").returncode == 0
    # journald answers (the deploy reads a failed service's logs with journalctl).
    marker = f"armvm-{uuid.uuid4().hex[:8]}"
    vm.run(f"logger -t armvm {marker}", check=True)
    logs = vm.run(f"journalctl --no-pager -b -t armvm -g {marker}")
    assert marker in logs.stdout, logs.stderr
    for tool in ("rsync", "openssl", "ip", "sudo"):
        assert vm.run(f"command -v {tool}").returncode == 0, tool


def test_ssh_host_key_is_the_image_s_and_the_pi_login_has_sudo(vm: Vm, image: VmImage) -> None:
    # StrictHostKeyChecking=yes with only the image's key in known_hosts: a wrong key would fail.
    keys = vm.run("cat /etc/ssh/ssh_host_ed25519_key.pub", check=True).stdout.split()
    assert " ".join(keys[:2]) == image.host_key
    as_pi = vm.ssh_args()
    as_pi[-1] = f"{DEVICE_USER}@{vm.host}"
    out = subprocess.run(
        [*as_pi, "id -un; sudo -n id -u"], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.split() == [DEVICE_USER, "0"], out.stderr


def test_guest_reaches_a_host_listener_at_10_0_2_2(vm: Vm) -> None:
    """A broker on the host's 127.0.0.1:PORT is 10.0.2.2:PORT from the device."""
    received: list[bytes] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        server.settimeout(60)

        def answer() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                received.append(conn.recv(64))
                conn.sendall(b"pong")

        thread = threading.Thread(target=answer, daemon=True)
        thread.start()
        script = (
            f"import socket; s = socket.create_connection(('10.0.2.2', {port}), timeout=20); "
            "s.sendall(b'ping'); print(s.recv(16).decode())"
        )
        out = vm.run(f'python3 -c "{script}"', timeout=60)
        thread.join(30)
    assert out.stdout.strip() == "pong", out.stderr
    assert received == [b"ping"]


def test_extra_disk_is_mounted_and_each_boot_is_clean(vm: Vm, image: VmImage) -> None:
    marker = f"/root/marker-{uuid.uuid4().hex[:8]}"
    with boot(image, extra_disk_mb=24, forward=[8123]) as small:
        mount = small.run("findmnt -n -o SOURCE,FSTYPE /opt/edgeagent", check=True).stdout.split()
        assert mount == ["/dev/vdb", "ext4"]
        size_kb = int(small.run("df -k --output=size /opt/edgeagent | tail -1").stdout)
        assert 15_000 < size_kb < 25_000
        small.run(f"touch {marker}", check=True)
        # A forwarded guest port reaches a listener on the device.
        assert set(small.forwards) == {8123}
        small.run(
            "nohup python3 -c \"import socket; s = socket.create_server(('0.0.0.0', 8123)); "
            "c, _ = s.accept(); c.sendall(b'hello')\" >/dev/null 2>&1 &",
            check=True,
        )
        small.run(
            "for i in $(seq 50); do ss -ltn | grep -q :8123 && break; sleep 0.2; done", check=True
        )
        with socket.create_connection(("127.0.0.1", small.forwards[8123]), timeout=20) as c:
            c.settimeout(20)
            assert c.recv(16) == b"hello"
    # The other device runs on its own overlay of the same image: it never sees the marker, and
    # has no small disk mounted, and nothing about /opt/edgeagent fails without it.
    assert vm.run(f"test -e {marker}").returncode == 1
    assert vm.run("findmnt /opt/edgeagent").returncode == 1
    needs_opt = vm.run(
        "systemd-run --wait --quiet -p WorkingDirectory=/opt/edgeagent "
        "-p RequiresMountsFor=/opt/edgeagent/app true"
    )
    assert needs_opt.returncode == 0, needs_opt.stderr
