"""The in-memory broker's topic trie (pure data, no I/O): subscriptions, groups, retained messages.

One node per topic level. A subscription sits on the node of its filter (``a/+/c`` on the path
``a`` -> ``+`` -> ``c``), shared-subscription groups beside the plain ones, a retained message on
the node of its topic. :func:`collect` routes a topic by walking only the branches that can match
(the level itself, ``+``, ``#``); :func:`collect_retained` walks the other way, a filter against
stored topics. Neither scans every client or topic, which is what lets the simulator hold
100,000 clients. ``$``-topics are not matched by a leading wildcard (MQTT 5, 4.7.2).
"""

from __future__ import annotations

import sys
from typing import Generic, NamedTuple, TypeVar

from .base import Props

C = TypeVar("C")
"""The broker's client type (hashable: a node keys subscriptions by client)."""


class Msg(NamedTuple):
    """A message as the broker holds it; ``expires_at`` is on the broker clock's monotonic base."""

    topic: str
    payload: bytes
    qos: int
    props: Props
    expires_at: float | None


class Group(Generic[C]):
    """A shared subscription's members, served round-robin."""

    __slots__ = ("members", "next")

    def __init__(self) -> None:
        self.members: list[tuple[C, str]] = []
        self.next = 0


class Node(Generic[C]):
    __slots__ = ("children", "groups", "retained", "subs")

    def __init__(self) -> None:
        self.children: dict[str, Node[C]] = {}
        self.subs: dict[C, str] | None = None
        self.groups: dict[str, Group[C]] | None = None
        self.retained: Msg | None = None


def path(root: Node[C], levels: list[str], create: bool) -> list[Node[C]] | None:
    """The nodes from ``root`` down ``levels`` (created when missing if ``create``)."""
    nodes = [root]
    for level in levels:
        child = nodes[-1].children.get(level)
        if child is None:
            if not create:
                return None
            child = nodes[-1].children[sys.intern(level)] = Node()
        nodes.append(child)
    return nodes


def prune(nodes: list[Node[C]], levels: list[str]) -> None:
    """Remove the empty nodes at the end of a :func:`path`."""
    for i in range(len(levels), 0, -1):
        n = nodes[i]
        if n.children or n.subs or n.groups or n.retained is not None:
            return
        del nodes[i - 1].children[levels[i - 1]]


def collect(node: Node[C], levels: list[str], i: int, out: list[tuple[C, str]]) -> None:
    """Append to ``out`` each (client, filter) matching the topic ``levels`` (from level ``i``).

    A shared group contributes its next member: collecting advances the round-robin."""
    wild = i > 0 or not levels[0].startswith("$")
    if wild and (h := node.children.get("#")) is not None:
        _add_targets(h, out)
    if i == len(levels):
        _add_targets(node, out)
        return
    if (c := node.children.get(levels[i])) is not None:
        collect(c, levels, i + 1, out)
    if wild and (p := node.children.get("+")) is not None:
        collect(p, levels, i + 1, out)


def _add_targets(node: Node[C], out: list[tuple[C, str]]) -> None:
    if node.subs:
        out.extend(node.subs.items())
    if node.groups:
        for g in node.groups.values():
            out.append(g.members[g.next % len(g.members)])
            g.next += 1


def collect_retained(node: Node[C], levels: list[str], i: int, out: list[Msg]) -> None:
    """Append to ``out`` the retained messages whose topics match the filter ``levels``."""
    if i == len(levels):
        if node.retained is not None:
            out.append(node.retained)
        return
    level = levels[i]
    if level == "#":
        stack = [(node, i)]
        while stack:
            n, depth = stack.pop()
            if n.retained is not None:  # "a/#" matches "a" too
                out.append(n.retained)
            for key, child in n.children.items():
                if key not in ("+", "#") and not (depth == 0 and key.startswith("$")):
                    stack.append((child, depth + 1))
    elif level == "+":
        for key, child in node.children.items():
            if key not in ("+", "#") and not (i == 0 and key.startswith("$")):
                collect_retained(child, levels, i + 1, out)
    elif (c := node.children.get(level)) is not None:
        collect_retained(c, levels, i + 1, out)
