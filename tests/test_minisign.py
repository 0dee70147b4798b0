"""Signatures in minisign's format: ours, checked by the real minisign tool and the other way
round; the device-side checker (standard library + openssl) agrees with the host side."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeagent.deploy import minisign, remote_verify

MINISIGN = shutil.which("minisign")
needs_minisign = pytest.mark.skipif(MINISIGN is None, reason="minisign not installed")


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    sk, pk = tmp_path / "k.key", tmp_path / "k.pub"
    minisign.generate_keypair(sk, pk)
    return sk, pk


def test_secret_key_is_private_and_not_overwritten(keypair: tuple[Path, Path]) -> None:
    sk, pk = keypair
    assert sk.stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        minisign.generate_keypair(sk, pk)


def test_round_trip_and_every_kind_of_tampering(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    sk, pk = keypair
    key = minisign.SecretKey.from_file(sk)
    pub = minisign.PublicKey.from_file(pk)
    data = b"bundle.json contents"
    sig = minisign.sign(data, key, trusted_comment="edgeagent bundle 1")
    assert minisign.verify(data, sig, [pub]).trusted_comment == "edgeagent bundle 1"
    with pytest.raises(minisign.BadSignatureError, match="tampered"):
        minisign.verify(data + b" ", sig, [pub])
    forged = sig.replace("edgeagent bundle 1", "edgeagent bundle 2")
    with pytest.raises(minisign.BadSignatureError, match="trusted comment"):
        minisign.verify(data, forged, [pub])
    other_sk, other_pk = tmp_path / "o.key", tmp_path / "o.pub"
    other = minisign.generate_keypair(other_sk, other_pk)
    with pytest.raises(minisign.UnknownKeyError, match=re.escape(pub.key_id_hex)):
        minisign.verify(data, sig, [other])
    # Rotation: old and new keys trusted together.
    assert minisign.verify(data, sig, [other, pub]).key_id_hex == pub.key_id_hex
    with pytest.raises(minisign.SignatureFormatError):
        minisign.verify(data, "untrusted comment: x\nnot base64!\n", [pub])
    with pytest.raises(minisign.KeyFormatError, match=r"k\.key"):
        minisign.SecretKey.from_text("untrusted comment: x\nAAAA\n", "k.key")


@pytest.mark.parametrize("backend", ["cryptography", "openssl"])
def test_device_checker_agrees(keypair: tuple[Path, Path], backend: str) -> None:
    if backend == "openssl" and shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    sk, pk = keypair
    key = minisign.SecretKey.from_file(sk)
    data = b"x" * 1000
    sig = minisign.sign(data, key, trusted_comment="tc")
    kid, tc = remote_verify.verify_file_signature(data, sig, [pk.read_text()], _backend=backend)
    assert (kid, tc) == (key.public_key().key_id_hex, "tc")
    with pytest.raises(ValueError, match="tampered"):
        remote_verify.verify_file_signature(data[:-1], sig, [pk.read_text()], _backend=backend)
    with pytest.raises(ValueError, match="trusted comment"):
        remote_verify.verify_file_signature(
            data, sig.replace("comment: tc", "comment: tX"), [pk.read_text()], _backend=backend
        )


@needs_minisign
def test_minisign_tool_checks_our_signature(keypair: tuple[Path, Path], tmp_path: Path) -> None:
    sk, pk = keypair
    f = tmp_path / "bundle.json"
    f.write_bytes(b'{"hello": 1}\n')
    sig = minisign.sign(f.read_bytes(), minisign.SecretKey.from_file(sk), trusted_comment="ok")
    (tmp_path / "bundle.json.minisig").write_text(sig)
    ok = subprocess.run([MINISIGN, "-Vm", str(f), "-p", str(pk)], capture_output=True, check=False)
    assert ok.returncode == 0, ok.stderr
    f.write_bytes(b'{"hello": 2}\n')
    bad = subprocess.run([MINISIGN, "-Vm", str(f), "-p", str(pk)], capture_output=True, check=False)
    assert bad.returncode != 0


@needs_minisign
def test_minisign_tool_signs_with_our_key_and_we_check_its_keys(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    sk, pk = keypair
    f = tmp_path / "data"
    f.write_bytes(b"payload")
    subprocess.run([MINISIGN, "-S", "-s", str(sk), "-m", str(f), "-t", "by minisign"],
                   check=True, capture_output=True, input=b"")  # fmt: skip
    v = minisign.verify(f.read_bytes(), (tmp_path / "data.minisig").read_text(),
                        [minisign.PublicKey.from_file(pk)])  # fmt: skip
    assert v.trusted_comment == "by minisign"
    theirs_sk, theirs_pk = tmp_path / "m.key", tmp_path / "m.pub"
    subprocess.run([MINISIGN, "-G", "-W", "-s", str(theirs_sk), "-p", str(theirs_pk)],
                   check=True, capture_output=True)  # fmt: skip
    key = minisign.SecretKey.from_file(theirs_sk)
    assert key.public_key() == minisign.PublicKey.from_file(theirs_pk)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400), st.binary(max_size=64))
def test_hostile_input_raises_only_our_errors(text: str, data: bytes) -> None:
    for call in (
        lambda: minisign.PublicKey.from_text(text),
        lambda: minisign.SecretKey.from_text(text),
        lambda: minisign.verify(data, text, []),
    ):
        with contextlib.suppress(minisign.SignatureError):
            call()
    with contextlib.suppress(ValueError):
        remote_verify.verify_file_signature(data, text, [])
