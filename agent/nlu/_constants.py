"""Constants shared by the plain-language router's modules."""

from __future__ import annotations

from typing import Literal

Layer = Literal["exact", "grammar", "model", "llm"]
Mode = Literal["one", "all"]
LAYERS: tuple[Layer, ...] = ("exact", "grammar", "model")
#: With the optional 4th layer, an on-device LLM (off unless ``Router(llm=...)`` is given).
ROUTER_LAYERS: tuple[Layer, ...] = (*LAYERS, "llm")

DEFAULT_MODEL = "zoo:intent"
DEFAULT_THRESHOLD = 0.6
MAX_CANDIDATES = 3
NO_VERB = "no command verb"
NOT_RUNNABLE_CAP = 0.5
"""A candidate that cannot run as is (missing or invalid input) reports at most this confidence."""


def wordset(text: str) -> frozenset[str]:
    """The space-separated words of ``text``, as a set (for word lists written as prose)."""
    return frozenset(text.split())
