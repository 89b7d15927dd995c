"""Conformer generators compared by the benchmark, and optional relaxation of their samples.

Method spec grammar: ``<base>[+<energy>]``
  rdkit                 RDKit ETKDGv3 (seeded, multithreaded)
  adjoint-sampling      a trained checkpoint (adjoint_sampling.sampling.load_sampler); without one
                        the sampler shipped with the package (adjoint_sampling.pretrained)
  sdf:<dir>             conformers made by another tool, ``<dir>/<id>.sdf`` in any atom order
  +<energy>             relax the samples with energies.make_energy(EnergyConfig(name=<energy>))
                        (e.g. rdkit+mmff, rdkit+xtb, adjoint-sampling+xtb), same fmax for all.
Every generator returns coordinates [n, N_atoms, 3] (Å) in the SMILES atom order
(Chem.AddHs(Chem.MolFromSmiles(smiles))), with NaN rows for samples that failed, and names the
inputs its samples depend on with ``cache_key(mol_id)`` (a JSON-able dict: the checkpoint's sha256,
the sdf file's sha256, ...) so that the runner recomputes stored results whose inputs changed.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem

from benchmark.mapping import MoleculeTemplate


class MethodError(ValueError):
    """A method spec is malformed or its generator cannot be built."""


class MethodSkip(Exception):
    """This method cannot handle this molecule (reason in the message); the run goes on."""


@dataclass
class GeneratedSamples:
    coords: np.ndarray  # [n, N, 3] Å, SMILES atom order, NaN rows = failed
    n_unmapped: int = 0  # produced but could not be mapped onto the SMILES (wrong connectivity)


class Generator(Protocol):
    name: str

    def generate(self, mol_id: str, template: MoleculeTemplate, n: int, seed: int) -> GeneratedSamples: ...

    def cache_key(self, mol_id: Optional[str]) -> dict: ...  # optional: inputs of mol_id's samples (None: run-wide)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's content (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class RDKitGenerator:
    """ETKDGv3 conformers; embeddings that fail leave NaN rows.

    RDKit's randomSeed is ``seed + 1``: with randomSeed=0 EmbedMultipleConfs returns n identical
    conformers (RDKit 2026.09), which would make every metric meaningless.
    """

    name = "rdkit"

    def __init__(self, threads: int = 0):
        self.threads = threads

    def generate(self, mol_id, template, n, seed):
        mol = Chem.Mol(template.mol)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed) + 1
        params.numThreads = int(self.threads)
        cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=int(n), params=params))
        out = np.full((n, template.num_atoms, 3), np.nan)
        for k, cid in enumerate(cids[:n]):
            out[k] = mol.GetConformer(cid).GetPositions()
        return GeneratedSamples(out)

    def cache_key(self, mol_id):
        from rdkit import __version__ as rdkit_version

        return {"generator": "rdkit", "rdkit": rdkit_version}


class AdjointSamplingGenerator:
    """Samples of a trained Adjoint Sampling checkpoint (or any object with ``sample(smiles, n, seed)``).

    The checkpoint is loaded (and its sha256 taken) here, once: an unreadable or foreign file is a
    MethodError before any molecule is run, not a per-molecule skip. Without a checkpoint (or a
    sampler) the sampler shipped with the package is used, and stderr says so.
    """

    name = "adjoint-sampling"

    def __init__(self, checkpoint: Optional[str] = None, device: str = "cpu", sampler=None):
        if sampler is None and not checkpoint:
            checkpoint = str(_shipped_checkpoint())
        self.checkpoint, self.device, self.sampler = checkpoint, device, sampler
        self.checkpoint_sha256: Optional[str] = None
        if sampler is None:
            from adjoint_sampling.checkpoint import CheckpointError
            from adjoint_sampling.sampling import load_sampler

            try:
                self.sampler = load_sampler(checkpoint, device=device)
                self.checkpoint_sha256 = file_sha256(checkpoint)
            except (CheckpointError, OSError) as exc:
                raise MethodError(f"method 'adjoint-sampling': {str(exc).splitlines()[0]}") from None

    def cache_key(self, mol_id):
        key = {"generator": "adjoint-sampling", "device": str(self.device)}
        if self.checkpoint_sha256 is not None:
            key["checkpoint_sha256"] = self.checkpoint_sha256
        else:  # a sampler object handed in by the caller: only its type is known
            key["sampler"] = type(self.sampler).__qualname__
        return key

    def generate(self, mol_id, template, n, seed):
        try:
            coords = np.asarray(self.sampler.sample(template.smiles, int(n), seed=int(seed)), dtype=np.float64)
        except ValueError as exc:  # unsupported element etc.: skip this molecule for this method
            raise MethodSkip(f"sampler refused {mol_id}: {str(exc).splitlines()[0]}") from None
        if coords.shape != (n, template.num_atoms, 3):
            raise MethodSkip(f"sampler returned shape {coords.shape}, expected {(n, template.num_atoms, 3)}")
        return GeneratedSamples(coords)


def _shipped_checkpoint() -> Path:
    """The package's shipped checkpoint (said on stderr); MethodError when this installation has none."""
    import sys

    from adjoint_sampling.pretrained import ShippedSamplerMissing, describe_shipped, shipped_checkpoint

    try:
        path = shipped_checkpoint()
    except ShippedSamplerMissing as exc:
        raise MethodError(f"method 'adjoint-sampling': {exc}") from None
    print(f"using the shipped sampler {path} ({describe_shipped()})", file=sys.stderr, flush=True)
    return path


class SDFGenerator:
    """Conformers read from ``<dir>/<id>.sdf`` (any atom order, mapped onto the SMILES)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise MethodError(f"sdf directory {self.directory} does not exist")
        self.name = f"sdf:{self.directory.name}"

    def generate(self, mol_id, template, n, seed):
        path = self.directory / f"{mol_id}.sdf"
        if not path.is_file():
            raise MethodSkip(f"{mol_id}: no file {path}")
        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
        rows, unmapped = [], 0
        for mol in supplier:
            if len(rows) >= n:
                break
            if mol is None or mol.GetNumConformers() == 0:
                rows.append(np.full((template.num_atoms, 3), np.nan))
                continue
            numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
            mapped, _ = template.map_conformer(numbers, mol.GetConformer().GetPositions())
            if mapped is None:
                unmapped += 1
                mapped = np.full((template.num_atoms, 3), np.nan)
            rows.append(mapped)
        if not rows:
            raise MethodSkip(f"{mol_id}: {path} holds no conformers")
        return GeneratedSamples(np.stack(rows), n_unmapped=unmapped)

    def cache_key(self, mol_id):
        key = {"generator": "sdf", "directory": str(self.directory.resolve())}
        if mol_id is not None:
            path = self.directory / f"{mol_id}.sdf"
            key["sdf_sha256"] = file_sha256(path) if path.is_file() else None
        return key


@dataclass
class MethodSpec:
    name: str  # label in the outputs
    base: str  # generator key: "rdkit", "adjoint-sampling", "sdf:<dir>"
    relax: Optional[str]  # energy name or None


_ALIASES = {"as": "adjoint-sampling", "etkdg": "rdkit"}


def parse_method(spec: str) -> MethodSpec:
    """Parse ``<base>[+<energy>]`` (see module docstring)."""
    spec = spec.strip()
    if not spec:
        raise MethodError("empty method name")
    base, relax = spec, None
    if "+" in spec:
        head, tail = spec.rsplit("+", 1)
        if tail and os.sep not in tail and not (spec.startswith("sdf:") and Path(spec[4:]).is_dir()):
            base, relax = head, tail
    base = _ALIASES.get(base, base)
    if base.startswith("sdf:"):
        if not base[4:]:
            raise MethodError("method 'sdf:' needs a directory, e.g. sdf:/path/to/confs")
        label = f"sdf:{Path(base[4:]).name}"
    elif base in GENERATORS:
        label = base
    else:
        known = ", ".join(sorted(GENERATORS)) + ", sdf:<dir>"
        raise MethodError(f"unknown method {spec!r}; known: {known} (optionally +<energy>)")
    return MethodSpec(name=label + (f"+{relax}" if relax else ""), base=base, relax=relax)


# Registry: base name -> factory(options dict) -> Generator. Extend with register_generator.
GENERATORS: dict[str, Callable[[dict], Generator]] = {
    "rdkit": lambda o: RDKitGenerator(threads=o.get("threads", 0)),
    "adjoint-sampling": lambda o: AdjointSamplingGenerator(o.get("checkpoint"), o.get("device", "cpu"), o.get("sampler")),
}


def register_generator(name: str, factory: Callable[[dict], Generator]) -> None:
    """Make ``name`` (and ``name+<energy>``) usable as a benchmark method."""
    GENERATORS[name] = factory


def build_generator(base: str, options: dict) -> Generator:
    """Generator for a parsed base name."""
    if base.startswith("sdf:"):
        return SDFGenerator(base[4:])
    return GENERATORS[base](options)


@dataclass
class RelaxOutcome:
    coords: np.ndarray  # [n, N, 3] Å, NaN rows where the input failed or relaxation diverged
    n_converged: int
    n_relaxed: int


def relax_samples(energy, template: MoleculeTemplate, coords: np.ndarray, fmax: float, steps: int) -> RelaxOutcome:
    """Relax the finite samples with ``energies.relax.relax_conformers`` (fmax in eV/Å)."""
    from energies.relax import relax_conformers

    ok = np.isfinite(coords).all(axis=(1, 2))
    out = np.full_like(coords, np.nan)
    if not ok.any():
        return RelaxOutcome(out, 0, 0)
    res = relax_conformers(energy, template.numbers, coords[ok], charge=template.charge, spin=1,
                           mol=template.mol, fmax=fmax, steps=steps, optimizer="lbfgs")
    relaxed = np.asarray(res.coords, dtype=np.float64).reshape(int(ok.sum()), template.num_atoms, 3)
    energies_ = np.asarray(res.energies, dtype=np.float64).reshape(-1)
    relaxed[~np.isfinite(energies_)] = np.nan  # diverged / failed evaluations become failed samples
    out[ok] = relaxed
    return RelaxOutcome(out, int(np.asarray(res.converged).sum()), int(ok.sum()))
