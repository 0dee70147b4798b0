"""Non-negative least squares (Lawson and Hanson, 1974), in numpy: the fit's only solver.

scipy is not a dependency (it is large and has no use elsewhere); the speed model's problems have
a handful of columns, so the textbook active-set method is exact and fast enough. Deterministic:
ties are broken by the lowest column index.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]


def nnls(a: Array, b: Array, *, max_iter: int | None = None, tol: float = 1e-12) -> Array:
    """``argmin_x ||a x - b||`` subject to ``x >= 0`` (``a``: m×n, ``b``: m)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m, n = a.shape
    if b.shape != (m,):
        raise ValueError(f"b has shape {b.shape}, expected ({m},)")
    limit = max_iter if max_iter is not None else 30 * max(n, 1)
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    scale = max(float(np.abs(a).max(initial=0.0)) * float(np.abs(b).max(initial=0.0)), 1.0)
    for _ in range(limit):
        w = a.T @ (b - a @ x)
        candidates = np.where(~passive & (w > tol * scale))[0]
        if candidates.size == 0:
            break
        j = int(candidates[np.argmax(w[candidates])])
        passive[j] = True
        while True:
            idx = np.where(passive)[0]
            z = np.zeros(n)
            z[idx] = np.linalg.lstsq(a[:, idx], b, rcond=None)[0]
            if np.all(z[idx] > 0):
                x = z
                break
            bad = idx[z[idx] <= 0]
            alpha = float(np.min(x[bad] / (x[bad] - z[bad])))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
    return x
