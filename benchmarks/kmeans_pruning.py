"""How much distance work triangle-inequality pruning could skip on the k-means bench data.

python benchmarks/kmeans_pruning.py --n 100000 --k 512

Runs Lloyd's iterations in float64 NumPy from the bench's initial centres
(`jssl.bench_kmeans.make_data`) and prints, per iteration, the fraction of points that
Hamerly's test (one upper and one lower bound per point) would skip, the fraction of
(point, centre) pairs Elkan's bounds (one lower bound per pair) would still have to
compute, the fraction of points needing at least one of them, Yinyang's group filter
(Ding et al., ICML 2015: the centres grouped into k/10 groups by k-means on the initial
centres, one lower bound per point and group) as the fraction of the distance work left,
the same with the points in blocks of 256 sorted by cluster (a block computes a group's
distances when any of its points needs them: what a blocked GEMM could skip), and the
centre shifts. A GEMM-based assignment can only skip whole blocks of points (or of pairs),
so these fractions are upper bounds on what it could save.
"""

from __future__ import annotations

import argparse

import numpy as np

from jssl import cluster
from jssl.bench_kmeans import make_data


def _dists(x, c):
    sq = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None]
    return np.sqrt(np.maximum(sq, 0.0))


def _groups(c: np.ndarray, t: int, iters: int = 5) -> np.ndarray:
    """Group index (k,) of each centre: k-means of the centres into t groups (Yinyang)."""
    labels = cluster.kmeans(c, t, init="random", max_iter=iters, tol=0.0).labels
    return np.unique(labels, return_inverse=True)[1]  # no empty group


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--k", type=int, default=512)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()
    x, init = make_data(args.n, args.d, args.k, 0)
    x, c = x.astype(np.float64), init.astype(np.float64)
    dist = _dists(x, c)
    labels = dist.argmin(1)
    rows = np.arange(args.n)
    groups = _groups(c, max(1, args.k // 10))
    sizes = np.bincount(groups)
    starts = np.arange(0, args.n, 256)  # the point blocks, after sorting by cluster
    block_rows = np.diff(np.append(starts, args.n))
    print(
        "iter  hamerly_skips  elkan_pairs  points_with_a_pair  yinyang_work  yinyang_blocks"
        "  shift_median  shift_max"
    )
    for it in range(args.iters):
        counts = np.bincount(labels, minlength=args.k)
        sums = np.zeros_like(c)
        np.add.at(sums, labels, x)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], c)
        shift = np.sqrt(((new - c) ** 2).sum(1))
        c = new
        # Bounds from the exact distances of the previous assignment, moved by the shifts.
        upper = dist[rows, labels] + shift[labels]
        second = np.partition(dist, 1, axis=1)[:, 1]
        order = np.argsort(shift)
        max_other = np.where(labels == order[-1], shift[order[-2]], shift[order[-1]])
        centre_gap = _dists(c, c)
        np.fill_diagonal(centre_gap, np.inf)
        hamerly = upper <= np.maximum(second - max_other, centre_gap.min(1)[labels] / 2)
        lower = dist - shift[None, :]
        pairs = lower < upper[:, None]
        pairs[rows, labels] = False
        # Yinyang: per group, the nearest non-assigned member minus the group's largest shift.
        other = dist.copy()
        other[rows, labels] = np.inf
        group_need = np.stack(
            [
                other[:, groups == g].min(1) - shift[groups == g].max() < upper
                for g in range(len(sizes))
            ],
            axis=1,
        )
        work = (group_need * sizes[None, :]).sum() / (args.n * args.k)
        order_x = np.argsort(labels, kind="stable")
        blocks = np.logical_or.reduceat(group_need[order_x], starts, axis=0)
        block_work = (blocks * block_rows[:, None] * sizes[None, :]).sum() / (args.n * args.k)
        dist = _dists(x, c)
        labels = dist.argmin(1)
        print(
            f"{it:4d}  {hamerly.mean():13.3f}  {pairs.mean():11.3f}  {pairs.any(1).mean():18.3f}"
            f"  {work:12.3f}  {block_work:14.3f}  {np.median(shift):12.3f}  {shift.max():9.3f}"
        )


if __name__ == "__main__":
    main()
