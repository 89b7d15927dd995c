"""Equilibrium DW-4 samples by long Metropolis chains, to check the ground truth and the sampler against them.

DW-4's two main arrangements (2 or 4 of the 6 pair distances short, d < 4) have close energies, so
energy histograms barely tell their populations apart; the populations are set by free energies.
This script runs many random-walk Metropolis chains on the repo's DW-4 energy at τ = 1, started from
ground-truth train rows, counts how often each chain switches between the two arrangements (it must
switch many times for the populations to be equilibrated), and prints the population of every
"k short pairs" class for the ground-truth splits, the chains and any sample files given, plus the
metrics of the chains against the test split (the same as eval-synthetic's, with the val-vs-test floor).

    python scripts/dw4_equilibrium.py --chains 2000 --steps 20000
    python scripts/dw4_equilibrium.py --samples runs/synthetic-dw4/samples.npy runs/synthetic-dw4/samples_reweighted.npy
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adjoint_sampling.shared_data import synthetic_data_dir  # noqa: E402
from adjoint_sampling.synthetic import get_system, load_split, to_particles  # noqa: E402
from benchmark.synthetic import sample_metrics, subsample  # noqa: E402
from energies.synthetic import double_well_energy  # noqa: E402

SYSTEM = get_system("dw4")
SHORT = 4.0  # the pair potential's maximum (d0): shorter pairs sit in the inner well


def short_pairs(x: np.ndarray) -> np.ndarray:
    """Number of pairs closer than d0 = 4 per configuration, x [S, 4, 2] -> [S] ints."""
    i, j = np.triu_indices(SYSTEM.n_particles, 1)
    return (np.linalg.norm(x[:, i] - x[:, j], axis=-1) < SHORT).sum(1)


def class_fractions(rows: np.ndarray) -> np.ndarray:
    """Fraction of configurations with k = 0..6 short pairs, rows [S, 8]."""
    k = short_pairs(to_particles(rows, SYSTEM))
    return np.bincount(k, minlength=7) / len(k)


def metropolis(start: np.ndarray, steps: int, step_size: float, tau: float, seed: int):
    """Random-walk Metropolis from start [C, 4, 2]; returns (final [C, 4, 2], acceptance, switches per chain)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(start, dtype=torch.float64).clone()
    e = double_well_energy(x)
    accepted = 0.0
    state = torch.as_tensor(short_pairs(x.numpy()))  # last visited main arrangement (2 or 4 short)
    switches = torch.zeros(len(x))
    for step in range(steps):
        y = x + step_size * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        ey = double_well_energy(y)
        accept = torch.log(torch.rand(len(x), generator=gen, dtype=torch.float64)) < -(ey - e) / tau
        x[accept], e[accept] = y[accept], ey[accept]
        accepted += accept.double().mean().item()
        if step % 50 == 0:
            k = torch.as_tensor(short_pairs(x.numpy()))
            main = (k == 2) | (k == 4)
            switches += (main & (k != state) & ((state == 2) | (state == 4))).double()
            state = torch.where(main, k, state)
    return x.numpy(), accepted / max(steps, 1), switches.numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(synthetic_data_dir()),
                   help="folder of the DW-4 ground-truth splits (default %(default)s)")
    p.add_argument("--chains", type=int, default=2000)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--step-size", type=float, default=0.35)
    p.add_argument("--tau", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", nargs="*", default=[], help="sample files [S, 8] (eval-synthetic output) to classify too")
    p.add_argument("--out", default=None, help="save the chains' final states here (.npy, rows = samples)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    splits = {s: load_split(SYSTEM, s, args.data) for s in ("train", "val", "test")}
    rng = np.random.default_rng(args.seed)
    start = to_particles(splits["train"][rng.choice(len(splits["train"]), args.chains, replace=False)], SYSTEM)
    t0 = time.time()
    final, acc, switches = metropolis(start, args.steps, args.step_size, args.tau, args.seed)
    chains = (final - final.mean(1, keepdims=True)).reshape(args.chains, -1)
    print(f"{args.chains} chains x {args.steps} steps at tau={args.tau} in {time.time() - t0:.0f} s: acceptance "
          f"{acc:.2f}, switches between the 2- and 4-short arrangements per chain: mean {switches.mean():.1f}, "
          f"fewest {switches.min():.0f}")
    if args.out:
        np.save(args.out, chains.astype(np.float32))

    rows = {f"{s} split": v for s, v in splits.items()}
    rows["Metropolis chains"] = chains
    rows.update({str(f): np.load(f) for f in args.samples})
    width = max(len(n) for n in rows)
    print(f"{'short pairs (d < 4)':<{width}}  " + "  ".join(f"{k:>6}" for k in range(7)))
    for name, r in rows.items():
        print(f"{name:<{width}}  " + "  ".join(f"{f:6.3f}" for f in class_fractions(r)))

    n = min(2000, len(chains))  # eval-synthetic's 2000 samples and reference subsets (same seeds)
    reference = subsample(splits["test"], n, args.seed)
    floor = subsample(splits["val"], n, args.seed + 1)
    for name, r in (("Metropolis chains vs test", chains[:n]), ("val vs test (floor)", floor)):
        m = sample_metrics(r, reference, SYSTEM)
        print(f"{name:<26} energy W2 {m['energy_w2']:.3f}  distance W2 {m['distance_w2']:.3f}  "
              f"coordinate W2 {m['coordinate_w2']:.3f}  mean energy {m['energy_mean']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
