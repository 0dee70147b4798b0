"""Host keys, checked like OpenSSH's ``StrictHostKeyChecking=yes`` (``accept-new`` with
``accept_new_host_key``), in the key exchange of the one real connection.

asyncssh hands the server's key to :meth:`HostKeyPolicy.validate_host_public_key` before any
authentication, and we compare it with known_hosts ourselves (plain, hashed ``|1|``, wildcard and
negated patterns, ``@revoked``). An unknown key is refused (or, with accept-new, remembered once
the server has proved it holds the key); a key that differs from the one(s) known for the host is
refused always, so a changed key never gets as far as authentication. Stricter than OpenSSH in
one way: if the host is known only with keys of other types and the server offers none of them,
that counts as changed, not new.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from .ssh_errors import HostKeyChanged, HostKeyUnknown, SshError
from .ssh_target import SshOptions, SshTarget

# OpenSSH's preference for host key types on first contact; known types are moved to the front.
_HOST_KEY_ALGS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-ed448",
    "ssh-rsa",
)


@dataclass(frozen=True, slots=True)
class KnownKey:
    path: Path
    line: int
    marker: str  # "", "@revoked" or "@cert-authority"
    key_type: str
    blob: bytes


def host_name(target: SshTarget) -> str:
    """The name OpenSSH looks up and writes: ``host`` on port 22, else ``[host]:port``."""
    host = target.host.lower()
    return host if target.port == 22 else f"[{host}]:{target.port}"


def _glob(pattern: str, name: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` only, case-insensitive."""
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(rx, name, re.IGNORECASE | re.DOTALL) is not None


def _hosts_match(field_: str, name: str) -> bool:
    if field_.startswith("|1|"):
        try:
            _, _, salt, digest = field_.split("|")
            mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
            return hmac.compare_digest(mac, base64.b64decode(digest))
        except (ValueError, TypeError):
            return False
    matched = False
    for pattern in field_.split(","):
        if pattern.startswith("!"):
            if _glob(pattern[1:], name):
                return False  # a negated match rules the line out
        elif _glob(pattern, name):
            matched = True
    return matched


def known_keys(files: Sequence[Path], name: str) -> list[KnownKey]:
    """Every known_hosts line (of every file) whose host patterns match ``name``."""
    out = []
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            marker = parts.pop(0) if parts[0].startswith("@") else ""
            if len(parts) < 3 or not _hosts_match(parts[0], name):
                continue
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except ValueError:
                continue
            out.append(KnownKey(path, n, marker, parts[1], blob))
    return out


def _key_label(algo: str) -> str:
    """``ED25519``, ``ECDSA``, ``RSA`` … as OpenSSH names key types in its messages."""
    if algo.startswith("ecdsa-"):
        return "ECDSA"
    if algo.startswith("sk-"):
        return "ECDSA-SK" if "ecdsa" in algo else "ED25519-SK"
    return algo.removeprefix("ssh-").upper()


def host_key_algs(known: Sequence[KnownKey]) -> list[str]:
    first: list[str] = []
    for k in known:
        algs = (
            ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if k.key_type == "ssh-rsa" else [k.key_type]
        )
        first += [a for a in algs if a not in first]
    supported = {a.decode() for a in asyncssh.public_key.get_default_public_key_algs()}
    rest = [a for a in _HOST_KEY_ALGS if a not in first]
    return [a for a in first + rest if a in supported]


def _append_known_host(path: Path, line: str) -> None:
    """Append one line, creating the file 0600 (and its folder 0700) as OpenSSH does."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(f"{line}\n".encode())


class HostKeyPolicy(asyncssh.SSHClient):
    """Decides on the server's host key during the key exchange, before any authentication."""

    def __init__(self, target: SshTarget, options: SshOptions, known: list[KnownKey]) -> None:
        self.target = target
        self.options = options
        self.known = known
        self.error: SshError | None = None
        self.accepted: asyncssh.SSHKey | None = None
        self.remember: str | None = None  # the known_hosts line to append once the key is proven

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        if self.accepted is not None:  # a re-key: the key must not change within a connection
            return key.public_data == self.accepted.public_data
        try:
            self.remember = self._decide(key)
        except SshError as exc:
            self.error = exc
            return False
        self.accepted = key
        return True

    def _decide(self, key: asyncssh.SSHKey) -> str | None:
        algo = key.get_algorithm()
        fp = str(key.get_fingerprint("sha256"))
        name = host_name(self.target)
        path = self.options.known_hosts_path()
        revoked = [k for k in self.known if k.marker == "@revoked" and k.blob == key.public_data]
        if revoked:
            r = revoked[0]
            raise HostKeyChanged(
                f"The {_key_label(algo)} host key of {self.target.address} ({fp}) is marked "
                f"@revoked in {r.path}:{r.line}. Not connecting.",
                fingerprint=fp,
                known_hosts=r.path,
                line=r.line,
            )
        plain = [k for k in self.known if not k.marker]
        if any(k.blob == key.public_data for k in plain):
            return None
        if plain:
            other = next((k for k in plain if k.key_type == algo), plain[0])
            raise HostKeyChanged(
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
                "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!\n"
                "Someone could be eavesdropping on you right now (man-in-the-middle attack)!\n"
                "It is also possible that the device was reinstalled and has a new host key.\n"
                f"The fingerprint for the {_key_label(algo)} key sent by {self.target.address} "
                f"is\n{fp}.\n"
                f"Offending {_key_label(other.key_type)} key in {other.path}:{other.line}\n"
                f"If the new key is right, remove the old one with:\n"
                f"  ssh-keygen -f '{other.path}' -R '{name}'\n"
                "and connect again with --accept-new-host-key.\n"
                f"Host key verification failed: not connecting to {self.target.address}.",
                fingerprint=fp,
                known_hosts=other.path,
                line=other.line,
            )
        if not self.options.accept_new_host_key:
            base = algo.removeprefix("ssh-").split("-")[0]
            raise HostKeyUnknown(
                f"The authenticity of host {self.target.address} can't be established: it is not "
                f"in {path}.\n{_key_label(algo)} key fingerprint is {fp}.\n"
                f"If that is the device's key (on the device: ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{base}_key.pub), pass --accept-new-host-key to trust it and "
                "remember it.",
                fingerprint=fp,
                known_hosts=path,
            )
        return f"{name} {algo} {base64.b64encode(key.public_data).decode()}"

    def proven(self) -> None:
        """The key exchange finished (the server proved it holds the key): remember it."""
        if self.remember is not None:
            _append_known_host(self.options.known_hosts_path(), self.remember)
            self.remember = None
