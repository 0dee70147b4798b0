"""Extract the published Raspberry Pi timings from ncnn's and XNNPACK's READMEs.

::

    git -C ncnn show HEAD:benchmark/README.md > ncnn.md
    git -C XNNPACK show HEAD:README.md > xnnpack.md
    python -m edgeagent.devices.calibration.extract \\
        --ncnn-readme ncnn.md --ncnn-commit $(git -C ncnn rev-parse HEAD) \\
        --xnnpack-readme xnnpack.md --xnnpack-commit $(git -C XNNPACK rev-parse HEAD) \\
        -o devices/calibration/published.yaml

What is taken, and how it is read:

- ncnn: the CPU sections (``gpu_device = -1``) of the Pi 3B+, Pi 4, Pi 5 (Cortex-A76; not the
  Vulkan or overclocked sections) and Zero 2 W, 4 and 1 threads. benchncnn turns on fp16
  arithmetic (``opt.use_fp16_arithmetic``), which only Armv8.2 cores with FP16 run: the Pi 5's
  float figures are fp16, the A53/A72 ones fp32; ``*_int8`` models are int8. The sections name
  an ARMv8 CPU but not the OS: 64-bit is assumed and said in ``notes``.
- XNNPACK: the "Raspberry Pi" table's RPi 3+, RPi 4 (32-bit, Raspbian Buster) and RPi 4 ARM64
  columns; "multi-threaded" is read as 4 threads (every core). Zero W and RPi 2 are not devices
  edgeagent profiles.

A figure is ``noisy`` when its max is more than 1.5 × its min (the Pi 5's 4-thread mobilenet:
9.00 / 72.98 ms). Pure parsing in :func:`extract_ncnn` and :func:`extract_xnnpack`; the CLI only
reads and writes files.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from . import PublishedFigure, PublishedTable

__all__ = ["ExtractError", "extract_ncnn", "extract_xnnpack", "main"]

NCNN_SECTIONS = (
    ("### Raspberry Pi 3 Model B+ ", "pi3b-plus"),
    ("### Raspberry Pi 4 Model B ", "pi4"),
    ("### Raspberry Pi 5 Broadcom BCM2712, Cortex-A76", "pi5"),
    ("### Raspberry Pi Zero 2 W ", "pi-zero-2w"),
)
"""Heading prefixes of the sections taken, and the device profile each one measured."""

FP16_DEVICES = frozenset({"pi5"})
"""Devices whose cores run benchncnn's fp16 arithmetic (Armv8.2-A with FP16: the A76)."""

XNNPACK_COLUMNS = {
    "RPi 3+ (BCM2837B0), ms": ("pi3b-plus", 32),
    "RPi 4 (BCM2711), ms": ("pi4", 32),
    "RPi 4 (BCM2711, ARM64), ms": ("pi4", 64),
}
XNNPACK_MODELS = {
    "MobileNet v1 1.0X": "mobilenet_v1",
    "MobileNet v2 1.0X": "mobilenet_v2",
    "MobileNet v3 Large": "mobilenet_v3_large",
    "MobileNet v3 Small": "mobilenet_v3_small",
}
NOISY_RATIO = 1.5
MAX_README_BYTES = 4_000_000

_RESULT = re.compile(
    r"^\s*(?P<model>\S+)\s+min\s*=\s*(?P<min>[\d.]+)\s+max\s*=\s*(?P<max>[\d.]+)\s+"
    r"avg\s*=\s*(?P<avg>[\d.]+)\s*$"
)
_SETTING = re.compile(r"^\s*(num_threads|gpu_device|loop_count)\s*=\s*(-?\d+)\s*$")
_CLOCK = re.compile(r"\(([\d.]+)\s*GHz\s*x\s*\d+\)", re.IGNORECASE)


class ExtractError(ValueError):
    """A README does not have the section, run or table the extractor expects."""


def _section(text: str, heading_prefix: str, level: str, what: str) -> tuple[str, list[str]]:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading_prefix)), None)
    if start is None:
        raise ExtractError(f"{what}: no section starting {heading_prefix!r}")
    end = next(
        (j for j in range(start + 1, len(lines)) if re.match(rf"^#{{1,{len(level)}}} ", lines[j])),
        len(lines),
    )
    return lines[start].lstrip("# ").strip(), lines[start + 1 : end]


def extract_ncnn(text: str, commit: str) -> list[PublishedFigure]:
    """Every CPU figure of the four Raspberry Pi sections of ncnn's ``benchmark/README.md``."""
    url = f"https://github.com/Tencent/ncnn/blob/{commit}/benchmark/README.md"
    figures: list[PublishedFigure] = []
    for prefix, device in NCNN_SECTIONS:
        heading, body = _section(text, prefix, "###", "ncnn README")
        clock = _CLOCK.search(heading)
        settings: dict[str, int] = {}
        taken = 0
        for line in body:
            if match := _SETTING.match(line):
                if match[1] == "loop_count":
                    settings = {}
                settings[match[1]] = int(match[2])
            elif (match := _RESULT.match(line)) and settings.get("gpu_device", -1) == -1:
                if "num_threads" not in settings:
                    raise ExtractError(f"ncnn README, {heading!r}: a result before num_threads")
                threads = settings["num_threads"]
                figures.append(_ncnn_figure(match, device, threads, clock, heading, url))
                taken += 1
        if not taken:
            raise ExtractError(f"ncnn README, {heading!r}: no CPU results found")
    return figures


def _ncnn_figure(
    match: re.Match[str],
    device: str,
    threads: int,
    clock: re.Match[str] | None,
    heading: str,
    url: str,
) -> PublishedFigure:
    model = match["model"]
    low, high = float(match["min"]), float(match["max"])
    precision = "int8" if model.endswith("_int8") else "fp16" if device in FP16_DEVICES else "fp32"
    return PublishedFigure(
        device=device,
        model=model,
        precision=precision,
        threads=threads,
        ms=float(match["avg"]),
        min_ms=low,
        max_ms=high,
        runtime="ncnn",
        bits=64,
        clock_ghz=float(clock[1]) if clock else None,
        source=f'{url} section "{heading}"',
        noisy=high > NOISY_RATIO * low,
        notes="64-bit assumed: the section names an ARMv8 CPU, not the OS",
    )


def extract_xnnpack(text: str, commit: str) -> list[PublishedFigure]:
    """The RPi 3+ and RPi 4 columns of the "Raspberry Pi" table in XNNPACK's README."""
    url = f"https://github.com/google/XNNPACK/blob/{commit}/README.md"
    heading, body = _section(text, "### Raspberry Pi", "###", "XNNPACK README")
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in body
        if line.strip().startswith("|")
    ]
    if len(rows) < 3:
        raise ExtractError(f"XNNPACK README, {heading!r}: no table")
    header = rows[0]
    columns = {i: XNNPACK_COLUMNS[name] for i, name in enumerate(header) if name in XNNPACK_COLUMNS}
    if len(columns) != len(XNNPACK_COLUMNS):
        missing = sorted(set(XNNPACK_COLUMNS) - set(header))
        raise ExtractError(f"XNNPACK README, {heading!r}: columns {missing} not found")
    figures: list[PublishedFigure] = []
    for row in rows[2:]:
        match = re.match(r"^(FP32|INT8)\s+(.+)$", row[0])
        if not match or match[2] not in XNNPACK_MODELS:
            raise ExtractError(f"XNNPACK README, {heading!r}: unknown model row {row[0]!r}")
        for i, (device, bits) in columns.items():
            figures.append(
                PublishedFigure(
                    device=device,
                    model=XNNPACK_MODELS[match[2]],
                    precision="int8" if match[1] == "INT8" else "fp32",
                    threads=4,
                    ms=float(row[i]),
                    runtime="xnnpack",
                    bits=bits,
                    source=f'{url} section "{heading}", column "{header[i]}", row "{row[0]}"',
                    notes="multi-threaded read as 4 threads; end2end-bench, random weights"
                    + ("; Raspbian Buster (32-bit) build" if bits == 32 else ""),
                )
            )
    return figures


def _read(path: Path) -> str:
    if path.stat().st_size > MAX_README_BYTES:
        raise ExtractError(f"{path}: larger than {MAX_README_BYTES} bytes: not a README")
    return path.read_text(encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: read the two READMEs, write the YAML table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--ncnn-readme", type=Path, required=True)
    parser.add_argument("--ncnn-commit", required=True, help="Tencent/ncnn commit it is from")
    parser.add_argument("--xnnpack-readme", type=Path, required=True)
    parser.add_argument("--xnnpack-commit", required=True, help="google/XNNPACK commit")
    parser.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        figures = extract_ncnn(_read(args.ncnn_readme), args.ncnn_commit)
        figures += extract_xnnpack(_read(args.xnnpack_readme), args.xnnpack_commit)
    except (OSError, ExtractError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = PublishedTable(figures=figures)
    header = (
        "# Published Raspberry Pi CPU timings (ncnn benchmark/README.md, XNNPACK README.md).\n"
        "# Generated by python -m edgeagent.devices.calibration.extract: do not edit by hand.\n"
    )
    body = yaml.safe_dump(table.model_dump(exclude_none=True), sort_keys=False, width=200)
    args.output.write_text(header + body, encoding="utf-8")
    print(f"{len(figures)} figures -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
