"""Ed25519 signatures in minisign's format, with the ``cryptography`` package.

A user checks a bundle with the standard tool: ``minisign -Vm bundle.json -p edgeagent.pub``.
Keys are minisign keys; secret keys are written unencrypted (as ``minisign -G -W`` does) with
mode 0600. Signatures use the prehashed algorithm (Ed25519 over BLAKE2b-512 of the data).

::

    SignatureError
    ├── KeyFormatError          a key file is malformed (names the file)
    ├── SignatureFormatError    a .minisig is malformed
    ├── UnknownKeyError         signed by a key that is not trusted
    └── BadSignatureError       the data or the trusted comment was changed
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import EdgeAgentError

MAX_SIG_TEXT = 64 * 1024
MAX_COMMENT = 1024


class SignatureError(EdgeAgentError):
    """Base of signature and key errors."""


class KeyFormatError(SignatureError):
    """A key file cannot be read as a minisign key."""


class SignatureFormatError(SignatureError):
    """A signature file is not in minisign's format."""


class UnknownKeyError(SignatureError):
    """The signature's key id is none of the trusted keys'."""


class BadSignatureError(SignatureError):
    """The signature does not verify: tampered data or trusted comment."""


def _id_hex(key_id: bytes) -> str:
    return key_id[::-1].hex().upper()


def _b64(line: str, size: int, what: str, err: type[SignatureError]) -> bytes:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise err(f"{what}: not base64") from exc
    if len(raw) != size:
        raise err(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def _comment(text: str, what: str) -> str:
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} must be one line")
    if len(text.encode()) > MAX_COMMENT:
        raise ValueError(f"{what} longer than {MAX_COMMENT} bytes")
    return text


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: bytes
    raw: bytes

    @property
    def key_id_hex(self) -> str:
        return _id_hex(self.key_id)

    def to_text(self, comment: str | None = None) -> str:
        c = _comment(comment or f"minisign public key {self.key_id_hex}", "comment")
        body = base64.b64encode(b"Ed" + self.key_id + self.raw).decode()
        return f"untrusted comment: {c}\n{body}\n"

    @classmethod
    def from_text(cls, text: str, source: str = "public key") -> PublicKey:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines or len(text) > 4096:
            raise KeyFormatError(f"{source}: not a minisign public key")
        raw = _b64(lines[-1], 42, source, KeyFormatError)
        if raw[:2] != b"Ed":
            raise KeyFormatError(f"{source}: not an Ed25519 minisign public key")
        return cls(raw[2:10], raw[10:])

    @classmethod
    def from_file(cls, path: Path) -> PublicKey:
        return cls.from_text(path.read_text(errors="replace"), str(path))


@dataclass(frozen=True, slots=True)
class SecretKey:
    key_id: bytes
    seed: bytes

    def public_key(self) -> PublicKey:
        pub = (
            Ed25519PrivateKey.from_private_bytes(self.seed)
            .public_key()
            .public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        return PublicKey(self.key_id, pub)

    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def to_text(self) -> str:
        sk = self.seed + self.public_key().raw
        chk = hashlib.blake2b(b"Ed" + self.key_id + sk, digest_size=32).digest()
        body = b"Ed" + b"\0\0" + b"B2" + bytes(32) + bytes(8) + bytes(8) + self.key_id + sk + chk
        return "untrusted comment: minisign encrypted secret key\n" + (
            base64.b64encode(body).decode() + "\n"
        )

    @classmethod
    def from_text(cls, text: str, source: str = "secret key") -> SecretKey:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines or len(text) > 4096:
            raise KeyFormatError(f"{source}: not a minisign secret key")
        raw = _b64(lines[-1], 158, source, KeyFormatError)
        if raw[:2] != b"Ed" or raw[4:6] != b"B2":
            raise KeyFormatError(f"{source}: not an Ed25519 minisign secret key")
        if raw[2:4] != b"\0\0":
            raise KeyFormatError(
                f"{source}: the key is encrypted with a password, which edgeagent cannot use "
                "yet; make an unencrypted one with `edgeagent keys generate` or `minisign -G -W`"
            )
        # The integrity check: the public half must follow from the secret seed. (The stored
        # BLAKE2b checksum is written as minisign reads it, but not checked here: keys made by
        # `minisign -G -W` 0.11 carry one computed differently.)
        key_id, sk = raw[54:62], raw[62:126]
        key = cls(key_id, sk[:32])
        if key.public_key().raw != sk[32:]:
            raise KeyFormatError(f"{source}: damaged key file (its two halves do not match)")
        return key

    @classmethod
    def from_file(cls, path: Path) -> SecretKey:
        return cls.from_text(path.read_text(errors="replace"), str(path))


def generate_keypair(
    secret_path: Path,
    public_path: Path,
    *,
    comment: str | None = None,
    force: bool = False,
) -> PublicKey:
    """Write a new key pair: the secret file 0600 (never overwritten unless ``force``)."""
    key = SecretKey(secrets.token_bytes(8), secrets.token_bytes(32))
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(secret_path, flags, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.to_text())
    os.chmod(secret_path, 0o600)
    pub = key.public_key()
    public_path.write_text(pub.to_text(comment))
    return pub


def sign(
    data: bytes,
    key: SecretKey,
    *,
    trusted_comment: str,
    untrusted_comment: str = "signature from edgeagent secret key",
) -> str:
    """A .minisig text for ``data`` (algorithm ED: Ed25519 over BLAKE2b-512)."""
    tc = _comment(trusted_comment, "trusted comment")
    uc = _comment(untrusted_comment, "untrusted comment")
    private = key._private()
    sig = private.sign(hashlib.blake2b(data, digest_size=64).digest())
    global_sig = private.sign(sig + tc.encode())
    return (
        f"untrusted comment: {uc}\n"
        f"{base64.b64encode(b'ED' + key.key_id + sig).decode()}\n"
        f"trusted comment: {tc}\n"
        f"{base64.b64encode(global_sig).decode()}\n"
    )


@dataclass(frozen=True, slots=True)
class Verified:
    key_id_hex: str
    trusted_comment: str


def verify(data: bytes, sig_text: str, trusted: Sequence[PublicKey]) -> Verified:
    """Check ``sig_text`` over ``data`` with any of ``trusted`` (several keys: rotation)."""
    if len(sig_text) > MAX_SIG_TEXT:
        raise SignatureFormatError(f"signature file larger than {MAX_SIG_TEXT} bytes")
    lines = sig_text.splitlines()
    if len(lines) < 4 or not lines[0].startswith("untrusted comment:"):
        raise SignatureFormatError("not a minisign signature")
    prefix = "trusted comment: "
    if not lines[2].startswith(prefix):
        raise SignatureFormatError("not a minisign signature (no trusted comment)")
    raw = _b64(lines[1], 74, "signature", SignatureFormatError)
    alg, key_id, sig = raw[:2], raw[2:10], raw[10:]
    if alg not in (b"ED", b"Ed"):
        raise SignatureFormatError(f"unknown signature algorithm {alg!r}")
    tc = lines[2][len(prefix) :]
    global_sig = _b64(lines[3], 64, "trusted comment signature", SignatureFormatError)
    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        ids = ", ".join(k.key_id_hex for k in trusted) or "none"
        raise UnknownKeyError(f"signed by key {_id_hex(key_id)}, which is not trusted ({ids})")
    pub = Ed25519PublicKey.from_public_bytes(key.raw)
    message = hashlib.blake2b(data, digest_size=64).digest() if alg == b"ED" else data
    try:
        pub.verify(sig, message)
    except InvalidSignature:
        raise BadSignatureError("signature does not match the data (tampered or damaged)") from None
    try:
        pub.verify(global_sig, sig + tc.encode())
    except InvalidSignature:
        raise BadSignatureError("the trusted comment was changed after signing") from None
    return Verified(key.key_id_hex, tc)
