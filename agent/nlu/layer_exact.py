"""Layer 1, exact: the text is a skill name, or ``skill_name key=value …`` (see the package doc).

Keys naming an input property of the skill go to ``input``, keys naming a device tag go to
``where``, ``device=ID`` becomes that device's tags and ``mode=all`` sets the mode. A call in
this form that cannot run is reported as such; no later layer second-guesses it.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from ._constants import NOT_RUNNABLE_CAP, Mode
from .catalog import Interpretation
from .inputs import check_input, properties
from .readings import Candidate
from .slots import Request
from .targets import Targets, not_singled_out, where_text


def exact(request: Request, targets: Targets) -> tuple[list[Candidate], str | None]:
    """The exact-form reading of ``request``, if it is in that form, and why it cannot run."""
    text = request.text
    try:
        tokens = shlex.split(text)
    except ValueError:
        return [], None
    if not tokens or tokens[0] not in targets.catalog.skill_names:
        return [], None
    name, args = tokens[0], tokens[1:]
    if not all("=" in a and not a.startswith("=") for a in args):
        return [], None  # words after the name: a sentence, not a call
    input_keys = {k for d in targets.catalog.devices if (s := d.skill(name)) for k in properties(s)}
    tag_keys = set(targets.catalog.tags)
    value: dict[str, Any] = {}
    where: dict[str, str] = {}
    mode: Mode = "one"
    named: str | None = None
    problems: list[str] = []
    for arg in args:
        key, _, raw = arg.partition("=")
        if key in input_keys:
            value[key] = _json_or_str(raw)
        elif key in tag_keys:
            where[key] = raw
        elif key == "device" and raw not in targets.tags_of:
            problems.append(f"no device {raw!r}")
        elif key == "device":
            named = raw
            where.update(targets.tags_of[raw])
        elif key == "mode" and raw in ("one", "all"):
            mode = "all" if raw == "all" else "one"
        else:
            problems.append(f"{key!r} is neither an input of {name} nor a device tag")
    devices = targets.catalog.devices_with(name, where)
    spec = targets.catalog.spec(name, where)
    if spec is None:
        problems.append(f"no device with {where_text(where)} has {name}")
    elif named is not None and devices != (named,) and mode == "one":
        problems.append(not_singled_out(named, devices))
    else:
        problem = check_input(spec, value)
        if problem:
            problems.append(problem)
    explanation = (
        f"exact: skill name {name!r}"
        + (f", input {json.dumps(value, sort_keys=True)}" if value else "")
        + f", where {where_text(where)}: {len(devices)} device(s)"
    )
    if problems:
        explanation += "; cannot run: " + "; ".join(problems)
    interp = Interpretation(
        name,
        value,
        where,
        mode,
        1.0 if not problems else NOT_RUNNABLE_CAP,
        "exact",
        explanation,
    )
    why = f"exact: {'; '.join(problems)}" if problems else None
    return [Candidate(interp, "; ".join(problems) or None)], why


def _json_or_str(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw
