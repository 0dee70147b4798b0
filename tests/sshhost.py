"""A real OpenSSH server on a free port of 127.0.0.1, as a test "device" (this machine).

Keys (an ed25519 host key and a client key pair) are made in a temporary folder; the logged-in
user is the one running the tests (root in CI). ``SshHost(port=, host_key=)`` starts a second
server on the same address with the same or (by default) a new host key::

    with SshHost() as host:
        async with await connect(host.target, host.options()) as session: ...

In a fixture: ``with SshHost() as host: yield host``; skip with ``qualified_skip_reason()``.
"""

from __future__ import annotations

import os
import pwd
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
KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's sshd refuses to start without it


def qualified_skip_reason() -> str | None:
    """Why tests needing sshd cannot run here, or None (creates /run/sshd when it can)."""
    if not os.access(SSHD, os.X_OK):
        return f"sshd not found at {SSHD} (apt-get install openssh-server)"
    if not os.access(KEYGEN, os.X_OK):
        return "ssh-keygen not found (apt-get install openssh-client)"
    try:
        PRIVSEP_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"sshd needs {PRIVSEP_DIR}, which cannot be created: {exc}"
    return None


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A new key pair without passphrase: ``path`` and ``path.pub``."""
    subprocess.run(
        [KEYGEN, "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


class SshHost:
    """A private sshd: ``with SshHost() as host:`` starts it and waits for its banner; stopped
    (terminate, then kill) and its folder removed on the way out."""

    def __init__(self, port: int | None = None, host_key: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ea-sshd-"))
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.host_key = self.dir / "host_ed25519"
        if host_key is not None:
            shutil.copyfile(host_key, self.host_key)
            os.chmod(self.host_key, 0o600)
            shutil.copyfile(f"{host_key}.pub", f"{self.host_key}.pub")
        else:
            keygen(self.host_key)
        self.client_key = keygen(self.dir / "client_ed25519")
        pub = Path(f"{self.host_key}.pub").read_text().split()
        self.host_public_key = f"{pub[0]} {pub[1]}"
        """``ssh-ed25519 AAAA…``, as in a known_hosts line."""
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(f"[{self.host}]:{self.port} {self.host_public_key}\n")
        self.authorized_keys = self.dir / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        # sshd reads authorized keys as the logging-in user: let other users read this one
        # (the private keys in the folder stay 0600).
        self.dir.chmod(0o755)
        self.authorized_keys.chmod(0o644)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "PermitRootLogin prohibit-password\n"
            "StrictModes no\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            "LogLevel VERBOSE\n"
            "Subsystem sftp internal-sftp\n"
            "MaxStartups 100\n"
        )
        self.log = self.dir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> SshTarget:
        return SshTarget(self.host, self.port, self.user)

    def options(self, **changes: object) -> SshOptions:
        """SshOptions with this server's client key and known_hosts, no agent; ``changes``
        override fields (``known_hosts=``, ``accept_new_host_key=`` …)."""
        opts = SshOptions(
            identity_files=[self.client_key], known_hosts=self.known_hosts, use_agent=False
        )
        for name, value in changes.items():
            if not hasattr(opts, name):
                raise TypeError(f"SshOptions has no field {name!r}")
            setattr(opts, name, value)
        return opts

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> SshHost:
        PRIVSEP_DIR.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    s.settimeout(2)
                    if s.recv(256).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on {self.port}: {self.log_text()[-2000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SshHost:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
