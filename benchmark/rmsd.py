"""Symmetry-aware heavy-atom RMSD matrices (Å), vectorised over all reference x sample pairs.

For two centred point sets A, B (n atoms) and the correlation H = A^T B, the minimum RMSD over
proper rotations is sqrt((|A|^2 + |B|^2 - 2 lam) / n), where lam is the largest eigenvalue of
Horn's 4x4 quaternion matrix built from H. That eigenvalue is the largest root of the quartic
    P(l) = l^4 - 2 |H|_F^2 l^2 - 8 det(H) l + (2 |H^T H|_F^2 - |H|_F^4)
which Newton's method reaches monotonically from any upper bound (all roots are real and P is
convex beyond the largest one). This is Kabsch without one SVD per pair, so the whole
[references x samples x automorphisms] tensor costs a few GEMMs plus elementwise work.

Graph symmetry: the RMSD of a pair is minimised over the heavy-atom graph automorphisms, found
once per molecule as RDKit substructure self-matches (uniquify=False), with conjugated terminal
groups (carboxylate, nitro, amidine ...) symmetrised the way rdMolAlign.GetBestRMS does by default.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch
from rdkit import Chem

# One O/N of degree 1 whose neighbour also carries another degree-1 O/N through a bond of the
# other order: the two are resonance partners and should be interchangeable.
_TERMINAL_GROUP_SMARTS = "[O,N;D1;$([O,N;D1]-[*]=[O,N;D1]),$([O,N;D1]=[*]-[O,N;D1])]~[*]"
_MAX_AUTOMORPHISMS = 1_000_000  # same cap as GetBestRMS's maxMatches


class RMSDInputError(ValueError):
    """Coordinates or atom maps have inconsistent shapes."""


def heavy_atom_mol(mol: Chem.Mol) -> Chem.Mol:
    """The molecule without hydrogens; heavy atoms keep their relative order (SMILES order)."""
    return Chem.RemoveHs(mol, sanitize=False) if any(a.GetAtomicNum() == 1 for a in mol.GetAtoms()) else Chem.Mol(mol)


def _symmetrised_query(mol: Chem.Mol) -> Chem.Mol:
    """Copy of ``mol`` whose conjugated terminal O/N bonds match single or double bonds."""
    pattern = Chem.MolFromSmarts(_TERMINAL_GROUP_SMARTS)
    either = Chem.MolFromSmarts("*-,=*").GetBondWithIdx(0)
    query = Chem.RWMol(mol)
    for terminal, centre in mol.GetSubstructMatches(pattern):
        query.GetAtomWithIdx(terminal).SetFormalCharge(0)
        bond = mol.GetBondBetweenAtoms(terminal, centre)
        query.ReplaceBond(bond.GetIdx(), either, preserveProps=False)
    return query


def heavy_atom_automorphisms(mol: Chem.Mol, symmetrize_terminal_groups: bool = True,
                             max_automorphisms: int = _MAX_AUTOMORPHISMS) -> np.ndarray:
    """Graph automorphisms of the heavy-atom graph as an int array [n_auto, n_heavy].

    ``mol`` may carry hydrogens (they are dropped). Row k maps heavy atom a to heavy atom
    perm[k, a]; the identity is always row 0.
    """
    heavy = heavy_atom_mol(mol)
    query = _symmetrised_query(heavy) if symmetrize_terminal_groups else heavy
    matches = heavy.GetSubstructMatches(query, uniquify=False, useChirality=False,
                                        maxMatches=max_automorphisms)
    n = heavy.GetNumAtoms()
    identity = tuple(range(n))
    perms = [identity] + [m for m in matches if tuple(m) != identity]
    if len(matches) >= max_automorphisms:
        warnings.warn(f"automorphism enumeration stopped at {max_automorphisms}; RMSD may be overestimated")
    return np.asarray(perms, dtype=np.int64).reshape(len(perms), n)


def _centre(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=1, keepdim=True)


def _coordinate_planes(x: torch.Tensor) -> list[torch.Tensor]:
    """Contiguous x, y, z planes [..., atoms] of coordinates [..., atoms, 3]."""
    return [x[..., k].contiguous() for k in range(3)]


def _largest_root(h: list[torch.Tensor], upper: torch.Tensor, rel_tol: float, max_iter: int = 100) -> torch.Tensor:
    """Largest eigenvalue of Horn's matrix for correlation entries ``h`` (elementwise, any shape)."""
    h0, h1, h2, h3, h4, h5, h6, h7, h8 = h
    det = h0 * (h4 * h8 - h5 * h7) - h1 * (h3 * h8 - h5 * h6) + h2 * (h3 * h7 - h4 * h6)
    m00 = h0 * h0 + h3 * h3 + h6 * h6
    m11 = h1 * h1 + h4 * h4 + h7 * h7
    m22 = h2 * h2 + h5 * h5 + h8 * h8
    m01 = h0 * h1 + h3 * h4 + h6 * h7
    m02 = h0 * h2 + h3 * h5 + h6 * h8
    m12 = h1 * h2 + h4 * h5 + h7 * h8
    fro = m00 + m11 + m22
    c2 = -2.0 * fro
    c1 = -8.0 * det
    c0 = 2.0 * (m00 * m00 + m11 * m11 + m22 * m22 + 2.0 * (m01 * m01 + m02 * m02 + m12 * m12)) - fro * fro
    del m00, m11, m22, m01, m02, m12, det
    # Both are upper bounds of the root: lam <= nuclear norm <= sqrt(3)|H|_F and RMSD^2 >= 0.
    lam = torch.minimum(upper.expand_as(fro), torch.sqrt(3.0 * fro))
    tiny = torch.finfo(lam.dtype).tiny
    for it in range(max_iter):
        lam2 = lam * lam
        value = (lam2 + c2).mul_(lam2).addcmul_(c1, lam).add_(c0)
        slope = lam2.mul_(4.0).add_(c2, alpha=2.0).mul_(lam).add_(c1).clamp_min_(tiny)
        step = value.div_(slope)
        lam.sub_(step)
        if it % 4 == 3 and bool((step.abs_() <= rel_tol * lam.abs() + 1e-30).all()):
            break
    return lam


def _two_best_automorphisms(ref: torch.Tensor, smp: torch.Tensor, perms: torch.Tensor,
                            e_sum: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Float32 screen over all automorphisms: indices of the two lowest MSDs per pair, [2, nR, nS].

    ref: [nR, n, 3], smp: [nS, n, 3] (centred, float32); e_sum: [nR, nS] summed squared norms.
    Work is done in blocks of at most ``max_elements`` (pair, automorphism) items; the permuted
    samples of a block are gathered once and reused by one GEMM per entry of H for many references.
    """
    n_ref, n = ref.shape[:2]
    n_smp = smp.shape[0]
    ref_p = _coordinate_planes(ref)
    smp_p = _coordinate_planes(smp)
    auto_block = max(1, max_elements // (n_ref * n_smp))
    row_block = max(1, max_elements // (auto_block * n_smp))
    best_val = torch.full((n_ref, 2, n_smp), float("inf"), dtype=ref.dtype)
    best_idx = torch.zeros((n_ref, 2, n_smp), dtype=torch.long)
    for a0 in range(0, perms.shape[0], auto_block):
        p_blk = perms[a0:a0 + auto_block]
        n_blk = p_blk.shape[0]
        smp_blk = [pl[:, p_blk].transpose(0, 1).reshape(-1, n) for pl in smp_p]  # [A_blk * nS, n]
        for r0 in range(0, n_ref, row_block):
            rs = slice(r0, r0 + row_block)
            h = [(ref_p[k][rs] @ smp_blk[l].T).view(-1, n_blk, n_smp) for k in range(3) for l in range(3)]
            e = e_sum[rs, None, :]
            score = e - 2.0 * _largest_root(h, e / 2, rel_tol=1e-6, max_iter=60)  # n * MSD
            idx = torch.arange(a0, a0 + n_blk).view(1, -1, 1).expand_as(score)
            top = torch.topk(torch.cat([best_val[rs], score], dim=1), 2, dim=1, largest=False)
            best_idx[rs] = torch.gather(torch.cat([best_idx[rs], idx], dim=1), 1, top.indices)
            best_val[rs] = top.values
    if perms.shape[0] == 1:
        best_idx[:, 1] = best_idx[:, 0]
    return best_idx.permute(1, 0, 2)


def _msd_for_choice(ref: torch.Tensor, smp: torch.Tensor, perms: torch.Tensor, choice: torch.Tensor,
                    e_sum: torch.Tensor) -> torch.Tensor:
    """Exact float64 MSD (Å^2) for automorphism ``choice[i, j]`` of every pair (i, j)."""
    n = ref.shape[1]
    atom_idx = perms[choice]  # [nR, nS, n]
    permuted = smp[torch.arange(smp.shape[0])[None, :, None], atom_idx]  # [nR, nS, n, 3]
    corr = torch.einsum("iak,ijal->ijkl", ref, permuted).reshape(*choice.shape, 9)
    lam = _largest_root(list(corr.unbind(-1)), e_sum / 2, rel_tol=1e-14)
    return ((e_sum - 2.0 * lam) / n).clamp_min(0.0)


def rmsd_matrix(ref_coords: np.ndarray, sample_coords: np.ndarray, automorphisms: Optional[np.ndarray] = None,
                max_pairs_per_chunk: int = 1 << 16, threads: int = 1) -> np.ndarray:
    """Best heavy-atom RMSD (Å) between every reference and every sample: [n_ref, n_samples].

    ref_coords: [nR, n, 3] Å, sample_coords: [nS, n, 3] Å, both heavy atoms only, same atom order.
    automorphisms: [n_auto, n] atom permutations (heavy_atom_automorphisms); None = identity only.
    Samples (or references) containing any non-finite coordinate give NaN columns (rows).
    A float32 pass over all automorphisms picks the two best per pair; those are re-scored in
    float64, so the result is exact to ~1e-7 Å unless three automorphisms tie to ~1e-5 Å^2.
    Memory is bounded by processing ``max_pairs_per_chunk`` pairs at a time.
    threads: torch intra-op threads while computing (default 1: the work is many medium-size
    elementwise ops, and extra threads mostly spin when the cores are shared; measured 17x slower
    with 2 threads than with 1 on a busy 2-core machine).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        return _rmsd_matrix(ref_coords, sample_coords, automorphisms, max_pairs_per_chunk)
    finally:
        torch.set_num_threads(previous)


def _rmsd_matrix(ref_coords, sample_coords, automorphisms, max_pairs_per_chunk) -> np.ndarray:
    ref = np.asarray(ref_coords, dtype=np.float64)
    smp = np.asarray(sample_coords, dtype=np.float64)
    if ref.ndim != 3 or smp.ndim != 3 or ref.shape[1:] != smp.shape[1:] or ref.shape[2] != 3:
        raise RMSDInputError(f"coordinate shapes {ref.shape} and {smp.shape} are not [n, atoms, 3] with equal atoms")
    n_atoms = ref.shape[1]
    perms = np.arange(n_atoms)[None] if automorphisms is None else np.asarray(automorphisms, dtype=np.int64)
    if perms.ndim != 2 or perms.shape[1] != n_atoms:
        raise RMSDInputError(f"automorphisms of shape {perms.shape} do not fit {n_atoms} atoms")
    out = np.full((ref.shape[0], smp.shape[0]), np.nan)
    ok_r = np.isfinite(ref).all(axis=(1, 2))
    ok_s = np.isfinite(smp).all(axis=(1, 2))
    if not ok_r.any() or not ok_s.any():
        return out
    r64 = _centre(torch.from_numpy(ref[ok_r]))
    s64 = _centre(torch.from_numpy(smp[ok_s]))
    perms_t = torch.from_numpy(perms)
    n_auto = perms.shape[0]
    er = (r64 * r64).sum(dim=(1, 2))
    es = (s64 * s64).sum(dim=(1, 2))
    e_all = er[:, None] + es[None, :]
    if n_auto > 1:
        choices_all = _two_best_automorphisms(r64.float(), s64.float(), perms_t, e_all.float(), 2 * max_pairs_per_chunk)
    exact_rows = max(1, max_pairs_per_chunk // s64.shape[0])
    result = np.empty((r64.shape[0], s64.shape[0]))
    for start in range(0, r64.shape[0], exact_rows):
        stop = min(start + exact_rows, r64.shape[0])
        e_sum = e_all[start:stop]
        if n_auto == 1:
            choices = torch.zeros((1,) + e_sum.shape, dtype=torch.long)
        else:
            choices = choices_all[:, start:stop]
        msd = _msd_for_choice(r64[start:stop], s64, perms_t, choices[0], e_sum)
        if choices.shape[0] > 1 and not torch.equal(choices[0], choices[1]):
            msd = torch.minimum(msd, _msd_for_choice(r64[start:stop], s64, perms_t, choices[1], e_sum))
        result[start:stop] = msd.sqrt().numpy()
    out[np.ix_(ok_r, ok_s)] = result
    return out
