"""Diagnostic: train the torsional controller's RAM regression alone on exact Boltzmann samples.

    python scripts/torsional_exact_buffer.py --grid results/gt-ClCCCl-mmff/torsions.npz --smiles ClCCCl

Draws --buffer torsion states from the grid density written by ``eval-torsional`` (same seed conformer,
energy and τ as the preset), stores them with their exact adjoint targets, runs --steps RAM gradient
steps without resimulating, then samples --n conformers and prints the basin populations and circular
W1 against the grid. If this reaches the grid while ``eval-torsional``'s sampler does not, the
regression can represent the control and the gap lies in the outer (resimulation) loop.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from adjoint_sampling.buffer import ReplayBuffer
from adjoint_sampling.cli import load_training_molecules
from adjoint_sampling.config import load_config
from adjoint_sampling.sampling import Sampler
from adjoint_sampling.torsions import measure
from adjoint_sampling.trainer import Trainer
from benchmark.torsional import basin_populations, circular_w1
from energies import make_energy


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grid", required=True, help="torsions.npz written by eval-torsional")
    p.add_argument("--smiles", required=True)
    p.add_argument("--preset", default="torsional-gt")
    p.add_argument("--buffer", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run-dir", default="runs/exact-buffer")
    p.add_argument("--then-cpu-minutes", type=float, default=0.0,
                   help="afterwards, continue with the full Adjoint Sampling loop (resimulating into the buffer) "
                        "for this many CPU minutes and report again: does the loop stay at the truth or drift?")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_config(args.preset, [f"run_dir={args.run_dir}", *args.overrides])
    cfg.data.molecules, cfg.data.smiles = None, [args.smiles]
    energy = make_energy(cfg.energy)
    mols = load_training_molecules(cfg, energy)
    if mols[0].num_torsions != 1:
        raise SystemExit("this diagnostic handles one-torsion molecules")
    Path(args.run_dir).mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, mols, energy, args.run_dir, show_progress=False)
    grid = np.load(args.grid)
    centres, probs = grid["grid_centres"], grid["grid_probs"].reshape(-1)
    rng = np.random.default_rng(args.seed)
    width = 2 * np.pi / len(centres)
    theta = rng.choice(centres, size=args.buffer, p=probs / probs.sum()) + rng.uniform(-width / 2, width / 2, args.buffer)
    trainer.buffer = ReplayBuffer(args.buffer)
    x = torch.tensor(theta, dtype=torch.float32).reshape(-1, 1)
    trainer.store([0] * args.buffer, trainer.batch_of([0] * args.buffer), x)
    t0 = time.time()
    loss = float("nan")
    for _ in range(max(1, args.steps // max(cfg.train.grad_steps, 1))):
        loss = trainer.train_steps()
    print(f"{args.steps} RAM steps on exact samples in {time.time() - t0:.0f} s, last loss {loss:.3g}")
    report(cfg, trainer, mols, args, centres, probs, "after exact-buffer training")
    if args.then_cpu_minutes > 0:
        cfg.train.max_cpu_minutes, cfg.train.epochs = args.then_cpu_minutes, 100000
        trainer.fit()
        report(cfg, trainer, mols, args, centres, probs, f"after {trainer.epoch} more epochs of the full loop")
    energy.close()


def report(cfg, trainer, mols, args, centres, probs, label: str) -> None:
    sampler = Sampler(cfg, trainer.model, torch.device("cpu"))
    sampler.seeds[args.smiles] = mols[0].seeds
    graph = sampler.graph(args.smiles)
    coords = sampler.sample_graph(graph, args.n, seed=1)
    angles = np.array([measure(torch.as_tensor(c), graph.torsions.atoms).numpy()[0] for c in coords])
    pops = np.round(100 * basin_populations(angles), 1)
    print(f"sampler {label}: anti/gauche+/gauche- {pops.tolist()} %, W1 {circular_w1(angles, centres, probs):.3f} rad",
          flush=True)


if __name__ == "__main__":
    main()
