"""A real OpenSSH server on a free port of 127.0.0.1, as a test "device" (this machine).

Keys (host and client) are made in a temporary folder; the logged-in user is the one running
the tests (root in CI). ``host_key`` lets a second server reuse or change the host key.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from edgeagent.deploy.ssh import SshOptions, SshTarget
from edgeagent.localbroker import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def qualified_skip_reason() -> str | None:
    if not os.path.exists(SSHD):
        return "sshd not installed (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen not installed (apt-get install openssh-client)"
    return None


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )


class SshHost:
    def __init__(self, port: int | None = None, host_key: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ea-sshd-"))
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = os.environ.get("USER") or "root"
        import pwd

        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "host_ed25519"
        if host_key is not None:
            shutil.copyfile(host_key, self.host_key)
            os.chmod(self.host_key, 0o600)
        else:
            _keygen(self.host_key)
        self.client_key = self.dir / "client_ed25519"
        _keygen(self.client_key)
        self.host_public_key = (
            subprocess.run(
                ["ssh-keygen", "-y", "-f", str(self.host_key)], capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
        auth = self.dir / "authorized_keys"
        auth.write_text(Path(f"{self.client_key}.pub").read_text())
        # sshd reads authorized keys as the logging-in user: let other users read this one.
        self.dir.chmod(0o755)
        auth.chmod(0o644)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress {self.host}\nHostKey {self.host_key}\n"
            f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n"
            f"StrictModes no\nPidFile {self.dir / 'sshd.pid'}\nLogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\nMaxStartups 100\n"
        )
        self.log = self.dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.host, self.port, self.user)

    def options(self, **kw: object) -> SshOptions:
        opts = SshOptions(
            identity_files=[self.client_key], known_hosts=self.known_hosts, use_agent=False
        )
        for k, v in kw.items():
            setattr(opts, k, v)
        return opts

    def start(self) -> SshHost:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on {self.port}: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> SshHost:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
