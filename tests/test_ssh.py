"""The SSH adapter against a real OpenSSH server (this machine, through a private sshd on
127.0.0.1): commands, uploads, and every host-key and authentication failure as a typed error."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from edgeagent.deploy.ssh import (
    AuthenticationFailed,
    ConnectionLost,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteCommandFailed,
    SshError,
    SshOptions,
    SshSession,
    SshTarget,
    TransferFailed,
    connect,
    open_session,
)
from edgeagent.localbroker import free_port
from tests.sshhost import SshHost, keygen, qualified_skip_reason

T = TypeVar("T")
SKIP = qualified_skip_reason()
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
needs_sshd = pytest.mark.skipif(SKIP is not None, reason=f"needs OpenSSH's sshd: {SKIP}")


def arun(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def with_session(host: SshHost, body: Callable[[SshSession], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await connect(host.target, host.options()) as session:
            return await body(session)

    return asyncio.run(main())


def fingerprint(pub_line: str, tmp: Path) -> str:
    """SHA256:… of a public key as OpenSSH's ssh-keygen prints it."""
    f = tmp / "fp.pub"
    f.write_text(pub_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(f)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def no_auth_attempted(host: SshHost) -> bool:
    """sshd logs (at VERBOSE) every public key offered, accepted or not."""
    log = host.log_text()
    return "publickey" not in log and "Accepted key" not in log and "Failed" not in log


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshHost]:
    if SKIP is not None:
        pytest.skip(f"needs OpenSSH's sshd: {SKIP}")
    with SshHost() as host:
        yield host


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lamp.local", SshTarget("lamp.local", 22, None)),
        ("pi@lamp.local", SshTarget("lamp.local", 22, "pi")),
        ("10.0.0.5:2222", SshTarget("10.0.0.5", 2222, None)),
        ("root@10.0.0.5:22", SshTarget("10.0.0.5", 22, "root")),
        ("[::1]:2222", SshTarget("::1", 2222, None)),
        ("root@[::1]:2200", SshTarget("::1", 2200, "root")),
        ("[fe80::1]", SshTarget("fe80::1", 22, None)),
        ("admin@fe80::1", SshTarget("fe80::1", 22, "admin")),
    ],
)
def test_target_parse(text: str, expected: SshTarget) -> None:
    assert SshTarget.parse(text) == expected
    assert SshTarget.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "@host", "pi@", "host:", "host:0", "host:99999", "host:ssh", "[::1", "[::1]x", "a b"],
)
def test_target_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|bad port"):
        SshTarget.parse(text)


def test_target_str_and_address() -> None:
    assert str(SshTarget("::1", 2200, "root")) == "root@[::1]:2200"
    assert str(SshTarget("lamp.local")) == "lamp.local"
    assert SshTarget("lamp.local").address == "lamp.local:22"
    assert SshTarget("::1", 2200).address == "[::1]:2200"


# --- commands ------------------------------------------------------------------------------


@needs_sshd
def test_run_reads_output_and_status(sshd: SshHost) -> None:
    async def body(s: SshSession) -> None:
        res = await s.run(["sh", "-c", "echo out; echo err >&2"])
        assert (res.exit_status, res.stdout, res.stderr) == (0, b"out\n", b"err\n")
        # A list is quoted for the remote shell: spaces and quotes arrive intact.
        quoted = await s.run(["printf", "%s|", "a b", "c'd", "$HOME"])
        assert quoted.stdout == b"a b|c'd|$HOME|"
        assert (await s.run("cat", input=b"\x00binary\xff")).stdout == b"\x00binary\xff"
        assert (await s.run("cat")).stdout == b""  # stdin is empty, not left open
        assert (await s.run("id -un")).stdout.decode().strip() == sshd.user
        unchecked = await s.run("exit 4", check=False)
        assert unchecked.exit_status == 4
        stats = s.statistics()
        assert stats.commands == 6
        assert stats.bytes_sent == len(b"\x00binary\xff")

    with_session(sshd, body)


@needs_sshd
def test_failing_command_raises_with_stderr(sshd: SshHost) -> None:
    async def body(s: SshSession) -> None:
        script = "for i in $(seq 1 30); do echo line$i >&2; done; echo partial; exit 3"
        with pytest.raises(RemoteCommandFailed) as info:
            await s.run(script)
        err = info.value
        assert err.exit_status == 3
        assert err.command == script
        assert err.stdout == b"partial\n"
        assert err.stderr.splitlines()[-1] == b"line30"
        assert "exit status 3" in str(err)
        assert "line30" in str(err)
        assert "line1\n" not in str(err)  # only the last lines

        t0 = time.monotonic()
        with pytest.raises(RemoteCommandFailed, match=r"timed out after 0\.5 s") as slow:
            await s.run("echo started; sleep 5", timeout=0.5)
        assert time.monotonic() - t0 < 3
        assert slow.value.exit_status is None
        assert slow.value.stdout == b"started\n"
        # The session is still usable after both.
        assert (await s.run("echo ok")).stdout == b"ok\n"

    with_session(sshd, body)


@needs_sshd
def test_connection_dropped_mid_command_is_connection_lost(sshd: SshHost) -> None:
    async def body(s: SshSession) -> None:
        # $PPID of the remote shell is this connection's sshd process.
        with pytest.raises(ConnectionLost):
            await s.run("kill -9 $PPID; sleep 5")
        with pytest.raises(ConnectionLost):
            await s.run("true")
        with pytest.raises(ConnectionLost):
            await s.put_bytes(b"x", "/tmp/never")

    with_session(sshd, body)


# --- uploads -------------------------------------------------------------------------------


@needs_sshd
def test_put_files_uploads_atomically(sshd: SshHost, tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_bytes(b"hello")
    a.chmod(0o600)  # a private umask on the build machine does not reach the device
    b = tmp_path / "tool"
    b.write_bytes(os.urandom(300_000))
    b.chmod(0o755)
    dest = tmp_path / "remote" / "deep" / "er"
    old = dest / "a.txt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"the previous version")
    seen: list[tuple[int, int]] = []

    async def body(s: SshSession) -> int:
        sent = await s.put_files(
            [(a, str(dest / "a.txt")), (b, str(dest / "bin" / "tool"))],
            progress=lambda done, total: seen.append((done, total)),
        )
        assert s.statistics().bytes_sent == sent
        assert s.statistics().files_sent == 2
        return sent

    sent = with_session(sshd, body)
    assert sent == 5 + 300_000
    assert (dest / "a.txt").read_bytes() == b"hello"
    assert (dest / "bin" / "tool").read_bytes() == b.read_bytes()
    assert stat.S_IMODE((dest / "bin" / "tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "a.txt").stat().st_mode) == 0o644
    assert sorted(p.name for p in dest.iterdir()) == ["a.txt", "bin"]  # no .tmp- left
    assert [p.name for p in (dest / "bin").iterdir()] == ["tool"]
    assert seen[-1] == (sent, sent)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert {t for _, t in seen} == {sent}


@needs_sshd
def test_put_bytes_and_read_file(sshd: SshHost, tmp_path: Path) -> None:
    target = tmp_path / "new" / "bundle.json"

    async def body(s: SshSession) -> None:
        await s.put_bytes(b'{"a": 1}', str(target), mode=0o600)
        assert await s.read_file(str(target)) == b'{"a": 1}'
        assert await s.read_file(str(tmp_path / "missing")) is None
        await s.put_bytes(b"", str(target))
        assert await s.read_file(str(target)) == b""
        stats = s.statistics()
        assert (stats.bytes_sent, stats.bytes_received, stats.files_sent) == (8, 8, 2)

    with_session(sshd, body)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["bundle.json"]


@needs_sshd
def test_upload_failures_are_typed(sshd: SshHost, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    src = tmp_path / "src"
    src.write_text("x")

    async def body(s: SshSession) -> None:
        with pytest.raises(TransferFailed, match="uploading"):
            await s.put_files([(src, str(blocker / "sub" / "x"))])
        with pytest.raises(TransferFailed, match="missing"):
            await s.put_files([(tmp_path / "missing", str(tmp_path / "y"))])
        with pytest.raises(TransferFailed, match="writing"):
            await s.put_bytes(b"x", str(tmp_path))  # a folder is in the way of the rename
        assert (await s.run("echo still here")).exit_status == 0

    with_session(sshd, body)
    assert sorted(os.listdir(tmp_path)) == ["file", "src"]


# --- host keys -----------------------------------------------------------------------------


@needs_sshd
def test_unknown_host_key_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with SshHost() as host:
        kh = tmp_path / "known_hosts"
        other = f"[127.0.0.1]:1 {OTHER_KEY}\n"
        kh.write_text(other)
        with pytest.raises(HostKeyUnknown) as info:
            arun(connect(host.target, host.options(known_hosts=kh)))
        fp = fingerprint(host.host_public_key, tmp_path)
        assert info.value.fingerprint == fp
        assert fp in str(info.value)
        assert "--accept-new-host-key" in str(info.value)
        assert f"127.0.0.1:{host.port}" in str(info.value)
        assert kh.read_text() == other
        assert no_auth_attempted(host)
        # No known_hosts file at all: the same, and none is created.
        missing = tmp_path / "nowhere" / "known_hosts"
        with pytest.raises(HostKeyUnknown):
            arun(connect(host.target, host.options(known_hosts=missing)))
        assert not missing.parent.exists()


@needs_sshd
def test_accept_new_remembers_the_key(tmp_path: Path) -> None:
    kh = tmp_path / "dotssh" / "known_hosts"
    with SshHost() as host:

        async def twice() -> None:
            async with await connect(host.target, host.options(known_hosts=kh)) as s:
                assert (await s.run("echo again")).stdout == b"again\n"

        async def first() -> None:
            opts = host.options(known_hosts=kh, accept_new_host_key=True)
            async with open_session(host.target, opts) as s:
                assert (await s.run("echo first")).stdout == b"first\n"

        arun(first())
        assert kh.read_text() == f"[127.0.0.1]:{host.port} {host.host_public_key}\n"
        assert stat.S_IMODE(kh.stat().st_mode) == 0o600
        assert stat.S_IMODE(kh.parent.stat().st_mode) == 0o700
        arun(twice())  # now known: no flag needed
        arun(first())  # already known: not appended again
        assert kh.read_text().count("\n") == 1


@needs_sshd
def test_changed_host_key_is_refused_before_authentication(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"# devices\nlamp.local {OTHER_KEY}\n")
    with SshHost() as host:
        arun(connect_and_close(host, known_hosts=kh, accept_new_host_key=True))
        port = host.port
    before = kh.read_text()
    # Same address, another host key (a reinstalled device, or someone in between).
    with SshHost(port=port) as impostor:
        for accept_new in (False, True):
            opts = impostor.options(known_hosts=kh, accept_new_host_key=accept_new)
            with pytest.raises(HostKeyChanged) as info:
                arun(connect(impostor.target, opts))
            msg = str(info.value)
            assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in msg
            assert fingerprint(impostor.host_public_key, tmp_path) in msg
            assert f"{kh}:3" in msg
            assert f"ssh-keygen -f '{kh}' -R '[127.0.0.1]:{port}'" in msg
            assert info.value.line == 3
        assert kh.read_text() == before
        # The impostor accepts the client key, so any login attempt would have shown up.
        assert no_auth_attempted(impostor)


async def connect_and_close(host: SshHost, **changes: object) -> None:
    async with await connect(host.target, host.options(**changes)) as s:
        await s.run("true")


@needs_sshd
def test_same_host_key_on_a_new_server_is_accepted(tmp_path: Path) -> None:
    with SshHost() as host:
        port, key = host.port, host.host_key
        shutil.copy(host.host_key, tmp_path / "hk")
        shutil.copy(f"{host.host_key}.pub", tmp_path / "hk.pub")
        kh = tmp_path / "kh"
        shutil.copy(host.known_hosts, kh)
    assert not key.exists()
    with SshHost(port=port, host_key=tmp_path / "hk") as again:
        arun(connect_and_close(again, known_hosts=kh))


@needs_sshd
def test_known_hosts_patterns_hashed_and_revoked(sshd: SshHost, tmp_path: Path) -> None:
    name = f"[127.0.0.1]:{sshd.port}"
    hashed = tmp_path / "hashed"
    hashed.write_text(f"{name} {sshd.host_public_key}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert name not in hashed.read_text()
    arun(connect_and_close(sshd, known_hosts=hashed))

    wildcard = tmp_path / "wildcard"
    wildcard.write_text(f"!{name},[127.0.0.?]:* {sshd.host_public_key}\n")
    with pytest.raises(HostKeyUnknown):  # the negated pattern rules the line out
        arun(connect(sshd.target, sshd.options(known_hosts=wildcard)))
    wildcard.write_text(f"other,[127.0.0.?]:* {sshd.host_public_key}\n")
    arun(connect_and_close(sshd, known_hosts=wildcard))

    revoked = tmp_path / "revoked"
    revoked.write_text(f"{name} {sshd.host_public_key}\n@revoked * {sshd.host_public_key}\n")
    with pytest.raises(HostKeyChanged, match="@revoked"):
        arun(connect(sshd.target, sshd.options(known_hosts=revoked, accept_new_host_key=True)))


# --- authentication ------------------------------------------------------------------------


@needs_sshd
def test_wrong_client_key_fails_authentication(sshd: SshHost, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "stranger")
    with pytest.raises(AuthenticationFailed, match="no key was accepted") as info:
        arun(connect(sshd.target, sshd.options(identity_files=[stranger])))
    assert str(stranger) in str(info.value)
    assert f"{sshd.user}@127.0.0.1:{sshd.port}" in str(info.value)

    with pytest.raises(AuthenticationFailed, match="No such file"):
        arun(connect(sshd.target, sshd.options(identity_files=[tmp_path / "nope"])))

    locked = tmp_path / "locked"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(locked)], check=True
    )
    with pytest.raises(AuthenticationFailed, match="passphrase-protected"):
        arun(connect(sshd.target, sshd.options(identity_files=[locked])))


@needs_sshd
@pytest.mark.skipif(shutil.which("ssh-agent") is None, reason="needs ssh-agent (openssh-client)")
def test_keys_from_the_agent(
    sshd: SshHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        stranger = keygen(tmp_path / "stranger")
        # The -i key is refused, the agent's is accepted; without the agent, nothing is.
        arun(connect_and_close(sshd, identity_files=[stranger], use_agent=True))
        with pytest.raises(AuthenticationFailed) as info:
            arun(connect(sshd.target, sshd.options(identity_files=[stranger], use_agent=False)))
        assert "ssh-agent" not in str(info.value)
        # The agent holding only a stranger's key: the message counts what it offered.
        subprocess.run(["ssh-add", "-q", "-D"], env=env, check=True, capture_output=True)
        subprocess.run(["ssh-add", "-q", str(stranger)], env=env, check=True)
        with pytest.raises(AuthenticationFailed, match=r"1 key\(s\) of the ssh-agent at"):
            arun(connect(sshd.target, sshd.options(identity_files=[stranger], use_agent=True)))
    finally:
        agent.terminate()
        agent.wait()


# --- unreachable hosts ---------------------------------------------------------------------


def test_nothing_listening_is_unreachable_quickly() -> None:
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(HostUnreachable, match=rf"127\.0\.0\.1:{port}"):
        arun(connect(SshTarget("127.0.0.1", port), SshOptions(use_agent=False)))
    assert time.monotonic() - t0 < 5


def test_unknown_name_is_unreachable() -> None:
    with pytest.raises(HostUnreachable, match=r"no-such-device\.invalid:22"):
        arun(
            connect(
                SshTarget("no-such-device.invalid"), SshOptions(use_agent=False, connect_timeout=5)
            )
        )


@pytest.mark.parametrize("greeting", [b"", b"HTTP/1.1 400 Bad Request\r\n\r\n"])
def test_silent_or_foreign_server_is_unreachable(greeting: bytes) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        conns: list[socket.socket] = []

        def serve() -> None:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            conn.sendall(greeting)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        t0 = time.monotonic()
        with pytest.raises(HostUnreachable) as info:
            arun(
                connect(
                    SshTarget("127.0.0.1", port), SshOptions(use_agent=False, connect_timeout=1)
                )
            )
        assert time.monotonic() - t0 < 4
        assert isinstance(info.value, SshError)
        thread.join(2)
        for c in conns:
            c.close()
