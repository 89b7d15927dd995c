"""The synthetic benchmark systems (DW-4, LJ-13): their specification, ground-truth splits and energies.

Kept apart from the synthetic trainer so that the benchmark's metrics read the systems without
importing training code. Units are the systems' reduced units.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from adjoint_sampling.shared_data import ENV_VAR, synthetic_data_dir
from energies.config import EnergyConfig
from energies.registry import make_energy

SPLITS = ("train", "val", "test")


class SyntheticError(ValueError):
    """Unknown system, missing ground-truth file or samples of the wrong shape."""


@dataclass(frozen=True)
class SyntheticSystem:
    """One benchmark: particle count, dimension, energy name, data file tag and published numbers."""

    name: str
    n_particles: int
    dim: int
    file_tag: str
    published_energy_w2: float  # Adjoint Sampling, paper Table 1 (2000 samples)
    published_sample_w2: float

    @property
    def n_coords(self) -> int:
        return self.n_particles * self.dim


SYSTEMS = {
    "dw4": SyntheticSystem("dw4", 4, 2, "DW4", 0.55, 0.62),
    "lj13": SyntheticSystem("lj13", 13, 3, "LJ13-1000", 2.40, 1.67),
}


def get_system(name: str) -> SyntheticSystem:
    if name not in SYSTEMS:
        raise SyntheticError(f"unknown synthetic system '{name}' (known: {', '.join(SYSTEMS)})")
    return SYSTEMS[name]


def load_split(system: str | SyntheticSystem, split: str, data_dir: str | Path | None = None) -> np.ndarray:
    """Ground-truth samples [S, n·d] (float32) of one split ('train', 'val' or 'test').

    data_dir: default ``shared_data.synthetic_data_dir()`` (data/synthetic of the shared folder).
    """
    if data_dir is None:
        data_dir = synthetic_data_dir()
    sysm = get_system(system) if isinstance(system, str) else system
    if split not in SPLITS:
        raise SyntheticError(f"unknown split '{split}' (known: {', '.join(SPLITS)})")
    path = Path(data_dir) / f"{split}_split_{sysm.file_tag}.npy"
    if not path.is_file():
        raise SyntheticError(f"ground-truth file not found: {path} (pass the folder, or set {ENV_VAR} to the shared folder)")
    data = np.load(path)
    check_samples(data, sysm)
    return data.astype(np.float32)


def check_samples(samples: np.ndarray, system: SyntheticSystem) -> None:
    if samples.ndim != 2 or samples.shape[1] != system.n_coords:
        raise SyntheticError(
            f"{system.name} samples must have shape [S, {system.n_coords}] (particles x dims), got {samples.shape}"
        )


def to_particles(samples: np.ndarray, system: SyntheticSystem, center: bool = True) -> np.ndarray:
    """[S, n·d] rows -> [S, n, d] positions, optionally with each sample's centre of mass removed."""
    check_samples(samples, system)
    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), system.n_particles, system.dim)
    return x - x.mean(axis=1, keepdims=True) if center else x


def system_energy(system: str | SyntheticSystem, options: Optional[dict] = None):
    """The registered energy model of a system (``energies.synthetic``)."""
    sysm = get_system(system) if isinstance(system, str) else system
    return make_energy(EnergyConfig(name=sysm.name, options=dict(options or {})))


def energies_of(samples: np.ndarray, system: str | SyntheticSystem, options: Optional[dict] = None) -> np.ndarray:
    """Energy (reduced units) of every row of ``samples`` [S, n·d] -> [S] float64."""
    sysm = get_system(system) if isinstance(system, str) else system
    model = system_energy(sysm, options)
    x = torch.as_tensor(to_particles(samples, sysm, center=False))
    return model.energy_fn(x).numpy()
