"""The dataset ``edgeagent data pull`` writes: hard cases as JSON lines, deduplicated by case id,
with a manifest; and the exports training takes (``--format examples``).

::

    DIR/cases.jsonl        one HardCase per line (edgeagent.models.hardcases), appended to
    DIR/manifest.json      what the file holds (per reason, skill, device) and the last pull
    DIR/examples.jsonl     --format examples: labelled text cases as {text, intent, kind, room}
                           (the household examples `models adapt` trains on)
    DIR/digits.npz         --format examples: labelled digit cases kept raw, as the digits
                           recipe's arrays: pixels float32 [N, 64] (0..1), labels int64 [N]

Which devices to pull (:func:`pull_targets`) and what makes a training example
(:func:`text_example`, :func:`digit_example`) are pure; :class:`DatasetWriter` is the file shell.
Pulling again appends only the cases the file does not hold yet; memory grows with the ids (about
40 bytes each), never with the cases, which are streamed.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError
from .fleet_view import DeviceInfo
from .models.hardcases import is_raw
from .models.zoo.intent_vocab import INTENTS, KINDS, ROOMS

FORMAT = "edgeagent-hard-cases/1"
CASES_SKILL = "data.cases"
DIGIT_PIXELS = 64
EXAMPLE_TEXT_MAX = 200
"""Longest text an example may have (``models adapt``'s examples files:
``edgeagent.models.lora_examples.MAX_TEXT``); a longer case makes no example."""


@dataclass(frozen=True, slots=True)
class Targets:
    pull: list[str]
    """Online devices that serve data.cases and match --where."""
    offline: list[str]
    """Devices that would be pulled but are not online (reported, not fatal)."""


def pull_targets(devices: Sequence[DeviceInfo], where: dict[str, str]) -> Targets:
    """Which devices keep hard cases (their manifest has ``data.cases``) and match ``where``."""
    pull: list[str] = []
    offline: list[str] = []
    for d in sorted(devices, key=lambda d: d.device):
        if not any(s.name == CASES_SKILL for s in d.skills):
            continue
        if any(d.tags.get(k) != v for k, v in where.items()):
            continue
        (pull if d.online else offline).append(d.device)
    return Targets(pull, offline)


# exports (pure) --------------------------------------------------------------------------------


def text_example(case: dict[str, Any]) -> dict[str, str] | None:
    """``{text, intent, kind?, room?}`` from a labelled case whose input has ``text``; None
    when it has no text, no label, or a label outside the intent model's vocabulary."""
    text = (case.get("input") or {}).get("text")
    label = case.get("label")
    if not isinstance(text, str) or not text.strip() or label is None:
        return None
    if len(text) > EXAMPLE_TEXT_MAX:
        return None
    if isinstance(label, str):
        label = {"intent": label}
    if not isinstance(label, dict) or label.get("intent") not in INTENTS:
        return None
    out = {"text": text, "intent": str(label["intent"])}
    for key, vocab in (("kind", KINDS), ("room", ROOMS)):
        value = label.get(key)
        if value is None:
            continue
        if value not in vocab:
            return None
        out[key] = str(value)
    return out


def digit_example(case: dict[str, Any]) -> tuple[list[float], int] | None:
    """(64 grey values 0..16, digit) from a labelled case kept with its pixels; None otherwise
    (no label, or the pixels were not kept: ``keep_raw`` off)."""
    pixels = (case.get("input") or {}).get("pixels")
    label = case.get("label")
    if isinstance(label, dict):
        label = label.get("digit")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label <= 9:
        return None
    if is_raw(pixels) or not isinstance(pixels, list) or len(pixels) != DIGIT_PIXELS:
        return None
    if not all(isinstance(p, int | float) and not isinstance(p, bool) for p in pixels):
        return None
    return [float(p) for p in pixels], label


# the file shell -------------------------------------------------------------------------------


@dataclass(slots=True)
class DeviceResult:
    status: str = "pulled"
    """pulled, offline, unreachable or failed."""
    pages: int = 0
    received: int = 0
    new: int = 0
    cleared: int | None = None
    error: str | None = None


@dataclass(slots=True)
class Totals:
    cases: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_skill: Counter[str] = field(default_factory=Counter)
    by_device: Counter[str] = field(default_factory=Counter)
    labelled: int = 0

    def add(self, case: dict[str, Any]) -> None:
        self.cases += 1
        self.by_reason[str(case.get("reason"))] += 1
        self.by_skill[str(case.get("skill"))] += 1
        self.by_device[str(case.get("device"))] += 1
        self.labelled += case.get("label") is not None


def output_paths(out: Path) -> tuple[Path, Path, Path | None]:
    """(cases file, manifest, folder for exports or None): ``-o FILE.jsonl`` or ``-o DIR``."""
    if out.suffix == ".jsonl":
        return out, out.with_suffix(".manifest.json"), None
    return out / "cases.jsonl", out / "manifest.json", out


def read_cases(path: Path) -> Iterator[dict[str, Any]]:
    """The cases of a dataset file, one at a time; a line that does not parse is skipped."""
    if not path.is_file():
        return
    with path.open("rb") as f:
        for line in f:
            try:
                case = json.loads(line)
            except ValueError:
                continue
            if isinstance(case, dict) and isinstance(case.get("id"), str):
                yield case


class DatasetWriter:
    """Appends new cases to the dataset file; knows the ids it holds (dedup)."""

    def __init__(self, out: Path) -> None:
        self.cases_path, self.manifest_path, self.folder = output_paths(out)
        try:
            self.cases_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{out}: cannot write the dataset: {exc}") from exc
        self.totals = Totals()
        self._ids: set[str] = set()
        for case in read_cases(self.cases_path):
            if case["id"] not in self._ids:
                self._ids.add(case["id"])
                self.totals.add(case)
        self.duplicates = 0
        self._file: IO[bytes] | None = None

    def add(self, case: dict[str, Any]) -> bool:
        """Append ``case`` unless the dataset holds its id; whether it was new."""
        cid = case.get("id")
        if not isinstance(cid, str) or cid in self._ids:
            self.duplicates += 1
            return False
        if self._file is None:
            self._file = self.cases_path.open("ab")
        self._file.write(json.dumps(case, separators=(",", ":")).encode() + b"\n")
        self._ids.add(cid)
        self.totals.add(case)
        return True

    def sync(self) -> None:
        """Make what was added durable (before devices are told to clear it)."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None

    def manifest(self, devices: dict[str, DeviceResult], query: dict[str, Any]) -> dict[str, Any]:
        t = self.totals
        return {
            "format": FORMAT,
            "cases_file": self.cases_path.name,
            "cases": t.cases,
            "labelled": t.labelled,
            "by_reason": dict(sorted(t.by_reason.items())),
            "by_skill": dict(sorted(t.by_skill.items())),
            "by_device": dict(sorted(t.by_device.items())),
            "last_pull": {
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "query": query,
                "new": sum(r.new for r in devices.values()),
                "duplicates": self.duplicates,
                "devices": {
                    d: {k: v for k, v in asdict(r).items() if v is not None}
                    for d, r in sorted(devices.items())
                },
            },
        }

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(tmp, self.manifest_path)


@dataclass(frozen=True, slots=True)
class ExportCounts:
    examples: int
    digits: int
    skipped_labelled: int
    """Labelled cases that make no example (another skill, a raw input not kept, a label
    outside the vocabulary)."""


def export_examples(cases_path: Path, folder: Path) -> ExportCounts:
    """``examples.jsonl`` and ``digits.npz`` from the dataset's labelled cases (the files are
    written only when they get at least one example)."""
    texts: list[dict[str, str]] = []
    pixels: list[list[float]] = []
    labels: list[int] = []
    skipped = 0
    for case in read_cases(cases_path):
        if case.get("label") is None:
            continue
        text = text_example(case)
        digit = digit_example(case) if text is None else None
        if text is not None:
            texts.append(text)
        elif digit is not None:
            pixels.append(digit[0])
            labels.append(digit[1])
        else:
            skipped += 1
    if texts:
        lines = "".join(json.dumps(t) + "\n" for t in texts)
        (folder / "examples.jsonl").write_text(lines)
    if labels:
        import numpy as np

        from .models.zoo.digits import featurize

        x = np.stack([featurize(p) for p in pixels]).astype(np.float32)
        np.savez(folder / "digits.npz", pixels=x, labels=np.asarray(labels, dtype=np.int64))
    return ExportCounts(len(texts), len(labels), skipped)


__all__ = [
    "DatasetWriter",
    "DeviceResult",
    "ExportCounts",
    "Targets",
    "digit_example",
    "export_examples",
    "output_paths",
    "pull_targets",
    "read_cases",
    "text_example",
]
