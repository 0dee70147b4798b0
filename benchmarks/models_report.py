"""The text report of ``bench_models``: the quantization, choice and overhead tables and the MQTT
line, read from the same dict the JSON report prints. Apart from the script so that measuring and
printing stay separate.
"""

from __future__ import annotations

from typing import Any

from benchmarks import _common as common
from benchmarks.models_parts import (
    TARGET_CHOICE_RATIO,
    TARGET_SIZE_RATIO,
)


def _ok(flag: bool | None) -> str:
    return "–" if flag is None else ("met" if flag else "MISSED")


def _us(x: float) -> str:
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def print_tables(report: dict[str, Any]) -> None:
    m, cfg = report["machine"], report["config"]
    pk = m["packages"]
    print(
        f"{m['cpus']} × {m['cpu_model']} ({', '.join(m['int8_flags']) or 'no AVX2/VNNI'}), "
        f"load {' '.join(m['loadavg'])}; Python {m['python']}, onnxruntime {pk['onnxruntime']}, "
        f"onnx {pk['onnx']}, ai-edge-litert {pk['ai-edge-litert']}, numpy {pk['numpy']}"
    )
    print(
        f"model {cfg['model']}, device {cfg['device']} ({cfg['threads']} threads), "
        f"{cfg['runs']} calls × {cfg['rounds']} interleaved rounds, optimizer --runs "
        f"{cfg['optimizer_runs']}, budget {cfg['budget_points']:g} accuracy point"
    )
    if "large_model" in report:
        lm = report["large_model"]
        print(
            f"large model: {lm['architecture']}, {lm['params']} parameters, "
            f"{lm['epochs']} epochs ({lm['train_s']} s)"
        )
    print()
    print("## 1. int8 size and accuracy: plain onnxruntime.quantization vs the optimizer")
    for q in report["quantization"]:
        print()
        print(
            f"{q['model']}: fp32 {q['fp32_bytes']} bytes, {q['params']} parameters, accuracy "
            f"{q['fp32_accuracy']:.2%}; optimizer {q['optimizer_s']} s, chose {q['chosen']}"
        )
        print()
        header: tuple[str, ...] = (
            "file",
            "made by",
            "bytes",
            "size / fp32",
            "accuracy",
            "drop (points)",
        )
        cells: list[tuple[object, ...]] = [
            (r["name"], r["source"], r["size_bytes"], f"{r['size_ratio']:.3f}",
             f"{r['accuracy']:.2%}", f"{r['drop_points']:+.2f}")
            for r in q["rows"]
        ]  # fmt: skip
        print(common.markdown_table(header, cells, "llrrrr"))
        print()
        print(
            f"our int8-static size / fp32 = {q['ours_int8_static_ratio']:.3f} (target ≤ "
            f"{TARGET_SIZE_RATIO} where accuracy holds; holds: {q['ours_int8_static_holds']}) "
            f"{_ok(q['target_ok'])}"
        )
    print()
    print("## 2. The chosen variant against the best, re-timed here (interleaved)")
    for c in report["choice"]:
        print()
        print(f"{c['model']} on {c['device']} ({c['threads']} threads): chosen {c['chosen']}")
        print()
        header = ("variant", "runtime", "precision", "µs here", "est. µs on device",
                  "optimizer p50 µs", "drop", "passes rules")  # fmt: skip
        cells = []
        for r in c["rows"]:
            mark = "**" if r["name"] == c["chosen"] else ""
            drop = "–" if r["drop_points"] is None else f"{r['drop_points']:+.2f}"
            cells.append(
                (f"{mark}{r['name']}{mark}", r["runtime"], r["precision"], _us(r["here_us"]),
                 _us(r["estimate_us"]), _us(r["optimizer_p50_us"]), drop,
                 "yes" if r["qualified"] else "no")
            )  # fmt: skip
        print(common.markdown_table(header, cells, "lllrrrrl"))
        print()
        scopes = {
            "here_all": "µs here, all variants",
            "here_within_budget": "µs here, variants within the accuracy budget",
            "estimate_all": "estimated µs on the device, all variants",
            "estimate_within_budget": "estimated µs on the device, within the accuracy budget",
        }
        for key, ratio in c["ratios"].items():
            print(
                f"chosen / best ({scopes[key]}; best {ratio['best']}) = {ratio['ratio']:.3f}  "
                f"(target ≤ {TARGET_CHOICE_RATIO}) {_ok(ratio['target_ok'])}"
            )
    print()
    print("## 3. Per-call overhead: ours against the bare runtime (same model, same settings)")
    print()
    header = ("call", "bare µs", "ours µs", "ours / bare", "overhead µs", "limit µs (1.3×+3)", "")
    cells = [
        (r["name"], _us(r["bare_us"]), _us(r["ours_us"]), f"{r['ratio']:.2f}",
         f"{r['overhead_us']:+.2f}", _us(r["limit_us"]), _ok(r["target_ok"]))
        for r in report["overhead"]
    ]  # fmt: skip
    print(common.markdown_table(header, cells, "lrrrrrl"))
    print()
    for r in report["overhead"]:
        print(f"{r['name']}: ours/bare per round {r['round_ratios']}")
    mq = report.get("mqtt")
    if mq:
        print()
        print(
            f"MQTT (information): Fleet.call read_digit p50 {mq['fleet_call_p50_us']:.0f} µs "
            f"(rounds {mq['rounds_p50_us']}) against the bare dispatch "
            f"{mq['bare_dispatch_us']:.2f} µs: ×{mq['ratio']:.0f}"
        )
    print()
    print(f"(whole run {report['elapsed_s']} s)")
