"""Coverage of the seed-and-item interval (peftarena_cli.report.sweep_stats.seed_item_interval) by
simulation: data sets y[s, i] = a_s + b_i + e_si (true mean 0), a_s ~ N(0, σ_a²), b_i ~ N(0, σ_b²),
e_si ~ N(0, 1), and a binary case (per-item correctness differences against a shared base, items of
varying difficulty, a per-seed shift on the logit scale).

    .venv/bin/python benchmarks/sweep_coverage.py [--reps 2000] [--seed 0]

Prints, per case, the fraction of data sets whose 95 % interval holds the true mean, beside the
item-only interval (seeds held fixed). Monte-Carlo SE of a coverage near 95 % at 2,000 reps: 0.5
points. The numbers in docs/report.md ("Sweeps: ...") come from this script.
"""

from __future__ import annotations

import argparse

import numpy as np

from peftarena_cli.report.sweep_stats import seed_item_interval


def normal_case(rng, S, n, sa2_over_n, sb):
    sa = np.sqrt(sa2_over_n / n)
    return rng.normal(0, sa, (S, 1)) + rng.normal(0, sb, (1, n)) + rng.normal(0, 1, (S, n)), 0.0


def binary_case(rng, S, n, seed_sd_logit, *, base_logit=-0.5, gain_logit=1.0, item_sd=1.5):
    """Gain of a fine-tune over the base on binary items: item difficulty d_i shared by base and runs,
    each run (seed) shifts the logit by gain + a_s. The true mean is over new items and new seeds."""
    d = rng.normal(0, item_sd, n)
    base = (rng.random(n) < 1 / (1 + np.exp(-(base_logit + d)))).astype(float)
    a = rng.normal(0, seed_sd_logit, (S, 1))
    runs = (rng.random((S, n)) < 1 / (1 + np.exp(-(base_logit + gain_logit + a + d)))).astype(float)
    return runs - base[None, :]


def binary_truth(rng, seed_sd_logit, *, base_logit=-0.5, gain_logit=1.0, item_sd=1.5, m=2_000_000):
    d = rng.normal(0, item_sd, m)
    a = rng.normal(0, seed_sd_logit, m)
    return float(np.mean(1 / (1 + np.exp(-(base_logit + gain_logit + a + d))) - 1 / (1 + np.exp(-(base_logit + d)))))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print("case | S | n | coverage | item-only coverage")
    for S in (2, 3, 5):
        for n in (100, 400):
            for label, sa2, sb in (("no seed variance, no item effect", 0.0, 0.0),
                                   ("no seed variance, item effect sd 0.5", 0.0, 0.5),
                                   ("no seed variance, item effect sd 1", 0.0, 1.0),
                                   ("seed var = error var / n, item sd 0.5", 1.0, 0.5),
                                   ("seed var = 4 error var / n, item sd 0.5", 4.0, 0.5),
                                   ("seed var = 16 error var / n, item sd 1", 16.0, 1.0)):
                cov = cov_i = 0
                for _ in range(args.reps):
                    y, mu = normal_case(rng, S, n, sa2, sb)
                    r = seed_item_interval(y)
                    cov += r.interval.low <= mu <= r.interval.high
                    cov_i += r.item_only.low <= mu <= r.item_only.high
                print(f"{label} | {S} | {n} | {cov / args.reps:.3f} | {cov_i / args.reps:.3f}", flush=True)
            for sd in (0.0, 0.3):
                mu = binary_truth(rng, sd)
                cov = cov_i = 0
                for _ in range(args.reps):
                    r = seed_item_interval(binary_case(rng, S, n, sd))
                    cov += r.interval.low <= mu <= r.interval.high
                    cov_i += r.item_only.low <= mu <= r.item_only.high
                print(f"binary gain, seed sd {sd} logit | {S} | {n} | {cov / args.reps:.3f} | {cov_i / args.reps:.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
