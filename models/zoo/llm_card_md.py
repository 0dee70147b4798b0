"""A language model's ``card.md``: the same facts as its ``card.json``, for people (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _span(values: list[float]) -> str:
    low, mid, high = values
    return f"{mid:g} ({low:g}-{high:g})"


def card_markdown(card: Mapping[str, Any]) -> str:
    m = card["measured"]
    lines = [
        f"# {card['name']} (v{card['version']})",
        "",
        card["description"],
        "",
        "## Model",
        "",
        f"- format: {card['format']} folder (`onnxruntime_genai.Model(folder)`)",
        f"- parameters: {card['parameters']:,}",
        f"- precision: {card['precision']}",
        f"- size on disk: {card['size_bytes']:,} bytes ({_mib(card['size_bytes'])})",
        "- architecture: " + ", ".join(f"{k} {v}" for k, v in card["architecture"].items()),
        f"- licence: {card['licence']}",
        "",
        "## Measured here",
        "",
        f"On {m['machine']}, onnxruntime-genai {m.get('onnxruntime_genai', '?')}, greedy, "
        f"{m['prompts']} prompts, {m['threads']} threads, load average "
        f"{m.get('load_average', '?')} (other work on the machine slows these figures):",
        "",
        "| figure | value |",
        "|---|---|",
        f"| decoding | {m['tokens_per_s']} tokens/s |",
        f"| first token (prompt of {m['prompt_tokens']} tokens) | {m['first_token_ms']} ms |",
        f"| peak memory of the model (RSS while generating, minus the process before loading)"
        f" | {m['model_memory_mb']} MiB |",
        f"| peak RSS of the whole process | {m['peak_rss_mb']} MiB |",
        "",
        "## Estimated per device profile",
        "",
        "From the figures above and each profile's speed factor (`edgeagent.models.llm_estimate`:"
        " decoding is memory-bandwidth bound, so these are estimates with a range of 2x either"
        " way, not measurements).",
        "",
        "| profile | runs? | memory needed | tokens/s | first token, ms |",
        "|---|---|---|---|---|",
    ]
    for name, e in card["estimates"].items():
        runs = "yes" if e["runs"] else f"no: {e['reason']}"
        lines.append(
            f"| {name} | {runs} | {e['memory_mb']} MiB | {_span(e['tokens_per_s'])} | "
            f"{_span(e['first_token_ms'])} |"
        )
    if card["metrics"]:
        lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["metrics"].items()]
    lines += ["", "## Training / conversion", ""]
    lines += [f"- {k}: {v}" for k, v in card["training"].items()]
    lines += [f"- seed: {card['seed']}"]
    if card["notes"]:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in card["notes"]]
    lines += ["", "## Files", "", "| file | bytes | sha256 |", "|---|---|---|"]
    lines += [f"| {f['file']} | {f['bytes']} | `{f['sha256'][:16]}…` |" for f in card["files"]]
    lines += ["", "## Sources", ""]
    lines += [f"- {s}" for s in card["sources"]]
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "pip install -e '.[train,llm]'",
        card["reproduce"],
        "```",
        "",
        "Built with " + ", ".join(f"{k} {v}" for k, v in card["built_with"].items()) + ".",
        "",
    ]
    return "\n".join(lines)
