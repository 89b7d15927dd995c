"""A relaxed conformer ensemble as chemists use one: valid minima only, lowest energy first,
duplicates removed, relative energies and Boltzmann populations (like CREST's output).

Per molecule: drop conformers whose relaxation failed or whose connectivity/stereo no longer
matches the SMILES (adjoint_sampling.chemistry, the same check as the SDF flags); sort by energy;
keep those within an optional energy window of the minimum; drop greedily every conformer whose
heavy-atom RMSD (symmetry-aware, RDKit rdMolAlign.GetBestRMS on H-stripped molecules) to a kept
lower-energy one is below a threshold; then ΔE_i = E_i − E_min and p_i ∝ exp(−ΔE_i/τ) over what is kept.

Units: coordinates and RMSD in Å, energies and τ in eV.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdMolAlign
from rdkit.Geometry import Point3D

from adjoint_sampling.chemistry import connectivity_matches, reference_stereo, stereo_matches

KCAL_MOL_PER_EV = 23.060547830619026  # CODATA 2018: 96.485332 kJ/mol per eV / 4.184 kJ/kcal
BOLTZMANN_EV_PER_K = 8.617333262e-5  # k_B, exact in the 2019 SI
DEFAULT_DEDUP_RMSD = 0.5  # Å, heavy atoms
CSV_COLUMNS = ("molecule", "rank", "sample_index", "energy_eV", "rel_energy_eV", "rel_energy_kcal_mol", "population")


@dataclass
class Member:
    """One kept conformer. energy, rel_energy in eV; rank 1 = lowest energy."""

    rank: int
    sample_index: int  # position among the molecule's samples before filtering
    energy: float
    rel_energy: float
    population: float

    @property
    def rel_energy_kcal_mol(self) -> float:
        return self.rel_energy * KCAL_MOL_PER_EV


def temperature_k(tau: float) -> float:
    """The temperature (K) whose k_B·T is τ (eV)."""
    return tau / BOLTZMANN_EV_PER_K


def relative_energies(energies: Sequence[float]) -> np.ndarray:
    """ΔE_i = E_i − min E (eV)."""
    e = np.asarray(energies, dtype=np.float64)
    return e - e.min()


def boltzmann_populations(energies: Sequence[float], tau: float) -> np.ndarray:
    """p_i ∝ exp(−(E_i − E_min)/τ), summing to 1 (energies and τ in eV).

    Shifting by E_min first keeps every exponent ≤ 0, so nothing overflows however large |E| is.
    """
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0 (eV), got {tau}")
    w = np.exp(-relative_energies(energies) / tau)
    return w / w.sum()


def valid_conformers(mol: Chem.Mol, coords: np.ndarray, energies: Sequence[float],
                     converged: Optional[Sequence[bool]] = None) -> np.ndarray:
    """Mask [n] of conformers that are usable minima: relaxation converged, finite energy, and bonds
    and SMILES stereo unchanged (``mol``: SMILES molecule with explicit H; coords [n, N, 3] Å)."""
    energies = np.asarray(energies, dtype=np.float64)
    ok = np.isfinite(energies) if converged is None else np.isfinite(energies) & np.asarray(converged, dtype=bool)
    want = reference_stereo(mol)  # once per molecule, not per conformer
    for k in np.flatnonzero(ok):
        ok[k] = connectivity_matches(mol, coords[k]) and stereo_matches(mol, coords[k], want)
    return ok


def energy_order(energies: Sequence[float]) -> np.ndarray:
    """Indices sorting energies ascending; ties keep sample order (stable), so output is reproducible."""
    return np.argsort(np.asarray(energies, dtype=np.float64), kind="stable")


def within_window(energies: Sequence[float], ewin: Optional[float]) -> np.ndarray:
    """Mask of energies at most ``ewin`` eV above the minimum (all when ewin is None)."""
    rel = relative_energies(energies)
    return np.ones(len(rel), dtype=bool) if ewin is None else rel <= ewin


def heavy_atom_mol(mol: Chem.Mol, coords: np.ndarray) -> Chem.Mol:
    """``mol`` with every conformer of coords [n, N, 3] (Å), hydrogens then removed: RMSD over
    hydrogens mostly measures methyl and hydroxyl rotations, which a chemist does not count as new."""
    out = Chem.Mol(mol)
    out.RemoveAllConformers()
    for x in np.asarray(coords, dtype=np.float64):
        conf = Chem.Conformer(mol.GetNumAtoms())
        for i, p in enumerate(x):
            conf.SetAtomPosition(i, Point3D(*map(float, p)))
        conf.Set3D(True)
        out.AddConformer(conf, assignId=True)
    return Chem.RemoveHs(out)


def heavy_atom_rmsd(mol: Chem.Mol, a: np.ndarray, b: np.ndarray) -> float:
    """Heavy-atom RMSD (Å) of conformers a and b [N, 3] after optimal superposition, minimised over
    the symmetry-equivalent atom matchings (rdMolAlign.GetBestRMS)."""
    heavy = heavy_atom_mol(mol, np.stack([a, b]))
    return float(rdMolAlign.GetBestRMS(Chem.Mol(heavy), heavy, 0, 1))


def deduplicate(mol: Chem.Mol, coords: np.ndarray, order: Sequence[int], rmsd: float) -> list[int]:
    """Greedy: walk ``order`` (lowest energy first) and keep a conformer unless its heavy-atom RMSD
    (Å, best over symmetry-equivalent atom matchings) to an already kept one is below ``rmsd``.

    Returns the kept indices in walk order. rmsd <= 0 keeps everything.
    """
    order = [int(i) for i in order]
    if rmsd <= 0 or len(order) < 2:
        return order
    heavy = heavy_atom_mol(mol, coords)
    probe = Chem.Mol(heavy)  # GetBestRMS moves the probe conformer; the references stay put
    kept: list[int] = []
    for i in order:
        if all(rdMolAlign.GetBestRMS(probe, heavy, i, j) >= rmsd for j in kept):
            kept.append(i)
    return kept


def build_ensemble(mol: Chem.Mol, coords: np.ndarray, energies: Sequence[float], tau: float,
                   dedup_rmsd: float = DEFAULT_DEDUP_RMSD, ewin: Optional[float] = None,
                   valid: Optional[np.ndarray] = None) -> list[Member]:
    """The ensemble of one molecule's relaxed conformers, lowest energy first.

    coords [n, N, 3] Å in ``mol``'s atom order; energies [n] eV; tau eV; dedup_rmsd Å (0: no
    dedup); ewin eV above the minimum (None: no window); valid: mask of usable conformers
    (``valid_conformers``; None: those with a finite energy). The window is applied before the
    dedup: it only removes the highest energies, which never decide whether a lower one is kept.
    """
    energies = np.asarray(energies, dtype=np.float64)
    candidates = np.flatnonzero(np.isfinite(energies) if valid is None else np.asarray(valid, dtype=bool))
    if len(candidates) == 0:
        return []
    candidates = candidates[energy_order(energies[candidates])]
    candidates = candidates[within_window(energies[candidates], ewin)]
    kept = deduplicate(mol, coords, candidates, dedup_rmsd)
    rel = relative_energies(energies[kept])
    pop = boltzmann_populations(energies[kept], tau)
    return [Member(rank + 1, i, float(energies[i]), float(rel[rank]), float(pop[rank]))
            for rank, i in enumerate(kept)]


def ensemble_csv_path(output: str | Path) -> Path:
    """``<output stem>.ensemble.csv`` beside the conformer file."""
    output = Path(output)
    return output.with_name(f"{output.stem}.ensemble.csv")


def write_ensemble_csv(rows: Sequence[tuple[str, Member]], path: str | Path) -> None:
    """One row per (molecule name, Member), columns CSV_COLUMNS; written atomically (temp + rename)."""
    from adjoint_sampling.checkpoint import atomic_open

    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for name, m in rows:
            w.writerow([name, m.rank, m.sample_index, f"{m.energy:.6f}", f"{m.rel_energy:.6f}",
                        f"{m.rel_energy_kcal_mol:.4f}", f"{m.population:.8g}"])
