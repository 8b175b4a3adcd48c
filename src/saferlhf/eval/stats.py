"""Bootstrap confidence intervals (seeded, vectorised with numpy).

``bootstrap_ci(values)`` draws ``n_boot`` resamples of the values with replacement (one
``(n_boot, n)`` index matrix, in row chunks so memory stays bounded), applies ``stat`` along
each resample and returns the percentile interval. 1000 resamples of 1000 values take a few
milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

_MAX_ELEMENTS = 1 << 24  # per chunk of resamples (128 MB of float64 at most)


def _resample_stats(
    values: np.ndarray, n_boot: int, rng: np.random.Generator, stat: Callable
) -> np.ndarray:
    n = values.shape[0]
    rows = max(1, _MAX_ELEMENTS // max(1, n))
    out = []
    for start in range(0, n_boot, rows):
        k = min(rows, n_boot - start)
        samples = values[rng.integers(0, n, size=(k, n))]
        try:
            s = np.asarray(stat(samples, axis=1), dtype=float)
        except TypeError:  # a stat without an axis argument
            s = np.array([stat(row) for row in samples], dtype=float)
        out.append(s)
    return np.concatenate(out)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    stat: Callable = np.mean,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` interval of ``stat(values)`` at level 1 − alpha.

    ``stat`` is called as ``stat(samples, axis=1)`` on a ``(n_boot, n)`` matrix when it takes
    an ``axis`` argument (numpy reductions do), else once per resample. Empty input gives
    ``(nan, nan)``; ``n_boot = 0`` gives the point estimate twice.
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size == 0:
        return (float("nan"), float("nan"))
    if n_boot <= 0:
        point = float(stat(v))
        return (point, point)
    rng = np.random.default_rng(seed)
    stats = _resample_stats(v, n_boot, rng, stat)
    lo, hi = np.percentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))


def paired_bootstrap_diff_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(mean(a − b), low, high)`` for paired samples (e.g. two policies on the same prompts)."""
    a = np.asarray(a, dtype=float).reshape(-1)
    b = np.asarray(b, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired samples differ in length: {a.shape[0]} vs {b.shape[0]}")
    d = a - b
    lo, hi = bootstrap_ci(d, n_boot=n_boot, seed=seed, alpha=alpha)
    return (float(d.mean()) if d.size else float("nan"), lo, hi)


def group_means(values: Sequence[float] | np.ndarray, groups: Sequence[int] | np.ndarray) -> np.ndarray:
    """The mean of ``values`` within each group (``groups``: one label per value), in sorted label order."""
    v = np.asarray(values, dtype=float).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if v.shape != g.shape:
        raise ValueError(f"{v.shape[0]} values but {g.shape[0]} group labels")
    _, inverse = np.unique(g, return_inverse=True)
    return np.bincount(inverse, weights=v) / np.bincount(inverse)


def grouped_bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    groups: Sequence[int] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float, float]:
    """``(mean, low, high)`` with a cluster bootstrap: resample whole groups (e.g. the prompts,
    each with its several samples), not single values, because samples of one prompt are not
    independent. The point estimate is the mean of the group means (the plain mean when every
    group has the same size)."""
    means = group_means(values, groups)
    if means.size == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = bootstrap_ci(means, n_boot=n_boot, seed=seed, alpha=alpha)
    return (float(means.mean()), lo, hi)
