"""Read reference conformer sets: a SMILES list plus ``<dir>/<id>/crest_conformers.xyz``.

List file: one molecule per line, columns ``count SMILES id`` (whitespace or tab separated),
an optional header line, or a plain list (``SMILES [id]``); it is read by
adjoint_sampling.graphs.read_molecule_list, the reader of the training and sampling CLI.
XYZ file: concatenated blocks (atom count, comment, atom lines in Å). The comment may hold an
energy or anything else. Problems are reported, never fatal: a bad block is skipped with a
message, a molecule without usable conformers is skipped with a message.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from rdkit import Chem

from adjoint_sampling.graphs import InvalidMoleculeError, read_molecule_list

XYZ_NAME = "crest_conformers.xyz"
_PT = Chem.GetPeriodicTable()


class ReferenceSetError(ValueError):
    """The reference directory, list file or conformer folder cannot be used."""


@dataclass
class MoleculeEntry:
    """One line of the SMILES list: id, SMILES and rotatable-bond count (None if not given)."""

    mol_id: str
    smiles: str
    rotatable_bonds: Optional[int]


@dataclass
class XYZBlock:
    numbers: np.ndarray  # [N] atomic numbers
    coords: np.ndarray  # [N, 3] Å
    comment: str
    energy: Optional[float]  # first token of the comment if it parses as a number


@dataclass
class XYZReadResult:
    blocks: list[XYZBlock] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def read_smiles_list(path: str | Path) -> tuple[list[MoleculeEntry], list[str]]:
    """Entries of a SMILES list and messages about what was skipped (read_molecule_list, strict).

    In the ``count SMILES id`` layout a line of another shape is reported and skipped; a list that
    cannot be read or holds no SMILES gives no entries and one message.
    """
    problems: list[str] = []
    try:
        rows = read_molecule_list(path, with_counts=True, problems=problems)
    except InvalidMoleculeError as exc:
        return [], problems + [str(exc)]
    return [MoleculeEntry(mol_id=name, smiles=smiles, rotatable_bonds=count) for smiles, name, count in rows], problems


def _atomic_number(symbol: str) -> int:
    if symbol.isdigit():
        return int(symbol)
    return _PT.GetAtomicNumber(symbol.capitalize())


def _parse_energy(comment: str) -> Optional[float]:
    tokens = comment.split()
    if not tokens:
        return None
    try:
        return float(tokens[0])
    except ValueError:
        return None


def parse_xyz(text: str, source: str = "xyz") -> XYZReadResult:
    """Split concatenated XYZ blocks; malformed blocks and stray lines are reported and skipped.

    After a bad block the reader resynchronises on the next line that holds only an integer.
    """
    lines = text.splitlines()
    out = XYZReadResult()
    i = 0
    while i < len(lines):
        head = lines[i].strip()
        if not head:
            i += 1
            continue
        if not head.isdigit():
            out.problems.append(f"{source}:{i + 1}: unexpected line {head[:40]!r} (no atom count); skipped")
            i += 1
            continue
        n_atoms = int(head)
        comment = lines[i + 1] if i + 1 < len(lines) else ""
        atoms = lines[i + 2:i + 2 + n_atoms]
        block_start = i + 1
        try:
            if n_atoms == 0:
                raise ValueError("atom count is 0")
            if len(atoms) < n_atoms:
                raise ValueError(f"truncated: {len(atoms)} of {n_atoms} atom lines")
            numbers, coords = [], []
            for k, line in enumerate(atoms):
                parts = line.split()
                if len(parts) < 4:
                    raise ValueError(f"atom line {k + 1} has {len(parts)} fields (wrong atom count?)")
                numbers.append(_atomic_number(parts[0]))
                coords.append([float(v) for v in parts[1:4]])
        except (ValueError, RuntimeError) as exc:
            out.problems.append(f"{source}:{block_start}: block skipped ({str(exc).splitlines()[0]})")
            i += 1
            while i < len(lines) and not lines[i].strip().isdigit():
                i += 1
            continue
        out.blocks.append(XYZBlock(np.array(numbers, dtype=np.int64), np.array(coords, dtype=np.float64),
                                   comment.strip(), _parse_energy(comment)))
        i += 2 + n_atoms
    return out


def read_xyz(path: str | Path) -> XYZReadResult:
    """Read an XYZ file (see parse_xyz); an unreadable file gives no blocks and one problem."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return XYZReadResult(problems=[f"{path}: cannot read ({exc.__class__.__name__}: {exc})"])
    return parse_xyz(text, source=str(path))


def select_references(blocks: list[XYZBlock], max_references: int) -> list[XYZBlock]:
    """Keep at most ``max_references``: lowest energy when every comment has one, else the first."""
    if max_references <= 0 or len(blocks) <= max_references:
        return list(blocks)
    if all(b.energy is not None for b in blocks):
        order = np.argsort([b.energy for b in blocks], kind="stable")[:max_references]
        return [blocks[k] for k in sorted(order)]
    return list(blocks[:max_references])


@dataclass
class ReferenceSet:
    list_file: Path
    conformer_dir: Path

    def entries(self) -> tuple[list[MoleculeEntry], list[str]]:
        return read_smiles_list(self.list_file)

    def xyz_path(self, mol_id: str) -> Path:
        return self.conformer_dir / mol_id / XYZ_NAME


def locate_reference_set(references: Optional[str | Path] = None, list_file: Optional[str | Path] = None,
                         conformer_dir: Optional[str | Path] = None) -> ReferenceSet:
    """Find the SMILES list and the conformer folder.

    ``references`` may be a directory holding ``<name>.txt`` and ``<name>_conformers/`` (e.g.
    shared/data/spice with spice_test.txt and spice_test_conformers/), or the conformer folder
    itself (then the list file is looked up beside it). Explicit paths override the search.
    """
    if list_file and conformer_dir:
        return _checked(Path(list_file), Path(conformer_dir))
    if references is None:
        raise ReferenceSetError("give --references DIR or both --reference-list and --conformer-dir")
    root = Path(references)
    if not root.is_dir():
        raise ReferenceSetError(f"reference directory {root} does not exist")
    pairs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.endswith("_conformers")):
        txt = root / (sub.name[: -len("_conformers")] + ".txt")
        if txt.is_file():
            pairs.append((txt, sub))
    if root.name.endswith("_conformers"):
        txt = root.parent / (root.name[: -len("_conformers")] + ".txt")
        if txt.is_file():
            pairs.append((txt, root))
    if list_file:
        pairs = [(Path(list_file), c) for _, c in pairs] or [(Path(list_file), root)]
    if conformer_dir:
        pairs = [(t, Path(conformer_dir)) for t, _ in pairs]
    if not pairs:
        raise ReferenceSetError(f"no '<name>.txt' + '<name>_conformers/' pair found in {root}; "
                                "pass --reference-list and --conformer-dir")
    if len(pairs) > 1:
        found = ", ".join(str(t.name) for t, _ in pairs)
        raise ReferenceSetError(f"several reference sets in {root} ({found}); pass --reference-list")
    return _checked(*pairs[0])


def _checked(list_file: Path, conformer_dir: Path) -> ReferenceSet:
    if not list_file.is_file():
        raise ReferenceSetError(f"SMILES list {list_file} does not exist")
    if not conformer_dir.is_dir():
        raise ReferenceSetError(f"conformer folder {conformer_dir} does not exist")
    return ReferenceSet(list_file, conformer_dir)


def iter_available(refset: ReferenceSet, entries: list[MoleculeEntry]) -> Iterator[tuple[MoleculeEntry, Optional[str]]]:
    """Yield (entry, None) when the conformer file exists, else (entry, reason)."""
    for e in entries:
        path = refset.xyz_path(e.mol_id)
        yield (e, None) if path.is_file() else (e, f"{e.mol_id}: no reference file {path}")
