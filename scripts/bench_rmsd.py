"""Time benchmark.rmsd.rmsd_matrix against a loop of RDKit rdMolAlign.GetBestRMS.

Conformers: a pool of ETKDG conformers of one molecule; the reference and sample sets are drawn
from the pool with a random rigid motion and 0.2 Å Gaussian noise per atom (cheap stand-ins for
n_ref + n_samples independent embeddings; the RMSD cost does not depend on where they came from).
The RDKit loop runs on a random subset of pairs and is extrapolated per pair to the full matrix.

    python scripts/bench_rmsd.py --n-ref 512 --n-samples 1024 --rdkit-pairs 2000 --threads 1
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem, rdMolAlign
from rdkit.Geometry import Point3D
from scipy.spatial.transform import Rotation

from benchmark.rmsd import heavy_atom_automorphisms, rmsd_matrix

# 30 heavy atoms, a CF3 and two phenyls: 24 automorphisms (SPICE test molecule rot7_00fa648e7c
# has 31 heavy atoms and 12).
DEFAULT_SMILES = "CC(C)(C)c1ccc(Oc2ccc(C(F)(F)F)cc2)cc1C(=O)NCCN1CCOCC1"


def conformer_sets(smiles: str, n_ref: int, n_samples: int, pool: int, seed: int):
    """Heavy-atom molecule plus reference and sample coordinates [n, heavy, 3] (Å)."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed + 1  # randomSeed=0 gives identical conformers
    params.numThreads = 0
    cids = list(AllChem.EmbedMultipleConfs(mol, pool, params))
    heavy = Chem.RemoveHs(mol)
    base = np.array([heavy.GetConformer(c).GetPositions() for c in cids])
    rng = np.random.default_rng(seed)

    def draw(n):
        pick = base[rng.integers(len(base), size=n)]
        rot = Rotation.random(n, random_state=rng.integers(1 << 31)).as_matrix()
        return pick @ rot.transpose(0, 2, 1) + rng.normal(0, 0.2, pick.shape) + rng.normal(0, 3, (n, 1, 3))

    return heavy, draw(n_ref), draw(n_samples)


def rdkit_loop(heavy: Chem.Mol, ref: np.ndarray, smp: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, float]:
    """GetBestRMS for the listed (i, j) pairs; returns values and wall time (s)."""
    def as_mol(x):
        m = Chem.Mol(heavy)
        m.RemoveAllConformers()
        conf = Chem.Conformer(m.GetNumAtoms())
        for a, p in enumerate(x):
            conf.SetAtomPosition(a, Point3D(*map(float, p)))
        m.AddConformer(conf, assignId=True)
        return m

    refs = {i: as_mol(ref[i]) for i in set(pairs[:, 0].tolist())}
    smps = {j: as_mol(smp[j]) for j in set(pairs[:, 1].tolist())}
    t0 = time.perf_counter()
    vals = np.array([rdMolAlign.GetBestRMS(smps[j], refs[i]) for i, j in pairs])
    return vals, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smiles", default=DEFAULT_SMILES)
    ap.add_argument("--n-ref", type=int, default=512)
    ap.add_argument("--n-samples", type=int, default=1024)
    ap.add_argument("--pool", type=int, default=32, help="ETKDG conformers to draw from")
    ap.add_argument("--rdkit-pairs", type=int, default=2000, help="pairs timed with GetBestRMS")
    ap.add_argument("--threads", type=int, default=1, help="torch threads inside rmsd_matrix")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    heavy, ref, smp = conformer_sets(args.smiles, args.n_ref, args.n_samples, args.pool, args.seed)
    t0 = time.perf_counter()
    autos = heavy_atom_automorphisms(heavy)
    t_auto = time.perf_counter() - t0
    t0 = time.perf_counter()
    mat = rmsd_matrix(ref, smp, autos, threads=args.threads)
    t_mat = time.perf_counter() - t0 + t_auto

    rng = np.random.default_rng(args.seed)
    n_pairs = min(args.rdkit_pairs, mat.size)
    flat = rng.choice(mat.size, size=n_pairs, replace=False)
    pairs = np.stack(np.unravel_index(flat, mat.shape), axis=1)
    vals, t_rd = rdkit_loop(heavy, ref, smp, pairs)
    per_pair = t_rd / n_pairs
    t_rd_full = per_pair * mat.size
    err = np.abs(vals - mat[pairs[:, 0], pairs[:, 1]]).max()

    print(f"molecule: {args.smiles}  heavy atoms {heavy.GetNumAtoms()}  automorphisms {len(autos)}")
    print(f"matrix {mat.shape[0]} x {mat.shape[1]}  threads {args.threads}")
    print(f"rmsd_matrix (incl. automorphism search): {t_mat:.2f} s  ({t_mat / mat.size * 1e6:.2f} us/pair)")
    print(f"RDKit GetBestRMS loop: {n_pairs} pairs in {t_rd:.2f} s = {per_pair * 1e3:.3f} ms/pair "
          f"-> extrapolated {t_rd_full:.0f} s for the full matrix")
    print(f"speed-up ratio (RDKit extrapolated / matrix): {t_rd_full / t_mat:.0f}x")
    print(f"max |difference| on the timed pairs: {err:.2e} Å")


if __name__ == "__main__":
    main()
