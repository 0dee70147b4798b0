"""Ed25519 signatures in minisign's format, with the ``cryptography`` package.

A user checks a bundle with the standard tool: ``minisign -Vm bundle.json -p edgeagent.pub``.
Keys are minisign keys. Secret keys are written unencrypted, as ``minisign -G -W`` does, with mode
0600; password-protected ones (minisign's default) are refused for now. Signatures use the
prehashed algorithm "ED" (Ed25519 over BLAKE2b-512 of the data) with the trusted comment signed
too; legacy "Ed" signatures (``minisign -S -l``) are verified as well.

The text formats are parsed by :mod:`edgeagent.deploy.remote_verify` (the standard-library-only
checker devices run), so host and device read them alike. Errors::

    EdgeAgentError
    └── SignatureError              any signature or key problem
        ├── KeyFormatError          a key file is malformed or encrypted (names the file and why)
        ├── SignatureFormatError    a .minisig is malformed, or a comment to sign is not one line
        ├── UnknownKeyError         signed by a key that is not trusted (names both key ids)
        └── BadSignatureError       the data or the trusted comment was changed
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import EdgeAgentError
from . import remote_verify as _fmt

MAX_SIG_TEXT = _fmt.MAX_SIG_TEXT
MAX_COMMENT = _fmt.MAX_COMMENT
# minisign reads a comment line with fgets() into 1024 bytes: prefix, comment and LF fit in 1023.
MAX_UNTRUSTED_COMMENT = 1023 - len(_fmt.UNTRUSTED_PREFIX) - 1

SECRET_KEY_BYTES = 158
_KDF_NONE = b"\0\0"
_KDF_SCRYPT = b"Sc"
_CHK_BLAKE2B = b"B2"


class SignatureError(EdgeAgentError):
    """Base of signature and key errors."""


class KeyFormatError(SignatureError):
    """A key file cannot be used: malformed, damaged or password-protected."""


class SignatureFormatError(SignatureError):
    """A signature is not in minisign's format, or a comment to sign is not a single line."""


class UnknownKeyError(SignatureError):
    """The signature's key id is none of the trusted keys'."""


class BadSignatureError(SignatureError):
    """The signature does not verify: tampered data or trusted comment."""


def _one_line(text: str, what: str, limit: int, error: type[SignatureError]) -> bytes:
    """``text`` as UTF-8 if it is a single line minisign can read back, else ``error``."""
    if any(c in text for c in "\n\r\0"):
        raise error(f"{what} must be a single line (no line breaks or NUL characters)")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{what} is not valid UTF-8 text") from None
    if len(raw) > limit:
        raise error(f"{what} is {len(raw)} bytes long (at most {limit})")
    return raw


@dataclass(frozen=True, slots=True)
class PublicKey:
    key_id: bytes
    raw: bytes

    def __post_init__(self) -> None:
        if len(self.key_id) != 8 or len(self.raw) != 32:
            raise KeyFormatError("a public key has an 8-byte key id and 32 key bytes")

    @property
    def key_id_hex(self) -> str:
        """As minisign prints it ("minisign public key 8092087C93E24D8B")."""
        return _fmt.key_id_hex(self.key_id)

    def to_text(self, comment: str | None = None) -> str:
        """The contents of a minisign .pub file."""
        if comment is None:
            comment = f"minisign public key {self.key_id_hex}"
        _one_line(comment, "public key comment", MAX_UNTRUSTED_COMMENT, KeyFormatError)
        body = base64.b64encode(_fmt.ALG_LEGACY + self.key_id + self.raw).decode("ascii")
        return f"{_fmt.UNTRUSTED_PREFIX}{comment}\n{body}\n"

    @classmethod
    def from_text(cls, text: str, source: str = "public key") -> PublicKey:
        try:
            key_id, raw = _fmt.parse_public_key(text, source)
        except _fmt.VerifyError as exc:
            raise KeyFormatError(str(exc)) from None
        return cls(key_id, raw)

    @classmethod
    def from_file(cls, path: Path) -> PublicKey:
        """Raises FileNotFoundError/OSError if unreadable, KeyFormatError if malformed."""
        return cls.from_text(path.read_text(encoding="utf-8", errors="replace"), str(path))


@dataclass(frozen=True, slots=True)
class SecretKey:
    key_id: bytes
    seed: bytes = field(repr=False)  # the 32-byte Ed25519 private key; never printed

    def __post_init__(self) -> None:
        if len(self.key_id) != 8 or len(self.seed) != 32:
            raise KeyFormatError("a secret key has an 8-byte key id and a 32-byte seed")

    @classmethod
    def generate(cls) -> SecretKey:
        return cls(secrets.token_bytes(8), secrets.token_bytes(32))

    def signing_key(self) -> Ed25519PrivateKey:
        """The key as ``cryptography`` signs with it (:func:`sign` uses it)."""
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    def public_key(self) -> PublicKey:
        raw = self.signing_key().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return PublicKey(self.key_id, raw)

    def to_text(self, comment: str = "minisign secret key (unencrypted)") -> str:
        """The contents of an unencrypted minisign secret key file (as ``minisign -G -W``), with
        the BLAKE2b-256 checksum minisign defines (``minisign -G -W`` itself leaves it zero)."""
        _one_line(comment, "secret key comment", MAX_UNTRUSTED_COMMENT, KeyFormatError)
        sk = self.seed + self.public_key().raw  # libsodium's 64-byte secret key
        chk = _checksum(self.key_id, sk)
        kdf = bytes(32) + bytes(8) + bytes(8)  # salt, opslimit, memlimit: unused without a KDF
        body = _fmt.ALG_LEGACY + _KDF_NONE + _CHK_BLAKE2B + kdf + self.key_id + sk + chk
        return f"{_fmt.UNTRUSTED_PREFIX}{comment}\n{base64.b64encode(body).decode('ascii')}\n"

    @classmethod
    def from_text(cls, text: str, source: str = "secret key") -> SecretKey:
        try:
            raw = _fmt.decode_key_text(text, SECRET_KEY_BYTES, source)
        except _fmt.VerifyError as exc:
            raise KeyFormatError(str(exc)) from None
        sig_alg, kdf_alg, chk_alg = raw[0:2], raw[2:4], raw[4:6]
        if sig_alg != _fmt.ALG_LEGACY or chk_alg != _CHK_BLAKE2B:
            raise KeyFormatError(
                f"{source}: algorithms {sig_alg!r}/{chk_alg!r}, not a minisign Ed25519 secret key"
            )
        if kdf_alg == _KDF_SCRYPT:
            raise KeyFormatError(
                f"{source}: the secret key is encrypted with a password, which edgeagent does not "
                "support yet; make an unencrypted key with `edgeagent keys generate` or "
                "`minisign -G -W`, or remove this key's password with `minisign -C -W -s FILE`"
            )
        if kdf_alg != _KDF_NONE:
            raise KeyFormatError(f"{source}: unknown key derivation {kdf_alg!r}")
        key_id, sk, chk = raw[54:62], raw[62:126], raw[126:158]
        # minisign -G -W writes no checksum (zeros); minisign -C -W and edgeagent write one.
        if chk != bytes(32) and chk != _checksum(key_id, sk):
            raise KeyFormatError(f"{source}: checksum mismatch, the key file is damaged")
        key = cls(key_id, sk[:32])
        if key.public_key().raw != sk[32:]:
            raise KeyFormatError(f"{source}: the key file is damaged (its two halves differ)")
        return key

    @classmethod
    def from_file(cls, path: Path) -> SecretKey:
        """Raises FileNotFoundError/OSError if unreadable, KeyFormatError if malformed."""
        return cls.from_text(path.read_text(encoding="utf-8", errors="replace"), str(path))


def _checksum(key_id: bytes, sk: bytes) -> bytes:
    return hashlib.blake2b(_fmt.ALG_LEGACY + key_id + sk, digest_size=32).digest()


def generate_keypair(
    secret_path: Path,
    public_path: Path,
    *,
    comment: str | None = None,
    force: bool = False,
) -> PublicKey:
    """Write a new key pair: the secret key file with mode 0600, the public one 0644.

    Raises FileExistsError if either file exists, unless ``force``. ``comment`` is the public
    key file's untrusted comment (default: minisign's "minisign public key <ID>")."""
    key = SecretKey.generate()
    pub = key.public_key()
    public_text = pub.to_text(comment)  # checks the comment before anything is written
    if not force:
        for p in (secret_path, public_path):
            if os.path.lexists(p):
                raise FileExistsError(errno.EEXIST, "key file exists (pass force=True)", str(p))
    else:
        for p in (secret_path, public_path):
            if os.path.lexists(p):
                os.unlink(p)  # a fresh file: no old mode, owner or symlink carried over
    _write_new(secret_path, key.to_text(), 0o600)
    _write_new(public_path, public_text, 0o644)
    return pub


def _write_new(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # exactly ``mode``, whatever the umask
        f.write(text)


def sign(
    data: bytes,
    key: SecretKey,
    *,
    trusted_comment: str,
    untrusted_comment: str = "signature from edgeagent secret key",
) -> str:
    """The .minisig text for ``data``: algorithm "ED" (Ed25519 over BLAKE2b-512 of the data), and
    the global signature over signature + trusted comment, as ``minisign -S`` writes it.

    Raises SignatureFormatError if a comment is not one line or is too long."""
    tc = _one_line(trusted_comment, "trusted comment", MAX_COMMENT, SignatureFormatError)
    _one_line(untrusted_comment, "untrusted comment", MAX_UNTRUSTED_COMMENT, SignatureFormatError)
    private = key.signing_key()
    sig = private.sign(_fmt.prehash(data))
    global_sig = private.sign(sig + tc)
    body = base64.b64encode(_fmt.ALG_PREHASHED + key.key_id + sig).decode("ascii")
    return (
        f"{_fmt.UNTRUSTED_PREFIX}{untrusted_comment}\n{body}\n"
        f"{_fmt.TRUSTED_PREFIX}{trusted_comment}\n{base64.b64encode(global_sig).decode('ascii')}\n"
    )


@dataclass(frozen=True, slots=True)
class Verified:
    key_id_hex: str
    trusted_comment: str


def verify(data: bytes, sig_text: str, trusted: Sequence[PublicKey]) -> Verified:
    """Check ``sig_text`` (a .minisig file's text) over ``data`` with any of ``trusted`` (several
    keys while rotating). Accepts "ED" (prehashed) and legacy "Ed" signatures.

    Raises SignatureFormatError, UnknownKeyError or BadSignatureError."""
    try:
        parsed = _fmt.parse_signature(sig_text)
    except _fmt.VerifyError as exc:
        raise SignatureFormatError(str(exc)) from None
    signer = _fmt.key_id_hex(parsed.key_id)
    candidates = [k for k in dict.fromkeys(trusted) if k.key_id == parsed.key_id]
    if not candidates:
        ids = ", ".join(k.key_id_hex for k in trusted) or "none"
        raise UnknownKeyError(f"signed by key {signer}, which is not trusted (trusted: {ids})")
    message = parsed.signed_data(data)
    for key in candidates:
        try:
            pub = Ed25519PublicKey.from_public_bytes(key.raw)
            pub.verify(parsed.signature, message)
        except (InvalidSignature, ValueError):
            continue
        try:
            pub.verify(parsed.global_signature, parsed.signed_comment())
        except InvalidSignature:
            raise BadSignatureError("the trusted comment was changed after signing") from None
        return Verified(signer, parsed.trusted_comment)
    raise BadSignatureError(
        f"the signature does not match the data (tampered or damaged; key {signer})"
    )
