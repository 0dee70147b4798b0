"""A household's examples for an intent adapter: YAML or JSONL files of labelled phrases.

::

    # my-phrases.yaml: a list; kind and room are optional
    - text: make it cosy in the den
      intent: turn_on
      kind: thermostat
      room: living
    - {text: nix the wireless, intent: turn_off, kind: speaker}

A ``.jsonl`` file holds the same objects, one per line. Labels are the intent model's
(:mod:`edgeagent.models.zoo.intent_vocab`); a head whose label is left out is not trained on
that example. Any problem is an :class:`ExamplesError` naming the file, the line and, for an
unknown label, the valid ones: the file is written by people and by the data loop's export.
Files and example counts are bounded (:data:`MAX_FILE_BYTES`, :data:`MAX_EXAMPLES`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from ..errors import ConfigError
from ..yamlconf import format_validation_error
from .zoo.intent_vocab import INTENTS, KINDS, ROOMS

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXAMPLES = 20_000
MAX_TEXT = 200
HEADS = ("intent", "kind", "room")


class ExamplesError(ConfigError):
    """An examples file cannot be read, or an example is wrong (names file and line)."""


def _check(value: str | None, valid: tuple[str, ...], head: str) -> str | None:
    if value is not None and value not in valid:
        raise ValueError(f"unknown {head} {value!r}; valid: {', '.join(valid)}")
    return value


class Example(BaseModel):
    """One labelled phrase."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1, max_length=MAX_TEXT, description="What was said.")
    intent: str = Field(description="One of the intent model's intents.")
    kind: str | None = Field(None, description="Device kind, or none; left out: not trained.")
    room: str | None = Field(None, description="Room, or none; left out: not trained.")

    @field_validator("intent")
    @classmethod
    def _intent(cls, value: str) -> str:
        _check(value, INTENTS, "intent")
        return value

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str | None) -> str | None:
        return _check(value, KINDS, "kind")

    @field_validator("room")
    @classmethod
    def _room(cls, value: str | None) -> str | None:
        return _check(value, ROOMS, "room")


M = TypeVar("M", bound=BaseModel)


def _read(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ExamplesError(f"{path}: {size} bytes, more than {MAX_FILE_BYTES}")
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ExamplesError(f"{path}: cannot read examples: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ExamplesError(f"{path}: not UTF-8 text: {exc}") from exc


def parse_yaml_list(text: str, source: str, model: type[M], shape: str) -> list[M]:
    """A YAML list of ``model`` objects (``shape`` describes one in errors); errors say
    ``source:line: index.field: problem``."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ExamplesError(
            f"{source}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"
        ) from exc
    if not isinstance(data, list):
        raise ExamplesError(
            f"{source}: expected a list of examples ({shape}), got {type(data).__name__}"
        )
    if len(data) > MAX_EXAMPLES:
        raise ExamplesError(f"{source}: {len(data)} examples, more than {MAX_EXAMPLES}")
    try:
        return TypeAdapter(list[model]).validate_python(data)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise ExamplesError(format_validation_error(exc, source, root)) from exc


def parse_jsonl_list(text: str, source: str, model: type[M]) -> list[M]:
    """One JSON object per line (blank lines skipped); errors say ``source:line: …``."""
    out: list[M] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(out) >= MAX_EXAMPLES:
            raise ExamplesError(f"{source}:{number}: more than {MAX_EXAMPLES} examples")
        try:
            out.append(model.model_validate(json.loads(line)))
        except ValueError as exc:  # JSONDecodeError and ValidationError are ValueErrors
            if isinstance(exc, ValidationError):
                raise ExamplesError(format_validation_error(exc, f"{source}:{number}")) from exc
            raise ExamplesError(f"{source}:{number}: invalid JSON: {exc}") from exc
    return out


def load_list(path: str | Path, model: type[M], shape: str) -> list[M]:
    """Read a ``.yaml``/``.yml`` or ``.jsonl`` file of ``model`` objects; at least one."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".yaml", ".yml", ".jsonl"):
        raise ExamplesError(f"{p}: examples are a .yaml/.yml or .jsonl file, not {suffix!r}")
    text = _read(p)
    if suffix == ".jsonl":
        examples = parse_jsonl_list(text, str(p), model)
    else:
        examples = parse_yaml_list(text, str(p), model, shape)
    if not examples:
        raise ExamplesError(f"{p}: no examples")
    return examples


def load_examples(path: str | Path) -> list[Example]:
    """Read a ``.yaml``/``.yml`` or ``.jsonl`` examples file; at least one example."""
    return load_list(path, Example, "{text, intent, kind?, room?}")


def label_arrays(examples: list[Example]) -> dict[str, list[int]]:
    """Per head, each example's label index, or -100 (ignored by the loss) when left out."""
    vocab = {"intent": INTENTS, "kind": KINDS, "room": ROOMS}
    out: dict[str, list[int]] = {}
    for head in HEADS:
        labels = [getattr(e, head) for e in examples]
        out[head] = [-100 if v is None else vocab[head].index(v) for v in labels]
    return out
