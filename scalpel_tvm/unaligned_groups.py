"""Unaligned group pruning (Lee et al., CASES 2019): groups of G consecutive weights of a row that
may start at any input, never crossing into the next row, chosen to keep as much weight
magnitude as possible for a given number of groups.

Aligned groups (Scalpel) must start at multiples of G, so two important weights that straddle a
boundary cost two groups. A kernel that stores one index per group (the Cortex-M pairs format,
`cortex_m.pairs`) does not care where a group starts, so letting groups slide keeps more of the
weights for the same work and the same bytes.

* `best_windows` — the optimal choice, Lee et al.'s equation (1) as a dynamic program: along a row,
  f[i] = max(f[i-1], f[i-G] + s(i-G..i) - λ) picks non-overlapping windows maximising kept score
  minus λ per window; `unaligned_mask` searches λ (a Lagrange multiplier: fewer windows as it
  grows) for the largest selection within a layer's group budget, all rows at once.
* `greedy_windows` — their greedy variant for comparison: repeatedly the window with the largest
  score that overlaps none taken.
* `cover` — the windows the kernel stores for a row's non-zeros (a left-to-right scan: a window
  starts at the first non-zero not yet held; this is the fewest possible, so never more than
  the aligned groups holding the same weights).

The score of a weight is its square, so the kept score is the squared magnitude (the root-mean-
square importance of `pruning.group_importance`, summed).
"""
from __future__ import annotations

import numpy as np

from .errors import ScalpelError


def _window_sums(scores: np.ndarray, group: int) -> np.ndarray:
    """(rows, K - G + 1): the score of the window starting at every input."""
    csum = np.concatenate([np.zeros((scores.shape[0], 1)), np.cumsum(scores, axis=1)], axis=1)
    return csum[:, group:] - csum[:, :-group]


def best_windows(scores: np.ndarray, group: int, penalty: float) -> np.ndarray:
    """0/1 (rows, K - G + 1) starts of the windows maximising Σ score − `penalty` per window in
    every row (equation (1)); rows shorter than G have none."""
    rows, k = scores.shape
    if k < group:
        return np.zeros((rows, 0), bool)
    window = _window_sums(scores, group) - penalty
    best = np.zeros((rows, k + 1))
    take = np.zeros((rows, k + 1), bool)
    for i in range(group, k + 1):
        with_window = best[:, i - group] + window[:, i - group]
        take[:, i] = with_window > best[:, i - 1]
        best[:, i] = np.where(take[:, i], with_window, best[:, i - 1])
    starts = np.zeros((rows, k - group + 1), bool)
    position = np.full(rows, k)
    active = np.ones(rows, bool)
    while active.any():  # walk every row back from its end
        r = np.flatnonzero(active)
        taken = take[r, position[r]]
        starts[r[taken], position[r[taken]] - group] = True
        position[r] -= np.where(taken, group, 1)
        active[r] = position[r] >= group
    return starts


def greedy_windows(scores: np.ndarray, group: int, count: int) -> np.ndarray:
    """Lee et al.'s greedy: `count` windows over the whole layer, each the highest-scoring one
    that overlaps none taken (ties: the earlier) — one pass down the windows sorted by score.
    Returns window starts as best_windows."""
    rows, k = scores.shape
    window = _window_sums(scores, group) if k >= group else np.zeros((rows, 0))
    starts = np.zeros(window.shape, bool)
    taken = np.zeros((rows, k), bool)
    chosen = 0
    for flat in np.argsort(-window, axis=None, kind="stable"):
        if chosen >= count:
            break
        r, s = divmod(int(flat), window.shape[1])
        if not taken[r, s:s + group].any():
            starts[r, s] = True
            taken[r, s:s + group] = True
            chosen += 1
    return starts


def windows_mask(starts: np.ndarray, group: int, k: int) -> np.ndarray:
    """The (rows, K) 0/1 weight mask the window starts cover."""
    mask = np.zeros((starts.shape[0], k), np.float32)
    for offset in range(group):
        mask[:, offset:offset + starts.shape[1]] += starts
    return np.minimum(mask, 1.0)


def cover(w_nk: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The fewest windows of `group` inputs holding every non-zero weight, row by row: a window
    starts at the first non-zero not yet held. Returns (indptr, starts) as CSR over the rows; a
    start may lie within the last G - 1 inputs (the storage pulls it back, `cortex_m.pairs`)."""
    indptr, starts = [0], []
    for row in np.asarray(w_nk) != 0:
        end = -1
        for i in np.flatnonzero(row):
            if i > end:
                starts.append(i)
                end = i + group - 1
        indptr.append(len(starts))
    return np.asarray(indptr, np.int64), np.asarray(starts, np.int64)


def cover_count(w_nk: np.ndarray, group: int) -> int:
    """How many windows `cover` needs: the groups an unaligned-groups kernel stores."""
    return int(cover(w_nk, group)[0][-1])


def unaligned_mask(w_nk: np.ndarray, keep: int, group: int, method: str = "dp") -> np.ndarray:
    """0/1 mask of `w_nk`'s shape keeping at most `keep` unaligned windows of `group` weights
    (at least one) with the largest squared magnitude: the dynamic program, its penalty λ
    bisected to the largest selection within `keep`, or `method="greedy"`."""
    w = np.asarray(w_nk, np.float64)
    if w.shape[1] < group:
        raise ScalpelError(f"rows of {w.shape[1]} weights cannot hold groups of {group}")
    # A window may hang over a row's end, as the aligned groups' last one does where K is not a
    # multiple of G (and as `cover` places one): without it, rows of 3 in windows of 2 could
    # keep less than aligned groups at the same count. The zero columns add no score.
    scores = np.pad(w ** 2, ((0, 0), (0, group - 1)))
    keep = max(1, int(keep))
    if method == "greedy":
        return windows_mask(greedy_windows(scores, group, keep), group, scores.shape[1])[:, :w.shape[1]]
    if method != "dp":
        raise ScalpelError(f"unknown unaligned grouping {method!r}; known: dp, greedy")
    low, high = 0.0, float(_window_sums(scores, group).max()) + 1.0  # λ = high selects nothing
    best = best_windows(scores, group, high)
    if best_windows(scores, group, 1e-12 * high).sum() <= keep:
        best = best_windows(scores, group, 1e-12 * high)
    else:
        for _ in range(60):
            middle = (low + high) / 2
            starts = best_windows(scores, group, middle)
            if starts.sum() <= keep:
                high, best = middle, starts
                if starts.sum() == keep:
                    break
            else:
                low = middle
    if not best.any():
        flat = int(np.argmax(_window_sums(scores, group)))
        best.flat[flat] = True
    return windows_mask(best, group, scores.shape[1])[:, :w.shape[1]]
