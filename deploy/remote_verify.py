"""Check a minisign signature with the standard library only (copied onto devices).

Ed25519 itself comes from the ``cryptography`` package when it is importable, else from the
``openssl`` command (OpenSSL 3, present on Debian and Raspberry Pi OS). The BLAKE2b prehash is
``hashlib``'s. Every problem raises a :class:`ValueError` subclass with a plain message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shutil
import subprocess
import tempfile

MAX_SIG_TEXT = 64 * 1024
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class VerifyError(ValueError):
    """The signature is malformed, from an unknown key, or does not verify."""


def _b64(line: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(line.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise VerifyError(f"{what}: not base64") from exc
    if len(raw) != size:
        raise VerifyError(f"{what}: {len(raw)} bytes, expected {size}")
    return raw


def parse_public_key(text: str) -> tuple[bytes, bytes]:
    """(key id, raw 32-byte key) from a minisign public key file's text (or its base64 line)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        raise VerifyError("empty public key")
    raw = _b64(lines[-1], 42, "public key")
    if raw[:2] != b"Ed":
        raise VerifyError("public key: not an Ed25519 minisign key")
    return raw[2:10], raw[10:]


def key_id_hex(key_id: bytes) -> str:
    return key_id[::-1].hex().upper()


def _ed25519_ok(pub: bytes, sig: bytes, msg: bytes, backend: str | None) -> bool:
    if backend in (None, "cryptography"):
        try:
            from cryptography.exceptions import InvalidSignature
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError:
            if backend == "cryptography":
                raise
        else:
            try:
                Ed25519PublicKey.from_public_bytes(pub).verify(sig, msg)
            except InvalidSignature:
                return False
            return True
    openssl = shutil.which("openssl")
    if openssl is None:
        raise VerifyError(
            "cannot check Ed25519 signatures: neither the cryptography package nor the openssl "
            "command is installed (apt-get install openssl)"
        )
    with tempfile.TemporaryDirectory(prefix="ea-verify-") as tmp:
        der = _SPKI_PREFIX + pub
        pem = (
            "-----BEGIN PUBLIC KEY-----\n"
            + base64.b64encode(der).decode()
            + "\n-----END PUBLIC KEY-----\n"
        )
        paths = {n: os.path.join(tmp, n) for n in ("pub.pem", "msg", "sig")}
        for name, data in (("pub.pem", pem.encode()), ("msg", msg), ("sig", sig)):
            with open(paths[name], "wb") as f:
                f.write(data)
        proc = subprocess.run(
            [
                openssl,
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                paths["pub.pem"],
                "-rawin",
                "-in",
                paths["msg"],
                "-sigfile",
                paths["sig"],
            ],
            capture_output=True,
            check=False,
        )
        if proc.returncode not in (0, 1) and b"Signature Verification Failure" not in proc.stdout:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            if err and "pkeyutl" in " ".join(err) and "rawin" in " ".join(err):
                raise VerifyError("openssl is too old for Ed25519 (need OpenSSL 3)")
        return proc.returncode == 0


def verify_file_signature(
    data: bytes, sig_text: str, pubkey_texts: list[str], *, _backend: str | None = None
) -> tuple[str, str]:
    """Verify ``sig_text`` (a .minisig file) over ``data`` with any of the trusted keys.

    Returns (key id hex, trusted comment)."""
    if len(sig_text) > MAX_SIG_TEXT:
        raise VerifyError("signature file too large")
    lines = sig_text.splitlines()
    if len(lines) < 4:
        raise VerifyError("not a minisign signature (expected 4 lines)")
    if not lines[0].startswith("untrusted comment:"):
        raise VerifyError("not a minisign signature (no untrusted comment line)")
    prefix = "trusted comment: "
    if not lines[2].startswith(prefix):
        raise VerifyError("not a minisign signature (no trusted comment line)")
    sig_raw = _b64(lines[1], 74, "signature")
    alg, key_id, sig = sig_raw[:2], sig_raw[2:10], sig_raw[10:]
    if alg not in (b"ED", b"Ed"):
        raise VerifyError(f"unknown signature algorithm {alg!r}")
    trusted_comment = lines[2][len(prefix) :]
    global_sig = _b64(lines[3], 64, "trusted comment signature")
    keys = {}
    for text in pubkey_texts:
        kid, pub = parse_public_key(text)
        keys[kid] = pub
    found = keys.get(key_id)
    if found is None:
        trusted = ", ".join(key_id_hex(k) for k in keys) or "none"
        raise VerifyError(
            f"signed by key {key_id_hex(key_id)}, which is not trusted (trusted: {trusted})"
        )
    message = hashlib.blake2b(data, digest_size=64).digest() if alg == b"ED" else data
    if not _ed25519_ok(found, sig, message, _backend):
        raise VerifyError("signature does not match the data (tampered or damaged)")
    if not _ed25519_ok(found, global_sig, sig + trusted_comment.encode(), _backend):
        raise VerifyError("the trusted comment was changed after signing")
    return key_id_hex(key_id), trusted_comment
