"""Signatures in minisign's format.

Ours are checked by the real minisign tool and the other way round (Debian's minisign 0.11; those
tests skip, saying so, where the binary is missing), and against test vectors minisign 0.11 made.
The device-side checker (standard library, then cryptography or the openssl command) agrees with
the host side, and hostile input only ever raises our typed errors.
"""

from __future__ import annotations

import ast
import base64
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.deploy import minisign, remote_verify

MINISIGN_FOUND = shutil.which("minisign")
# The command the interoperability tests run: they are skipped (needs_minisign) when it is absent.
MINISIGN = MINISIGN_FOUND or "minisign"
OPENSSL = shutil.which("openssl")
needs_minisign = pytest.mark.skipif(
    MINISIGN_FOUND is None,
    reason="the minisign binary is not installed (apt-get install minisign): interoperability "
    "with the standard tool not checked",
)
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl command is not installed: device fallback not checked"
)
BACKENDS = ["cryptography", pytest.param("openssl", marks=needs_openssl)]

# Test vectors made with Debian's minisign 0.11: `minisign -G` with password "pw" (ENCRYPTED_KEY),
# then `minisign -C -W` (removes the password; PLAIN_KEY keeps the BLAKE2b checksum), then
# `minisign -S -s PLAIN_KEY -m v -t "test vector (prehashed)" -c "minisign 0.11"` and the same
# with -l (legacy algorithm), for v containing VECTOR_DATA.
VECTOR_DATA = b"edgeagent test vector\n"
VECTOR_KEY_ID = "8092087C93E24D8B"
VECTOR_PUB = """untrusted comment: minisign public key 8092087C93E24D8B
RWSLTeKTfAiSgPhhDLqXGscEQiX/5mN3USaVyrdhulzCmYtLZ4B85ORO
"""
ENCRYPTED_KEY = """untrusted comment: minisign encrypted secret key
RWRTY0IyCnbk2hrPXrqvZVZwiaXhT0IAb7TL0a+vzIP4Bq470ioAAAACAAAAAAAAAEAAAAAAFOXuY4VLSsCm1n+acsmVa1eBKS7QzvKOZuBoQ5Y4XBXrSUcD/mWlUajM9blc/R8Jy1AHYqxxqBXC9KyR02s8AuCrwkYDiqDOb13FARu7gs2q+NPeJNwD/yj/88xQ39idbWJ+riDokaE=
"""
PLAIN_KEY = """untrusted comment: minisign encrypted secret key
RWQAAEIyCnbk2hrPXrqvZVZwiaXhT0IAb7TL0a+vzIP4Bq470ioAAAACAAAAAAAAAEAAAAAAi03ik3wIkoA9vUq7/29r0zLQ5+JC+Yt/b1Q3k2xkoxzfFMaA2I0vj/hhDLqXGscEQiX/5mN3USaVyrdhulzCmYtLZ4B85OROHnL6Un8IpwVxYbuznRjDXlxLUPydTm9zEME1ZgB6Khg=
"""
VECTOR_SIG = """untrusted comment: minisign 0.11
RUSLTeKTfAiSgCT11jP4ytRP7n/i4rVit45lrYy9WGmNGdy5hpRQTyLsA3SKprkv6vPFF0oYAqQvBTPPEVmWWe/tjr7ymlKcMQI=
trusted comment: test vector (prehashed)
sXeh7dhbtMvK4GcavQRF9yF6f6ChZ1hb8aa0LTzvwsNWN9vBnKN7M6bBHqLsFH2F58wEOmRmlutNQ/D3xQHVCw==
"""
VECTOR_SIG_LEGACY = """untrusted comment: minisign 0.11 -l
RWSLTeKTfAiSgOEBV+qEqmRQXOmhTzk+br00TFab5Hc7xsyIjs8RJbBsI3aV+8k6rZojDx9IqewoO1Urza6egFtwNs2QM4sNyww=
trusted comment: test vector (legacy)
F3KjsiXZdiwfM8K18//2nrF0+z9Oy4LEowK7eUIyAyk8/a6bogTsqcYwIMArRxo/UujMw0IzIZ8e2lJk2hyyCg==
"""


@dataclass
class Keys:
    secret_path: Path
    public_path: Path
    secret: minisign.SecretKey
    public: minisign.PublicKey


def make_keys(folder: Path, name: str = "k") -> Keys:
    sk, pk = folder / f"{name}.key", folder / f"{name}.pub"
    public = minisign.generate_keypair(sk, pk)
    return Keys(sk, pk, minisign.SecretKey.from_file(sk), public)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path)


def run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,  # an unencrypted key must not make minisign ask for a password
        timeout=60,
        cwd=cwd,
    )


def legacy_sign(data: bytes, key: minisign.SecretKey, trusted_comment: str) -> str:
    """A legacy "Ed" signature (Ed25519 over the data itself), as `minisign -S -l` writes it."""
    private = Ed25519PrivateKey.from_private_bytes(key.seed)
    sig = private.sign(data)
    global_sig = private.sign(sig + trusted_comment.encode())
    line = base64.b64encode(b"Ed" + key.key_id + sig).decode()
    return (
        f"untrusted comment: legacy\n{line}\ntrusted comment: {trusted_comment}\n"
        f"{base64.b64encode(global_sig).decode()}\n"
    )


def replace_line(sig: str, index: int, text: str) -> str:
    lines = sig.splitlines()
    lines[index] = text
    return "\n".join(lines) + "\n"


def _outcome(call: Callable[[], object], errors: type[Exception]) -> object:
    """What ``call`` returns, or the exception if it is one of ``errors`` (others propagate)."""
    try:
        return call()
    except errors as exc:
        return exc


# Keys ------------------------------------------------------------------------------------------


def test_key_files_are_private_and_never_silently_replaced(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the modes must not depend on the umask
    try:
        k = make_keys(tmp_path)
    finally:
        os.umask(old_umask)
    assert k.secret_path.stat().st_mode & 0o777 == 0o600
    assert k.public_path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(FileExistsError):
        minisign.generate_keypair(k.secret_path, tmp_path / "other.pub")
    with pytest.raises(FileExistsError):
        minisign.generate_keypair(tmp_path / "other.key", k.public_path)
    assert not (tmp_path / "other.key").exists()
    assert not (tmp_path / "other.pub").exists()
    assert minisign.SecretKey.from_file(k.secret_path) == k.secret  # untouched

    k.secret_path.chmod(0o644)  # force writes a new file: no old mode carried over
    new = minisign.generate_keypair(k.secret_path, k.public_path, force=True)
    assert new.key_id != k.public.key_id
    assert k.secret_path.stat().st_mode & 0o777 == 0o600
    assert minisign.PublicKey.from_file(k.public_path) == new


def test_key_texts_round_trip_in_minisign_layout(keys: Keys) -> None:
    pub_text = keys.public_path.read_text()
    assert pub_text == keys.public.to_text()
    assert re.fullmatch(r"[0-9A-F]{16}", keys.public.key_id_hex)
    assert keys.public.key_id_hex == keys.public.key_id[::-1].hex().upper()
    comment, body = pub_text.splitlines()
    assert comment == f"untrusted comment: minisign public key {keys.public.key_id_hex}"
    assert base64.b64decode(body) == b"Ed" + keys.public.key_id + keys.public.raw
    assert minisign.PublicKey.from_text(keys.public.to_text("my comment"), "x") == keys.public

    raw = base64.b64decode(keys.secret_path.read_text().splitlines()[1])
    assert len(raw) == 158
    assert raw[:6] == b"Ed\0\0B2"  # Ed25519, no KDF (unencrypted), BLAKE2b checksum
    assert raw[54:62] == keys.public.key_id
    assert raw[62:126] == keys.secret.seed + keys.public.raw
    assert keys.secret.public_key() == keys.public
    assert minisign.SecretKey.from_text(keys.secret.to_text(), "x") == keys.secret
    assert keys.secret.seed.hex() not in repr(keys.secret)


def test_minisign_key_vectors() -> None:
    pub = minisign.PublicKey.from_text(VECTOR_PUB, "vector.pub")
    assert pub.key_id_hex == VECTOR_KEY_ID
    secret = minisign.SecretKey.from_text(PLAIN_KEY, "vector.key")  # its checksum is checked
    assert secret.public_key() == pub
    with pytest.raises(minisign.KeyFormatError) as err:
        minisign.SecretKey.from_text(ENCRYPTED_KEY, "vector-encrypted.key")
    message = str(err.value)
    assert message.startswith("vector-encrypted.key: ")
    assert "encrypted" in message
    assert "minisign -G -W" in message
    assert "edgeagent keys generate" in message


def _secret_raw(k: Keys) -> bytearray:
    return bytearray(base64.b64decode(k.secret_path.read_text().splitlines()[1]))


def _secret_text(raw: bytes | bytearray) -> str:
    return f"untrusted comment: x\n{base64.b64encode(bytes(raw)).decode()}\n"


def test_malformed_key_files_raise_key_format_error_naming_the_file(
    keys: Keys, tmp_path: Path
) -> None:
    line = keys.public_path.read_text().splitlines()[1]
    bad_public = {
        "": r"found 0 lines",
        "untrusted comment: x\n": r"found 0 lines",
        "untrusted comment: x\nnot base64!\n": r"not base64",
        "untrusted comment: x\nAAAA\n": r"3 bytes, expected 42",
        f"untrusted comment: x\n{line}\n{line}\n": r"found 2 lines",
        "untrusted comment: x\n" + base64.b64encode(b"Xx" + bytes(40)).decode(): r"not minisign",
        f"untrusted comment: x\n{line}\x00\n": r"NUL",
        "x" * 5000: r"too large",
    }
    for text, match in bad_public.items():
        with pytest.raises(minisign.KeyFormatError, match=match) as err:
            minisign.PublicKey.from_text(text, "bad.pub")
        assert str(err.value).startswith("bad.pub: "), err.value
    # The bare base64 line, as `minisign -P` takes it, is a key too.
    assert minisign.PublicKey.from_text(line + "\n", "x") == keys.public

    raw = _secret_raw(keys)
    damaged = raw.copy()
    damaged[70] ^= 1  # a bit of the seed: the checksum no longer matches
    unchecked = damaged.copy()
    unchecked[126:158] = bytes(32)  # no checksum (as minisign -G -W): the halves must agree
    unknown_kdf = raw.copy()
    unknown_kdf[2:4] = b"Xy"
    encrypted = raw.copy()
    encrypted[2:4] = b"Sc"
    bad_secret = {
        _secret_text(raw[:100]): r"100 bytes, expected 158",
        _secret_text(damaged): r"checksum mismatch",
        _secret_text(unchecked): r"two halves differ",
        _secret_text(unknown_kdf): r"unknown key derivation",
        _secret_text(encrypted): r"encrypted with a password.*minisign -G -W",
        keys.public_path.read_text(): r"expected 158",
    }
    for text, match in bad_secret.items():
        with pytest.raises(minisign.KeyFormatError, match=match) as err:
            minisign.SecretKey.from_text(text, "bad.key")
        assert str(err.value).startswith("bad.key: "), err.value

    path = tmp_path / "garbage.key"
    path.write_bytes(b"\xff\xfe not a key")
    with pytest.raises(minisign.KeyFormatError, match=re.escape(str(path))):
        minisign.SecretKey.from_file(path)
    with pytest.raises(minisign.KeyFormatError, match=re.escape(str(path))):
        minisign.PublicKey.from_file(path)


def test_comments_must_be_single_bounded_lines(keys: Keys, tmp_path: Path) -> None:
    for comment in ("two\nlines", "cr\rhere", "nul\0here", "é" * 600):
        with pytest.raises(minisign.SignatureFormatError, match="trusted comment"):
            minisign.sign(b"x", keys.secret, trusted_comment=comment)
        with pytest.raises(minisign.SignatureFormatError, match="untrusted comment"):
            minisign.sign(b"x", keys.secret, trusted_comment="ok", untrusted_comment=comment)
        with pytest.raises(minisign.KeyFormatError, match="comment"):
            keys.public.to_text(comment)
    with pytest.raises(minisign.KeyFormatError, match="comment"):
        minisign.generate_keypair(tmp_path / "c.key", tmp_path / "c.pub", comment="a\nb")
    assert not (tmp_path / "c.key").exists()
    # At the limit, and with a tab (minisign's default trusted comment has one): accepted.
    tc = "t\t" + "x" * (minisign.MAX_COMMENT - 2)
    sig = minisign.sign(b"x", keys.secret, trusted_comment=tc)
    assert minisign.verify(b"x", sig, [keys.public]).trusted_comment == tc


# Sign and verify -------------------------------------------------------------------------------


def test_round_trip(keys: Keys) -> None:
    data = b'{"bundle": 1}\n'
    sig = minisign.sign(data, keys.secret, trusted_comment="edgeagent bundle 1 device=d")
    lines = sig.split("\n")
    assert len(lines) == 5
    assert lines[4] == ""
    assert lines[0] == "untrusted comment: signature from edgeagent secret key"
    assert base64.b64decode(lines[1])[:10] == b"ED" + keys.public.key_id
    assert lines[2] == "trusted comment: edgeagent bundle 1 device=d"
    verified = minisign.verify(data, sig, [keys.public])
    assert verified == minisign.Verified(keys.public.key_id_hex, "edgeagent bundle 1 device=d")
    # CRLF line ends (a file that went through Windows) are read as minisign reads them.
    assert minisign.verify(data, sig.replace("\n", "\r\n"), [keys.public]) == verified
    # The untrusted comment is not signed: changing it changes nothing.
    relabelled = replace_line(sig, 0, "untrusted comment: hi")
    assert minisign.verify(data, relabelled, [keys.public]) == verified
    assert minisign.verify(b"", minisign.sign(b"", keys.secret, trusted_comment=""), [keys.public])


def test_our_signature_is_byte_identical_to_minisign_s() -> None:
    """Ed25519 is deterministic: signing the vector with the vector's key must give exactly the
    file minisign 0.11 wrote."""
    secret = minisign.SecretKey.from_text(PLAIN_KEY, "vector.key")
    sig = minisign.sign(
        VECTOR_DATA,
        secret,
        trusted_comment="test vector (prehashed)",
        untrusted_comment="minisign 0.11",
    )
    assert sig == VECTOR_SIG


@pytest.mark.parametrize("backend", [None, *BACKENDS])
def test_minisign_signature_vectors_verify(backend: str | None) -> None:
    pub = minisign.PublicKey.from_text(VECTOR_PUB, "vector.pub")
    vectors = [(VECTOR_SIG, "test vector (prehashed)"), (VECTOR_SIG_LEGACY, "test vector (legacy)")]
    for sig, comment in vectors:
        if backend is None:
            assert minisign.verify(VECTOR_DATA, sig, [pub]) == minisign.Verified(
                VECTOR_KEY_ID, comment
            )
            with pytest.raises(minisign.BadSignatureError):
                minisign.verify(VECTOR_DATA + b"!", sig, [pub])
        else:
            got = remote_verify.verify_file_signature(
                VECTOR_DATA, sig, [VECTOR_PUB], _backend=backend
            )
            assert got == (VECTOR_KEY_ID, comment)
            with pytest.raises(remote_verify.BadSignature):
                remote_verify.verify_file_signature(
                    VECTOR_DATA + b"!", sig, [VECTOR_PUB], _backend=backend
                )


def test_tampering_is_detected(keys: Keys) -> None:
    data = b"bundle.json contents"
    sig = minisign.sign(data, keys.secret, trusted_comment="edgeagent bundle 1")
    trusted = [keys.public]
    with pytest.raises(minisign.BadSignatureError, match="does not match the data"):
        minisign.verify(data + b" ", sig, trusted)
    with pytest.raises(minisign.BadSignatureError, match="does not match the data"):
        minisign.verify(data[:-1], sig, trusted)
    forged = sig.replace("edgeagent bundle 1", "edgeagent bundle 2")
    with pytest.raises(minisign.BadSignatureError, match="trusted comment was changed"):
        minisign.verify(data, forged, trusted)
    raw = bytearray(base64.b64decode(sig.splitlines()[1]))
    raw[40] ^= 0x01
    flipped = replace_line(sig, 1, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(minisign.BadSignatureError):
        minisign.verify(data, flipped, trusted)
    # A prehashed signature relabelled as legacy (and back) does not verify.
    raw = bytearray(base64.b64decode(sig.splitlines()[1]))
    raw[:2] = b"Ed"
    relabelled = replace_line(sig, 1, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(minisign.BadSignatureError):
        minisign.verify(data, relabelled, trusted)
    # The global signature of another signature does not vouch for this one's comment.
    other = minisign.sign(data, keys.secret, trusted_comment="edgeagent bundle 2")
    spliced = replace_line(forged, 3, other.splitlines()[3])
    assert minisign.verify(data, spliced, trusted).trusted_comment == "edgeagent bundle 2"
    other_data = minisign.sign(b"other", keys.secret, trusted_comment="edgeagent bundle 1")
    spliced = replace_line(sig, 3, other_data.splitlines()[3])
    with pytest.raises(minisign.BadSignatureError, match="trusted comment was changed"):
        minisign.verify(data, spliced, trusted)


def test_unknown_key_and_rotation(tmp_path: Path) -> None:
    old, new, stranger = (make_keys(tmp_path, n) for n in ("old", "new", "stranger"))
    data = b"release"
    by_old = minisign.sign(data, old.secret, trusted_comment="by old")
    by_new = minisign.sign(data, new.secret, trusted_comment="by new")

    with pytest.raises(minisign.UnknownKeyError) as err:
        minisign.verify(data, by_old, [stranger.public, new.public])
    message = str(err.value)
    assert old.public.key_id_hex in message
    assert stranger.public.key_id_hex in message
    assert new.public.key_id_hex in message
    with pytest.raises(minisign.UnknownKeyError, match="trusted: none"):
        minisign.verify(data, by_old, [])

    # While rotating, both keys are trusted and each signature names its key.
    both = [old.public, new.public]
    assert minisign.verify(data, by_old, both) == minisign.Verified(old.public.key_id_hex, "by old")
    assert minisign.verify(data, by_new, both) == minisign.Verified(new.public.key_id_hex, "by new")
    # Then the old key is dropped.
    with pytest.raises(minisign.UnknownKeyError):
        minisign.verify(data, by_old, [new.public])

    # A key that merely claims a trusted key's id is not accepted.
    impostor = minisign.SecretKey(old.public.key_id, stranger.secret.seed)
    forged = minisign.sign(data, impostor, trusted_comment="by old")
    with pytest.raises(minisign.BadSignatureError):
        minisign.verify(data, forged, both)


def _malformed_cases(sig: str) -> dict[str, tuple[str, str]]:
    """name: (signature text, expected message)."""
    lines = sig.splitlines()
    raw = base64.b64decode(lines[1])
    return {
        "empty": ("", "0 lines"),
        "three lines": ("\n".join(lines[:3]) + "\n", "3 lines"),
        "no untrusted comment": (replace_line(sig, 0, "comment: x"), "line 1"),
        "no trusted comment": (replace_line(sig, 2, "comment: x"), "line 3"),
        "not base64": (replace_line(sig, 1, "RUQ*notbase64"), "line 2.*not base64"),
        "short": (replace_line(sig, 1, base64.b64encode(raw[:-1]).decode()), "73 bytes"),
        "algorithm": (
            replace_line(sig, 1, base64.b64encode(b"XX" + raw[2:]).decode()),
            "unsupported signature algorithm",
        ),
        "bad global signature": (replace_line(sig, 3, "AAAA"), "line 4"),
        "trailing text": (sig + "more\n", "unexpected text"),
        "huge": (sig + " " * minisign.MAX_SIG_TEXT, "larger than"),
        "huge in bytes": (sig + "é" * (minisign.MAX_SIG_TEXT // 2), "larger than"),
        "long comment": (replace_line(sig, 2, "trusted comment: " + "x" * 1025), "at most 1024"),
        "cr in a line": (replace_line(sig, 2, "trusted comment: a\rb"), "carriage"),
        "nul": (replace_line(sig, 2, "trusted comment: \0"), "NUL"),
        "surrogate": (replace_line(sig, 2, "trusted comment: \udcff"), "UTF-8"),
    }


_FIXED_KEY = minisign.SecretKey(bytes(8), bytes(32))
_MALFORMED = _malformed_cases(minisign.sign(b"x", _FIXED_KEY, trusted_comment="tc"))


@pytest.mark.parametrize("case", list(_MALFORMED))
def test_malformed_signatures_raise_format_errors(case: str) -> None:
    text, match = _MALFORMED[case]
    pub = _FIXED_KEY.public_key()
    with pytest.raises(minisign.SignatureFormatError, match=match):
        minisign.verify(b"x", text, [pub])
    with pytest.raises(remote_verify.MalformedSignature, match=match):
        remote_verify.verify_file_signature(b"x", text, [pub.to_text()])


# The device-side checker -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_device_checker_agrees_with_host(tmp_path: Path, backend: str) -> None:
    old, new, stranger = (make_keys(tmp_path, n) for n in ("old", "new", "stranger"))
    data = b"x" * 1000
    trusted = [old.public, new.public]
    trusted_texts = [k.public_path.read_text() for k in (old, new)]
    sig = minisign.sign(data, new.secret, trusted_comment="tc")
    cases: dict[str, tuple[bytes, str]] = {
        "good": (data, sig),
        "by the old key": (data, minisign.sign(data, old.secret, trusted_comment="old")),
        "legacy": (data, legacy_sign(data, new.secret, "legacy")),
        "tampered data": (data[:-1] + b"y", sig),
        "truncated data": (data[:-1], sig),
        "tampered comment": (data, sig.replace("comment: tc", "comment: tX")),
        "legacy tampered": (data + b"!", legacy_sign(data, new.secret, "legacy")),
        "unknown key": (data, minisign.sign(data, stranger.secret, trusted_comment="tc")),
        "malformed": (data, sig.replace("trusted", "trustd")),
    }
    host_errors = {
        minisign.BadSignatureError: remote_verify.BadSignature,
        minisign.UnknownKeyError: remote_verify.UnknownKey,
        minisign.SignatureFormatError: remote_verify.MalformedSignature,
    }
    outcomes = {}
    for name, (payload, text) in cases.items():
        host = _outcome(partial(minisign.verify, payload, text, trusted), minisign.SignatureError)
        device = _outcome(
            partial(
                remote_verify.verify_file_signature, payload, text, trusted_texts, _backend=backend
            ),
            remote_verify.VerifyError,
        )
        if isinstance(host, minisign.SignatureError):
            # The same kind of refusal, with the same message.
            assert type(device) is host_errors[type(host)], name
            assert str(device) == str(host), name
            outcomes[name] = type(host).__name__
        else:
            assert isinstance(host, minisign.Verified)
            assert device == (host.key_id_hex, host.trusted_comment), name
            outcomes[name] = "ok"
    assert outcomes == {
        "good": "ok",
        "by the old key": "ok",
        "legacy": "ok",
        "tampered data": "BadSignatureError",
        "truncated data": "BadSignatureError",
        "tampered comment": "BadSignatureError",
        "legacy tampered": "BadSignatureError",
        "unknown key": "UnknownKeyError",
        "malformed": "SignatureFormatError",
    }


def test_device_checker_rejects_malformed_trusted_keys(keys: Keys) -> None:
    sig = minisign.sign(b"x", keys.secret, trusted_comment="tc")
    with pytest.raises(remote_verify.MalformedKey, match=r"trusted key 2: .*not base64"):
        remote_verify.verify_file_signature(
            b"x", sig, [keys.public.to_text(), "untrusted comment: x\n???\n"]
        )
    with pytest.raises(remote_verify.UnknownKey, match="trusted: none"):
        remote_verify.verify_file_signature(b"x", sig, [])


def test_device_checker_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(remote_verify.__file__).read_text())
    for node in tree.body:  # module level; cryptography is imported lazily, inside a function
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import: the file is copied alone onto devices"
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top == "__future__" or top in sys.stdlib_module_names, name


def _bare_python(folder: Path, script: str, path_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` next to a lone copy of remote_verify.py in an interpreter without
    site-packages (-S: no cryptography), as on a bare Debian device."""
    shutil.copy(remote_verify.__file__, folder / "remote_verify.py")
    return subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        check=False,
        cwd=folder,
        env={"PATH": path_env, "LC_ALL": "C"},
        timeout=60,
    )


_DEVICE_SCRIPT = """
import sys
sys.path.insert(0, ".")
try:
    import cryptography
except ImportError:
    pass
else:
    sys.exit("cryptography is importable: not a bare device")
import remote_verify
data = open("data", "rb").read()
keys = [open("k.pub").read()]
for name in ("data.minisig", "tampered.minisig"):
    try:
        print(remote_verify.verify_file_signature(data, open(name).read(), keys))
    except ValueError as exc:
        print(type(exc).__name__, exc)
"""


@needs_openssl
def test_bare_device_checks_with_openssl(keys: Keys, tmp_path: Path) -> None:
    device = tmp_path / "device"
    device.mkdir()
    data = b"bundle"
    sig = minisign.sign(data, keys.secret, trusted_comment="on the device")
    (device / "data").write_bytes(data)
    (device / "data.minisig").write_text(sig)
    (device / "tampered.minisig").write_text(sig.replace("on the device", "on another device"))
    shutil.copy(keys.public_path, device / "k.pub")

    proc = _bare_python(device, _DEVICE_SCRIPT, str(Path(str(OPENSSL)).parent))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        str((keys.public.key_id_hex, "on the device")),
        "BadSignature the trusted comment was changed after signing",
    ]

    # No cryptography and no openssl: a clear error, not a traceback.
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc = _bare_python(device, _DEVICE_SCRIPT, str(empty))
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.splitlines():
        assert line.startswith("NoEd25519 ")
        assert "apt-get install openssl" in line


def test_missing_openssl_is_a_clear_error(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    sig = minisign.sign(b"x", keys.secret, trusted_comment="tc")
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(remote_verify.NoEd25519, match="install OpenSSL 3"):
        remote_verify.verify_file_signature(b"x", sig, [keys.public.to_text()], _backend="openssl")


def test_openssl_failures_other_than_a_bad_signature_are_reported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An openssl that cannot run the check (OpenSSL 1.1 has no -rawin) is not 'tampered'."""
    fake = tmp_path / "openssl"
    fake.write_text("#!/bin/sh\necho 'pkeyutl: Unknown option: -rawin' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(shutil, "which", lambda _name: str(fake))
    with pytest.raises(remote_verify.NoEd25519, match=r"Unknown option: -rawin.*OpenSSL 3"):
        remote_verify.ed25519_verify(bytes(32), bytes(64), b"m", "openssl")


# Interoperability with the minisign binary -----------------------------------------------------


@needs_minisign
def test_minisign_verifies_our_signatures(keys: Keys, tmp_path: Path) -> None:
    f = tmp_path / "bundle.json"
    f.write_bytes(b'{"hello": 1}\n')
    sig = minisign.sign(f.read_bytes(), keys.secret, trusted_comment="edgeagent bundle 7\tok")
    (tmp_path / "bundle.json.minisig").write_text(sig)
    ok = run(MINISIGN, "-Vm", f, "-p", keys.public_path)
    assert ok.returncode == 0, ok.stderr
    assert "Trusted comment: edgeagent bundle 7\tok" in ok.stdout
    # -H: minisign also confirms the signature is the prehashed kind.
    assert run(MINISIGN, "-H", "-Vm", f, "-p", keys.public_path).returncode == 0

    (tmp_path / "bundle.json.minisig").write_text(sig.replace("bundle 7", "bundle 8"))
    bad = run(MINISIGN, "-Vm", f, "-p", keys.public_path)
    assert bad.returncode != 0
    assert "Comment signature verification failed" in bad.stderr

    (tmp_path / "bundle.json.minisig").write_text(sig)
    f.write_bytes(b'{"hello": 2}\n')
    bad = run(MINISIGN, "-Vm", f, "-p", keys.public_path)
    assert bad.returncode != 0
    assert "Signature verification failed" in bad.stderr


@needs_minisign
def test_minisign_prints_our_key_ids(keys: Keys, tmp_path: Path) -> None:
    other = make_keys(tmp_path, "other")
    f = tmp_path / "data"
    f.write_bytes(b"data")
    (tmp_path / "data.minisig").write_text(minisign.sign(b"data", keys.secret, trusted_comment="t"))
    wrong = run(MINISIGN, "-Vm", f, "-p", other.public_path)
    assert wrong.returncode != 0
    # minisign prints key ids as a plain %X number: no leading zeros.
    found = re.search(
        r"minisig is ([0-9A-F]+)\nbut the key id in the public key is ([0-9A-F]+)", wrong.stderr
    )
    assert found, wrong.stderr
    assert int(found.group(1), 16) == int(keys.public.key_id_hex, 16)
    assert int(found.group(2), 16) == int(other.public.key_id_hex, 16)


@needs_minisign
def test_minisign_signs_with_our_secret_key(keys: Keys, tmp_path: Path) -> None:
    f = tmp_path / "data"
    f.write_bytes(b"payload")
    signed = run(MINISIGN, "-S", "-s", keys.secret_path, "-m", f, "-t", "by minisign")
    assert signed.returncode == 0, signed.stderr + signed.stdout
    sig = (tmp_path / "data.minisig").read_text()
    assert minisign.verify(b"payload", sig, [keys.public]) == minisign.Verified(
        keys.public.key_id_hex, "by minisign"
    )
    # minisign -R recreates the public key from our secret key: the same key.
    recreated = tmp_path / "recreated.pub"
    assert run(MINISIGN, "-R", "-s", keys.secret_path, "-p", recreated).returncode == 0
    assert minisign.PublicKey.from_file(recreated) == keys.public


@needs_minisign
@pytest.mark.parametrize("backend", BACKENDS)
def test_we_use_keys_and_signatures_minisign_made(tmp_path: Path, backend: str) -> None:
    sk, pk = tmp_path / "m.key", tmp_path / "m.pub"
    made = run(MINISIGN, "-G", "-W", "-s", sk, "-p", pk)
    assert made.returncode == 0, made.stderr
    secret = minisign.SecretKey.from_file(sk)
    public = minisign.PublicKey.from_file(pk)
    assert secret.public_key() == public
    first_line = pk.read_text().splitlines()[0]
    # minisign writes the key id as a plain %X number (no leading zeros).
    prefix, _, key_id = first_line.rpartition(" ")
    assert prefix == "untrusted comment: minisign public key"
    assert int(key_id, 16) == int(public.key_id_hex, 16)

    f = tmp_path / "data"
    f.write_bytes(b"signed by minisign")
    for extra, comment in (((), "prehashed"), (("-l",), "legacy")):
        signed = run(MINISIGN, "-S", *extra, "-s", sk, "-m", f, "-t", comment)
        assert signed.returncode == 0, signed.stderr
        sig = (tmp_path / "data.minisig").read_text()
        assert minisign.verify(f.read_bytes(), sig, [public]).trusted_comment == comment
        assert remote_verify.verify_file_signature(
            f.read_bytes(), sig, [pk.read_text()], _backend=backend
        ) == (public.key_id_hex, comment)
        with pytest.raises(minisign.BadSignatureError):
            minisign.verify(f.read_bytes() + b"\n", sig, [public])
        with pytest.raises(remote_verify.BadSignature):
            remote_verify.verify_file_signature(
                f.read_bytes() + b"\n", sig, [pk.read_text()], _backend=backend
            )

    # And what we sign with minisign's key, minisign verifies.
    ours = minisign.sign(f.read_bytes(), secret, trusted_comment="us")
    (tmp_path / "data.minisig").write_text(ours)
    checked = run(MINISIGN, "-Vm", f, "-p", pk)
    assert checked.returncode == 0, checked.stderr


# Hostile input ---------------------------------------------------------------------------------

_KEY = minisign.SecretKey.generate()
_PUB = _KEY.public_key()
_PUB_TEXT = _PUB.to_text()
_DATA = b"hostile"
_SIG = minisign.sign(_DATA, _KEY, trusted_comment="the real comment")
_GOOD = minisign.Verified(_PUB.key_id_hex, "the real comment")


def _texts() -> st.SearchStrategy[str]:
    """Arbitrary text, and arbitrary bytes read as a file would be (latin-1, or UTF-8 with
    surrogateescape, which leaves lone surrogates)."""
    raw = st.binary(max_size=600)
    return st.one_of(
        st.text(max_size=600),
        raw.map(lambda b: b.decode("latin-1")),
        raw.map(lambda b: b.decode("utf-8", "surrogateescape")),
        # near misses: lines of the right kinds with random content
        st.lists(
            st.one_of(
                st.sampled_from(["untrusted comment: x", "trusted comment: y", ""]),
                st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()),
                st.text(max_size=40),
            ),
            max_size=6,
        ).map("\n".join),
    )


@settings(max_examples=300, deadline=None)
@given(_texts(), st.binary(max_size=64))
def test_any_input_raises_only_typed_errors(text: str, data: bytes) -> None:
    calls: list[Callable[[], object]] = [
        lambda: minisign.PublicKey.from_text(text, "fuzz.pub"),
        lambda: minisign.SecretKey.from_text(text, "fuzz.key"),
        lambda: minisign.verify(data, text, [_PUB]),
    ]
    for call in calls:
        _outcome(call, minisign.SignatureError)
    _outcome(
        lambda: remote_verify.verify_file_signature(data, text, [_PUB_TEXT]),
        remote_verify.VerifyError,
    )
    _outcome(
        lambda: remote_verify.verify_file_signature(_DATA, _SIG, [text]),
        remote_verify.VerifyError,
    )


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_changed_signature_never_verifies_to_something_else(data: st.DataObject) -> None:
    """Any edit of a valid signature file is refused with a typed error, or (an edit of the
    untrusted comment, say) verifies to exactly the original signer and trusted comment."""
    sig = _SIG
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(sig)))
        cut = data.draw(st.integers(0, 3))
        insert = data.draw(st.text(max_size=3))
        sig = sig[:i] + insert + sig[i + cut :]
    payload = data.draw(st.sampled_from([_DATA, _DATA + b"!", b""]))
    host = _outcome(lambda: minisign.verify(payload, sig, [_PUB]), minisign.SignatureError)
    device = _outcome(
        lambda: remote_verify.verify_file_signature(payload, sig, [_PUB_TEXT]),
        remote_verify.VerifyError,
    )
    if isinstance(host, minisign.SignatureError):
        assert isinstance(device, remote_verify.VerifyError)
        assert str(device) == str(host)
    else:
        assert host == _GOOD
        assert device == (_GOOD.key_id_hex, _GOOD.trusted_comment)
        assert payload == _DATA
