"""LLM: the ``generate`` skill against the bare onnxruntime-genai loop, in one run.

The question: what does serving a language model as an edgeagent skill cost in decoding speed and
first-token latency, against the loop one would write by hand on the runtime? Target: the skill
decodes at >= 0.95x the bare loop's tokens/s.

Paths, all generating greedily the same chat request (``--max-tokens``, default 64) with the same
threads (``--threads``, default 1):

1. **bare**: ``og.Model`` (threads set by the same ``og.Config`` overlay), ``og.Tokenizer``; per
   call ``apply_chat_template``, ``encode``, ``Generator.append_tokens``, then
   ``generate_next_token`` / ``get_next_tokens`` / ``TokenizerStream.decode`` per token, here.
2. **session**: ``LlmSession.generate`` in this process (stop-sequence scanning, bounds, stats).
3. **skill, model in a thread** / **skill, model process**: ``LlmSkillSet.generate`` awaited on
   an event loop here (``partial`` events every 100 ms, recorded), as the agent runs it, with the
   model loaded in this process (``isolate: false``) or in its own process (the default). While
   each generation runs, a task sleeping 10 ms at a time records how late the loop wakes it (the
   "loop stall": what every other skill of the agent waits; onnxruntime-genai holds the GIL).
4. **skill over MQTT**: ``Fleet.call(..., "generate")`` through a private mosquitto to an
   ``edgeagent agent run`` subprocess serving the skill; the first token is the first ``partial``
   event the caller receives (an MQTT hop included).

For every generation: first token = from the call (the bare loop: from tokenizing) to the first
token produced (the skills: to the first ``partial`` event); tokens/s = tokens after the first
over the time from the first token to the end (the skills: to the reply); call ms = the whole
call, and "speed vs bare" = the bare loop's call time / this path's. The paths run in
``--rounds`` interleaved rounds (order rotating each round), ``--gens`` generations per path per
round; a round's figure is the median over its generations, the report the median over rounds,
and "paired" the median over rounds of a path's rate / the bare loop's rate in the same round
(what the target is checked on: load from other work drifts between rounds on a shared box).
Memory: the model's peak RSS in a fresh process (``edgeagent models bench``'s worker), and the
RSS of the agent serving the skill (with its model's process) against an agent serving ``echo``.

    python benchmarks/bench_llm.py [--model zoo:tinyllm|zoo:smollm2|FOLDER] [--threads 1]
                                   [--rounds 5] [--gens 3] [--max-tokens 64] [--no-mqtt] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

# mypy cannot follow the editable install's import hook; with MYPYPATH=.mypy_tree it can.
from edgeagent import Fleet  # type: ignore[import-not-found, unused-ignore]
from edgeagent.models.llm_backend import (  # type: ignore[import-not-found, unused-ignore]
    LlmSettings,
    import_runtime,
    load_llm,
)
from edgeagent.models.llm_bench import (  # type: ignore[import-not-found, unused-ignore]
    BENCH_MESSAGES,
    bench_llm,
)
from edgeagent.models.llm_skill import (  # type: ignore[import-not-found, unused-ignore]
    GenerateRequest,
    LlmSkillSet,
)
from edgeagent.skills import SkillContext  # type: ignore[import-not-found, unused-ignore]

if not __package__:  # run as a script: the repository goes on sys.path, as with -m
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import _common as common

T = TypeVar("T")
TARGET_RATIO = 0.95
DEVICE = "llm-bench"
ECHO_DEVICE = "echo-bench"
STREAM_INTERVAL_MS = 100.0
PROBE_S = 0.01
Gen = tuple[float, float | None, int, str, float]
"""One generation: first-token ms, decode tokens/s (None under 2 tokens), tokens, text, and the
whole call's ms."""


def _rate(tokens: int, first: float, end: float) -> float | None:
    return (tokens - 1) / (end - first) if tokens > 1 and end > first else None


class Bare:
    """The hand-written loop on onnxruntime-genai (see the module docstring)."""

    def __init__(self, folder: str, threads: int) -> None:
        og = import_runtime()
        config = og.Config(folder)
        opts = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
        self.og, self.model = og, og.Model(config)
        self.tok = og.Tokenizer(self.model)
        self.eos = {int(t) for t in self.tok.eos_token_ids}

    def generate(self, max_tokens: int) -> Gen:
        start = time.perf_counter()
        prompt = self.tok.apply_chat_template(
            json.dumps(BENCH_MESSAGES), add_generation_prompt=True
        )
        ids = self.tok.encode(prompt)
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_tokens, do_sample=False)
        gen = self.og.Generator(self.model, params)
        gen.append_tokens(ids)
        stream = self.tok.create_stream()
        text, tokens, first = "", 0, 0.0
        while tokens < max_tokens and not gen.is_done():
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            tokens += 1
            if tokens == 1:
                first = time.perf_counter()
            if token in self.eos:
                break
            text += stream.decode(token)
        end = time.perf_counter()
        return (first - start) * 1000, _rate(tokens, first, end), tokens, text, (end - start) * 1000


def session_path(folder: str, threads: int, max_tokens: int) -> Callable[[], Gen]:
    llm = load_llm(folder, LlmSettings(threads=threads))

    def run() -> Gen:
        start = time.perf_counter()
        g = llm.generate(BENCH_MESSAGES, max_tokens=max_tokens)
        total = (time.perf_counter() - start) * 1000
        return g.first_token_ms or 0.0, g.tokens_per_s, g.tokens, g.text, total

    return run


async def _with_probe(call: Awaitable[T], stalls: list[float]) -> T:
    """Await ``call`` while a task sleeping :data:`PROBE_S` at a time records how late the loop
    wakes it: the longest delay goes to ``stalls`` (what any other skill of the agent would
    wait). 10 ms, not 1: a thousand wake-ups a second would cost the model CPU on a small box."""
    done = False
    worst = 0.0

    async def probe() -> None:
        nonlocal worst
        while not done:
            t0 = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            worst = max(worst, time.perf_counter() - t0 - PROBE_S)

    task = asyncio.create_task(probe())
    try:
        return await call
    finally:
        done = True
        await task
        stalls.append(worst * 1000)


def skill_path(
    runner: asyncio.Runner,
    folder: str,
    args: argparse.Namespace,
    *,
    isolate: bool,
    stalls: list[float],
) -> tuple[Callable[[], Gen], LlmSkillSet]:
    skills = LlmSkillSet(
        folder,
        threads=args.threads,
        max_tokens_limit=1024,
        stream_interval_ms=STREAM_INTERVAL_MS,
        isolate=isolate,
    )
    body = {"messages": BENCH_MESSAGES, "max_tokens": args.max_tokens}
    request = GenerateRequest.model_validate(body)
    firsts: list[float] = []

    def emit(name: str, data: object = None) -> None:
        if not firsts:
            firsts.append(time.perf_counter())

    ctx = SkillContext("bench", "generate", None, None, emit, logging.getLogger("bench"))

    def run() -> Gen:
        firsts.clear()
        start = time.perf_counter()
        out = runner.run(_with_probe(skills.generate(request, ctx), stalls))
        end = time.perf_counter()
        rate = _rate(out.tokens, firsts[0], end)
        return (firsts[0] - start) * 1000, rate, out.tokens, out.text, (end - start) * 1000

    return run, skills


def mqtt_path(runner: asyncio.Runner, fleet: Any, max_tokens: int) -> Callable[[], Gen]:
    body = {"messages": BENCH_MESSAGES, "max_tokens": max_tokens}
    firsts: dict[str, float] = {}
    count = iter(range(1 << 30))

    def on_event(msg: Any) -> None:
        trace = json.loads(msg.payload)["data"].get("trace")
        firsts.setdefault(trace, time.perf_counter())

    runner.run(fleet.transport.subscribe(fleet.topics.all_events("partial"), on_event))

    def run() -> Gen:
        trace = f"bench-{next(count)}"
        start = time.perf_counter()
        out = runner.run(fleet.call(DEVICE, "generate", body, trace=trace, timeout=300))
        end = time.perf_counter()
        first = firsts.pop(trace)
        tokens = int(out["tokens"])
        rate = _rate(tokens, first, end)
        return (first - start) * 1000, rate, tokens, str(out["text"]), (end - start) * 1000

    return run


def _summary(samples: list[list[Gen]]) -> dict[str, Any]:
    """Per round, the median over its generations; then the median over rounds."""
    firsts = [statistics.median(g[0] for g in r) for r in samples]
    rates = [statistics.median(g[1] for g in r if g[1] is not None) for r in samples]
    return {
        "first_token_ms": round(statistics.median(firsts), 2),
        "tokens_per_s": round(statistics.median(rates), 2),
        "tokens": statistics.median(g[2] for r in samples for g in r),
        "total_ms": round(
            statistics.median(statistics.median(g[4] for g in r) for r in samples), 2
        ),
        "rounds_tokens_per_s": [round(x, 2) for x in rates],
        "texts": sorted({g[3] for r in samples for g in r}),
    }


def _tree_rss(pid: int) -> int:
    """RSS of ``pid`` and its children (the agent and its model's process), bytes."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return common.pid_rss(pid) + sum(_tree_rss(int(c)) for c in children)


def _agent_config(work: Path, url: str, device: str, skills: list[dict[str, Any]]) -> Path:
    path = work / f"{device}.yaml"
    path.write_text(
        json.dumps({"device": device, "fleet": "home", "broker": url, "skills": skills})
    )
    return path


def _rounds(args: argparse.Namespace, paths: dict[str, Callable[[], Gen]]) -> dict[str, Any]:
    for f in paths.values():
        f()  # warm-up
    measures = {name: (lambda f=f: [f() for _ in range(args.gens)]) for name, f in paths.items()}

    def say(r: int, name: str, s: list[Gen]) -> None:
        first = statistics.median(g[0] for g in s)
        common.progress(args.quiet, f"round {r + 1} {name}: first token {first:.1f} ms")

    samples: dict[str, Any] = common.run_rounds(measures, args.rounds, on_sample=say)
    return samples


def _with_agents(
    args: argparse.Namespace,
    folder: str,
    paths: dict[str, Callable[[], Gen]],
    runner: asyncio.Runner,
    log: IO[bytes],
) -> tuple[dict[str, Any], dict[str, float]]:
    """Start the agents, add the MQTT path, run the rounds; the agents' memory."""
    llm_skill = {
        "module": "edgeagent.models.llm_skill:LlmSkillSet",
        "options": {
            "model": folder,
            "threads": args.threads,
            "max_tokens_limit": 1024,
            "stream_interval_ms": STREAM_INTERVAL_MS,
        },
    }
    echo = {"module": "smarthome.echo"}
    env = common.with_pythonpath(common.REPO / "examples" / "smart-home")
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp, common.private_broker() as b:
        work = Path(tmp)
        llm_cfg = _agent_config(work, b.url, DEVICE, [llm_skill])
        echo_cfg = _agent_config(work, b.url, ECHO_DEVICE, [echo])
        with (
            common.spawn(common.agent_command(b.url, llm_cfg), log, env) as agent,
            common.spawn(common.agent_command(b.url, echo_cfg), log, env) as echo_agent,
        ):
            runner.run(common.wait_online(b.url, "home", (DEVICE, ECHO_DEVICE), timeout=180))
            fleet = Fleet(b.url, fleet="home")
            runner.run(fleet.__aenter__())
            try:
                paths["skill over MQTT"] = mqtt_path(runner, fleet, args.max_tokens)
                samples = _rounds(args, paths)
            finally:
                runner.run(fleet.__aexit__(None, None, None))
            memory = {
                "agent_llm_rss_mb": round(_tree_rss(agent.pid) / 2**20, 1),
                "agent_echo_rss_mb": round(common.pid_rss(echo_agent.pid) / 2**20, 1),
            }
    return samples, memory


def run(args: argparse.Namespace) -> dict[str, Any]:
    from edgeagent.devices import load_profile  # type: ignore[import-not-found, unused-ignore]
    from edgeagent.models.llm_folder import (  # type: ignore[import-not-found, unused-ignore]
        resolve_llm,
    )

    started = common.CLOCK.monotonic()
    resolved = resolve_llm(args.model)
    folder = str(resolved.folder)
    common.progress(args.quiet, f"loading {resolved.name} ({folder}), {args.threads} thread(s)")
    bare = Bare(folder, args.threads)
    memory: dict[str, float] = {}
    stalls: dict[str, list[float]] = {"skill, model in a thread": [], "skill, model process": []}
    with asyncio.Runner() as runner, tempfile.TemporaryFile() as log:
        in_thread, in_process = (
            skill_path(
                runner, folder, args, isolate=False, stalls=stalls["skill, model in a thread"]
            ),
            skill_path(runner, folder, args, isolate=True, stalls=stalls["skill, model process"]),
        )
        paths: dict[str, Callable[[], Gen]] = {
            "bare": lambda: bare.generate(args.max_tokens),
            "session": session_path(folder, args.threads, args.max_tokens),
            "skill, model in a thread": in_thread[0],
            "skill, model process": in_process[0],
        }
        try:
            if args.no_mqtt:
                samples = _rounds(args, paths)
            else:
                samples, memory = _with_agents(args, folder, paths, runner, log)
        finally:
            in_thread[1].close()
            in_process[1].close()
    common.progress(args.quiet, "memory: the model in a fresh process (models bench's worker)")
    measured = bench_llm(folder, load_profile("x86-64"), runs=2, warmup=1, threads=args.threads)
    results = {name: _summary(s) for name, s in samples.items()}
    base = results["bare"]
    bare_rounds = base["rounds_tokens_per_s"]
    for r in results.values():
        r["tokens_per_s_ratio"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        paired = [x / b for x, b in zip(r["rounds_tokens_per_s"], bare_rounds, strict=True)]
        r["tokens_per_s_ratio_paired"] = round(statistics.median(paired), 3)
        r["first_token_extra_ms"] = round(r["first_token_ms"] - base["first_token_ms"], 2)
        r["total_ratio"] = round(base["total_ms"] / r["total_ms"], 3)
    for name, values in stalls.items():
        results[name]["loop_stall_max_ms"] = round(max(values), 1)
        results[name]["loop_stall_p50_ms"] = round(statistics.median(values), 1)
    skill = results.get("skill over MQTT") or results["skill, model process"]
    return {
        "machine": common.machine_info(),
        "code": common.code_state(),
        "config": {
            "model": resolved.name,
            "folder": folder,
            "threads": args.threads,
            "rounds": args.rounds,
            "gens": args.gens,
            "max_tokens": args.max_tokens,
            "stream_interval_ms": STREAM_INTERVAL_MS,
        },
        "paths": results,
        "same_text": len({t for r in results.values() for t in r["texts"]}) == 1,
        "target": {
            "ratio": TARGET_RATIO,
            "met": skill["tokens_per_s_ratio_paired"] >= TARGET_RATIO,
        },
        "memory": {
            "model_peak_mb": measured.peak_memory_mb,
            "model_files_mb": round(measured.size_bytes / 2**20, 1),
            **memory,
        },
        "elapsed_s": round(common.CLOCK.monotonic() - started, 1),
    }


def print_report(report: dict[str, Any]) -> None:
    m, cfg = report["machine"], report["config"]
    print(
        f"{m['cpus']} × {m['cpu_model']}, load {' '.join(m['loadavg'])}; Python {m['python']}; "
        f"model {cfg['model']} ({cfg['threads']} thread(s)), {cfg['max_tokens']} tokens max, "
        f"{cfg['gens']} generations × {cfg['rounds']} interleaved rounds"
    )
    print()
    rows = [
        (
            name,
            f"{r['first_token_ms']:.1f}",
            f"{r['first_token_extra_ms']:+.1f}",
            f"{r['tokens_per_s']:.1f}",
            f"{r['tokens_per_s_ratio']:.3f} ({r['tokens_per_s_ratio_paired']:.3f})",
            f"{r['tokens']:g}",
            f"{r['total_ms']:.1f}",
            f"{r['total_ratio']:.3f}",
            f"{r['loop_stall_max_ms']:.1f}" if "loop_stall_max_ms" in r else "–",
        )
        for name, r in report["paths"].items()
    ]
    header = (
        "path",
        "first token ms",
        "vs bare ms",
        "tokens/s",
        "vs bare (paired)",
        "tokens",
        "call ms",
        "speed vs bare",
        "loop stall max ms",
    )
    print(common.markdown_table(header, rows, "lrrrrrrrr"))
    t = report["target"]
    print(
        f"\ntarget: skill tokens/s >= {t['ratio']}x bare: {'met' if t['met'] else 'MISSED'}; "
        f"same text on every path: {report['same_text']}"
    )
    mem = report["memory"]
    line = f"memory: model files {mem['model_files_mb']} MiB, peak RSS {mem['model_peak_mb']} MiB"
    if "agent_llm_rss_mb" in mem:
        line += (
            f"; agent with the LLM skill {mem['agent_llm_rss_mb']} MiB RSS, "
            f"agent with echo only {mem['agent_echo_rss_mb']} MiB"
        )
    print(line)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default="zoo:tinyllm", help="zoo:NAME or a genai folder")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--gens", type=int, default=3, help="generations per path per round")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--no-mqtt", action="store_true", help="skip the agent paths")
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.gens < 1 or not 2 <= args.max_tokens <= 1024 or args.threads < 1:
        parser.error("--rounds >= 1, --gens >= 1, --threads >= 1, --max-tokens in 2..1024")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        common.print_json(report)
    else:
        print_report(report)


if __name__ == "__main__":
    main()
