"""Check a minisign signature with the standard library only (this file is copied onto devices).

A device has ``python3`` and usually the ``openssl`` command, nothing else: this module imports
only the standard library at module level. The BLAKE2b-512 prehash comes from ``hashlib``;
Ed25519 from the ``cryptography`` package when it is importable, else from ``openssl pkeyutl``
(OpenSSL 3). The host side (``edgeagent.deploy.minisign``) parses signatures and public keys
with the functions here too, so host and device read the format the same way.

Every problem raises a :class:`VerifyError`, a :class:`ValueError`, with a plain message::

    ValueError
    └── VerifyError              any reason the signature is not accepted
        ├── MalformedKey         a trusted public key text is not a minisign Ed25519 key
        ├── MalformedSignature   the .minisig text is not in minisign's format (or too large)
        ├── UnknownKey           signed by a key that is none of the trusted ones
        ├── BadSignature         the data or the trusted comment does not match the signature
        └── NoEd25519            no way to check Ed25519 here (no cryptography, no openssl 3)

Runs on Python 3.9 and later (Debian 11's python3).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import subprocess
import tempfile
from typing import NamedTuple

MAX_SIG_TEXT = 64 * 1024
"""Largest .minisig accepted, in bytes (minisign's own are about 300 bytes)."""
MAX_COMMENT = 1024
"""Largest trusted comment accepted, in UTF-8 bytes."""
MAX_KEY_TEXT = 4096
"""Largest key file text accepted, in characters."""

UNTRUSTED_PREFIX = "untrusted comment: "
TRUSTED_PREFIX = "trusted comment: "
ALG_PREHASHED = b"ED"  # Ed25519 over BLAKE2b-512 of the data (minisign's default since 0.8)
ALG_LEGACY = b"Ed"  # Ed25519 over the data itself (minisign -l)
PUBLIC_KEY_BYTES = 42  # "Ed" + key id (8) + Ed25519 public key (32)
SIGNATURE_BYTES = 74  # algorithm (2) + key id (8) + Ed25519 signature (64)

# DER of an Ed25519 SubjectPublicKeyInfo up to the raw 32-byte key (RFC 8410).
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class VerifyError(ValueError):
    """The signature is not accepted; the message says why."""


class MalformedKey(VerifyError):
    """A public key text is not a minisign Ed25519 public key."""


class MalformedSignature(VerifyError):
    """A signature text is not in minisign's format."""


class UnknownKey(VerifyError):
    """The signature's key id is none of the trusted keys'."""


class BadSignature(VerifyError):
    """The signature does not verify: the data or the trusted comment was changed."""


class NoEd25519(VerifyError):
    """Neither the ``cryptography`` package nor a usable ``openssl`` command is present."""


class ParsedSignature(NamedTuple):
    algorithm: bytes  # ALG_PREHASHED or ALG_LEGACY
    key_id: bytes  # 8 bytes, as stored (little-endian)
    signature: bytes  # 64 bytes, over the data (or its BLAKE2b-512)
    trusted_comment: str
    global_signature: bytes  # 64 bytes, over signature + trusted comment (UTF-8)

    def signed_data(self, data: bytes) -> bytes:
        """What ``signature`` signs: BLAKE2b-512 of the data, or the data itself (legacy)."""
        return prehash(data) if self.algorithm == ALG_PREHASHED else data

    def signed_comment(self) -> bytes:
        """What ``global_signature`` signs."""
        return self.signature + self.trusted_comment.encode("utf-8")


def key_id_hex(key_id: bytes) -> str:
    """A key id as minisign prints it: the 8 stored bytes little-endian, uppercase hex."""
    return key_id[::-1].hex().upper()


def prehash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=64).digest()


def split_lines(text: str, what: str, error: type[VerifyError]) -> list[str]:
    """Lines as minisign reads them: split on LF, one trailing CR dropped, no CR elsewhere."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for n, line in enumerate(lines, 1):
        if line.endswith("\r"):
            line = line[:-1]
        if "\r" in line or "\0" in line:
            raise error(f"{what}: line {n} contains a carriage return or NUL character")
        out.append(line)
    return out


def decode_base64(line: str, size: int, what: str, error: type[VerifyError]) -> bytes:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64") from None
    if len(raw) != size:
        raise error(f"{what} is {len(raw)} bytes, expected {size}")
    return raw


def decode_key_text(text: str, size: int, what: str) -> bytes:
    """The decoded base64 line of a minisign key file (an ``untrusted comment:`` line, then the
    base64 line; the bare base64 line is accepted too). Raises :class:`MalformedKey`."""
    if len(text) > MAX_KEY_TEXT:
        raise MalformedKey(f"{what}: {len(text)} characters, too large for a minisign key")
    lines = [ln for ln in split_lines(text, what, MalformedKey) if ln.strip()]
    if lines and lines[0].startswith("untrusted comment:"):
        lines.pop(0)
    if len(lines) != 1:
        raise MalformedKey(
            f"{what}: expected an 'untrusted comment: ...' line and one base64 line "
            f"(found {len(lines)} lines besides the comment)"
        )
    return decode_base64(lines[0], size, f"{what}: the key line", MalformedKey)


def parse_public_key(text: str, what: str = "public key") -> tuple[bytes, bytes]:
    """(key id, raw 32-byte Ed25519 key) from a minisign public key file's text."""
    raw = decode_key_text(text, PUBLIC_KEY_BYTES, what)
    if raw[:2] != ALG_LEGACY:
        raise MalformedKey(f"{what}: algorithm {raw[:2]!r}, not minisign's Ed25519 ('Ed')")
    return raw[2:10], raw[10:]


def parse_signature(text: str) -> ParsedSignature:
    """Parse a .minisig text; raises :class:`MalformedSignature` naming the problem."""
    if len(text) > MAX_SIG_TEXT or len(text.encode("utf-8", "surrogatepass")) > MAX_SIG_TEXT:
        raise MalformedSignature(f"signature larger than {MAX_SIG_TEXT} bytes")
    lines = split_lines(text, "signature", MalformedSignature)
    if len(lines) < 4:
        raise MalformedSignature(f"not a minisign signature ({len(lines)} lines, expected 4)")
    if any(ln.strip() for ln in lines[4:]):
        raise MalformedSignature("unexpected text after the 4 lines of the signature")
    if not lines[0].startswith(UNTRUSTED_PREFIX):
        raise MalformedSignature(f"line 1 does not start with {UNTRUSTED_PREFIX!r}")
    raw = decode_base64(lines[1], SIGNATURE_BYTES, "line 2 (the signature)", MalformedSignature)
    algorithm, key_id, signature = raw[:2], raw[2:10], raw[10:]
    if algorithm not in (ALG_PREHASHED, ALG_LEGACY):
        raise MalformedSignature(f"unsupported signature algorithm {algorithm!r}")
    if not lines[2].startswith(TRUSTED_PREFIX):
        raise MalformedSignature(f"line 3 does not start with {TRUSTED_PREFIX!r}")
    comment = lines[2][len(TRUSTED_PREFIX) :]
    try:
        size = len(comment.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedSignature("the trusted comment is not valid UTF-8 text") from None
    if size > MAX_COMMENT:
        raise MalformedSignature(f"trusted comment of {size} bytes (at most {MAX_COMMENT})")
    global_signature = decode_base64(
        lines[3], 64, "line 4 (the trusted comment's signature)", MalformedSignature
    )
    return ParsedSignature(algorithm, key_id, signature, comment, global_signature)


def ed25519_verify(
    public_key: bytes, signature: bytes, message: bytes, backend: str | None = None
) -> bool:
    """Whether ``signature`` is ``public_key``'s Ed25519 signature of ``message``.

    ``backend``: ``"cryptography"``, ``"openssl"`` or None (the first of them that works)."""
    if backend not in (None, "cryptography", "openssl"):
        raise ValueError(f"unknown Ed25519 backend {backend!r}")
    if backend != "openssl":
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError:
            if backend == "cryptography":
                raise NoEd25519("the cryptography package is not installed") from None
        else:
            try:
                Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
            except (InvalidSignature, ValueError):
                return False
            return True
    return _openssl_verify(public_key, signature, message)


def _openssl_verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise NoEd25519(
            "cannot check Ed25519 signatures: the Python package cryptography is not installed "
            "and there is no openssl command; install OpenSSL 3 (apt-get install openssl)"
        )
    if not message:  # OpenSSL 3.0 cannot read an empty -rawin input
        raise VerifyError("openssl cannot check a legacy signature over empty data")
    pem = (
        "-----BEGIN PUBLIC KEY-----\n"
        + base64.b64encode(_SPKI_PREFIX + public_key).decode("ascii")
        + "\n-----END PUBLIC KEY-----\n"
    )
    with tempfile.TemporaryDirectory(prefix="edgeagent-verify-") as tmp:  # mode 0700
        paths = {}
        for name, content in (
            ("pub.pem", pem.encode("ascii")),
            ("msg", message),
            ("sig", signature),
        ):
            paths[name] = os.path.join(tmp, name)
            with open(paths[name], "wb") as f:
                f.write(content)
        cmd = [openssl, "pkeyutl", "-verify", "-pubin", "-inkey", paths["pub.pem"], "-rawin"]
        cmd += ["-in", paths["msg"], "-sigfile", paths["sig"]]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise NoEd25519(f"could not run {openssl}: {exc}") from exc
    if proc.returncode == 0 and b"Signature Verified Successfully" in proc.stdout:
        return True
    if b"Signature Verification Failure" in proc.stdout:
        return False
    detail = " ".join(proc.stderr.decode("utf-8", "replace").split())[:300]
    raise NoEd25519(
        f"openssl could not check the signature (exit {proc.returncode}: "
        f"{detail or 'no message'}); Ed25519 with 'pkeyutl -rawin' needs OpenSSL 3"
    )


def verify_file_signature(
    data: bytes, sig_text: str, pubkey_texts: list[str], *, _backend: str | None = None
) -> tuple[str, str]:
    """Check ``sig_text`` (a .minisig file's text) over ``data`` with any of the trusted public
    key texts (several while keys are rotated). Returns (key id hex, trusted comment).

    ``_backend`` forces ``"cryptography"`` or ``"openssl"`` (tests)."""
    parsed = parse_signature(sig_text)
    keys = [
        parse_public_key(text, f"trusted key {n}" if len(pubkey_texts) > 1 else "trusted key")
        for n, text in enumerate(pubkey_texts, 1)
    ]
    candidates = list(dict.fromkeys(pub for kid, pub in keys if kid == parsed.key_id))
    if not candidates:
        trusted = ", ".join(key_id_hex(kid) for kid, _ in keys) or "none"
        raise UnknownKey(
            f"signed by key {key_id_hex(parsed.key_id)}, which is not trusted (trusted: {trusted})"
        )
    message = parsed.signed_data(data)
    for pub in candidates:
        if ed25519_verify(pub, parsed.signature, message, _backend):
            if not ed25519_verify(pub, parsed.global_signature, parsed.signed_comment(), _backend):
                raise BadSignature("the trusted comment was changed after signing")
            return key_id_hex(parsed.key_id), parsed.trusted_comment
    signer = key_id_hex(parsed.key_id)
    raise BadSignature(f"the signature does not match the data (tampered or damaged; key {signer})")
