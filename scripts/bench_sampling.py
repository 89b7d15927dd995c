"""Sampling throughput (conformers per second) of RDKit ETKDGv3, the torsional and the Cartesian
Adjoint Sampling samplers: same molecules, same machine, same process.

    python scripts/bench_sampling.py                                  # 8 SPICE test molecules x 32 conformers
    python scripts/bench_sampling.py --molecules 2 -n 4 --json bench.json
    python scripts/bench_sampling.py --torsional-checkpoint runs/t/ckpt.pt --cartesian-checkpoint runs/c/ckpt.pt

Generators
  etkdg       AllChem.EmbedMultipleConfs(numConfs=n) with ETKDGv3, randomSeed = seed + 1 (randomSeed 0
              repeats conformers), numThreads = --threads.
  torsional   load_sampler(--torsional-checkpoint), else an untrained controller of --torsional-preset
              (throughput does not depend on the weights). Its per-molecule cost includes
              ``sampler.graph(smiles)``, which finds the rotatable bonds and embeds (and MMFF-relaxes)
              the seed conformers: a user pays it for every new molecule. It is also reported apart.
  cartesian   the same with --cartesian-checkpoint / --cartesian-preset (default ``quick-cartesian``
              when that preset exists, else ``quick``). Its ``graph()`` is cheap but counted the same way.
Each sampler integrates its checkpoint's / preset's ``sde.eval_nfe`` steps unless --nfe is given.

Molecule pick rule: read the list (--molecule-file, else <shared>/data/spice/spice_test.txt) with
``read_molecule_list`` (file order), then ``random.Random(--pick-seed).sample(range(len(list)), K)``
and sort the chosen indices, so the K molecules run in file order (all of them when K >= the list).

Timing: one untimed warm-up per sampler (first molecule, 2 conformers, 2 steps) absorbs one-time
costs (lazy initialisation, allocator). Then, molecule by molecule, ETKDG, torsional and Cartesian
run back to back, so a machine whose load changes affects all three alike. Each time is one
``time.perf_counter`` wall interval; the connectivity check runs outside them.

Validity: the fraction of conformers whose bonds perceived from coordinates (RDKit
DetermineConnectivity) equal the SMILES bonds, ``adjoint_sampling.sampling.connectivity_matches``.
An untrained sampler's fraction says nothing about a trained one; only its speed is meaningful.

Ratios are throughput ratios (conformers/s of the first over the second; > 1: the first is faster).
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from adjoint_sampling.config import PRESET_DIR, ConfigError, load_config
from adjoint_sampling.controllers import build_controller
from adjoint_sampling.graphs import InvalidMoleculeError, mol_from_smiles, read_molecule_list
from adjoint_sampling.sampling import Sampler, connectivity_matches, load_sampler
from adjoint_sampling.shared_data import shared_dir

GENERATORS = ("etkdg", "torsional", "cartesian")
SPICE_TEST = Path("data") / "spice" / "spice_test.txt"


def default_cartesian_preset() -> str:
    return "quick-cartesian" if (PRESET_DIR / "quick-cartesian.yaml").is_file() else "quick"


def pick_molecules(entries: Sequence[tuple[str, str]], k: int, seed: int) -> list[tuple[str, str]]:
    """K (SMILES, name) entries chosen with random.Random(seed), kept in file order."""
    k = min(k, len(entries))
    idx = sorted(random.Random(seed).sample(range(len(entries)), k))
    return [entries[i] for i in idx]


def build_sampler(kind: str, checkpoint: Optional[str], preset: str) -> tuple[Sampler, str]:
    """A sampler of the expected mode (``kind``) from a checkpoint, else untrained from a preset."""
    try:
        if checkpoint:
            sampler, source = load_sampler(checkpoint), f"checkpoint {checkpoint}"
        else:
            cfg = load_config(preset)
            sampler, source = Sampler(cfg, build_controller(cfg.model, cfg.mode), torch.device("cpu")), f"preset {preset} (untrained)"
    except (ConfigError, ValueError, OSError) as exc:  # CheckpointError is a ValueError
        sys.exit(f"bench_sampling: cannot build the {kind} sampler: {str(exc).splitlines()[0]}")
    if sampler.cfg.mode != kind:
        flag = "--%s-%s" % (kind, "checkpoint" if checkpoint else "preset")
        sys.exit(f"bench_sampling: {source} has mode={sampler.cfg.mode}, not {kind} (pass another {flag})")
    return sampler, source


def run_etkdg(mol: Chem.Mol, n: int, seed: int, threads: int) -> tuple[float, np.ndarray]:
    """Wall seconds and the conformers [m <= n, atoms, 3] (Å) of one EmbedMultipleConfs call."""
    m = Chem.Mol(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) + 1
    params.numThreads = int(threads)
    t0 = time.perf_counter()
    cids = list(AllChem.EmbedMultipleConfs(m, numConfs=int(n), params=params))
    dt = time.perf_counter() - t0
    coords = np.stack([m.GetConformer(c).GetPositions() for c in cids]) if cids else np.zeros((0, m.GetNumAtoms(), 3))
    return dt, coords


def run_sampler(sampler: Sampler, smiles: str, name: str, n: int, seed: int, nfe: Optional[int]):
    """(graph seconds, sample seconds, graph, conformers [n, atoms, 3])."""
    t0 = time.perf_counter()
    g = sampler.graph(smiles, name=name)
    t1 = time.perf_counter()
    coords = sampler.sample_graph(g, n, seed=seed, nfe=nfe)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, g, coords


def connectivity_ok(mol: Chem.Mol, coords: np.ndarray) -> int:
    return sum(bool(connectivity_matches(mol, c)) for c in coords)


def summarize(rec: dict) -> dict:
    total = rec["graph_s"] + rec["sample_s"]
    rec["total_s"] = total
    rec["conformers_per_s"] = rec["conformers"] / total if total > 0 else float("nan")
    rec["ms_per_conformer"] = 1e3 * total / rec["conformers"] if rec["conformers"] else float("nan")
    rec["connectivity_ok_fraction"] = rec["connectivity_ok"] / rec["conformers"] if rec["conformers"] else float("nan")
    return rec


def markdown_table(results: dict, ratios: dict) -> str:
    lines = ["| generator | NFE | conformers | graph s | sample s | total s | conformers/s | ms/conformer | connectivity ok |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in GENERATORS:
        r = results[name]
        nfe = "-" if r["nfe"] is None else str(r["nfe"])
        lines.append(f"| {name} | {nfe} | {r['conformers']} | {r['graph_s']:.3f} | {r['sample_s']:.3f} | {r['total_s']:.3f} | "
                     f"{r['conformers_per_s']:.2f} | {r['ms_per_conformer']:.2f} | {r['connectivity_ok_fraction']:.3f} |")
    lines += ["", "| ratio (conformers/s) | value |", "|---|---:|"]
    lines += [f"| {k.replace('_vs_', ' / ')} | {v:.3f} |" for k, v in ratios.items()]
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--molecules", type=int, default=8, help="number of molecules K [8]")
    p.add_argument("-n", type=int, default=32, help="conformers per molecule and generator [32]")
    p.add_argument("--pick-seed", type=int, default=0, help="seed of the molecule pick [0]")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (ETKDG randomSeed = seed + 1) [0]")
    p.add_argument("--molecule-file", help="molecule list (plain or SPICE layout) [<shared>/data/spice/spice_test.txt]")
    p.add_argument("--torsional-checkpoint")
    p.add_argument("--cartesian-checkpoint")
    p.add_argument("--torsional-preset", default="torsional-gt", help="used without --torsional-checkpoint [torsional-gt]")
    p.add_argument("--cartesian-preset", default=None,
                   help=f"used without --cartesian-checkpoint [quick-cartesian if it exists, else quick: now {default_cartesian_preset()}]")
    p.add_argument("--nfe", type=int, default=None, help="integration steps of both samplers [their sde.eval_nfe]")
    p.add_argument("--threads", type=int, default=1, help="torch threads and ETKDG numThreads [1]")
    p.add_argument("--json", help="write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.molecules < 1 or args.n < 1 or args.threads < 1 or (args.nfe is not None and args.nfe < 1):
        p.error("--molecules, -n, --threads and --nfe must be >= 1")
    if args.cartesian_preset is None:
        args.cartesian_preset = default_cartesian_preset()
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.molecule_file:
        mol_file = Path(args.molecule_file)
    else:
        shared = shared_dir()
        if shared is None:
            sys.exit("bench_sampling: no shared folder found (adjoint_sampling.shared_data.shared_dir() is None); "
                     "pass --molecule-file or set ADJOINT_SAMPLING_SHARED")
        mol_file = shared / SPICE_TEST
    if not mol_file.is_file():
        sys.exit(f"bench_sampling: molecule list not found: {mol_file}")
    try:
        entries = read_molecule_list(mol_file)
    except InvalidMoleculeError as exc:
        sys.exit(f"bench_sampling: {exc}")
    picked = pick_molecules(entries, args.molecules, args.pick_seed)

    samplers = {}
    info = {}
    for kind, ckpt, preset in (("torsional", args.torsional_checkpoint, args.torsional_preset),
                               ("cartesian", args.cartesian_checkpoint, args.cartesian_preset)):
        sampler, source = build_sampler(kind, ckpt, preset)
        nfe = args.nfe or sampler.cfg.sde.eval_nfe
        samplers[kind] = sampler
        info[kind] = {"source": source, "mode": sampler.cfg.mode, "nfe": nfe,
                      "parameters": sum(p.numel() for p in sampler.model.parameters())}
        print(f"{kind}: {source}, mode={sampler.cfg.mode}, NFE {nfe}, {info[kind]['parameters']} parameters")
    print(f"etkdg: RDKit {rdBase.rdkitVersion} ETKDGv3, randomSeed {args.seed + 1}, numThreads {args.threads}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}")
    print(f"molecules: {len(picked)} of {len(entries)} in {mol_file} (pick seed {args.pick_seed}), {args.n} conformers each")
    print("picked: " + " ".join(name for _, name in picked))

    # untimed warm-up: one tiny draw per sampler on the first molecule
    for sampler in samplers.values():
        sampler.sample_graph(sampler.graph(picked[0][0], name=picked[0][1]), 2, seed=args.seed, nfe=2)

    results = {name: {"graph_s": 0.0, "sample_s": 0.0, "conformers": 0, "connectivity_ok": 0,
                      "nfe": info[name]["nfe"] if name in info else None} for name in GENERATORS}
    per_molecule = []
    for smiles, name in picked:
        try:
            mol = mol_from_smiles(smiles)
        except InvalidMoleculeError as exc:
            sys.exit(f"bench_sampling: {exc}")
        row = {"name": name, "smiles": smiles, "atoms": mol.GetNumAtoms()}
        dt, coords = run_etkdg(mol, args.n, args.seed, args.threads)
        ok = connectivity_ok(mol, coords)
        results["etkdg"]["sample_s"] += dt
        results["etkdg"]["conformers"] += len(coords)
        results["etkdg"]["connectivity_ok"] += ok
        row["etkdg"] = {"sample_s": dt, "conformers": len(coords), "connectivity_ok": ok}
        for kind, sampler in samplers.items():
            try:
                g_s, s_s, g, coords = run_sampler(sampler, smiles, name, args.n, args.seed, args.nfe)
            except (InvalidMoleculeError, ValueError) as exc:
                sys.exit(f"bench_sampling: {kind} sampler cannot sample {name}: {str(exc).splitlines()[0]}")
            ok = connectivity_ok(g.mol, coords)
            r = results[kind]
            r["graph_s"] += g_s
            r["sample_s"] += s_s
            r["conformers"] += len(coords)
            r["connectivity_ok"] += ok
            row[kind] = {"graph_s": g_s, "sample_s": s_s, "conformers": len(coords), "connectivity_ok": ok}
            if kind == "torsional":
                row["torsions"] = g.num_torsions
        per_molecule.append(row)
        print(f"  {name:<18} {row['atoms']:3d} atoms {row['torsions']:2d} torsions | "
              f"etkdg {row['etkdg']['sample_s']:.3f} s | torsional {row['torsional']['graph_s']:.3f}+{row['torsional']['sample_s']:.3f} s | "
              f"cartesian {row['cartesian']['graph_s']:.3f}+{row['cartesian']['sample_s']:.3f} s", flush=True)

    for r in results.values():
        summarize(r)
    tput = {k: results[k]["conformers_per_s"] for k in GENERATORS}
    ratios = {"torsional_vs_etkdg": tput["torsional"] / tput["etkdg"],
              "torsional_vs_cartesian": tput["torsional"] / tput["cartesian"],
              "cartesian_vs_etkdg": tput["cartesian"] / tput["etkdg"]}
    print()
    print(markdown_table(results, ratios))
    print("\ngraph s: sampler.graph() (torsional: rotatable bonds + seed conformers); total = graph + sample."
          "\nratios: conformers/s of the first over the second.")

    report = {
        "command": " ".join(["scripts/bench_sampling.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {"molecules": len(picked), "n": args.n, "pick_seed": args.pick_seed, "seed": args.seed,
                     "threads": args.threads, "nfe_override": args.nfe, "molecule_file": str(mol_file)},
        "versions": {"torch": torch.__version__, "rdkit": rdBase.rdkitVersion, "python": platform.python_version()},
        "samplers": info,
        "molecules": [name for _, name in picked],
        "generators": results,
        "ratios": ratios,
        "per_molecule": per_molecule,
    }
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
