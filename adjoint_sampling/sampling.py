"""Generate conformers for (possibly unseen) SMILES from a trained checkpoint and write SDF/XYZ.

Conformers keep the SMILES atom order (explicit H) and the SMILES bonds; nothing is perceived
from coordinates except for the connectivity/stereo check flags written beside each conformer.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from rdkit import Chem

from adjoint_sampling.checkpoint import CheckpointError, atomic_open, check_format, load_checkpoint, temp_beside
from adjoint_sampling.chemistry import connectivity_matches, conformer_mol, stereo_matches  # noqa: F401 (re-exported)
from adjoint_sampling.config import Config, ConfigError, config_from_dict
from adjoint_sampling.controllers import GradientInformedController, build_controller
from adjoint_sampling.graphs import MoleculeGraph, check_elements, collate, graph_from_smiles, with_torsions
from adjoint_sampling.importance import normalized_weights, path_log_weights
from adjoint_sampling.loss import AdjointField, make_adjoint_field
from adjoint_sampling.schedules import make_schedule, time_grid
from adjoint_sampling.sde import integrate
from adjoint_sampling.spaces import make_space


class Sampler:
    """A trained controller plus its SDE settings, ready to draw conformers (Å)."""

    def __init__(self, cfg: Config, model: torch.nn.Module, device: torch.device):
        self.cfg = cfg
        self.model = model.eval()
        self.device = device
        self.schedule = make_schedule(cfg.sde.schedule, cfg.sde.sigma_min, cfg.sde.sigma_max, cfg.sde.sigma)
        self.space = make_space(cfg.mode)
        self.seeds: dict = {}  # SMILES -> stored seed conformers (the checkpoint's training molecules)

    def graph(self, smiles: str, name: Optional[str] = None) -> MoleculeGraph:
        """The molecule graph of a SMILES, validated; in torsional mode with its torsions and seeds
        (the checkpoint's stored seeds for its training molecules, else the configured seeded ETKDG)."""
        g = graph_from_smiles(smiles, name=name, allow_fragments=self.cfg.data.allow_fragments)
        check_elements(g, self.cfg.model.elements)
        if self.cfg.mode == "torsional":
            tc = self.cfg.torsion
            g = with_torsions(g, tc.seeds, tc.embed_seed, tc.relax_seeds, tc.amides, seed_coords=self.seeds.get(smiles))
        return g

    def sample_graph(self, graph: MoleculeGraph, n: int, seed: int = 0, nfe: Optional[int] = None,
                     batch_size: int = 256, with_log_rn: bool = False, base: bool = False):
        """n conformers [n, atoms, 3] (Å) of one molecule graph.

        with_log_rn: also return each path's log dP^u/dP^base [n], the ingredient of ``log_weights``.
        base: sample the uncontrolled base process instead of the trained controller.
        Torsional mode: copy k uses seed conformer k mod K; a molecule without rotatable bonds gets
        its seed conformers (log dP^u/dP^base = 0).
        """
        if n < 1:
            raise ValueError(f"number of samples must be >= 1, got {n}")
        if nfe is not None and nfe < 1:
            raise ValueError(f"number of integration steps must be >= 1, got {nfe}")
        grid = time_grid(self.cfg.sde.grid, nfe or self.cfg.sde.eval_nfe, schedule=self.schedule)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out, log_rn = [], []
        for start in range(0, n, batch_size):
            k = min(batch_size, n - start)
            seeds = [(start + i) % len(graph.seeds) for i in range(k)] if graph.seeds is not None else None
            graphs = collate([graph] * k, self.cfg.model.elements, seeds).to(self.device)
            if self.cfg.mode == "torsional" and graph.num_torsions == 0:
                out.append(graphs.torsion.seed_pos.cpu().numpy().reshape(k, graph.num_atoms, 3))
                log_rn.append(np.zeros(k))
                continue
            path = integrate(None if base else self.model, graphs, self.schedule, grid, 3, gen, space=self.space)
            pos = self.space.positions(path.x1, graphs)
            out.append(pos.double().cpu().numpy().reshape(k, graph.num_atoms, 3))
            log_rn.append(path.log_rn.cpu().numpy())
        coords = np.concatenate(out)
        return (coords, np.concatenate(log_rn)) if with_log_rn else coords

    def log_weights(self, graph: MoleculeGraph, coords: np.ndarray, energies: np.ndarray, log_rn: np.ndarray) -> np.ndarray:
        """Self-normalised log importance weights [n] of sampled conformers of one molecule.

        coords [n, atoms, 3] (Å) and log_rn [n] from ``sample_graph(..., with_log_rn=True)``; energies [n]
        in eV. The target is the one the sampler was trained for: exp(−E/τ − E_reg) with the checkpoint's
        τ (eV) and regulariser. Weights sum to 1 (log-sum-exp 0); a non-finite energy gives −inf.
        """
        seeds = [i % len(graph.seeds) for i in range(len(coords))] if graph.seeds is not None else None
        graphs = collate([graph] * len(coords), self.cfg.model.elements, seeds)
        pos = torch.as_tensor(coords, dtype=torch.float64).reshape(-1, 3)
        state = self.space.state_of(pos, graphs)  # the torsion angles measured back (exact round trip)
        lc = self.cfg.loss
        lw = path_log_weights(state, graphs, torch.as_tensor(energies, dtype=torch.float64), torch.as_tensor(log_rn),
                              self.schedule.h1_sq, lc.tau, lc.reg_alpha, space=self.space, positions=pos)
        normalized_weights(lw)  # raises if no conformer has a finite weight
        return (lw - torch.logsumexp(lw, 0)).numpy()  # not log(softmax): tiny weights must not underflow to −inf

    def sample(self, smiles: str, n: int, seed: int = 0, nfe: Optional[int] = None) -> np.ndarray:
        """n conformers [n, atoms, 3] (Å) in the atom order of Chem.AddHs(Chem.MolFromSmiles(smiles))."""
        return self.sample_graph(self.graph(smiles), n, seed, nfe)


def load_sampler(path: str | Path, device: str = "cpu", compile: bool = False) -> Sampler:
    """Load a trained sampler from a checkpoint (weights_only; CheckpointError when unusable).
    compile: torch.compile a torsional controller's blocks (model.compile; off whatever the run
    trained with: compilation takes up to a minute, worth it only for many conformers)."""
    state = load_checkpoint(path, map_location=device)
    check_format(state, path)
    try:
        cfg = config_from_dict(state["config"])
        cfg.model.compile = compile and cfg.mode == "torsional"
        model = build_controller(cfg.model, cfg.mode)
        model.load_state_dict(state["model"])
    except (ValueError, RuntimeError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match this version's model: {str(exc).splitlines()[0]}") from None
    if isinstance(model, GradientInformedController):
        model.attach(_checkpoint_field(cfg, path))
    dev = torch.device(device)
    sampler = Sampler(cfg, model.to(dev), dev)
    for (smiles, _), seeds in zip(state.get("molecules", []), state.get("seeds", [])):
        sampler.seeds[smiles] = seeds  # sample training molecules on the seeds they were trained on
    return sampler


def _checkpoint_field(cfg: Config, path) -> AdjointField:
    """The adjoint field a gradient-informed checkpoint was trained with: its energy, τ, clip and schedule."""
    from energies.registry import make_energy

    try:
        energy = make_energy(cfg.energy)
    except Exception as exc:  # missing weights or backend: say which checkpoint needs what
        raise CheckpointError(
            f"checkpoint {path} samples with energy gradients (model.energy_gradient) but its energy "
            f"'{cfg.energy.name}' cannot be built here: {str(exc).splitlines()[0]}"
        ) from None
    schedule = make_schedule(cfg.sde.schedule, cfg.sde.sigma_min, cfg.sde.sigma_max, cfg.sde.sigma)
    return make_adjoint_field(energy, cfg, schedule.h1_sq)


# ---------------------------------------------------------------------- checks and writers
# connectivity_matches, stereo_matches and conformer_mol live in adjoint_sampling.chemistry (shared
# with the benchmark, so the SDF/XYZ flags and the benchmark's counts are one measurement).


@dataclass
class ConformerRecord:
    name: str
    smiles: str
    mol: Chem.Mol
    coords: np.ndarray
    energy: Optional[float] = None
    log_weight: Optional[float] = None  # self-normalised log importance weight within its molecule
    props: dict = field(default_factory=dict)  # more "key": "value" text: SDF properties, XYZ comment items


class OutputPathError(ValueError):
    """The conformer output file cannot be written (wrong extension, a directory, no permission)."""


OUTPUT_SUFFIXES = (".sdf", ".xyz")


def check_output_path(path: str | Path) -> Path:
    """Raise OutputPathError unless conformers can be written to ``path``; leaves nothing behind.

    Call it before sampling: ``path`` must not be a directory and must end in .sdf or .xyz, and a file
    must be creatable in its directory (probed with a temp file), or, when that directory does not
    exist yet, a directory in its nearest existing parent (probed with a temp directory).
    """
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"output {path} is a directory; give a file name ending in .sdf or .xyz")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputPathError(f"output file must end in .sdf or .xyz, got '{path}'")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: {parent} is not a directory")
    try:  # a real probe: os.access says yes to root, and no to nothing on a read-only mount
        if parent == path.parent:
            fd, probe = temp_beside(path)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".probe.", dir=parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write {path}: directory {parent}: {exc.strerror or exc}") from None
    return path


def write_conformers(records: Sequence[ConformerRecord], path: str | Path) -> dict:
    """Write SDF (.sdf) or XYZ (.xyz) atomically; returns counts of flagged conformers.

    The file is written under a unique temp name beside it and renamed into place
    (``checkpoint.atomic_open``), so concurrent writers to one path never mix their files.
    """
    path = check_output_path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as f:
        return _write_records(records, f, suffix)


def _write_records(records: Sequence[ConformerRecord], f, suffix: str) -> dict:
    bad_conn = bad_stereo = 0
    writer = Chem.SDWriter(f) if suffix == ".sdf" else None
    for k, r in enumerate(records):
        conn_ok = connectivity_matches(r.mol, r.coords)
        stereo_ok = stereo_matches(r.mol, r.coords)
        bad_conn += not conn_ok
        bad_stereo += not stereo_ok
        energy = "nan" if r.energy is None else f"{r.energy:.6f}"
        log_w = "" if r.log_weight is None else f" log_weight={r.log_weight:.6g}"
        if writer is not None:
            m = conformer_mol(r.mol, r.coords)
            m.SetProp("_Name", f"{r.name}_{k}")
            m.SetProp("smiles", r.smiles)
            m.SetProp("energy_eV", energy)
            m.SetProp("connectivity_ok", str(int(conn_ok)))
            m.SetProp("stereo_ok", str(int(stereo_ok)))
            if r.log_weight is not None:
                m.SetProp("log_weight", f"{r.log_weight:.6g}")
            for key, value in r.props.items():
                m.SetProp(key, str(value))
            writer.write(m)
        else:
            f.write(f"{len(r.coords)}\n")
            extra = "".join(f" {key}={value}" for key, value in r.props.items())
            f.write(f"{r.name}_{k} smiles={r.smiles} energy_eV={energy} connectivity_ok={int(conn_ok)} stereo_ok={int(stereo_ok)}{log_w}{extra}\n")
            for atom, p in zip(r.mol.GetAtoms(), r.coords):
                f.write(f"{atom.GetSymbol():<2} {p[0]:14.8f} {p[1]:14.8f} {p[2]:14.8f}\n")
    if writer is not None:
        writer.close()
    return {"written": len(records), "bad_connectivity": bad_conn, "bad_stereo": bad_stereo}
