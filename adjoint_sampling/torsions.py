"""Rotatable bonds, dihedral angles, seed conformers and the map θ → positions of torsional sampling.

Units: positions Å, angles radians, forces eV/Å, torsion gradients ∂E/∂θ in eV/rad.

A rotatable bond is a non-ring single bond b–c whose atoms both have degree > 1 (explicit H, so
methyl and hydroxyl rotors count). Left out: bonds at an sp atom (C–C≡N, C–C≡CH: every atom past
it lies on the bond axis, so the dihedral is undefined) and, unless ``amides=True``, amide C–N
bonds (their ~0.8 eV cis/trans barrier is never crossed at the temperatures sampled here, so the
seed's planar amide is kept).

Moving sides: for each bond, c is the atom on the side away from one central root atom (the
heavy-atom graph centre) and S_k is that side, usually the smaller one. Rotating S_k about b→c
leaves every other defining dihedral a–b–c–d unchanged: a path a–b–c–d crosses bond k only through
its two axis atoms, so its four atoms move together or not at all. Hence x(θ) sets every dihedral
exactly, in any order. a and d are b's and c's neighbours (other than c, b) of highest atomic
number, then lowest index.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

_AMIDE = Chem.MolFromSmarts("[CX3](=[OX1])-[NX3]")


@dataclass
class TorsionTopology:
    """Rotatable bonds of one molecule.

    atoms [m, 4]: a, b, c, d of each dihedral (b near the root, c on the moving side);
    moving: m tensors of the atom indices each rotation moves (S_k without c).
    """

    atoms: torch.Tensor
    moving: list

    @property
    def count(self) -> int:
        return int(self.atoms.shape[0])


def _root(mol: Chem.Mol) -> int:
    """Heavy atom of smallest eccentricity (lowest index on ties): moving sides then stay small."""
    dist = Chem.GetDistanceMatrix(mol)
    heavy = [a.GetIdx() for a in mol.GetAtoms() if a.GetAtomicNum() > 1] or [0]
    ecc = [dist[i][heavy].max() for i in heavy]
    return heavy[int(np.argmin(ecc))]


def _side(mol: Chem.Mol, start: int, blocked: int) -> set:
    """Atoms reachable from ``start`` without crossing the bond start–blocked (includes start)."""
    seen, todo = {start}, deque([start])
    while todo:
        i = todo.popleft()
        for nb in mol.GetAtomWithIdx(i).GetNeighbors():
            j = nb.GetIdx()
            if j not in seen and not (i == start and j == blocked):
                seen.add(j)
                todo.append(j)
    return seen


def _reference_neighbour(mol: Chem.Mol, atom: int, exclude: int) -> int:
    nbs = [n for n in mol.GetAtomWithIdx(atom).GetNeighbors() if n.GetIdx() != exclude]
    return min(nbs, key=lambda n: (-n.GetAtomicNum(), n.GetIdx())).GetIdx()


def rotatable_torsions(mol: Chem.Mol, amides: bool = False) -> TorsionTopology:
    """Perceive the rotatable bonds of a molecule with explicit hydrogens (see module docstring)."""
    amide_bonds = set()
    if not amides:
        for c, _, n in mol.GetSubstructMatches(_AMIDE):
            amide_bonds.add(frozenset((c, n)))
    root = _root(mol)
    atoms, moving = [], []
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        ai, aj = bond.GetBeginAtom(), bond.GetEndAtom()
        if bond.GetBondType() != Chem.BondType.SINGLE or bond.IsInRing():
            continue
        if ai.GetDegree() < 2 or aj.GetDegree() < 2:
            continue
        if Chem.HybridizationType.SP in (ai.GetHybridization(), aj.GetHybridization()):
            continue
        if frozenset((i, j)) in amide_bonds:
            continue
        side_j = _side(mol, j, i)
        b, c = (i, j) if root not in side_j else (j, i)
        side = side_j if c == j else _side(mol, i, j)
        a, d = _reference_neighbour(mol, b, c), _reference_neighbour(mol, c, b)
        atoms.append((a, b, c, d))
        moving.append(torch.tensor(sorted(side - {c}), dtype=torch.long))
    return TorsionTopology(torch.tensor(atoms, dtype=torch.long).reshape(-1, 4), moving)


def dihedral(p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    """Dihedral angle p0–p1–p2–p3 in (−π, π] (radians), batched over leading dims [..., 3].

    Positive when p3 is turned right-handedly about p1→p2 from p0: rotating p3's side by +δ about
    that axis adds δ (RDKit's sign convention).
    """
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    u = b1 / b1.norm(dim=-1, keepdim=True)
    v = b0 - (b0 * u).sum(-1, keepdim=True) * u
    w = b2 - (b2 * u).sum(-1, keepdim=True) * u
    x = (v * w).sum(-1)
    y = (torch.cross(u, v, dim=-1) * w).sum(-1)
    return torch.atan2(y, x)


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """Map angles (radians) into [−π, π)."""
    return torch.remainder(theta + torch.pi, 2 * torch.pi) - torch.pi


# ---------------------------------------------------------------------- seeds
def embed_seeds(mol: Chem.Mol, k: int = 1, seed: int = 0, relax: bool = True, name: str = "molecule") -> torch.Tensor:
    """k seed conformers [k, n, 3] (Å) of a molecule with explicit H: seeded ETKDGv3, then MMFF94.

    Deterministic for a given seed (one thread). RDKit's randomSeed is seed + 1: randomSeed=0 gives
    identical conformers in RDKit 2026.09. Molecules MMFF cannot type keep their ETKDG geometry.
    Raises ValueError when ETKDG cannot embed the molecule.
    """
    if k < 1:
        raise ValueError(f"torsion.seeds must be >= 1, got {k}")
    m = Chem.Mol(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed) + 1
    params.numThreads = 1
    cids = list(AllChem.EmbedMultipleConfs(m, numConfs=int(k), params=params))
    if not cids:
        params.useRandomCoords = True
        cids = list(AllChem.EmbedMultipleConfs(m, numConfs=int(k), params=params))
    if not cids:
        raise ValueError(f"molecule '{name}': RDKit ETKDG could not embed a seed conformer")
    if relax and AllChem.MMFFHasAllMoleculeParams(m):
        AllChem.MMFFOptimizeMoleculeConfs(m, numThreads=1, maxIters=2000)
    coords = [m.GetConformer(c).GetPositions() for c in cids]
    while len(coords) < k:  # ETKDG may return fewer distinct embeddings than asked for
        coords.append(coords[len(coords) % len(cids)])
    return torch.tensor(np.stack(coords[:k]), dtype=torch.float64)


# ---------------------------------------------------------------------- batched map
@dataclass
class TorsionBatch:
    """The torsions of a batch of molecule copies, as flat tensors (built by ``collate``).

    atoms [T, 4] global atom indices; batch [T] molecule copy of each torsion; seed_pos [N, 3] the
    seed conformer (Å) of each copy's atoms; seed_theta [T] its dihedrals (radians); steps: per rank j
    (the j-th torsion of every copy that has one) (torsion indices [T_j], pair torsion index [P_j],
    pair atom index [P_j], the pair's row within the step's torsions [P_j]).
    """

    atoms: torch.Tensor
    batch: torch.Tensor
    seed_pos: torch.Tensor
    steps: list
    seed_theta: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.atoms.shape[0])

    def to(self, device) -> "TorsionBatch":
        return TorsionBatch(self.atoms.to(device), self.batch.to(device), self.seed_pos.to(device),
                            [tuple(x.to(device) for x in s) for s in self.steps], self.seed_theta.to(device))


def batch_torsions(topologies: list, seeds: list, atom_offsets: list) -> TorsionBatch:
    """Concatenate per-copy topologies and seed conformers ([n, 3] each) into one TorsionBatch."""
    atoms, tbatch, steps = [], [], {}
    t_off = 0
    for copy, (topo, off) in enumerate(zip(topologies, atom_offsets)):
        atoms.append(topo.atoms + off)
        tbatch.append(torch.full((topo.count,), copy, dtype=torch.long))
        for j, side in enumerate(topo.moving):
            tors, ptor, patom = steps.setdefault(j, ([], [], []))
            tors.append(t_off + j)
            ptor.append(torch.full((len(side),), t_off + j, dtype=torch.long))
            patom.append(side + off)
        t_off += topo.count
    step_list = []
    for _, (t, pt, pa) in sorted(steps.items()):
        tors, ptor = torch.tensor(t, dtype=torch.long), torch.cat(pt)
        step_list.append((tors, ptor, torch.cat(pa), torch.searchsorted(tors, ptor)))
    atoms_t = torch.cat(atoms) if atoms else torch.zeros(0, 4, dtype=torch.long)
    seed_pos = torch.cat([s.reshape(-1, 3) for s in seeds]).double()
    return TorsionBatch(
        atoms=atoms_t,
        batch=torch.cat(tbatch) if tbatch else torch.zeros(0, dtype=torch.long),
        seed_pos=seed_pos,
        steps=step_list,
        seed_theta=measure(seed_pos, atoms_t) if len(atoms_t) else torch.zeros(0, dtype=torch.float64),
    )


def measure(pos: torch.Tensor, atoms: torch.Tensor) -> torch.Tensor:
    """Dihedral angles [T] (radians) of ``atoms`` [T, 4] in positions pos [N, 3] (Å)."""
    return dihedral(pos[atoms[:, 0]], pos[atoms[:, 1]], pos[atoms[:, 2]], pos[atoms[:, 3]])


def _rotate(p: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotate vectors p [P, 3] right-handedly about unit axes [P, 3] by angle [P]."""
    c, s = torch.cos(angle).unsqueeze(-1), torch.sin(angle).unsqueeze(-1)
    return p * c + torch.cross(axis, p, dim=-1) * s + axis * (axis * p).sum(-1, keepdim=True) * (1 - c)


def set_torsions(theta: torch.Tensor, tb: TorsionBatch) -> torch.Tensor:
    """Positions [N, 3] (Å, dtype of seed_pos) whose dihedrals equal θ [T] (radians) on the seeds.

    Bond lengths and angles are those of the seeds. Each rotation turns S_k by θ_k − φ_k(seed)
    about its current axis; the root-based sides keep every other dihedral fixed (module docstring).
    """
    pos = tb.seed_pos
    if tb.count == 0:
        return pos.clone()
    theta = theta.reshape(-1).to(pos.dtype)
    delta = theta - tb.seed_theta
    for tors, ptor, patom, row in tb.steps:
        b = pos[tb.atoms[tors, 1]]
        c = pos[tb.atoms[tors, 2]]
        axis = (c - b) / (c - b).norm(dim=-1, keepdim=True)
        origin = c[row]
        moved = origin + _rotate(pos[patom] - origin, axis[row], delta[ptor])
        pos = pos.index_put((patom,), moved)
    return pos


def torsion_gradient(pos: torch.Tensor, grad_x: torch.Tensor, tb: TorsionBatch) -> torch.Tensor:
    """∂f/∂θ [T] from a Cartesian gradient ∂f/∂x [N, 3] at positions pos [N, 3] = x(θ).

    ∂x_i/∂θ_k = u_k × (x_i − x_c) for i in S_k (a rigid rotation about the bond axis u_k), so with
    forces F = −∂E/∂x this is ∂E/∂θ_k = −Σ_{i∈S_k} F_i · (u_k × (x_i − x_c)) (eV/rad).
    """
    out = torch.zeros(tb.count, dtype=grad_x.dtype, device=grad_x.device)
    if tb.count == 0:
        return out
    b = pos[tb.atoms[:, 1]]
    c = pos[tb.atoms[:, 2]]
    axis = (c - b) / (c - b).norm(dim=-1, keepdim=True)
    for _, ptor, patom, _ in tb.steps:
        lever = torch.cross(axis[ptor], pos[patom] - c[ptor], dim=-1)
        out = out.index_add(0, ptor, (grad_x[patom] * lever.to(grad_x.dtype)).sum(-1))
    return out
