"""Rank correlations (Spearman rho, Kendall tau-b) of two score vectors.

Used for the predictor's rank quality on new subnets (paper Sec. 3.3 reports
Kendall tau / Spearman rho) and for latency tables against measurements.
NumPy only; ties get average ranks (Spearman) and the tau-b correction
(Kendall), as `scipy.stats.spearmanr` / `kendalltau` (the tests' oracle).
"""

from __future__ import annotations

import numpy as np


def rankdata(a) -> np.ndarray:
    """Average ranks (1-based) of a 1-D array; ties share their mean rank."""
    a = np.asarray(a, np.float64).ravel()
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a), np.float64)
    ranks[order] = np.arange(1, len(a) + 1)
    _, inv, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def _check(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"Rank correlation needs equal lengths, got {a.shape} "
                         f"and {b.shape}.")
    return a, b


def spearman(a, b) -> float:
    """Spearman's rho: Pearson correlation of the average ranks (NaN if constant)."""
    a, b = _check(a, b)
    if len(a) < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def kendall(a, b) -> float:
    """Kendall's tau-b over all pairs (O(n^2); NaN if either side is constant)."""
    a, b = _check(a, b)
    if len(a) < 2:
        return float("nan")
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    num = (da * db).sum()
    den = np.sqrt((da != 0).sum() * (db != 0).sum())
    return float(num / den) if den > 0 else float("nan")
