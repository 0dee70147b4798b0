"""``card.md`` of the LLM optimizer: the same facts as its ``card.json``, for people (pure)."""

from __future__ import annotations

from .llm_choose import LlmOptimizerCard


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x * 100:.1f}%"


def variant_rows(card: LlmOptimizerCard) -> list[str]:
    d = card.device.name
    rows = [
        "| variant | size | tokens/s here | first token here | peak mem | exact plans "
        f"| agreement (forced) | same prefix | est. tokens/s on {d} | runs on {d} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for v in card.variants:
        f = v.figures
        if f is None:
            rows.append(f"| {v.name} | | | | | | | | | error: {v.error} |")
            continue
        e = f.estimate
        rows.append(
            f"| {v.name} | {f.size_bytes / 2**20:.2f} MiB | {f.tokens_per_s:.1f} "
            f"| {f.first_token_ms:.1f} ms | {f.peak_memory_mb:.1f} MiB | {_pct(f.exact_plan)} "
            f"| {_pct(f.agreement)} | {_pct(f.prefix_agreement)} | {e.tokens_per_s.mid:.3g} "
            f"({e.tokens_per_s.low:.3g}-{e.tokens_per_s.high:.3g}) "
            f"| {'yes' if e.runs else 'no'}: {e.reason} |"
        )
    return rows


def render_llm_card(card: LlmOptimizerCard) -> str:
    d, q, m = card.device, card.quality, card.machine
    lines = [
        f"# {card.model.name} for {d.name}: optimizer card (language model)",
        "",
        f"**Chosen: {card.choice.variant or 'nothing'}**"
        + (" (this folder is its onnxruntime-genai model)" if card.chosen_file else ""),
        "",
        f"Why: {card.choice.reason}",
        "",
        "## Model",
        "",
        f"- source: `{card.model.source}`; checkpoint `{card.model.checkpoint}`",
        "",
        "## Device",
        "",
        f"- {d.title} (`{d.name}`, {d.arch}); model budget {d.model_budget_mb.value:g} MiB, "
        f"storage budget {d.storage_budget_mb.value:g} MiB; speed factors fp32 "
        f"{d.speed.fp32.value:g}, int8 {d.speed.int8.value:g}",
        "",
        "## Quality",
        "",
        f"- metric: {q.metric} on {q.prompts}",
        f"- fp32: {_pct(q.reference)}; budget {q.budget:g} points; floor {_pct(q.floor)}",
        "",
        "## Variants",
        "",
        *variant_rows(card),
        "",
        "## Rules applied",
        "",
        *[f"{i}. {rule}" for i, rule in enumerate(card.choice.rules, 1)],
        "",
        "## How the figures were taken",
        "",
        *[f"- {x}" for x in card.method],
        "",
        "## Machine",
        "",
        f"- {m.cpu} ({m.machine}, {m.cores} CPUs), {m.system}, Python {m.python}",
        "",
        "## Reproduce",
        "",
        "```sh",
        card.reproduce.command,
        "```",
    ]
    return "\n".join(lines) + "\n"


def format_llm_card(card: LlmOptimizerCard, out: str) -> list[str]:
    """What ``models optimize`` prints for a language model (without ``--json``)."""
    d = card.device.name
    lines = [
        f"{card.model.name} for {card.device.title} ({d}), quality: {card.quality.metric} "
        f"(fp32 {_pct(card.quality.reference)}, floor {_pct(card.quality.floor)}):",
        f"  {'variant':<8} {'size':>10} {'tok/s here':>11} {'1st tok ms':>10} {'mem MiB':>8} "
        f"{'quality':>8} {'est. tok/s ' + d:>18}  runs there",
    ]
    for v in card.variants:
        mark = "*" if v.name == card.choice.variant else " "
        f = v.figures
        if f is None:
            lines.append(f"{mark} {v.name:<8} error: {v.error}")
            continue
        e = f.estimate
        lines.append(
            f"{mark} {v.name:<8} {f.size_bytes:>10} {f.tokens_per_s:>11.1f} "
            f"{f.first_token_ms:>10.1f} {f.peak_memory_mb:>8.1f} {_pct(f.quality):>8} "
            f"{e.tokens_per_s.mid:>18.3g}  {'yes' if e.runs else 'no: ' + e.reason}"
        )
    lines.append("")
    lines += [f"  {i}. {rule}" for i, rule in enumerate(card.choice.rules, 1)]
    lines += ["", f"chosen: {card.choice.reason}"]
    if card.chosen_file:
        lines.append(
            f"wrote {out} (an onnxruntime-genai folder: the choice), card.json, card.md, variants/"
        )
    return lines
