"""Speed of class consistency (paper eq. 2): our batched W2 against the released code's per-pair sqrtm.

Builds seeded random data with class structure (default: 100 cases x 2 classes, d = 128 channels,
500 samples per class and case; every case-class set is a class-specific linear mix of Gaussian
noise, perturbed per case, plus a perturbed class mean), then in the same run:

* ours: ``ccfv.scores.metrics.ccfv.class_consistency`` (each case-class covariance factorised once, one
  symmetric eigvalsh per pair, batched), with the numpy backend and, if torch is importable, the
  torch backend (CUDA when available, else CPU);
* released: the arithmetic of the CC-FV authors' ``utils/ccfv.py::cal_w_distance`` per unordered
  pair (np.mean and np.cov of both raw sample sets, ``scipy.linalg.sqrtm(S1 @ S2)``,
  ``sqrt(abs(.))``), combined with the equation-2 normaliser (2 * sum over unordered pairs /
  (N(N-1)) per class, summed over classes) so that the two values are directly comparable. The time
  spent in ``np.cov`` and in ``sqrtm`` is recorded separately, so a second speedup against
  "covariances precomputed once, sqrtm(S1 @ S2) per pair" is printed too.

All pairs are run by default (4,950 unordered pairs per class). ``--baseline-pairs N`` times a
seeded random subset of N unordered pairs instead and extrapolates the per-pair mean to all pairs;
the output then says so and the value check is per pair only. Both implementations run with the
same BLAS / torch thread count (``--threads``, default 1: the reference machine has 2 shared cores
where more threads only add contention).

It also times the floor of any exact method of this kind, the "exact-SVD floor": per unordered pair one
product of two d x min(n, d) covariance factors and one values-only SVD, batched per row as ours is,
without the per-set QR, means and traces (on random factors of the same shapes; the time does not
depend on their values). ``--floor-repeats`` interleaved runs of the floor and of our numpy backend,
the minimum of each, give the line ``floor: class consistency runs at <r> of the exact-SVD floor's
speed ...`` with r = floor time / our time; keep r >= 0.8 (a benchmark line, not a test).

The last line is ``speedup=<x> max_rel_err=<y>``: x = released time (measured or extrapolated) /
time of our selected backend (``--backend auto``: torch on CUDA if available, else numpy); y = the
largest relative difference between the two implementations over the compared pairs and the class
consistency. Exit status 1 if y > 1e-8.

    python benchmarks/bench_scoring.py [--cases 100] [--classes 2] [--dim 128] [--samples 500]
                                       [--baseline-pairs all|N] [--threads 1]
                                       [--backend auto|numpy|torch] [--seed 0] [--floor-repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import numpy as np
import scipy.linalg

from ccfv.scores.metrics.ccfv import class_consistency
from ccfv.scores.metrics.gaussian import gaussian_w2_matrix

RTOL = 1e-8


def make_cases(n_cases: int, n_classes: int, dim: int, samples: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    class_mix = [rng.normal(size=(dim, dim)) / np.sqrt(dim) for _ in range(n_classes)]
    class_mean = [rng.normal(scale=2.0, size=dim) for _ in range(n_classes)]
    cases = []
    for _ in range(n_cases):
        case = {}
        for k in range(n_classes):
            mix = class_mix[k] + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
            mean = class_mean[k] + 0.3 * rng.normal(size=dim)
            case[k + 1] = rng.normal(size=(samples, dim)) @ mix + mean
        cases.append(case)
    return cases


def released_pair(f1: np.ndarray, f2: np.ndarray) -> tuple[float, float, float]:
    """cal_w_distance's arithmetic; returns (W2, seconds in mean/cov, seconds in product/sqrtm)."""
    t0 = time.perf_counter()
    miu_f1 = np.mean(f1, axis=0)
    miu_f2 = np.mean(f2, axis=0)
    cov_f1 = np.cov(f1.T)
    cov_f2 = np.cov(f2.T)
    t1 = time.perf_counter()
    delta_miu = miu_f1 - miu_f2
    w_d = (
        np.sum(delta_miu**2)
        + cov_f1.trace()
        + cov_f2.trace()
        - 2 * (scipy.linalg.sqrtm(cov_f1.dot(cov_f2))).trace()
    )
    value = float(np.sqrt(abs(w_d)))
    t2 = time.perf_counter()
    return value, t1 - t0, t2 - t1


def exact_svd_floor(n_classes: int, n_sets: int, dim: int, width: int, seed: int) -> float:
    """Seconds of the pair step alone: for every class and unordered pair (i, j), B = F_j^T F_i of two
    [dim, width] factors and the singular values of B, one batched GEMM and one stacked SVD per row i
    (blocks of at most 64 MiB of B). The factors are random: the time does not depend on their values."""
    factors = np.random.default_rng(seed).normal(size=(n_sets, dim, width))
    factors_t = np.ascontiguousarray(factors.transpose(0, 2, 1))
    block = max(1, (64 * 2**20) // (8 * width * width))
    start = time.perf_counter()
    for _ in range(n_classes):
        for i in range(n_sets - 1):
            for lo in range(i + 1, n_sets, block):
                hi = min(n_sets, lo + block)
                b = (factors_t[lo:hi].reshape((hi - lo) * width, dim) @ factors[i]).reshape(hi - lo, width, width)
                np.linalg.svd(b, compute_uv=False)
    return time.perf_counter() - start


def thread_limits(threads: int):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        print("warning: threadpoolctl missing; BLAS threads not limited", file=sys.stderr)
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def torch_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return "cuda" if torch.cuda.is_available() else "cpu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--classes", type=int, default=2)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--baseline-pairs", default="all", help="'all' or a number of pairs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", choices=("auto", "numpy", "torch"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floor-repeats", type=int, default=3,
                        help="interleaved runs of the exact-SVD floor and of ours (numpy) for the floor ratio")
    args = parser.parse_args()
    if args.floor_repeats < 1:
        parser.error("--floor-repeats must be at least 1")

    cases = make_cases(args.cases, args.classes, args.dim, args.samples, args.seed)
    n, classes = args.cases, list(range(1, args.classes + 1))
    all_pairs = [(k, i, j) for k in classes for i in range(n) for j in range(i + 1, n)]
    print(
        f"bench_scoring: class consistency (eq. 2), {n} cases x {args.classes} classes, "
        f"d={args.dim}, {args.samples} samples per class, seed {args.seed}; "
        f"{len(all_pairs)} unordered pairs ({2 * len(all_pairs)} ordered)"
    )

    device = torch_device()
    backend = args.backend
    if backend == "auto":
        backend = "torch" if device == "cuda" else "numpy"
    if backend == "torch" and device is None:
        parser.error("--backend torch needs PyTorch")

    with thread_limits(args.threads):
        if device is not None:
            import torch

            torch.set_num_threads(args.threads)
            print(f"threads: BLAS {args.threads}, torch {torch.get_num_threads()} (both sides)")
            # warm-up (CUDA context, cuSOLVER handles, first-call allocations) outside the timing
            class_consistency(make_cases(3, 1, 8, 20, 1), backend="torch", device=device)
        else:
            print(f"threads: BLAS {args.threads} (both sides)")

        timings, values = {}, {}
        runs = [("numpy", None)] + ([("torch", device)] if device is not None else [])
        for name, dev in runs:
            start = time.perf_counter()
            values[name] = class_consistency(cases, backend=name, device=dev)
            timings[name] = time.perf_counter() - start
            where = dev or "cpu"
            print(
                f"ours [{name}, {where}]: {timings[name]:.2f} s "
                f"({1e3 * timings[name] / len(all_pairs):.3f} ms per unordered pair, covariance "
                f"fits included); C_cons = {values[name]:.12g}"
            )
        ours_pairs = {k: gaussian_w2_matrix([case[k] for case in cases]) for k in classes}

        # The floor against our numpy backend, interleaved so that background load hits both alike.
        floor_times, ours_times = [], [timings["numpy"]]
        for repeat in range(args.floor_repeats):
            floor_times.append(exact_svd_floor(args.classes, n, args.dim, min(args.samples, args.dim),
                                               args.seed + 2))
            if repeat:
                start = time.perf_counter()
                class_consistency(cases, backend="numpy")
                ours_times.append(time.perf_counter() - start)
        floor_ratio = min(floor_times) / min(ours_times)
        print(
            f"floor: class consistency runs at {floor_ratio:.3f} of the exact-SVD floor's speed "
            f"(floor {min(floor_times):.2f} s / ours [numpy] {min(ours_times):.2f} s, the minimum of "
            f"{args.floor_repeats} each; the floor is one d x d product and one values-only SVD per "
            "unordered pair, batched; keep >= 0.8)"
        )

        if args.baseline_pairs == "all":
            chosen = all_pairs
            subset = False
        else:
            count = min(int(args.baseline_pairs), len(all_pairs))
            pick = np.random.default_rng(args.seed + 1).choice(len(all_pairs), count, replace=False)
            chosen = [all_pairs[p] for p in sorted(pick)]
            subset = count < len(all_pairs)

        released = {}
        t_cov = t_sqrtm = 0.0
        start = time.perf_counter()
        for k, i, j in chosen:
            released[(k, i, j)], dt_cov, dt_sqrtm = released_pair(cases[i][k], cases[j][k])
            t_cov += dt_cov
            t_sqrtm += dt_sqrtm
        t_released = time.perf_counter() - start
        # one np.cov per case-class, for the "covariances precomputed" variant
        start = time.perf_counter()
        for case in cases:
            for k in classes:
                np.cov(case[k].T)
        t_cov_once = time.perf_counter() - start

    per_pair = t_released / len(chosen)
    scale = len(all_pairs) / len(chosen)
    total_released = t_released * scale
    total_sqrtm_only = t_sqrtm * scale + t_cov_once
    label = (
        f"a random subset of {len(chosen)} of {len(all_pairs)} unordered pairs "
        f"(seed {args.seed + 1}), EXTRAPOLATED per pair to all pairs"
        if subset
        else f"all {len(all_pairs)} unordered pairs, measured"
    )
    print(
        f"released per-pair [np.cov + sqrtm(S1 @ S2)]: {label}: {total_released:.2f} s "
        f"({1e3 * per_pair:.3f} ms per pair, of which sqrtm {1e3 * t_sqrtm / len(chosen):.3f} ms, "
        f"np.cov {1e3 * t_cov / len(chosen):.3f} ms)"
    )

    errors = [
        abs(ours_pairs[k][i, j] - value) / value for (k, i, j), value in released.items()
    ]
    max_err = max(errors)
    print(f"per-pair W2: max relative difference over {len(errors)} pairs = {max_err:.3e}")
    if not subset:
        released_ccons = sum(
            2.0 * sum(v for (kk, _, _), v in released.items() if kk == k) / (n * (n - 1))
            for k in classes
        )
        print(f"released-arithmetic C_cons = {released_ccons:.12g}")
        for name, value in values.items():
            err = abs(value - released_ccons) / released_ccons
            print(f"C_cons [{name}] relative difference = {err:.3e}")
            max_err = max(max_err, err)
    else:
        print("C_cons of the released arithmetic not computed (subset): value check is per pair")

    for name in values:
        print(
            f"speedup [{name}]: {total_released / timings[name]:.1f}x vs released per-pair code; "
            f"{total_sqrtm_only / timings[name]:.1f}x vs sqrtm(S1 @ S2) per pair with "
            "covariances precomputed"
        )
    ok = max_err <= RTOL
    print(
        f"check: max relative difference {max_err:.3e} "
        f"{'<=' if ok else 'EXCEEDS'} rtol {RTOL:g}; reported backend: {backend}"
        + (" (speedup uses an extrapolated baseline)" if subset else "")
    )
    print(f"speedup={total_released / timings[backend]:.1f} max_rel_err={max_err:.2e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
