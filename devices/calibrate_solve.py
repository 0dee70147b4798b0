"""The numerical core of the calibration: design matrix, grid search, NNLS with priors, spread.

For each parallel fraction ``p`` and layer-size exponent of a fixed grid, the inverse rates (ms
per million units of each class), the per-node cost and the per-node-per-extra-thread cost solve
a non-negative least-squares problem on rows divided by the observed time, so the error
minimised is relative (``Σ (predicted/observed − 1)²``): a 300 ms model does not outweigh a 10 ms
one. Runtimes other than the base (ncnn) get one time factor each, refitted in a few alternating
rounds. Classes the figures barely exercise are pulled towards a prior by weak extra rows, so a
rate is never absurd. The thread and size arithmetic is :func:`edgeagent.devices.speed.class_scale`,
the estimator's own, so fit and estimate cannot drift apart. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .nnls import Array, nnls
from .speed import class_scale
from .workload import WORK_CLASSES, Precision, Workload

BASE_RUNTIME = "ncnn"
"""The runtime the rates are of: most published Raspberry Pi figures are ncnn's."""

P_GRID = tuple(round(i * 0.05, 3) for i in range(21))
"""Parallel fractions of the compute classes tried (0, 0.05, …, 1)."""

PM_GRID: tuple[float, ...] = ()
"""Parallel fractions of the memory-bound classes tried (fc_mweights, elementwise_melems), or
empty: one p for all. Tried with (0, 0.25, 0.5, 0.75, 1): held-out errors did not improve and
the int8 fits (16 figures) overfitted, so it is off."""

MEMORY_CLASSES = tuple(
    1 if name in ("fc_mweights", "elementwise_melems") else 0 for name in WORK_CLASSES
)
"""Per class: 0 uses the compute parallel fraction, 1 the memory-bound one."""

SHAPE_PRIOR_WEIGHT = 0.3
"""Prior weight when int8 borrows the float fit's shape (int8 data are thin: 6-8 models)."""

PRIOR_WEIGHT = 0.05
"""Weight of each prior row against a data row of weight 1 (relative error units): a rate twice
the prior costs as much as one figure 5 % off, so identified classes follow the data."""

ELEMENTWISE_PRIOR_MACS = 4.0
"""Prior when even the pooled fit cannot see elementwise work: an element costs 4 MACs."""

WEAK_SHARE = 0.03
"""A class under this share of every fitted model's predicted time is "weakly identified"."""

SIZE_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
"""Layer-size exponents tried (see :func:`edgeagent.devices.speed.layer_size_factor`)."""

THREAD_NODE_COST = True
"""Fit a per-node cost that grows with each extra thread (ncnn and XNNPACK split every layer
across threads and join them after it: a barrier per op), so small models with many ops scale
worse than big ones, as the published 1- and 4-thread figures show."""

MIN_SPREAD = 0.10
ROUNDS = 6
ONNXRUNTIME_ASSUMED_SPREAD = 0.5
_K = len(WORK_CLASSES)
_COLS = _K + 2  # the classes, then nodes, then nodes × (threads − 1)


@dataclass(frozen=True)
class Observation:
    """One measured time of one model on one device (published or recorded)."""

    model: str
    precision: Precision
    threads: int
    ms: float
    runtime: str
    clock_ghz: float | None = None
    noisy: bool = False
    bits: int = 64
    source: str = ""


HeldOut = set[str] | Callable[[str, str], bool]
"""Models never fitted on: names, or a test of (model, precision) (see ``Holdout.holds``)."""


def is_held_out(held_out: HeldOut, ob: Observation) -> bool:
    """Whether ``ob`` is a figure of a held-out model."""
    if callable(held_out):
        return held_out(ob.model, ob.precision)
    return ob.model in held_out


@dataclass(frozen=True)
class Row:
    obs: Observation
    work: Workload
    ms: float  # observed, normalised to the profile's clock


@dataclass(frozen=True)
class Fit:
    x: Array  # ms per million units per class, then ms per node
    p: tuple[float, float, float]  # parallel fraction (compute, memory-bound), size exponent
    factors: dict[str, float]
    loss: float
    weak: tuple[str, ...]


class CalibrationError(ValueError):
    """The figures cannot be fitted (none for the device, unknown models, ...)."""


def _scale(work: Workload, p: tuple[float, float, float], c: int, threads: int) -> float:
    """Thread and size multiplier of class ``c`` (the estimator's own arithmetic)."""
    if MEMORY_CLASSES[c]:
        return class_scale(work, p[1], 0.0, threads)
    return class_scale(work, p[0], p[2], threads)


def _design(rows: Sequence[Row], p: tuple[float, float, float]) -> Array:
    a = np.zeros((len(rows), _COLS))
    for i, row in enumerate(rows):
        scale = np.array([_scale(row.work, p, c, row.obs.threads) for c in range(_K)])
        a[i, :_K] = np.array(row.work.vector()) * scale
        a[i, _K] = row.work.nodes
        a[i, _K + 1] = row.work.nodes * (row.obs.threads - 1) if THREAD_NODE_COST else 0.0
    return a


def _runtime_scale(rows: Sequence[Row], factors: dict[str, float]) -> Array:
    return np.array([factors.get(r.obs.runtime, 1.0) for r in rows])


def _solve(
    rows: Sequence[Row],
    pooled: bool,
    prior: Array | None,
    shape: Array | None = None,
    weight: float = 0.0,
    grid: Sequence[tuple[float, float, float]] | None = None,
    nodes: Array | None = None,
) -> Fit:
    """Best fit over ``grid`` (default: every parallel fraction × size exponent); the first of
    equal losses wins, so the result is deterministic. ``nodes`` (ms per op, ms per op per extra
    thread) fixes the per-op costs instead of fitting them."""
    obs = np.array([r.ms for r in rows])
    others = sorted({r.obs.runtime for r in rows} - {BASE_RUNTIME})
    has_base = any(r.obs.runtime == BASE_RUNTIME for r in rows)
    best: Fit | None = None
    if grid is None:
        pairs = [(pc, pm) for pc in P_GRID for pm in PM_GRID] or [(pc, pc) for pc in P_GRID]
        grid = [(pc, pm, b) for b in SIZE_GRID for pc, pm in pairs]
    for p in grid:
        a = _design(rows, p)
        if shape is not None:
            a = np.column_stack([a[:, :_K] @ shape, a[:, _K], a[:, _K + 1]])
        elif pooled:
            a = np.column_stack([a[:, :4].sum(axis=1), a[:, 4], a[:, _K], a[:, _K + 1]])
        node_cols = [a.shape[1] - 2, a.shape[1] - 1]  # every layout ends with the op columns
        offset = np.zeros(len(rows)) if nodes is None else a[:, node_cols] @ nodes
        fit_a = a.copy()
        if nodes is not None:
            fit_a[:, node_cols] = 0.0
        factors = {r: 1.0 for r in others}
        x = np.zeros(a.shape[1])
        alternate = bool(others and has_base)
        for _ in range(ROUNDS if alternate else 1):
            rt = _runtime_scale(rows, factors) / obs
            scaled = fit_a * rt[:, None]
            target = np.ones(len(rows)) - offset * rt
            if prior is not None:
                k = len(WORK_CLASSES)
                extra = np.zeros((k, a.shape[1]))
                extra[np.arange(k), np.arange(k)] = weight / prior[:k]
                scaled = np.vstack([scaled, extra])
                target = np.concatenate([target, np.full(k, weight)])
            x = nnls(scaled, target)
            if nodes is not None:
                x[node_cols] = nodes
            base_pred = a @ x
            for r in others if has_base else []:
                ok = np.array([row.obs.runtime == r for row in rows]) & (base_pred > 0)
                if ok.any():
                    logs = np.log(obs[ok] / base_pred[ok])
                    factors[r] = float(np.exp(np.mean(logs)))
        rel = (a @ x) * _runtime_scale(rows, factors) / obs - 1.0
        loss = float(np.sum(rel**2))
        if best is None or loss < best.loss - 1e-12:
            best = Fit(x=x, p=p, factors=factors, loss=loss, weak=())
    assert best is not None
    return best


def fit_rows(
    rows: Sequence[Row],
    shape: Array | None = None,
    grid: Sequence[tuple[float, float, float]] | None = None,
    nodes: Array | None = None,
) -> Fit:
    """A prior from a one-parameter fit, then the per-class fit pulled towards it.

    Without ``shape`` the prior is the pooled fit (one rate for every multiply-accumulate);
    with ``shape`` (another precision's inverse rates, for thin int8 data) it is that shape
    times one fitted scale, so int8 borrows the float fit's class structure. ``nodes`` fixes the
    per-op costs (int8 takes the float fit's: dispatching an op costs the same whatever its
    arithmetic, and six to eight large int8 models cannot identify it; fitted freely it came out
    at 1.3 ms per op on the Zero 2 W, which made every small int8 model slower than fp32).
    """
    weight = PRIOR_WEIGHT
    if shape is not None:
        scaled = _solve(rows, pooled=False, prior=None, shape=shape, grid=grid, nodes=nodes)
        prior = shape * (scaled.x[0] if scaled.x[0] > 0 else 1.0)
        weight = SHAPE_PRIOR_WEIGHT
    else:
        pooled = _solve(rows, pooled=True, prior=None, grid=grid)
        mac = (
            pooled.x[0]
            if pooled.x[0] > 0
            else float(np.median([r.ms for r in rows]))
            / max(float(np.median([r.work.total_mmac for r in rows])), 1e-9)
        )
        elem = pooled.x[1] if pooled.x[1] > 0 else ELEMENTWISE_PRIOR_MACS * mac
        prior = np.array([mac, mac, mac, mac, elem])
    fit = _solve(rows, pooled=False, prior=prior, weight=weight, grid=grid, nodes=nodes)
    x = fit.x.copy()
    a = _design(rows, fit.p)
    pred = a @ x
    weak: list[str] = []
    for c, name in enumerate(WORK_CLASSES):
        if x[c] <= 0:
            x[c] = prior[c]
        share = float(np.max(a[:, c] * x[c] / np.maximum(pred, 1e-12)))
        if share < WEAK_SHARE:
            weak.append(name)
    return Fit(x=x, p=fit.p, factors=fit.factors, loss=fit.loss, weak=tuple(weak))


def predict_ms(
    fit_x: Sequence[float],
    p: tuple[float, float, float],
    factor: float,
    work: Workload,
    threads: int,
) -> float:
    """The fitted model's time (used for residuals before the rates are rounded)."""
    body = 0.0
    for c, (w, x) in enumerate(zip(work.vector(), fit_x[:_K], strict=True)):
        body += w * x * _scale(work, p, c, threads)
    per_node = fit_x[_K] + fit_x[_K + 1] * (threads - 1)
    return (body + work.nodes * per_node) * factor


def _neighbours(params: tuple[float, float, float]) -> list[tuple[float, float, float]]:
    """``params`` and the grid points one step away in p and in the size exponent."""

    def near(grid: Sequence[float], value: float) -> list[float]:
        i = min(range(len(grid)), key=lambda j: abs(grid[j] - value))
        return list(grid[max(i - 1, 0) : i + 2])

    tied = params[0] == params[1]
    return [
        (pc, pc if tied else params[1], b)
        for b in near(SIZE_GRID, params[2])
        for pc in near(P_GRID, params[0])
    ]


def lomo_spread(
    rows: Sequence[Row],
    shape: Array | None,
    params: tuple[float, float, float],
    nodes: Array | None = None,
) -> float | None:
    """90th percentile of |ratio − 1| predicting each model from a fit without it.

    The rates, node costs and runtime factors are refitted without the model, the parallel
    fraction and size exponent searched again next to the full fit's (``params``, one grid step
    either way): the full grid per left-out model costs 15x more and moves the spread by a few
    hundredths.
    """
    grid = _neighbours(params)
    models = sorted({r.obs.model for r in rows})
    errors: list[float] = []
    for m in models:
        train = [r for r in rows if r.obs.model != m]
        if len({r.obs.model for r in train}) < 2:
            continue
        fit = fit_rows(train, shape, grid=grid, nodes=nodes)
        for r in rows:
            if r.obs.model == m:
                f = fit.factors.get(r.obs.runtime, 1.0)
                pred = predict_ms(list(fit.x), fit.p, f, r.work, r.obs.threads)
                errors.append(abs(pred / r.ms - 1.0))
    if not errors:
        return None
    return float(np.quantile(np.array(errors), 0.9))
