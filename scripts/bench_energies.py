"""Energy + force evaluations per second of each energy on 64 ETKDG conformers of lidocaine (39 atoms).

Prints a Markdown table (CPU only) and the xTB speed-up of 2 workers over 1, measured in the
same run. Usage:

    python scripts/bench_energies.py [--repeats 3] [--fairchem-checkpoint PATH]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from energies import EnergyConfig, make_energy
from energies.base import EnergyBatch

SMILES = "CCN(CC)CC(=O)Nc1c(C)cccc1C"  # lidocaine, C14H22N2O: 39 atoms with hydrogens


def conformers(n: int, seed: int = 0):
    """RDKit mol (explicit H) and n ETKDG conformers [n, N, 3] in Å."""
    mol = Chem.AddHs(Chem.MolFromSmiles(SMILES))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    ids = list(AllChem.EmbedMultipleConfs(mol, n, params))
    if len(ids) < n:
        raise RuntimeError(f"ETKDG produced {len(ids)} of {n} conformers")
    return mol, np.array([mol.GetConformer(i).GetPositions() for i in ids])


def time_energy(cfg: EnergyConfig, batch: EnergyBatch, repeats: int) -> tuple[float, int]:
    """(median seconds per batch evaluation after one warm-up call, failures in the last call)."""
    with make_energy(cfg) as energy:
        energy(batch)  # warm-up: starts workers, builds per-molecule calculators / force fields
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            result = energy(batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times), len(result.failures)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conformers", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fairchem-checkpoint", default=None, help="also time a local UMA/eSEN checkpoint on cpu")
    args = parser.parse_args(argv)

    mol, coords = conformers(args.conformers)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    n = len(coords)
    batch = EnergyBatch.from_molecules([numbers] * n, list(coords), mols=[mol] * n, keys=[SMILES] * n)

    configs = [
        ("mmff", EnergyConfig(name="mmff")),
        ("xtb, in-process", EnergyConfig(name="xtb", workers=0)),
        ("xtb, 1 worker", EnergyConfig(name="xtb", workers=1)),
        ("xtb, 2 workers", EnergyConfig(name="xtb", workers=2)),
    ]
    if args.fairchem_checkpoint:
        configs.append(("fairchem (cpu)", EnergyConfig(name="fairchem", checkpoint=args.fairchem_checkpoint, device="cpu")))

    load_before = os.getloadavg()[0]
    rows, seconds = [], {}
    for label, cfg in configs:
        t, failed = time_energy(cfg, batch, args.repeats)
        seconds[label] = t
        rows.append(f"| {label} | {n / t:.1f} | {1000 * t / n:.2f} | {failed} |")
    load_after = os.getloadavg()[0]

    print(f"Lidocaine ({len(numbers)} atoms), {n} ETKDG conformers, median of {args.repeats} batch calls after warm-up.")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"1-min load average {load_before:.1f} before / {load_after:.1f} after.\n")
    print("| energy | evaluations/s | ms per conformer | failed |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    speedup = seconds["xtb, 1 worker"] / seconds["xtb, 2 workers"]
    print(f"\nxTB speed-up, 2 workers vs 1: {speedup:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
