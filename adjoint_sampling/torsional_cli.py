"""``adjoint-sampling eval-torsional``: train a torsional sampler on one small molecule and score it
against the exact torsional Boltzmann density on a grid (same seed conformer, same energy, same τ).

Writes into --out: run/ (the training run: checkpoint.pt, metrics.csv), samples.sdf (the trained
sampler's conformers, SMILES atom order), base.sdf, resampled.sdf (importance-resampled, when
--importance), etkdg.sdf, torsions.npz (every method's sampled angles and the grid density) and
metrics.json; prints per torsion the circular W1 (rad) to the grid marginal and the basin populations
(%) of: the grid, the trained sampler, the untrained base, the importance-resampled sampler, ETKDG.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smiles", required=True, help="molecule with 1 to 3 rotatable bonds, e.g. ClCCCl, CCCC, OCCO")
    p.add_argument("--energy", default="mmff", help="energy for training and the grid (mmff, xtb, ...) [mmff]")
    p.add_argument("--preset", default="torsional-gt", help="torsional config preset [torsional-gt]")
    p.add_argument("--out", default=None, help="output folder (default runs/gt-<smiles>)")
    p.add_argument("--n-samples", type=int, default=2000, help="conformers per method [2000]")
    p.add_argument("--grid", type=int, default=0,
                   help="grid points per torsion, a multiple of 6 (default: 360, 120, 72 for 1, 2, 3 torsions)")
    p.add_argument("--importance", type=int, default=2, metavar="K",
                   help="importance-resample n of K x n weighted paths (0: off) [2]")
    p.add_argument("--checkpoint", default=None, help="score this trained torsional checkpoint instead of training")
    p.add_argument("--seed", type=int, default=0, help="sampling seed [0]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads [1]")
    p.add_argument("--progress", action="store_true", help="show a training progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.max_minutes=5")


def _fail(msg: str):
    from adjoint_sampling.cli import UserError

    raise UserError(msg)


def _train(args, out: Path):
    """Train per the preset on the one molecule; returns the checkpoint path."""
    from adjoint_sampling.cli import load_training_molecules
    from adjoint_sampling.config import load_config
    from adjoint_sampling.trainer import Trainer
    from energies import make_energy

    run_dir = out / "run"
    cfg = load_config(args.preset, list(args.overrides) + [f"energy={args.energy}", f"run_dir={run_dir}"])
    cfg.data.molecules, cfg.data.smiles = None, [args.smiles]
    if cfg.mode != "torsional":
        _fail(f"preset {args.preset} is not a torsional preset (mode={cfg.mode})")
    if cfg.torsion.seeds != 1:
        _fail("the grid ground truth is for one fixed seed conformer: set torsion.seeds=1")
    if (run_dir / "checkpoint.pt").exists():
        _fail(f"{run_dir} already holds a checkpoint: score it with --checkpoint {run_dir / 'checkpoint.pt'} "
              "or choose another --out")
    energy = make_energy(cfg.energy)
    try:
        molecules = load_training_molecules(cfg, energy)
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = Trainer(cfg, molecules, energy, run_dir, show_progress=args.progress)
        t0, cpu0 = time.time(), time.process_time()
        trainer.fit()
        print(f"trained {trainer.epoch} epochs in {time.time() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU "
              f"-> {run_dir / 'checkpoint.pt'}", flush=True)
    finally:
        energy.close()
    return run_dir / "checkpoint.pt"


def _grid_energy_fn(sampler, graph, energy):
    """θ [k, m] -> E [k] (eV) on the sampler's seed conformer of ``graph``."""
    import torch

    from adjoint_sampling.energy_eval import energy_batch
    from adjoint_sampling.graphs import collate
    from adjoint_sampling.torsions import set_torsions

    def energy_of(theta: np.ndarray) -> np.ndarray:
        batch = collate([graph] * len(theta), sampler.cfg.model.elements)
        pos = set_torsions(torch.as_tensor(theta, dtype=torch.float64).reshape(-1), batch.torsion)
        return energy(energy_batch(batch, pos)).energy.double().numpy()

    return energy_of


def _etkdg_angles(graph, n: int, seed: int):
    """n ETKDGv3 conformers [n, atoms, 3] (Å) and their dihedrals [n, m] with the sampler's torsion atoms."""
    import torch
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from adjoint_sampling.torsions import measure

    mol = Chem.Mol(graph.mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed + 1  # randomSeed=0 returns identical conformers (RDKit 2026.09)
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=n, params=params))
    coords = np.stack([mol.GetConformer(c).GetPositions() for c in cids])
    angles = np.stack([measure(torch.as_tensor(c), graph.torsions.atoms).numpy() for c in coords])
    return coords, angles


def _write(path: Path, graph, coords, energies=None):
    from adjoint_sampling.sampling import ConformerRecord, write_conformers

    records = [ConformerRecord(graph.name, graph.smiles, graph.mol, c, None if energies is None else float(e))
               for c, e in zip(coords, energies if energies is not None else [None] * len(coords))]
    return write_conformers(records, path)


def run(args: argparse.Namespace) -> int:
    import torch

    from adjoint_sampling.importance import effective_sample_size, systematic_resample
    from adjoint_sampling.sampling import load_sampler
    from adjoint_sampling.torsions import measure
    from benchmark.torsional import basin_populations, circular_w1, grid_basin_populations, grid_density
    from energies import EnergyConfig, make_energy

    if args.n_samples < 1:
        _fail(f"--n-samples must be >= 1, got {args.n_samples}")
    if args.grid and (args.grid < 6 or args.grid % 6):
        _fail(f"--grid must be a positive multiple of 6 (cell edges on the basin borders), got {args.grid}")
    if args.importance < 0:
        _fail(f"--importance must be >= 0, got {args.importance}")
    torch.set_num_threads(max(1, args.threads))
    safe = "".join(ch if ch.isalnum() else "_" for ch in args.smiles)
    out = Path(args.out or f"runs/gt-{safe}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else _train(args, out)
    out.mkdir(parents=True, exist_ok=True)
    sampler = load_sampler(checkpoint)
    if sampler.cfg.mode != "torsional":
        _fail(f"checkpoint {checkpoint} is not a torsional sampler")
    graph = sampler.graph(args.smiles)
    m = graph.num_torsions
    if not 1 <= m <= 3:
        _fail(f"'{args.smiles}' has {m} rotatable bonds; the grid ground truth needs 1 to 3")
    tau = sampler.cfg.loss.tau
    n = args.n_samples
    energy = make_energy(EnergyConfig(name=args.energy, workers=1))
    energy.check_supported(graph.numbers.tolist(), graph.charge, graph.spin, name=graph.name)
    energy_of = _grid_energy_fn(sampler, graph, energy)
    try:
        angles, coords, results = {}, {}, {}
        t0 = time.time()
        k = max(1, args.importance)
        pool, log_rn = sampler.sample_graph(graph, k * n, seed=args.seed, with_log_rn=True)
        sample_s = time.time() - t0
        coords["sampler"] = pool[:n]  # the first n paths are exactly the plain sampler's
        if args.importance:
            state = np.stack([measure(torch.as_tensor(c), graph.torsions.atoms).numpy() for c in pool])
            e_pool = np.concatenate([energy_of(state[i:i + 4096]) for i in range(0, len(state), 4096)])
            lw = sampler.log_weights(graph, pool, e_pool, log_rn)
            idx = systematic_resample(torch.as_tensor(lw), n, torch.Generator().manual_seed(args.seed)).numpy()
            coords["sampler+IS"] = pool[idx]
            results["ess_fraction"] = effective_sample_size(torch.as_tensor(lw)) / len(lw)
        coords["base"] = sampler.sample_graph(graph, n, seed=args.seed + 1, base=True)
        coords["etkdg"], angles["etkdg"] = _etkdg_angles(graph, n, args.seed)
        for name, c in coords.items():
            if name not in angles:
                angles[name] = np.stack([measure(torch.as_tensor(x), graph.torsions.atoms).numpy() for x in c])
        points = args.grid or {1: 360, 2: 120, 3: 72}[m]
        t1 = time.time()
        grid = grid_density(energy_of, m, points, tau)
        grid_s = time.time() - t1
    finally:
        energy.close()

    table = {"grid": {f"torsion{j}": {"basins": grid_basin_populations(grid.centres, grid.marginal(j)).tolist()}
                      for j in range(m)}}
    for name, a in angles.items():
        table[name] = {f"torsion{j}": {"w1": circular_w1(a[:, j], grid.centres, grid.marginal(j)),
                                       "basins": basin_populations(a[:, j]).tolist()} for j in range(m)}
    results.update({"smiles": args.smiles, "energy": args.energy, "tau_eV": tau, "n_samples": n, "grid_points": points,
                    "torsion_atoms": graph.torsions.atoms.tolist(), "checkpoint": str(checkpoint),
                    "sample_s": round(sample_s, 2), "grid_s": round(grid_s, 2), "table": table})
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    np.savez(out / "torsions.npz", grid_centres=grid.centres, grid_probs=grid.probs,
             **{name.replace("+", "_"): a for name, a in angles.items()})
    for name, fname in (("sampler", "samples.sdf"), ("base", "base.sdf"), ("sampler+IS", "resampled.sdf"),
                        ("etkdg", "etkdg.sdf")):
        if name in coords:
            _write(out / fname, graph, coords[name])
    _print_table(args.smiles, graph, table, m, results)
    return 0


def _print_table(smiles, graph, table, m, results) -> None:
    print(f"\n{smiles}: {m} torsion(s), τ = {results['tau_eV']} eV, {results['n_samples']} samples, "
          f"grid {results['grid_points']}^{m} ({results['energy']})")
    for j in range(m):
        atoms = "-".join(str(a) for a in graph.torsions.atoms[j].tolist())
        print(f"torsion {j} (atoms {atoms}): circular W1 (rad) | anti / gauche+ / gauche- (%)")
        for name, row in table.items():
            cell = row[f"torsion{j}"]
            w1 = f"{cell['w1']:.3f}" if "w1" in cell else "  -  "
            pops = " / ".join(f"{100 * p:5.1f}" for p in cell["basins"])
            print(f"  {name:<11} W1 {w1}   {pops}")
    if "ess_fraction" in results:
        print(f"importance ESS {100 * results['ess_fraction']:.1f} % of the paths")
