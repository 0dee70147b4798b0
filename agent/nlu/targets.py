"""Targets: which skills, on which devices, an action and the text's slots select.

A :class:`Target` is one skill with the ``where`` that selects its devices. :class:`Targets`
holds the catalog's per-device tags and kind concepts and answers for every layer (grammar,
manifest, model), with the reason when nothing is selected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..protocol import SkillSpec
from .catalog import KIND_TAGS, Catalog, kind_concept, skill_choices
from .slots import Slots


@dataclass(frozen=True)
class Target:
    skill: str
    where: dict[str, str]
    devices: tuple[str, ...]
    spec: SkillSpec


def where_text(where: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in where.items()) or "any device"


def skills_of(targets: Iterable[Target]) -> frozenset[str]:
    return frozenset(t.skill for t in targets)


def not_singled_out(device: str, selected: Sequence[str]) -> str:
    if device not in selected:
        return f"{device} does not have it"
    others = ", ".join(d for d in selected if d != device)
    return f"{device}'s tags also select {others}: the where cannot name {device} alone"


def list_text(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


class Targets:
    """The catalog seen by device: tags and kind concepts, and the targets a reading selects."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.tags_of = {d.device: dict(d.tags) for d in catalog.devices}
        self.concept_of = {d.device: kind_concept(d.tags.get("kind")) for d in catalog.devices}

    def kind_tags(self, concept: str) -> list[str]:
        kinds = self.catalog.kinds
        tags = [t for t in KIND_TAGS.get(concept, (concept,)) if t in kinds]
        return tags or ([concept] if concept in kinds else [])

    def targets(
        self, action: str, slots: Slots, cues: Sequence[str]
    ) -> tuple[list[Target], str, bool]:
        """Skills performing ``action`` on the devices the slots select. Returns the targets,
        why there are none, and whether a kind cue (not a named kind) selected them."""
        if slots.foreign_rooms and not slots.rooms:
            rooms = ", ".join(slots.foreign_rooms)
            return (
                [],
                f"no device is in the {rooms} (rooms: {list_text(self.catalog.rooms)})",
                False,
            )
        base: dict[str, str] = {}
        if slots.device:  # a device named by its id: its tags, whatever else the text says
            base = dict(self.tags_of[slots.device])
            found = self._over(action, base, [None], [(None, None)])
            return found, self._none_why(action, base, [None], [(None, None)]), False
        room_options: list[str | None] = list(slots.rooms) or [None]
        kind_options: list[tuple[str | None, str | None]]
        if slots.kinds:
            kind_options = [(c, t) for c in slots.kinds for t in self.kind_tags(c)]
            if not kind_options:
                # "any rings at the front door": no door, but the doorbell the words point at.
                for concept in (c for c in cues if c not in slots.kinds):
                    options = [(concept, t) for t in self.kind_tags(concept)]
                    found = self._over(action, base, room_options, options)
                    if found:
                        return found, "", True
                named = ", ".join(slots.kinds)
                return [], f"no {named} device (kinds: {list_text(self.catalog.kinds)})", False
            found = self._over(action, base, room_options, kind_options)
            if found:
                return found, "", False
            return [], self._none_why(action, base, room_options, kind_options), False
        for concept in cues:
            kind_options = [(concept, t) for t in self.kind_tags(concept)]
            found = self._over(action, base, room_options, kind_options)
            if found:
                return found, "", True
        kind_options = [(None, None)]
        if action == "query_state" and not base and not slots.rooms and slots.mode == "one":
            return [], "the question names no device, room or kind", False
        found = self._over(action, base, room_options, kind_options)
        if found:
            return found, "", False
        return [], self._none_why(action, base, room_options, kind_options), False

    def _over(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> list[Target]:
        out: list[Target] = []
        for room in rooms:
            for concept, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                by_skill: dict[str, list[str]] = {}
                specs: dict[str, SkillSpec] = {}
                for device in self.catalog.matching(where):
                    own = concept or kind_concept(device.tags.get("kind"))
                    for name in skill_choices(action, own):
                        spec = device.skill(name)
                        if spec is not None:
                            by_skill.setdefault(name, []).append(device.device)
                            specs.setdefault(name, spec)
                            break
                out.extend(
                    Target(name, where, tuple(devices), specs[name])
                    for name, devices in by_skill.items()
                )
        return out

    def _none_why(
        self,
        action: str,
        base: Mapping[str, str],
        rooms: Sequence[str | None],
        kinds: Sequence[tuple[str | None, str | None]],
    ) -> str:
        wheres = []
        for room in rooms:
            for _, tag in kinds:
                where = dict(base)
                if room:
                    where["room"] = room
                if tag:
                    where["kind"] = tag
                wheres.append(where)
        concepts = {c for c, _ in kinds}
        names = sorted({n for c in concepts for n in skill_choices(action, c)})
        selected = {d.device for w in wheres for d in self.catalog.matching(w)}
        if not selected:
            return f"no device with {' or '.join(where_text(w) for w in wheres)}"
        return (
            f"no device with {' or '.join(where_text(w) for w in wheres)} has "
            f"{' or '.join(names) or 'a skill for it'}"
        )

    def for_skill(self, name: str, slots: Slots) -> tuple[list[Target], str]:
        """The text says a skill's own name ("read temperature", "recent rings")."""
        base: dict[str, str] = {}
        if len(slots.rooms) == 1:
            base["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self.kind_tags(c)]
        options = [{**base, "kind": t} for t in tags] or [base]
        if slots.device:
            base = dict(self.tags_of[slots.device])
            options = [base]
        out = [
            Target(name, w, self.catalog.devices_with(name, w), spec)
            for w in options
            if (spec := self.catalog.spec(name, w)) is not None
        ]
        return out, f"no device with {where_text(base)} has {name}"

    def selection(self, slots: Slots) -> tuple[dict[str, str], bool]:
        """The ``where`` the text's rooms, kinds or device id make, and whether it made one."""
        if slots.device:
            return dict(self.tags_of[slots.device]), True
        base: dict[str, str] = {}
        if len(slots.rooms) == 1:
            base["room"] = slots.rooms[0]
        tags = [t for c in slots.kinds for t in self.kind_tags(c)]
        if len(tags) == 1:
            base["kind"] = tags[0]
        return base, bool(base)

    def narrow(self, device: str, skill: str) -> dict[str, str]:
        """The fewest of ``device``'s tags that single it out among the devices with ``skill``."""
        tags = self.tags_of[device]
        for keys in (("kind",), ("room",), ("kind", "room")):
            where = {k: tags[k] for k in keys if k in tags}
            if where and self.catalog.devices_with(skill, where) == (device,):
                return where
        return {}
