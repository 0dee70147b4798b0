"""Which Raspberry Pi boards an image can boot, and which device profiles it is built for (pure).

``--device`` names a profile (``pi4``) or a family (``pi``: every 64-bit profile of the family).
A board boots only when the boot partition holds its device tree; Raspberry Pi OS ships the
Raspberry Pi kernel's names (``bcm2710-rpi-3-b-plus.dtb``), Debian's kernel the upstream ones
(``bcm2837-rpi-3-b-plus.dtb``), so either counts. A profile whose device tree is missing is
refused (one profile) or left out with the reason (a family); a boot partition with no device tree
at all says nothing about the boards, and is taken on trust (the build says so).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..devices import DeviceProfile
from .bootpart import ImageBuildError

#: The device trees each Raspberry Pi profile boots with: the Raspberry Pi kernel's name first,
#: then the upstream (Debian) one.
DEVICE_TREES: dict[str, tuple[str, ...]] = {
    "pi-zero-2w": ("bcm2710-rpi-zero-2-w.dtb", "bcm2837-rpi-zero-2-w.dtb"),
    "pi3b-plus": ("bcm2710-rpi-3-b-plus.dtb", "bcm2837-rpi-3-b-plus.dtb"),
    "pi4": ("bcm2711-rpi-4-b.dtb",),
    "pi5": ("bcm2712-rpi-5-b.dtb",),
}


@dataclass(frozen=True, slots=True)
class Targets:
    """The profiles an image is built for; ``family`` when ``--device`` named one."""

    profiles: tuple[DeviceProfile, ...]
    family: str | None
    notes: tuple[str, ...]
    """What was left out or taken on trust, and why (for the build's log and summary)."""


def boots(profile: str, names: Sequence[str]) -> bool | None:
    """True when the boot partition ``names`` hold the profile's device tree, False when they
    hold other device trees but not its own, None when they hold none (nothing to tell)."""
    lower = {n.lower() for n in names}
    if not any(n.endswith(".dtb") for n in lower):
        return None
    return any(dtb in lower for dtb in DEVICE_TREES.get(profile, ()))


def targets(requested: str, profiles: Sequence[DeviceProfile], names: Sequence[str]) -> Targets:
    """Resolve ``--device`` against the known profiles and the boot partition's files."""
    by_name = {p.name: p for p in profiles}
    if requested in by_name:
        p = by_name[requested]
        ok = boots(p.name, names) if p.family == "pi" else True
        if ok is False:
            wanted = " or ".join(DEVICE_TREES.get(p.name, ("its device tree",)))
            raise ImageBuildError(
                f"--device {requested}: the image cannot boot {p.title}: its boot partition has "
                f"no {wanted} (a kernel too old for that board?)"
            )
        trust = () if ok else (f"no device trees on the boot partition: {p.name} taken on trust",)
        return Targets((p,), None, trust)
    family = sorted(
        (p for p in profiles if p.family == requested and p.arch == "aarch64"),
        key=lambda p: p.name,
    )
    if not family:
        known = ", ".join(sorted({p.family for p in profiles if p.family}))
        raise ImageBuildError(
            f"--device {requested}: no such profile or family (profiles: "
            f"{', '.join(sorted(by_name))}; families: {known})"
        )
    chosen: list[DeviceProfile] = []
    notes: list[str] = []
    for p in family:
        ok = boots(p.name, names)
        if ok is False:
            notes.append(f"{p.name} left out: no {' or '.join(DEVICE_TREES[p.name])}")
        else:
            chosen.append(p)
            if ok is None:
                notes.append(f"{p.name}: no device trees on the boot partition, taken on trust")
    if not chosen:
        raise ImageBuildError(
            f"--device {requested}: the image boots none of the family's 64-bit boards "
            f"({'; '.join(notes)})"
        )
    return Targets(tuple(chosen), requested, tuple(notes))
