"""Content-file transfer (issue 12): the FileFetch core on real files, the MQTT file server and
fetcher on a real mosquitto, and the HTTP pair on a real socket."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import threading
import time
from collections.abc import Awaitable, Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from edgeagent.broker import BrokerConfig
from edgeagent.deploy.errors import DeployError, TransferError
from edgeagent.deploy.transfer import (
    CHUNK,
    ContentFile,
    FetchStats,
    FileFetch,
    missing,
    partial_dir_for,
)
from edgeagent.deploy.transfer_http import (
    FileHTTPServer,
    FileRequestHandler,
    fetch_files_http,
    fetch_files_http_async,
    parse_range,
    serve_http,
)
from edgeagent.deploy.transfer_mqtt import FileServer, fetch_files, reply_topic, request_topic
from edgeagent.transport.base import Inbound, Props
from edgeagent.transport.mqtt import MqttTransport
from tests.broker.mosquitto import Mosquitto

ROOT = "edgeagent"


def put(store: Path, data: bytes) -> ContentFile:
    """Write ``data`` into ``store`` under its hash."""
    store.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(data).hexdigest()
    (store / sha).write_bytes(data)
    return ContentFile(sha, len(data))


def blob(n: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"{seed}:{n}".encode()).digest(n) if n else b""


# FileFetch -----------------------------------------------------------------------------------

SMALL = 1024  # chunk size for the unit tests


def fetch_for(tmp_path: Path, data: bytes) -> tuple[FileFetch, Path]:
    store = tmp_path / "store"
    sha = hashlib.sha256(data).hexdigest()
    return FileFetch(sha, len(data), store, chunk=SMALL), store


def test_in_order_chunks_make_the_file(tmp_path: Path) -> None:
    data = blob(3 * SMALL + 500)
    f, store = fetch_for(tmp_path, data)
    first = f.requests(2, now=0.0)
    assert [(r.offset, r.length) for r in first] == [(0, SMALL), (SMALL, SMALL)]
    assert f.requests(2, now=0.0) == []  # the window is full
    for r in first:
        assert f.on_chunk(r.offset, data[r.offset : r.offset + r.length])
    rest = f.requests(2, now=0.0)
    assert [(r.offset, r.length) for r in rest] == [(2 * SMALL, SMALL), (3 * SMALL, 500)]
    for r in rest:
        f.on_chunk(r.offset, data[r.offset : r.offset + r.length])
    assert f.complete
    assert f.requests(2) == []
    dest = f.finish()
    assert dest == store / f.sha256
    assert dest.read_bytes() == data
    assert not f.partial.exists()
    assert f.partial.parent == partial_dir_for(store) == tmp_path / "partial"


def test_out_of_order_chunks_are_held_within_the_window(tmp_path: Path) -> None:
    data = blob(6 * SMALL, seed=1)
    f, _ = fetch_for(tmp_path, data)
    reqs = f.requests(4, now=0.0)
    for r in reversed(reqs[1:]):
        assert f.on_chunk(r.offset, data[r.offset : r.offset + r.length])
    assert f.offset == 0
    assert f.held_bytes == 3 * SMALL
    assert f.outstanding == 4
    assert f.requests(4, now=0.0) == []  # held chunks count against the window
    assert f.partial.stat().st_size == 0  # nothing written out of order
    f.on_chunk(0, data[:SMALL])
    assert f.offset == 4 * SMALL
    assert f.held_bytes == 0
    for r in f.requests(4, now=0.0):
        f.on_chunk(r.offset, data[r.offset : r.offset + r.length])
    assert f.finish().read_bytes() == data


def test_duplicates_and_unasked_chunks_are_ignored(tmp_path: Path) -> None:
    data = blob(3 * SMALL, seed=2)
    f, _ = fetch_for(tmp_path, data)
    f.requests(2, now=0.0)
    assert f.on_chunk(0, data[:SMALL])
    assert not f.on_chunk(0, data[:SMALL])  # duplicate, already written
    assert f.on_chunk(SMALL, data[SMALL : 2 * SMALL])
    assert not f.on_chunk(2 * SMALL, data[2 * SMALL :])  # never asked for
    assert not f.on_chunk(5, b"x")  # not a chunk boundary
    assert f.offset == 2 * SMALL
    assert f.received == 2 * SMALL
    assert f.partial.stat().st_size == 2 * SMALL


def test_a_chunk_of_the_wrong_length_is_refused(tmp_path: Path) -> None:
    data = blob(2 * SMALL, seed=3)
    f, _ = fetch_for(tmp_path, data)
    f.requests(2, now=0.0)
    with pytest.raises(TransferError, match=f"{f.sha256}: {SMALL + 1} bytes at offset 0"):
        f.on_chunk(0, data[:SMALL] + b"!")
    with pytest.raises(TransferError, match="asked for 1024"):
        f.on_chunk(SMALL, b"short")
    assert f.partial.stat().st_size == 0
    assert isinstance(TransferError("x"), DeployError)


def test_resume_from_a_partial_of_odd_size(tmp_path: Path) -> None:
    data = blob(5 * SMALL + 7, seed=4)
    f, store = fetch_for(tmp_path, data)
    f.close()
    f.partial.write_bytes(data[: 2 * SMALL + 300])  # cut mid-chunk (a crash while writing)
    f = FileFetch(f.sha256, len(data), store, chunk=SMALL)
    assert (f.offset, f.resumed) == (2 * SMALL, 2 * SMALL)
    assert f.partial.stat().st_size == 2 * SMALL  # truncated to a whole chunk
    reqs = f.requests(8, now=0.0)
    assert reqs[0].offset == 2 * SMALL
    assert sum(r.length for r in reqs) == len(data) - 2 * SMALL
    for r in reqs:
        f.on_chunk(r.offset, data[r.offset : r.offset + r.length])
    assert f.received == len(data) - 2 * SMALL
    assert f.finish().read_bytes() == data  # the prefix was hashed on resume


def test_a_partial_of_the_whole_size_finishes_without_requests(tmp_path: Path) -> None:
    data = blob(2 * SMALL + 1, seed=5)
    f, store = fetch_for(tmp_path, data)
    f.close()
    f.partial.write_bytes(data)
    f = FileFetch(f.sha256, len(data), store, chunk=SMALL)
    assert f.complete
    assert f.requests(4) == []
    assert f.finish().read_bytes() == data


def test_a_hash_mismatch_deletes_the_partial(tmp_path: Path) -> None:
    data = blob(2 * SMALL, seed=6)
    f, store = fetch_for(tmp_path, data)
    for r in f.requests(4, now=0.0):
        f.on_chunk(r.offset, bytes(r.length))  # right lengths, wrong bytes
    assert f.complete
    with pytest.raises(TransferError, match=f"{f.sha256}: .* not the manifest's"):
        f.finish()
    assert not f.partial.exists()
    assert not (store / f.sha256).exists()


def test_never_writes_past_the_manifest_size(tmp_path: Path) -> None:
    data = blob(SMALL + 10, seed=7)
    f, store = fetch_for(tmp_path, data)
    f.close()
    f.partial.write_bytes(data + b"junk past the end")  # not a prefix of this file
    f = FileFetch(f.sha256, len(data), store, chunk=SMALL)
    assert f.offset == 0
    assert f.partial.stat().st_size == 0
    reqs = f.requests(100, now=0.0)
    assert sum(r.length for r in reqs) == len(data)
    assert max(r.offset + r.length for r in reqs) == len(data)
    with pytest.raises(TransferError):
        f.on_chunk(SMALL, data[SMALL:] + b"more")
    f.on_chunk(0, data[:SMALL])
    f.on_chunk(SMALL, data[SMALL:])
    assert not f.on_chunk(len(data), b"beyond")
    assert f.partial.stat().st_size == len(data)
    assert f.finish().read_bytes() == data


def test_timeouts_retry_then_give_up_naming_file_and_offset(tmp_path: Path) -> None:
    data = blob(3 * SMALL, seed=8)
    f, _ = fetch_for(tmp_path, data)
    f.requests(2, now=0.0)
    assert f.timed_out(5.0, timeout=10) == []
    assert f.next_deadline(10) == 10.0
    f.on_chunk(0, data[:SMALL])
    again = f.retry(10.0, timeout=10, max_attempts=2)
    assert [(r.offset, r.attempts) for r in again] == [(SMALL, 2)]
    assert f.retry(15.0, timeout=10, max_attempts=2) == []
    with pytest.raises(TransferError, match=f"{f.sha256}: no reply .* offset {SMALL} after 2"):
        f.retry(20.0, timeout=10, max_attempts=2)


def test_requeue_and_rearm(tmp_path: Path) -> None:
    data = blob(3 * SMALL, seed=9)
    f, _ = fetch_for(tmp_path, data)
    f.requests(2, now=0.0)
    assert f.requeue(SMALL)
    assert not f.requeue(SMALL)
    assert [r.offset for r in f.requests(2, now=1.0)] == [SMALL]  # re-queued first
    assert [r.sent_at for r in f.rearm(7.0)] == [7.0, 7.0]
    assert f.timed_out(16.0, timeout=10) == []


def test_one_file_is_fetched_once_at_a_time(tmp_path: Path) -> None:
    data = blob(SMALL, seed=10)
    f, store = fetch_for(tmp_path, data)
    with pytest.raises(TransferError, match="already being fetched"):
        FileFetch(f.sha256, len(data), store)
    f.close()
    FileFetch(f.sha256, len(data), store).close()


def test_an_empty_file(tmp_path: Path) -> None:
    f, _ = fetch_for(tmp_path, b"")
    assert f.complete
    assert f.requests(4) == []
    assert f.finish().read_bytes() == b""


def test_bad_names_and_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="not a SHA-256"):
        FileFetch("../../etc/passwd", 1, tmp_path)
    with pytest.raises(TransferError, match="bad size"):
        FileFetch("a" * 64, -1, tmp_path)
    with pytest.raises(TransferError, match="chunk size"):
        FileFetch("a" * 64, 1, tmp_path, chunk=10**9)


def test_missing_lists_what_the_store_lacks(tmp_path: Path) -> None:
    store = tmp_path / "store"
    have = put(store, b"present")
    short = put(store, b"half copied file")
    (store / short.sha256).write_bytes(b"half")
    absent = ContentFile(hashlib.sha256(b"absent").hexdigest(), 6)
    files = [
        {"path": "a", "sha256": have.sha256, "size": have.size, "role": "app"},
        {"path": "b", "sha256": short.sha256, "size": short.size, "role": "app"},
        {"path": "c", "sha256": absent.sha256, "size": absent.size, "role": "model"},
        {"path": "d", "sha256": absent.sha256, "size": absent.size, "role": "model"},
    ]
    assert missing(files, store) == [short, absent]
    assert missing(files, tmp_path / "nowhere") == [have, short, absent]
    with pytest.raises(TransferError, match="not a SHA-256"):
        missing([{"sha256": "x/../y", "size": 1}], store)


# Over MQTT -----------------------------------------------------------------------------------


async def connected(url: str) -> MqttTransport:
    t = MqttTransport(BrokerConfig.from_url(url))
    await t.connect()
    return t


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        async with asyncio.timeout(60):
            return await coro

    return asyncio.run(main())


class SlowServer(FileServer):
    """Reads take a while; records how many requests it was serving at once."""

    delay = 0.02

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serving = 0
        self.most_served = 0

    async def _serve(self, msg: Inbound) -> None:
        self.serving += 1
        self.most_served = max(self.most_served, self.serving)
        try:
            await super()._serve(msg)
        finally:
            self.serving -= 1

    def _read(self, sha: str, offset: int, length: int) -> tuple[bytes, int]:
        time.sleep(self.delay)
        return super()._read(sha, offset, length)


def several_files(store: Path) -> list[ContentFile]:
    return [
        put(store, blob(1024 * 1024 + 555, seed=1)),  # > 1 MiB, not a whole number of chunks
        put(store, b""),
        put(store, blob(CHUNK, seed=2)),  # exactly one chunk
        put(store, blob(1, seed=3)),
        put(store, blob(200_000, seed=4)),
    ]


@pytest.mark.broker
def test_fetch_over_mqtt_is_byte_identical(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "bundle" / "files"
    files = several_files(served)
    store = tmp_path / "device" / "store"
    already = put(store, blob(999, seed=5))
    put(served, blob(999, seed=5))
    seen: list[tuple[int, int]] = []

    async def main() -> tuple[FetchStats, int]:
        op, dev = await connected(broker_url), await connected(broker_url)
        try:
            async with FileServer(op, [tmp_path / "empty", served], fleet=fleet_name) as server:
                stats = await fetch_files(
                    dev,
                    fleet=fleet_name,
                    device="lamp-1",
                    server="operator",
                    files=[*files, already, files[0]],
                    store=store,
                    progress=lambda d, t: seen.append((d, t)),
                )
                return stats, server.stats.bytes_served
        finally:
            await dev.close()
            await op.close()

    stats, served_bytes = run(main())
    total = sum(f.size for f in files)
    for f in files:
        assert (store / f.sha256).read_bytes() == (served / f.sha256).read_bytes()
    assert (stats.files, stats.skipped, stats.bytes, stats.resumed_bytes) == (5, 1, total, 0)
    assert served_bytes == total
    assert stats.retries == 0
    assert sorted(stats.paths) == sorted(store / f.sha256 for f in files)
    assert seen[-1] == (total + already.size, total + already.size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list((tmp_path / "device" / "partial").iterdir()) == []


@pytest.mark.broker
def test_the_device_keeps_at_most_the_window_outstanding(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    files = [put(served, blob(40_000, seed=i)) for i in range(4)]

    async def main() -> int:
        op, dev = await connected(broker_url), await connected(broker_url)
        try:
            server = SlowServer(op, [served], fleet=fleet_name, max_concurrent=16)
            async with server:
                await fetch_files(
                    dev, fleet=fleet_name, device="d", server="operator", files=files,
                    store=tmp_path / "store", window=3, chunk=8192,
                )  # fmt: skip
            return server.most_served
        finally:
            await dev.close()
            await op.close()

    most = run(main())
    assert 2 <= most <= 3
    for f in files:
        assert (tmp_path / "store" / f.sha256).read_bytes() == (served / f.sha256).read_bytes()


@pytest.mark.broker
def test_resume_after_the_connection_is_dropped(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    big = put(served, blob(1024 * 1024 + 1000, seed=11))
    store = tmp_path / "store"
    partial = partial_dir_for(store) / big.sha256
    kw: dict[str, Any] = dict(fleet=fleet_name, device="d1", server="operator", store=store)

    async def main() -> tuple[int, FetchStats, int]:
        op, dev = await connected(broker_url), await connected(broker_url)
        closing: list[asyncio.Task[None]] = []

        def drop(done: int, total: int) -> None:
            if done >= total // 2 and not closing:
                closing.append(asyncio.get_running_loop().create_task(dev.close()))

        try:
            async with FileServer(op, [served], fleet=fleet_name) as server:
                with pytest.raises(TransferError, match=f"{big.sha256}: no reply"):
                    await fetch_files(
                        dev, files=[big], timeout=0.3, max_attempts=2, progress=drop, **kw
                    )
                await closing[0]
                assert not (store / big.sha256).exists()
                await asyncio.sleep(0.3)  # the requests in flight are served all the same
                before, kept = server.stats.bytes_served, partial.stat().st_size
                dev2 = await connected(broker_url)
                try:
                    stats = await fetch_files(dev2, files=[big], **kw)
                finally:
                    await dev2.close()
                return kept, stats, server.stats.bytes_served - before
        finally:
            await op.close()

    kept, stats, served_again = run(main())
    assert big.size // 2 <= kept < big.size
    assert kept % CHUNK == 0
    assert stats.resumed_bytes == kept
    assert stats.bytes == big.size - kept == served_again
    assert (store / big.sha256).read_bytes() == (served / big.sha256).read_bytes()
    assert not partial.exists()


@pytest.mark.broker
def test_a_broker_restart_mid_transfer_loses_nothing(
    restartable_broker: Mosquitto, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    files = [put(served, blob(600_000, seed=12)), put(served, blob(300_000, seed=13))]
    url = restartable_broker.url

    async def main() -> FetchStats:
        op, dev = await connected(url), await connected(url)
        restarted: list[asyncio.Task[None]] = []

        def bounce(done: int, total: int) -> None:
            if done >= total // 3 and not restarted:
                restarted.append(
                    asyncio.get_running_loop().create_task(
                        asyncio.to_thread(restartable_broker.restart, 0.3)
                    )
                )

        try:
            async with FileServer(op, [served], fleet=fleet_name):
                stats = await fetch_files(
                    dev, fleet=fleet_name, device="d", server="operator", files=files,
                    store=tmp_path / "store", timeout=10.0, progress=bounce,
                )  # fmt: skip
            await restarted[0]
            assert dev.statistics().connects == 2
            return stats
        finally:
            await dev.close()
            await op.close()

    stats = run(main())
    assert stats.files == 2
    assert stats.retries >= 1
    assert stats.seconds < 8  # asked again on reconnecting, not after the 10 s timeout
    for f in files:
        assert (tmp_path / "store" / f.sha256).read_bytes() == (served / f.sha256).read_bytes()


@pytest.mark.broker
def test_a_server_that_comes_late_is_found_by_a_probe(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    f = put(served, blob(300_000, seed=25))

    async def main() -> tuple[FetchStats, FileServer]:
        op, dev = await connected(broker_url), await connected(broker_url)
        server = FileServer(op, [served], fleet=fleet_name)

        async def late() -> None:
            await asyncio.sleep(1.5)  # the first requests go nowhere
            await server.start()

        starting = asyncio.create_task(late())
        try:
            stats = await fetch_files(
                dev, fleet=fleet_name, device="d", server="operator", files=[f],
                store=tmp_path / "store", timeout=10.0,
            )  # fmt: skip
            await starting
            return stats, server
        finally:
            await server.stop()
            await dev.close()
            await op.close()

    stats, server = run(main())
    assert stats.seconds < 8  # found by a probe, not after the 10 s timeout
    assert stats.retries >= 1  # the lost requests were asked for again
    assert server.stats.chunks_served >= 5 + 1  # five chunks and at least one probe
    assert server.stats.bytes_served < f.size + 10  # no chunk served twice
    assert (tmp_path / "store" / f.sha256).read_bytes() == (served / f.sha256).read_bytes()


@pytest.mark.broker
def test_a_file_server_restart_mid_transfer(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    big = put(served, blob(700_000, seed=14))

    async def main() -> tuple[FetchStats, FileServer, FileServer]:
        op, dev = await connected(broker_url), await connected(broker_url)
        first = FileServer(op, [served], fleet=fleet_name)
        servers: list[FileServer] = [first]

        async def restart() -> None:
            await first.stop()
            await asyncio.sleep(0.5)
            second = FileServer(op, [served], fleet=fleet_name)
            await second.start()
            servers.append(second)

        tasks: list[asyncio.Task[None]] = []

        def on_progress(done: int, total: int) -> None:
            if done >= total // 3 and not tasks:
                tasks.append(asyncio.get_running_loop().create_task(restart()))

        await first.start()
        try:
            stats = await fetch_files(
                dev, fleet=fleet_name, device="d", server="operator", files=[big],
                store=tmp_path / "store", timeout=0.3, max_attempts=10, progress=on_progress,
            )  # fmt: skip
            await tasks[0]
            return stats, first, servers[1]
        finally:
            for s in servers:
                await s.stop()
            await dev.close()
            await op.close()

    stats, first, second = run(main())
    assert stats.retries >= 1
    assert first.stats.bytes_served < big.size
    assert second.stats.bytes_served > 0
    assert (tmp_path / "store" / big.sha256).read_bytes() == (served / big.sha256).read_bytes()


@pytest.mark.broker
def test_hostile_requests_get_errors_and_the_server_keeps_serving(
    broker_url: str, fleet_name: str, tmp_path: Path
) -> None:
    served = tmp_path / "files"
    good = put(served, blob(5000, seed=15))
    unknown = hashlib.sha256(b"nobody has this").hexdigest()
    bad: dict[str, bytes] = {
        "not JSON": b"{not json",
        "not a JSON object": b"[1, 2]",
        "huge length": json.dumps({"sha256": good.sha256, "offset": 0, "length": 10**9}).encode(),
        "zero length": json.dumps({"sha256": good.sha256, "offset": 0, "length": 0}).encode(),
        "negative offset": json.dumps({"sha256": good.sha256, "offset": -1, "length": 9}).encode(),
        "bool offset": json.dumps({"sha256": good.sha256, "offset": True, "length": 9}).encode(),
        "path-like sha": json.dumps(
            {"sha256": "../../../etc/passwd", "offset": 0, "length": 9}
        ).encode(),
        "unknown file": json.dumps({"sha256": unknown, "offset": 0, "length": 9}).encode(),
        "offset past end": json.dumps(
            {"sha256": good.sha256, "offset": 5001, "length": 9}
        ).encode(),
        "oversized request": b" " * 5000,
    }
    expected = {
        "not JSON": "not JSON",
        "not a JSON object": "not a JSON object",
        "huge length": "length 1000000000: must be 1 to 262144",
        "zero length": "length 0: must be 1",
        "negative offset": "offset -1 is not an integer",
        "bool offset": "offset True is not an integer",
        "path-like sha": "is not 64 lowercase hex",
        "unknown file": "no such file on server operator",
        "offset past end": "past the end (5000 bytes)",
        "oversized request": "more than 1024",
    }

    async def main() -> tuple[dict[str, Inbound], list[Inbound], Inbound, FileServer]:
        op, raw = await connected(broker_url), await connected(broker_url)
        replies: dict[bytes, Inbound] = {}
        elsewhere: list[Inbound] = []
        got = asyncio.Event()

        def on_reply(msg: Inbound) -> None:
            replies[msg.props.correlation_data or b""] = msg
            got.set()

        reply = reply_topic(ROOT, fleet_name, "evil")
        await raw.subscribe(reply, on_reply, qos=1)
        await raw.subscribe(f"{fleet_name}/elsewhere", elsewhere.append, qos=1)
        topic = request_topic(ROOT, fleet_name, "operator")
        try:
            async with FileServer(op, [served], fleet=fleet_name) as server:
                for name, payload in bad.items():
                    props = Props(response_topic=reply, correlation_data=name.encode())
                    await raw.publish(topic, payload, qos=1, props=props)
                # No usable response topic: nothing can be answered, the request is dropped.
                req = json.dumps({"sha256": good.sha256, "offset": 0, "length": 10}).encode()
                for rt in (f"{fleet_name}/elsewhere", None):
                    props = Props(response_topic=rt, correlation_data=b"x")
                    await raw.publish(topic, req, qos=1, props=props)
                props = Props(response_topic=reply, correlation_data=b"good")
                await raw.publish(topic, req, qos=1, props=props)
                async with asyncio.timeout(10):
                    while len(replies) < len(bad) + 1:
                        got.clear()
                        await got.wait()
                await asyncio.sleep(0.2)
                return (
                    {k.decode(): v for k, v in replies.items() if k != b"good"},
                    elsewhere,
                    replies[b"good"],
                    server,
                )
        finally:
            await raw.close()
            await op.close()

    errors, elsewhere, ok, server = run(main())
    assert set(errors) == set(bad)
    for name, msg in errors.items():
        assert msg.payload == b"", name
        assert expected[name] in (msg.props.user_property("error") or ""), name
    assert elsewhere == []
    assert ok.payload == blob(5000, seed=15)[:10]
    assert ok.props.user_property("error") is None
    assert (ok.props.user_property("sha256"), ok.props.user_property("size")) == (
        good.sha256,
        "5000",
    )
    assert (server.stats.errors, server.stats.dropped, server.stats.chunks_served) == (10, 2, 1)
    assert server.stats.requests == 13


@pytest.mark.broker
def test_a_busy_server_is_asked_again(broker_url: str, fleet_name: str, tmp_path: Path) -> None:
    served = tmp_path / "files"
    f = put(served, blob(50_000, seed=16))

    async def main() -> tuple[FetchStats, FileServer]:
        op, dev = await connected(broker_url), await connected(broker_url)
        try:
            server = SlowServer(op, [served], fleet=fleet_name, max_concurrent=1, max_queued=1)
            async with server:
                stats = await fetch_files(
                    dev, fleet=fleet_name, device="d", server="operator", files=[f],
                    store=tmp_path / "store", window=8, chunk=8192,
                )  # fmt: skip
            return stats, server
        finally:
            await dev.close()
            await op.close()

    stats, server = run(main())
    assert server.stats.busy > 0
    assert stats.retries >= server.stats.busy
    assert (tmp_path / "store" / f.sha256).read_bytes() == (served / f.sha256).read_bytes()


@pytest.mark.broker
@pytest.mark.parametrize("lie", ["bytes", "size"])
def test_a_lying_server_fails_the_fetch_and_leaves_nothing(
    broker_url: str, fleet_name: str, tmp_path: Path, lie: str
) -> None:
    real = blob(150_000, seed=17)
    sha = hashlib.sha256(real).hexdigest()
    served = tmp_path / "files"
    served.mkdir()
    (served / sha).write_bytes(blob(150_000, seed=18) if lie == "bytes" else real + b"extra")
    store = tmp_path / "store"

    async def main() -> None:
        op, dev = await connected(broker_url), await connected(broker_url)
        try:
            async with FileServer(op, [served], fleet=fleet_name):
                await fetch_files(
                    dev, fleet=fleet_name, device="d", server="operator",
                    files=[(sha, len(real))], store=store,
                )  # fmt: skip
        finally:
            await dev.close()
            await op.close()

    want = "not the manifest's" if lie == "bytes" else "150005 bytes, the manifest says 150000"
    with pytest.raises(TransferError, match=want) as info:
        run(main())
    assert sha in str(info.value)
    assert not (store / sha).exists()
    assert not (partial_dir_for(store) / sha).exists()


# Over HTTP -----------------------------------------------------------------------------------


def test_fetch_over_http_is_byte_identical(tmp_path: Path) -> None:
    served = tmp_path / "files"
    files = several_files(served)
    store = tmp_path / "store"
    seen: list[tuple[int, int]] = []
    with serve_http([served]) as srv:
        stats = fetch_files_http(
            srv.url + "/", files, store, progress=lambda d, t: seen.append((d, t))
        )
        again = asyncio.run(fetch_files_http_async(srv.url, files, store))
    total = sum(f.size for f in files)
    for f in files:
        assert (store / f.sha256).read_bytes() == (served / f.sha256).read_bytes()
    assert (stats.files, stats.bytes, stats.retries) == (5, total, 0)
    assert stats.requests == 4  # the empty file needs no request
    assert srv.stats.bytes_served == total
    assert seen[-1] == (total, total)
    assert (again.files, again.skipped, again.bytes) == (0, 5, 0)


def test_http_resumes_with_a_range(tmp_path: Path) -> None:
    served = tmp_path / "files"
    big = put(served, blob(1024 * 1024 + 77, seed=19))
    store = tmp_path / "store"
    partial = partial_dir_for(store) / big.sha256
    partial.parent.mkdir(parents=True)
    partial.write_bytes((served / big.sha256).read_bytes()[: 5 * CHUNK + 1234])
    with serve_http([served]) as srv:
        stats = fetch_files_http(srv.url, [big], store)
    assert stats.resumed_bytes == 5 * CHUNK
    assert stats.bytes == big.size - 5 * CHUNK == srv.stats.bytes_served
    assert (store / big.sha256).read_bytes() == (served / big.sha256).read_bytes()


def test_http_resumes_a_broken_download(tmp_path: Path) -> None:
    served = tmp_path / "files"
    big = put(served, blob(600_000, seed=20))
    broken: list[str] = []

    class Breaks(FileRequestHandler):
        def do_GET(self) -> None:
            if broken:
                return super().do_GET()
            broken.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(big.size))
            self.end_headers()
            self.wfile.write((served / big.sha256).read_bytes()[:300_000])
            self.close_connection = True

    with serve_http([served]) as srv:
        srv.RequestHandlerClass = Breaks
        stats = fetch_files_http(srv.url, [big], tmp_path / "store")
    assert broken
    assert stats.retries == 1
    assert stats.requests == 2
    assert srv.stats.bytes_served == big.size - 4 * CHUNK  # resumed at 4 whole chunks
    assert (tmp_path / "store" / big.sha256).read_bytes() == (served / big.sha256).read_bytes()


def test_http_server_that_ignores_ranges_is_read_from_the_start(tmp_path: Path) -> None:
    served = tmp_path / "files"
    big = put(served, blob(300_000, seed=21))
    store = tmp_path / "store"
    partial = partial_dir_for(store) / big.sha256
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 2 * CHUNK)  # garbage that a range request would have kept
    plain = ThreadingHTTPServer(
        ("127.0.0.1", 0), partial_factory(SimpleHTTPRequestHandler, directory=str(served))
    )
    thread = threading.Thread(target=plain.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{plain.server_address[1]}"
        stats = fetch_files_http(url, [big], store)
    finally:
        plain.shutdown()
        plain.server_close()
    assert stats.resumed_bytes == 2 * CHUNK
    assert stats.bytes == big.size
    assert (store / big.sha256).read_bytes() == (served / big.sha256).read_bytes()


def partial_factory(cls: type[SimpleHTTPRequestHandler], **kw: Any) -> Callable[..., Any]:
    class Quiet(cls):  # type: ignore[valid-type,misc]
        def log_message(self, *args: Any) -> None:
            pass

    return partial(Quiet, **kw)


def test_http_404_and_a_lying_server(tmp_path: Path) -> None:
    served = tmp_path / "files"
    real = blob(70_000, seed=22)
    sha = hashlib.sha256(real).hexdigest()
    served.mkdir()
    (served / sha).write_bytes(blob(70_000, seed=23))
    unknown = hashlib.sha256(b"unknown").hexdigest()
    store = tmp_path / "store"
    with serve_http([served]) as srv:
        with pytest.raises(TransferError, match=f"{unknown}: not on the server .*HTTP 404"):
            fetch_files_http(srv.url, [(unknown, 5)], store)
        with pytest.raises(TransferError, match=f"{sha}: .*not the manifest's"):
            fetch_files_http(srv.url, [(sha, len(real))], store)
        with pytest.raises(TransferError, match="has 70000 bytes, the manifest says 9"):
            fetch_files_http(srv.url, [(sha, 9)], store)
    assert not (store / sha).exists()
    assert not (partial_dir_for(store) / sha).exists()
    with pytest.raises(TransferError, match="only http"):
        fetch_files_http(f"file://{served}", [(sha, 1)], store)


def test_http_server_serves_only_content_names(tmp_path: Path) -> None:
    served = tmp_path / "files"
    f = put(served, blob(1000, seed=24))
    (served / ("b" * 64)).symlink_to("/etc/hostname")
    with serve_http([served]) as srv:
        host, port = srv.server_address[:2]

        def get(path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
            conn = http.client.HTTPConnection(str(host), port, timeout=5)
            try:
                conn.request("GET", path, headers=headers or {})
                resp = conn.getresponse()
                return resp.status, resp.read(), resp.headers
            finally:
                conn.close()

        for path in ("/", "/../etc/passwd", f"/{f.sha256.upper()}", f"/x/{f.sha256}",
                     "/" + "b" * 64, f"/{f.sha256}/"):  # fmt: skip
            assert get(path)[0] == 404, path
        status, body, headers = get(f"/{f.sha256}", {"Range": "bytes=990-"})
        assert (status, body) == (206, blob(1000, seed=24)[990:])
        assert headers["Content-Range"] == "bytes 990-999/1000"
        assert get(f"/{f.sha256}", {"Range": "bytes=1000-"})[0] == 416
        status, body, _ = get(f"/{f.sha256}?q=1")
        assert (status, len(body)) == (200, 1000)
    assert srv.stats.not_found == 6


@pytest.mark.parametrize(
    ("header", "size", "want"),
    [
        ("bytes=0-", 10, (0, 9)),
        ("bytes=3-5", 10, (3, 5)),
        ("bytes=3-500", 10, (3, 9)),
        ("bytes=-4", 10, (6, 9)),
        ("bytes=-40", 10, (0, 9)),
        ("bytes=10-", 10, False),
        ("bytes=-0", 10, False),
        ("bytes=0-", 0, False),
        ("bytes=5-3", 10, None),
        ("bytes=0-1,4-5", 10, None),
        ("items=0-1", 10, None),
        ("bytes=-", 10, None),
    ],
)
def test_parse_range(header: str, size: int, want: object) -> None:
    assert parse_range(header, size) == want


def test_file_http_server_refuses_no_stores() -> None:
    with pytest.raises(TransferError):
        FileHTTPServer([])
