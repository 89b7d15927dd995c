"""Molecular graphs from SMILES (RDKit, explicit hydrogens) and their batching as plain tensors.

Atom order is always that of ``Chem.AddHs(Chem.MolFromSmiles(smiles))``: the order in which
samples are generated, stored and written out.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from rdkit import Chem, RDLogger

from adjoint_sampling.torsions import TorsionBatch, TorsionTopology, batch_torsions, embed_seeds, rotatable_torsions

RDLogger.DisableLog("rdApp.*")


class InvalidMoleculeError(ValueError):
    """A SMILES string or molecule file entry cannot be used."""


@dataclass
class MoleculeGraph:
    """One molecule: atomic numbers, bonds and charge, plus its fully connected edge list.

    edge_index: [2, E] directed pairs (i != j) of the fully connected graph;
    bonded: [E] 1.0 where the pair is a covalent bond in the SMILES graph.
    """

    smiles: str
    name: str
    mol: Chem.Mol
    numbers: torch.Tensor
    bonds: torch.Tensor  # [2, n_bonds], i < j
    formal_charges: torch.Tensor
    charge: int
    edge_index: torch.Tensor
    bonded: torch.Tensor
    spin: int = 1
    # torsional mode: rotatable bonds and seed conformers [K, n, 3] (Å), set by ``with_torsions``
    torsions: Optional[TorsionTopology] = None
    seeds: Optional[torch.Tensor] = None

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def num_torsions(self) -> int:
        return self.torsions.count if self.torsions is not None else 0


def mol_from_smiles(smiles: str, allow_fragments: bool = False) -> Chem.Mol:
    """Parse SMILES with RDKit and add explicit hydrogens; raise InvalidMoleculeError if unusable."""
    if not isinstance(smiles, str) or not smiles.strip():
        raise InvalidMoleculeError("empty SMILES")
    mol = Chem.MolFromSmiles(smiles.strip())
    if mol is None:
        raise InvalidMoleculeError(f"invalid SMILES '{smiles}'")
    if not allow_fragments and len(Chem.GetMolFrags(mol)) > 1:
        raise InvalidMoleculeError(
            f"SMILES '{smiles}' has {len(Chem.GetMolFrags(mol))} fragments (set data.allow_fragments=true to allow)"
        )
    return Chem.AddHs(mol)


def _fully_connected(n: int) -> torch.Tensor:
    idx = torch.arange(n)
    src = idx.repeat_interleave(n)
    dst = idx.repeat(n)
    keep = src != dst
    return torch.stack([src[keep], dst[keep]])


def graph_from_mol(mol: Chem.Mol, smiles: str, name: Optional[str] = None) -> MoleculeGraph:
    """Build the graph of an RDKit molecule that already has explicit hydrogens."""
    n = mol.GetNumAtoms()
    numbers = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=torch.long)
    bonds = [(min(b.GetBeginAtomIdx(), b.GetEndAtomIdx()), max(b.GetBeginAtomIdx(), b.GetEndAtomIdx())) for b in mol.GetBonds()]
    bonds_t = torch.tensor(bonds, dtype=torch.long).reshape(-1, 2).T
    adjacency = torch.zeros(n, n, dtype=torch.bool)
    if bonds:
        adjacency[bonds_t[0], bonds_t[1]] = True
        adjacency[bonds_t[1], bonds_t[0]] = True
    edge_index = _fully_connected(n)
    formal = torch.tensor([a.GetFormalCharge() for a in mol.GetAtoms()], dtype=torch.long)
    radicals = sum(a.GetNumRadicalElectrons() for a in mol.GetAtoms())
    return MoleculeGraph(
        smiles=smiles,
        name=name or smiles,
        mol=mol,
        numbers=numbers,
        bonds=bonds_t,
        formal_charges=formal,
        charge=int(formal.sum()),
        edge_index=edge_index,
        bonded=adjacency[edge_index[0], edge_index[1]].float(),
        spin=radicals + 1,
    )


def graph_from_smiles(
    smiles: str, name: Optional[str] = None, allow_fragments: bool = False, max_atoms: int = 0
) -> MoleculeGraph:
    """SMILES -> MoleculeGraph with explicit hydrogens. Raises InvalidMoleculeError with the reason."""
    mol = mol_from_smiles(smiles, allow_fragments=allow_fragments)
    if max_atoms and mol.GetNumAtoms() > max_atoms:
        raise InvalidMoleculeError(
            f"molecule '{name or smiles}' has {mol.GetNumAtoms()} atoms, more than data.max_atoms={max_atoms}"
        )
    return graph_from_mol(mol, smiles, name)


def with_torsions(graph: MoleculeGraph, seeds: int = 1, seed: int = 0, relax: bool = True, amides: bool = False,
                  seed_coords: Optional[torch.Tensor] = None) -> MoleculeGraph:
    """A copy of ``graph`` with its rotatable bonds and ``seeds`` seed conformers (Å) for torsional mode.

    seed_coords [K, n, 3] reuses stored seeds (a checkpoint's) instead of embedding new ones; else
    seeded ETKDG (+ MMFF94 when ``relax``) makes them. InvalidMoleculeError if embedding fails.
    """
    if graph.mol is None:
        raise InvalidMoleculeError(f"'{graph.name}': torsional mode needs a molecule, not a point cloud")
    topo = rotatable_torsions(graph.mol, amides=amides)
    if seed_coords is None:
        try:
            seed_coords = embed_seeds(graph.mol, seeds, seed=seed, relax=relax, name=graph.name)
        except ValueError as exc:
            raise InvalidMoleculeError(str(exc)) from None
    seed_coords = torch.as_tensor(seed_coords, dtype=torch.float64)
    if seed_coords.dim() != 3 or seed_coords.shape[1:] != (graph.num_atoms, 3):
        raise InvalidMoleculeError(f"'{graph.name}': seed conformers of shape {tuple(seed_coords.shape)}, "
                                   f"expected [K, {graph.num_atoms}, 3]")
    return dataclasses.replace(graph, torsions=topo, seeds=seed_coords)


def point_cloud_graph(n_particles: int, name: str = "particles") -> MoleculeGraph:
    """A system of identical particles (synthetic benchmarks): no bonds, element index 0."""
    edge_index = _fully_connected(n_particles)
    return MoleculeGraph(
        smiles="",
        name=name,
        mol=None,
        numbers=torch.zeros(n_particles, dtype=torch.long),
        bonds=torch.zeros(2, 0, dtype=torch.long),
        formal_charges=torch.zeros(n_particles, dtype=torch.long),
        charge=0,
        edge_index=edge_index,
        bonded=torch.zeros(edge_index.shape[1]),
    )


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a small input file; InvalidMoleculeError for a binary or unreadable one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidMoleculeError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMoleculeError(f"{what} {path} is not a UTF-8 text file (byte {exc.start} is "
                                   f"0x{data[exc.start]:02x})") from None
    if "\x00" in text:
        raise InvalidMoleculeError(f"{what} {path} is not a text file (it holds NUL bytes)")
    return text


def read_molecule_list(path: str | Path, limit: int = 0, *, with_counts: bool = False,
                       problems: Optional[list] = None) -> list[tuple]:
    """Read (SMILES, id) pairs from a plain list (one SMILES per line, optional id after it)
    or the SPICE layout (header line, then ``count  SMILES  id``).

    Blank lines and ``#`` comments are skipped; line 1 is a header when a column is named SMILES or
    Rotatable_Bonds. A ``count SMILES id`` line (count a non-negative integer) is read as such anywhere.
    with_counts: (SMILES, id, count) triples instead, count the rotatable-bond column of a
    ``count SMILES id`` line, None on a plain line.
    problems: read strictly, reporting to this list: in a SPICE-layout file (a header, or a first
    line ``count SMILES id``) a line of another shape is reported and skipped. Without it such a
    line is read as a plain line.
    Raises InvalidMoleculeError for a missing, unreadable or binary file, or one with no SMILES.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidMoleculeError(f"molecule list not found: {path}" + (" (a directory)" if path.is_dir() else ""))
    entries: list[tuple[str, str, Optional[int]]] = []
    spice = None  # layout, decided by the header or the first molecule line
    for lineno, line in enumerate(read_text_file(path, "molecule list").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.split()
        if lineno == 1 and any(c.lower() in ("smiles", "rotatable_bonds") for c in cols):
            spice = True
            continue  # header of the SPICE layout
        counted = len(cols) >= 3 and cols[0].isdigit()
        if spice is None:
            spice = counted
        if counted:
            entries.append((cols[1], cols[2], int(cols[0])))
        elif spice and problems is not None:
            problems.append(f"{path}:{lineno}: expected 'count SMILES id' (count an integer), got {line!r}; skipped")
            continue
        else:
            entries.append((cols[0], cols[1] if len(cols) > 1 else cols[0], None))
        if limit and len(entries) >= limit:
            break
    if not entries:
        raise InvalidMoleculeError(f"molecule list {path} holds no SMILES")
    return entries if with_counts else [(smiles, name) for smiles, name, _ in entries]


@dataclass
class GraphBatch:
    """Many molecules (each possibly several times) as flat tensors.

    node_type [N] index into the controller's element vocabulary; numbers [N] atomic numbers;
    batch [N] molecule-copy index; edge_index [2, E] into the flat atoms; bonded [E];
    charges [B]; spins [B]; graphs: the MoleculeGraph of each copy (length B).
    """

    numbers: torch.Tensor
    node_type: torch.Tensor
    batch: torch.Tensor
    edge_index: torch.Tensor
    bonded: torch.Tensor
    charges: torch.Tensor
    spins: torch.Tensor
    graphs: list = field(default_factory=list)
    torsion: Optional[TorsionBatch] = None  # torsional mode: rotatable bonds and each copy's seed
    seed_index: Optional[list] = None  # which of its molecule's seed conformers each copy uses

    @property
    def num_graphs(self) -> int:
        return len(self.graphs)

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    def to(self, device: torch.device | str) -> "GraphBatch":
        return GraphBatch(
            numbers=self.numbers.to(device),
            node_type=self.node_type.to(device),
            batch=self.batch.to(device),
            edge_index=self.edge_index.to(device),
            bonded=self.bonded.to(device),
            charges=self.charges.to(device),
            spins=self.spins.to(device),
            graphs=self.graphs,
            torsion=self.torsion.to(device) if self.torsion is not None else None,
            seed_index=self.seed_index,
        )

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Split a per-atom tensor into one tensor per molecule copy."""
        counts = [g.num_atoms for g in self.graphs]
        return list(torch.split(x, counts))


def element_index(elements: Sequence[int]) -> torch.Tensor:
    """Lookup table atomic number -> vocabulary index (-1 where absent)."""
    table = torch.full((119,), -1, dtype=torch.long)
    table[torch.as_tensor(list(elements), dtype=torch.long)] = torch.arange(len(elements))
    return table


def check_elements(graph: MoleculeGraph, elements: Sequence[int]) -> None:
    """Raise InvalidMoleculeError if the controller has no embedding for an element of ``graph``."""
    if graph.mol is None:
        return
    missing = sorted(set(graph.numbers.tolist()) - set(int(z) for z in elements))
    if missing:
        symbols = ", ".join(Chem.GetPeriodicTable().GetElementSymbol(z) for z in missing)
        raise InvalidMoleculeError(f"molecule '{graph.name}': element(s) {symbols} not in the model's element list")


def collate(graphs: Sequence[MoleculeGraph], elements: Sequence[int], seed_index: Optional[Sequence[int]] = None
            ) -> GraphBatch:
    """Concatenate molecule graphs (duplicates allowed) into one GraphBatch.

    When every graph carries torsions (``with_torsions``), the batch also gets their TorsionBatch,
    copy i on seed conformer seed_index[i] of its molecule (default 0).
    """
    if not graphs:
        raise ValueError("cannot collate an empty list of graphs")
    table = element_index(elements) if graphs[0].mol is not None else None
    counts = torch.tensor([g.num_atoms for g in graphs])
    offsets = torch.cumsum(counts, 0) - counts
    numbers = torch.cat([g.numbers for g in graphs])
    node_type = table[numbers] if table is not None else numbers.clone()
    if (node_type < 0).any():
        for g in graphs:
            check_elements(g, elements)
    torsion = None
    if all(g.torsions is not None for g in graphs):
        seed_index = list(seed_index) if seed_index is not None else [0] * len(graphs)
        seeds = [g.seeds[k % len(g.seeds)] for g, k in zip(graphs, seed_index)]
        torsion = batch_torsions([g.torsions for g in graphs], seeds, offsets.tolist())
    return GraphBatch(
        torsion=torsion,
        seed_index=seed_index if torsion is not None else None,
        numbers=numbers,
        node_type=node_type,
        batch=torch.repeat_interleave(torch.arange(len(graphs)), counts),
        edge_index=torch.cat([g.edge_index + o for g, o in zip(graphs, offsets.tolist())], dim=1),
        bonded=torch.cat([g.bonded for g in graphs]),
        charges=torch.tensor([g.charge for g in graphs], dtype=torch.long),
        spins=torch.tensor([g.spin for g in graphs], dtype=torch.long),
        graphs=list(graphs),
    )
