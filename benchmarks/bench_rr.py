"""Request/response over MQTT 5: edgeagent's ``Fleet.call`` against bare paho-mqtt.

One run, one private mosquitto, one payload (``--payload`` bytes, default 128), three requesters:

1. **raw paho** (the baseline): a paho responder process (``loop_forever``; it publishes the
   request payload back to the Response Topic with the Correlation Data) and a paho requester in
   this process, driven single-threaded with ``Client.loop()``. Sequentially it publishes outside
   any callback (so paho writes straight to the socket) and loops until the reply; pipelined, each
   reply's callback publishes the next request, matched by Correlation Data.
2. **edgeagent**: the ``echo`` skill served by a real ``edgeagent agent run`` subprocess, called
   with ``Fleet.call`` from this process (asyncio): sequentially, then from ``--inflight`` tasks.
3. **aiomqtt** (for information): an aiomqtt requester against the same paho responder.

Sequential: p50/p99 latency of ``--calls`` calls after a warm-up. Pipelined: calls/s with
``--inflight`` calls always outstanding (a closed loop: each reply lets one more call go).
Each measurement is repeated ``--rounds`` times, interleaved and in rotating order, and the median
of each metric over the rounds is reported, because small machines are noisy. The CPU time used
per call by this process, the broker and the responding process (from ``/proc``) is reported too:
it is steadier than wall-clock rates when other work shares the machine.

    python benchmarks/bench_rr.py [--calls 3000] [--inflight 64] [--payload 128] [--rounds 5]
                                  [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import Fleet  # type: ignore[import-not-found, unused-ignore]

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common

REPO = Path(__file__).resolve().parents[1]
ECHO_CONFIG = REPO / "examples" / "smart-home" / "echo.yaml"
DEVICE = "echo-1"
SKILL = "echo"
RAW_REQUEST_TOPIC = "bench/raw/req"
TARGET_P50_RATIO = 1.5
TARGET_TPUT_RATIO = 0.7
CALL_TIMEOUT_S = 10.0

Sample = common.Sample
CpuMeter = common.CpuMeter


# The paho responder (a separate process) ---------------------------------------------------------


def run_responder(host: str, port: int, topic: str) -> None:
    """Echo every request to its Response Topic with its Correlation Data, forever."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"bench-responder-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )

    def on_connect(c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        c.subscribe(topic, qos=0)

    def on_subscribe(_c: mqtt.Client, _ud: Any, _mid: int, _codes: Any, _props: Any) -> None:
        print("ready", flush=True)

    def on_message(c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        response_topic: str | None = getattr(msg.properties, "ResponseTopic", None)
        if not response_topic:
            return
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is not None:
            props.CorrelationData = corr
        c.publish(response_topic, msg.payload, qos=0, properties=props)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_forever()


# Processes ---------------------------------------------------------------------------------------


@contextmanager
def responder_process(host: str, port: int) -> Iterator[subprocess.Popen[str]]:
    """This script as the paho responder (``--responder``), ready to answer."""
    with common.script_process(__file__, "--responder", f"{host}:{port}") as proc:
        yield proc


# Requester 1: raw paho ---------------------------------------------------------------------------


class RawRequester:
    """A bare paho MQTT 5 requester, single-threaded: this thread drives ``Client.loop()``."""

    request_topic = RAW_REQUEST_TOPIC
    """Where requests go (a subclass may point it at a relay)."""

    def __init__(self, host: str, port: int, payload: bytes) -> None:
        self.payload = payload
        client_id = f"bench-raw-{uuid.uuid4().hex[:8]}"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        self.reply_topic = f"bench/raw/reply/{client_id}"
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self._subscribed = False
        self._next = 0
        self._sent: dict[bytes, float] = {}
        self._received = 0
        self._to_send = 0
        self._pipelined = False
        self._last_reply: bytes = b""
        self.client.connect(host, port, keepalive=60)
        self.client.subscribe(self.reply_topic, qos=0)
        self._loop_until(lambda: self._subscribed)

    def close(self) -> None:
        self.client.disconnect()
        self._loop_until(lambda: self.client.socket() is None, timeout=2.0, strict=False)

    def _loop_until(
        self, done: Callable[[], bool], timeout: float = CALL_TIMEOUT_S, strict: bool = True
    ) -> None:
        deadline = common.CLOCK.monotonic() + timeout
        while not done():
            if common.CLOCK.monotonic() > deadline:
                if strict:
                    raise TimeoutError("raw paho requester timed out")
                return
            self.client.loop(timeout=1.0)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed = True

    def _props(self) -> tuple[bytes, Properties]:
        self._next += 1
        corr = self._next.to_bytes(8, "big")
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ResponseTopic = self.reply_topic
        props.CorrelationData = corr
        return corr, props

    def _send(self) -> None:
        corr, props = self._props()
        self._sent[corr] = time.perf_counter()
        self.client.publish(self.request_topic, self.payload, qos=0, properties=props)

    def _on_message(self, _c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        corr = getattr(msg.properties, "CorrelationData", None)
        if corr is None or self._sent.pop(corr, None) is None:
            return
        self._received += 1
        self._last_reply = bytes(msg.payload)
        if self._pipelined and self._to_send > 0:
            self._to_send -= 1
            self._send()  # inside paho's callback: queued, written by the next loop()

    def sequential(self, calls: int) -> list[float]:
        """``calls`` calls one after another; returns each call's latency in seconds."""
        self._pipelined = False
        latencies = []
        for _ in range(calls):
            corr, props = self._props()
            want = self._received + 1
            t0 = time.perf_counter()
            self._sent[corr] = t0
            self.client.publish(self.request_topic, self.payload, qos=0, properties=props)
            while self._received < want:
                self.client.loop(timeout=CALL_TIMEOUT_S)
            latencies.append(time.perf_counter() - t0)
        if self._last_reply != self.payload:
            raise RuntimeError("raw responder replied with a different payload")
        return latencies

    def pipelined(self, calls: int, inflight: int) -> float:
        """``calls`` calls, ``inflight`` outstanding at all times; returns calls per second."""
        self._pipelined = True
        start_received = self._received
        first = min(inflight, calls)
        self._to_send = calls - first
        t0 = time.perf_counter()
        for _ in range(first):
            self._send()
        self._loop_until(lambda: self._received - start_received >= calls, timeout=120.0)
        elapsed = time.perf_counter() - t0
        self._pipelined = False
        return calls / elapsed


def measure_raw(host: str, port: int, payload: bytes, load: common.Load, meter: CpuMeter) -> Sample:
    requester = RawRequester(host, port, payload)
    try:
        return common.measure_requester(requester, load, meter)
    finally:
        requester.close()


# Requester 2: edgeagent Fleet.call ---------------------------------------------------------------


async def measure_edgeagent(url: str, payload: bytes, load: common.Load, meter: CpuMeter) -> Sample:
    expected = json.loads(payload)["data"]
    async with Fleet(url, fleet="home") as fleet:

        async def call() -> None:
            await fleet.call(DEVICE, SKILL, payload, timeout=CALL_TIMEOUT_S)

        if await fleet.call(DEVICE, SKILL, payload, timeout=CALL_TIMEOUT_S) != expected:
            raise RuntimeError("echo skill replied with a different string")
        return await common.measure_calls(call, load, meter)


# Requester 3: aiomqtt ----------------------------------------------------------------------------


async def measure_aiomqtt(
    host: str, port: int, payload: bytes, load: common.Load, meter: CpuMeter
) -> Sample:
    client_id = f"bench-aio-{uuid.uuid4().hex[:8]}"
    reply_topic = f"bench/raw/reply/{client_id}"
    pending: dict[bytes, asyncio.Future[None]] = {}
    counter = 0
    # aiomqtt warns about "pending publish calls" whenever more than 10 are queued.
    quiet = logging.getLogger("bench.aiomqtt")
    quiet.setLevel(logging.ERROR)
    async with aiomqtt.Client(
        host, port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5, logger=quiet
    ) as client:
        await client.subscribe(reply_topic, qos=0)

        async def read_replies() -> None:
            async for message in client.messages:
                corr = getattr(message.properties, "CorrelationData", None)
                fut = pending.pop(corr, None) if corr is not None else None
                if fut is not None and not fut.done():
                    fut.set_result(None)

        reader = asyncio.create_task(read_replies())
        loop = asyncio.get_running_loop()

        async def call() -> None:
            nonlocal counter
            counter += 1
            corr = counter.to_bytes(8, "big")
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ResponseTopic = reply_topic
            props.CorrelationData = corr
            fut: asyncio.Future[None] = loop.create_future()
            pending[corr] = fut
            await client.publish(RAW_REQUEST_TOPIC, payload, qos=0, properties=props)
            async with common.CLOCK.timeout(CALL_TIMEOUT_S):
                await fut

        try:
            return await common.measure_calls(call, load, meter)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


# Orchestration -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    payload = common.echo_payload(args.payload)
    load = common.Load.from_args(args)
    started = common.CLOCK.monotonic()
    with (
        tempfile.TemporaryFile() as agent_log,
        common.private_broker() as broker,
        responder_process("127.0.0.1", broker.port) as responder,
        common.spawn(common.agent_command(broker.url, ECHO_CONFIG), agent_log) as agent,
    ):
        assert broker.proc is not None
        raw_meter = CpuMeter({"broker": broker.proc.pid, "server": responder.pid})
        agent_meter = CpuMeter({"broker": broker.proc.pid, "server": agent.pid})
        try:
            asyncio.run(common.wait_online(broker.url, "home", (DEVICE,)))
        except TimeoutError:
            agent_log.seek(0)
            sys.stderr.write(agent_log.read().decode(errors="replace"))
            raise SystemExit("the edgeagent echo agent did not come online") from None
        measures: dict[str, Callable[[], Sample]] = {
            "raw_paho": lambda: measure_raw("127.0.0.1", broker.port, payload, load, raw_meter),
            "edgeagent": lambda: asyncio.run(
                measure_edgeagent(broker.url, payload, load, agent_meter)
            ),
            "aiomqtt": lambda: asyncio.run(
                measure_aiomqtt("127.0.0.1", broker.port, payload, load, raw_meter)
            ),
        }
        if args.no_aiomqtt:
            del measures["aiomqtt"]

        def on_sample(r: int, name: str, sample: Sample) -> None:
            line = f"round {r + 1}/{args.rounds} {name:<9} {_fmt_sample(sample)}"
            common.progress(args.quiet, line)

        def agent_alive(_round: int) -> None:
            if agent.poll() is not None:
                raise SystemExit(f"the edgeagent agent exited with {agent.returncode}")

        rounds = common.run_rounds(
            measures, args.rounds, on_sample=on_sample, after_round=agent_alive
        )
    results = {name: common.summarize(samples) for name, samples in rounds.items()}
    raw, edge = results["raw_paho"], results["edgeagent"]
    p50_ratio = edge.p50_us / raw.p50_us
    tput_ratio = edge.calls_per_s / raw.calls_per_s
    return {
        "machine": common.machine_info(),
        "code": common.code_state(),
        "config": {
            "calls": args.calls,
            "warmup": args.warmup,
            "inflight": args.inflight,
            "payload_bytes": args.payload,
            "rounds": args.rounds,
        },
        "results": {name: asdict(s) for name, s in results.items()},
        "ratios": {
            "edgeagent_p50_over_raw_p50": round(p50_ratio, 3),
            "edgeagent_p50_target_max": TARGET_P50_RATIO,
            "edgeagent_p50_ok": p50_ratio <= TARGET_P50_RATIO,
            "edgeagent_tput_over_raw_tput": round(tput_ratio, 3),
            "edgeagent_tput_target_min": TARGET_TPUT_RATIO,
            "edgeagent_tput_ok": tput_ratio >= TARGET_TPUT_RATIO,
        },
        "elapsed_s": round(common.CLOCK.monotonic() - started, 1),
    }


def _fmt_sample(s: Sample) -> str:
    c = s.cpu_pipelined
    return (
        f"p50 {s.p50_us:6.0f} µs  p99 {s.p99_us:6.0f} µs  {s.calls_per_s:6.0f} calls/s  "
        f"cpu/call {c['requester']:4.0f}+{c['broker']:3.0f}+{c['server']:4.0f} µs"
    )


def _fmt_cpu(c: dict[str, float]) -> str:
    return f"{c['requester']:.0f} + {c['broker']:.0f} + {c['server']:.0f}"


LABELS = {
    "raw_paho": "raw paho ↔ paho (baseline)",
    "edgeagent": "edgeagent Fleet.call ↔ agent",
    "aiomqtt": "aiomqtt ↔ paho (info)",
}


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    m = report["machine"]
    print(
        f"{m['cpus']} × {m['cpu_model']}, Python {m['python']}, paho-mqtt {m['paho_mqtt']}, "
        f"mosquitto {m['mosquitto']}"
    )
    print(
        f"{cfg['calls']} calls per measurement ({cfg['warmup']} warm-up), "
        f"{cfg['payload_bytes']}-byte payload, {cfg['inflight']} in flight, "
        f"median of {cfg['rounds']} rounds"
    )
    print()
    header = (
        f"{'requester':<30} {'p50 µs':>7} {'p99 µs':>7} {'mean µs':>7} {'calls/s':>8}"
        f"  {'CPU µs/call, seq':>18}  {'CPU µs/call, pipelined':>22}"
    )
    print(header)
    print(f"{'':<63}{'req + broker + server':>20}{'req + broker + server':>24}")
    print("-" * len(header))
    raw = report["results"]["raw_paho"]
    for name, res in report["results"].items():
        print(
            f"{LABELS[name]:<30} {res['p50_us']:7.0f} {res['p99_us']:7.0f} "
            f"{res['mean_us']:7.0f} {res['calls_per_s']:8.0f}  "
            f"{_fmt_cpu(res['cpu_sequential']):>18}  {_fmt_cpu(res['cpu_pipelined']):>22}"
        )
    print()
    print("per round (p50 µs / calls/s):")
    for name, res in report["results"].items():
        cells = "  ".join(f"{r['p50_us']:5.0f} / {r['calls_per_s']:5.0f}" for r in res["rounds"])
        print(f"  {name:<10} {cells}")
    print()
    for name, res in report["results"].items():
        if name != "raw_paho":
            print(
                f"{name} / raw: p50 ×{res['p50_us'] / raw['p50_us']:.2f}, "
                f"p99 ×{res['p99_us'] / raw['p99_us']:.2f}, "
                f"throughput ×{res['calls_per_s'] / raw['calls_per_s']:.2f}"
            )
    r = report["ratios"]
    print()
    print(
        f"edgeagent p50 / raw p50               = {r['edgeagent_p50_over_raw_p50']:.2f}  "
        f"(target ≤ {r['edgeagent_p50_target_max']})  "
        f"{'OK' if r['edgeagent_p50_ok'] else 'MISSED'}"
    )
    print(
        f"edgeagent throughput / raw throughput = {r['edgeagent_tput_over_raw_tput']:.2f}  "
        f"(target ≥ {r['edgeagent_tput_target_min']})  "
        f"{'OK' if r['edgeagent_tput_ok'] else 'MISSED'}"
    )
    print(f"(whole run {report['elapsed_s']} s)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000, help="calls per measurement")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up calls per measurement")
    parser.add_argument("--inflight", type=int, default=64, help="outstanding calls, pipelined")
    parser.add_argument("--payload", type=int, default=128, help="request payload size, bytes")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    parser.add_argument("--no-aiomqtt", action="store_true", help="skip the aiomqtt requester")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress on stderr")
    parser.add_argument("--responder", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.calls < 1 or args.inflight < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--calls, --warmup, --inflight and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.responder:
        host, _, port = args.responder.rpartition(":")
        run_responder(host, int(port), RAW_REQUEST_TOPIC)
        return
    report = run(args)
    if args.json:
        common.print_json(report)
    else:
        print_table(report)


if __name__ == "__main__":
    main()
