"""Load YAML into pydantic models with errors that name the file, the line and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def node_at(node: yaml.Node, loc: tuple[int | str, ...]) -> yaml.Node:
    """The node an error location points at; for a mapping entry, its key (the line to fix)."""
    for i, key in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(key):
                    node = k if i == len(loc) - 1 else v
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if key >= len(node.value):
                return node
            node = node.value[key]
        else:
            return node
    return node


def format_validation_error(
    exc: ValidationError, source: str, root: yaml.Node | None = None
) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = source
        if root is not None:
            node = node_at(root, loc)
            where = f"{source}:{node.start_mark.line + 1}"
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see --help or the docs for valid fields)"
        lines.append(f"{where}: {field}: {msg}")
    return "\n".join(lines)


def load_yaml_model(
    path: str | Path, model: type[M], *, context: dict[str, Any] | None = None
) -> M:
    """Read ``path`` and validate it as ``model``; raise :class:`ConfigError` on any problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read config: {exc.strerror or exc}") from exc
    return parse_yaml_model(text, model, source=str(p), context=context)


def parse_yaml_model(
    text: str, model: type[M], *, source: str = "<string>", context: dict[str, Any] | None = None
) -> M:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{line}: invalid YAML: {problem}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from exc
