"""The SSH adapter against a real OpenSSH server: commands, uploads, and every host-key and
authentication failure as a typed error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgeagent.deploy.ssh import (
    AuthenticationFailed,
    HostKeyChanged,
    HostKeyUnknown,
    HostUnreachable,
    RemoteCommandFailed,
    SshOptions,
    SshTarget,
    connect,
)
from edgeagent.localbroker import free_port
from tests.sshhost import SshHost, qualified_skip_reason

needs_sshd = pytest.mark.skipif(
    qualified_skip_reason() is not None, reason=str(qualified_skip_reason())
)


def test_target_parsing() -> None:
    assert SshTarget.parse("pi@lamp.local") == SshTarget("lamp.local", 22, "pi")
    assert SshTarget.parse("10.0.0.5:2222") == SshTarget("10.0.0.5", 2222, None)
    assert SshTarget.parse("root@[::1]:2200") == SshTarget("::1", 2200, "root")
    assert str(SshTarget("::1", 2200, "root")) == "root@[::1]:2200"
    with pytest.raises(ValueError, match="bad port"):
        SshTarget.parse("host:99999")


@needs_sshd
def test_run_and_upload(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")

    async def go() -> None:
        with SshHost() as host:
            async with await connect(host.target, host.options()) as s:
                res = await s.run(["sh", "-c", "echo out; echo err >&2"])
                assert (res.exit_status, res.stdout, res.stderr) == (0, b"out\n", b"err\n")
                with pytest.raises(RemoteCommandFailed, match="nope") as info:
                    await s.run("echo nope >&2; exit 3")
                assert info.value.exit_status == 3
                dest = tmp_path / "up" / "b.txt"
                assert await s.put_files([(src, str(dest))]) == 5
                assert dest.read_bytes() == b"hello"
                assert list(dest.parent.iterdir()) == [dest]  # no temporary file left
                await s.put_bytes(b"xyz", str(tmp_path / "c"))
                assert await s.read_file(str(tmp_path / "c")) == b"xyz"

    asyncio.run(go())


@needs_sshd
def test_host_keys_unknown_accepted_and_changed(tmp_path: Path) -> None:
    async def go() -> None:
        with SshHost() as host:
            fresh = tmp_path / "kh"
            opts = host.options(known_hosts=fresh)
            with pytest.raises(HostKeyUnknown, match="accept-new-host-key"):
                await connect(host.target, opts)
            assert not fresh.exists()
            opts.accept_new_host_key = True
            async with await connect(host.target, opts):
                pass
            assert host.host_public_key.split()[1] in fresh.read_text()
            async with await connect(host.target, host.options(known_hosts=fresh)):
                pass
            port = host.port
        # Same address, another host key: refused even with accept-new, before any login.
        with SshHost(port=port) as impostor:
            opts = impostor.options(known_hosts=fresh, accept_new_host_key=True)
            with pytest.raises(HostKeyChanged, match="CHANGED"):
                await connect(impostor.target, opts)
            assert "Accepted publickey" not in impostor.log.read_text()

    asyncio.run(go())


@needs_sshd
def test_wrong_client_key_and_unreachable_host(tmp_path: Path) -> None:
    async def go() -> None:
        with SshHost() as host, SshHost() as other:
            opts = host.options(identity_files=[other.client_key])
            with pytest.raises(AuthenticationFailed, match="no key was accepted"):
                await connect(host.target, opts)
        t0 = time.monotonic()
        with pytest.raises(HostUnreachable, match=r"127\.0\.0\.1"):
            await connect(SshTarget("127.0.0.1", free_port()), SshOptions(use_agent=False))
        assert time.monotonic() - t0 < 5

    asyncio.run(go())
