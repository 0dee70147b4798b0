"""Choosing a variant for a device: explicit rules over measured figures, no I/O.

The rules, in order (each line of :attr:`ChoiceRecord.rules` says what it eliminated):

1. measured: variants that were skipped or failed to run are out;
2. quality: the drop against fp32 (accuracy points on the evaluation set, or without one, points
   of top-1 disagreement with fp32 on the calibration data) is within the budget;
3. runtime: the variant's runtime is one the device has (``profile.runtimes``);
4. RAM: peak memory fits ``profile.model_budget_mb``;
5. storage: the file fits ``profile.storage_budget_mb``;
6. int8 only when it pays: an int8 variant whose estimated latency on the device is above its
   fp32 counterpart's is out, unless that counterpart failed rule 4 or 5 (size forces int8);
7. fastest estimated p50 on the device; variants within ``tie`` (5%) of the fastest count as
   tied, and the smallest file among them wins (then the lower p99, then the name).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..devices.profile import DeviceProfile
from .card import ChoiceRecord, Figures, VariantRecord

MIB = 1024 * 1024
TIE = 0.05
EPSILON = 1e-9


class _Rules:
    """The variants still in the running and the record of the rules applied so far."""

    def __init__(self) -> None:
        self.rules: list[str] = []
        self.eliminated: dict[str, str] = {}
        self.alive: dict[str, tuple[VariantRecord, Figures]] = {}

    def apply(self, title: str, test: dict[str, str | None]) -> None:
        """Eliminate every alive variant whose entry in ``test`` is a reason."""
        alive = self.alive
        out = {name: why for name, why in test.items() if why is not None and name in alive}
        for name, why in out.items():
            self.eliminated[name] = f"{title}: {why}"
            del alive[name]
        if out:
            listed = "; ".join(f"{name} ({why})" for name, why in out.items())
            self.rules.append(f"{title}: eliminated {listed}")
        else:
            self.rules.append(f"{title}: all {len(alive)} remaining pass")


def _quality(f: Figures, budget: float) -> str | None:
    if f.drop is None:
        return None
    if f.drop > budget + EPSILON:
        return f"drop {f.drop:.2f} > {budget:g}"
    return None


def _fits_ram(f: Figures, ram: float) -> str | None:
    if f.peak_memory_mb is None or f.peak_memory_mb <= ram:
        return None
    return f"peak {f.peak_memory_mb:.1f} MiB > {ram:g} MiB"


def _int8_pays(
    v: VariantRecord,
    f: Figures,
    figures: dict[str, Figures],
    size_failed: set[str],
    forced: list[str],
) -> str | None:
    """Rule 6: why an int8 variant slower than its counterpart is out (None: it stays); one
    kept only because its counterpart does not fit is noted in ``forced``."""
    if v.precision != "int8":
        return None
    ref = v.base if v.base in figures else "fp32"
    ref_f = figures.get(ref)
    if ref_f is None or f.estimate_p50_ms <= ref_f.estimate_p50_ms:
        return None
    if ref in size_failed:
        forced.append(f"{v.name} is slower than {ref} but {ref} does not fit")
        return None
    return f"est. {f.estimate_p50_ms:.4g} ms > {ref} {ref_f.estimate_p50_ms:.4g} ms and {ref} fits"


def choose(
    variants: Sequence[VariantRecord],
    profile: DeviceProfile,
    budget: float,
    *,
    budget_unit: str = "points of accuracy",
    tie: float = TIE,
) -> ChoiceRecord:
    """Apply the rules of the module docstring; pure."""
    state = _Rules()
    rules, eliminated, alive, apply = state.rules, state.eliminated, state.alive, state.apply

    unmeasured = []
    for v in variants:
        if v.figures is None:
            why = f"skipped: {v.skipped}" if v.skipped else f"not measured: {v.error}"
            eliminated[v.name] = why
            unmeasured.append(f"{v.name} ({why})")
        else:
            alive[v.name] = (v, v.figures)
    rules.append(
        f"measured: {len(alive)} of {len(variants)} variants"
        + (f"; out: {'; '.join(unmeasured)}" if unmeasured else "")
    )

    have_drop = any(f.drop is not None for _, f in alive.values())
    title = f"quality within {budget:g} {budget_unit} of fp32"
    if not have_drop:
        title += " (no quality figure available: rule not applied)"
    apply(title, {n: _quality(f, budget) for n, (_, f) in alive.items()})

    apply(
        f"runtime available on {profile.name} ({', '.join(profile.runtimes)})",
        {
            n: None if v.runtime in profile.runtimes else f"{v.runtime} has no wheels there"
            for n, (v, _) in alive.items()
        },
    )

    size_failed: set[str] = set()
    ram = profile.model_budget_mb.value

    test = {n: _fits_ram(f, ram) for n, (_, f) in alive.items()}
    size_failed |= {n for n, why in test.items() if why}
    apply(f"fits the RAM budget ({ram:g} MiB)", test)

    storage = profile.storage_budget_mb.value
    test = {
        n: None
        if f.size_bytes / MIB <= storage
        else f"{f.size_bytes / MIB:.2f} MiB > {storage:g} MiB"
        for n, (_, f) in alive.items()
    }
    size_failed |= {n for n, why in test.items() if why}
    apply(f"fits the storage budget ({storage:g} MiB)", test)

    figures = {v.name: v.figures for v in variants if v.figures is not None}
    forced: list[str] = []

    apply(
        "int8 only when faster than its fp32 counterpart (unless size forces it)",
        {n: _int8_pays(v, f, figures, size_failed, forced) for n, (v, f) in alive.items()},
    )
    if forced:
        rules[-1] += f"; kept because size forces it: {'; '.join(forced)}"

    if not alive:
        rules.append("fastest: nothing left to choose from")
        return ChoiceRecord(
            variant=None,
            reason="no variant meets the rules: " + rules_summary(eliminated),
            rules=rules,
            eliminated=eliminated,
            qualified=[],
        )

    return _fastest(
        list(alive.values()), profile, budget, budget_unit, tie, rules, eliminated, forced
    )


def _fastest(
    alive: list[tuple[VariantRecord, Figures]],
    profile: DeviceProfile,
    budget: float,
    budget_unit: str,
    tie: float,
    rules: list[str],
    eliminated: dict[str, str],
    forced: list[str],
) -> ChoiceRecord:
    """Rule 7 over the variants that passed the others (at least one): the fastest, the
    smallest among those tied; appends its line to ``rules``."""
    ranked = sorted(alive, key=lambda vf: (vf[1].estimate_p50_ms, vf[0].name))
    best_p50 = ranked[0][1].estimate_p50_ms
    tied = [vf for vf in ranked if vf[1].estimate_p50_ms <= best_p50 * (1 + tie) + EPSILON]
    pick, pf = min(tied, key=lambda vf: (vf[1].size_bytes, vf[1].p99_ms, vf[0].name))
    tied_names = ", ".join(v.name for v, _ in tied)
    rules.append(
        f"fastest estimated p50 on {profile.name}: {ranked[0][0].name} "
        f"({best_p50:.4g} ms); within {tie * 100:g}%: {tied_names}; smallest of those: "
        f"{pick.name} ({pf.size_bytes} bytes)"
    )
    quality_text = ""
    if pf.drop is not None:
        quality_text = f", quality drop {pf.drop:.2f} {budget_unit} (budget {budget:g})"
    reason = (
        f"{pick.name} ({pick.runtime}, {pick.precision}) is the "
        + (
            "fastest"
            if len(tied) == 1
            else f"smallest of the {len(tied)} fastest (within {tie:.0%})"
        )
        + f" of the {len(alive)} variants that pass every rule on {profile.name}: "
        f"est. p50 {pf.estimate_p50_ms:.4g} ms on the device"
        + (
            f" (range {pf.estimate_low_ms:.4g}-{pf.estimate_high_ms:.4g})"
            if pf.estimate_low_ms is not None and pf.estimate_high_ms is not None
            else f" ({pf.p50_ms:.4g} ms here × {pf.speed_factor:g})"
        )
        + f", {pf.size_bytes} bytes"
        + quality_text
        + (f", peak memory {pf.peak_memory_mb:.1f} MiB" if pf.peak_memory_mb is not None else "")
        + (f"; {forced[0]}" if forced and pick.precision == "int8" else "")
    )
    return ChoiceRecord(
        variant=pick.name,
        reason=reason,
        rules=rules,
        eliminated=eliminated,
        qualified=[v.name for v, _ in ranked],
    )


def rules_summary(eliminated: dict[str, str]) -> str:
    return "; ".join(f"{name}: {why}" for name, why in eliminated.items())
