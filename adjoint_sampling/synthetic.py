"""Adjoint Sampling on the synthetic particle benchmarks DW-4 and LJ-13 (paper Table 1).

A system is one point cloud of identical particles (``point_cloud_graph``); the trainer sees it as a
single "molecule". Samples are returned in the ground-truth layout: float32 rows = samples, columns =
particles × dims (x0, y0[, z0], x1, ...), centre of mass removed.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from adjoint_sampling.buffer import ReplayBuffer
from adjoint_sampling.config import Config
from adjoint_sampling.graphs import collate, point_cloud_graph
from adjoint_sampling.importance import log_weights
from adjoint_sampling.loss import log_pbase
from adjoint_sampling.schedules import make_schedule, time_grid
from adjoint_sampling.sde import integrate
from adjoint_sampling.trainer import DistContext, Trainer

from adjoint_sampling.synthetic_systems import (  # noqa: F401 (re-exported)
    SPLITS, SYSTEMS, SyntheticError, SyntheticSystem, check_samples, energies_of, get_system, load_split,
    system_energy, to_particles,
)



class SyntheticTrainer(Trainer):
    """Trainer with a cosine learning-rate decay from cfg.train.lr to lr_final_frac·lr over the epochs.

    The core Trainer keeps a constant rate; decaying it lets the last epochs average out the
    regression noise, which matters for the sharp DW-4 / LJ-13 energy histograms. When
    train.max_minutes ends the run before train.epochs, the decay follows the wall clock instead,
    so a time-limited run still finishes at the low rate (the sampler's quality swings from epoch
    to epoch at the high rate).
    """

    def __init__(self, *args, lr_final_frac: float = 1.0, system: Optional[SyntheticSystem] = None, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 < lr_final_frac <= 1:
            raise SyntheticError(f"lr_final_frac must be in (0, 1], got {lr_final_frac}")
        self.lr_final_frac = lr_final_frac
        self.system = system
        self.exact_buffer: Optional[dict] = None  # collect()'s row while training on a fixed buffer
        self._fit_start: Optional[float] = None

    def use_exact_buffer(self, samples: np.ndarray) -> int:
        """Diagnostic: fill the buffer with ground-truth samples [S, n·d] and stop resimulating.

        Every RAM target is then exact (X_1 drawn from the target itself), so training isolates the
        regression of E[ã | X_t] from the reciprocal outer loop. Returns the number of samples kept.
        """
        if self.system is None:
            raise SyntheticError("use_exact_buffer needs the trainer's system (build it with make_trainer)")
        x = torch.as_tensor(to_particles(samples, self.system), dtype=torch.float32)
        self.buffer = ReplayBuffer(len(x))
        graphs = self.batch_of([0] * len(x))
        energy, ok = self.store([0] * len(x), graphs, x.reshape(-1, self.system.dim).to(self.device))
        self.exact_buffer = {"n_samples": 0, "n_failed": 0, "sim_s": 0.0, "energy_s": 0.0,
                             "energy_mean": float(energy[ok].mean()), "energy_min": float(energy[ok].min())}
        return int(ok.sum())

    def collect(self) -> dict:
        if self.exact_buffer is None:
            return super().collect()
        return dict(self.exact_buffer)

    def fit(self) -> dict:
        self._fit_start = time.time()
        return super().fit()

    def progress(self) -> float:
        """Fraction of the run done: epochs, or wall time when train.max_minutes will stop it first."""
        done = self.epoch / max(self.cfg.train.epochs, 1)
        minutes = self.cfg.train.max_minutes
        if minutes > 0 and self._fit_start is not None:
            done = max(done, (time.time() - self._fit_start) / (60 * minutes))
        return min(done, 1.0)

    def current_lr(self) -> float:
        progress = self.progress()
        frac = self.lr_final_frac + (1 - self.lr_final_frac) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.cfg.train.lr * frac

    def train_steps(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        return super().train_steps()


def make_trainer(cfg: Config, system: str, run_dir: str | Path, show_progress: bool = False, log=print,
                 lr_final_frac: float = 1.0, ctx: Optional[DistContext] = None) -> Trainer:
    """A Trainer on one point cloud of the system, with the system's energy (cfg.energy.options apply).

    lr_final_frac < 1 decays the learning rate (cosine) to that fraction of cfg.train.lr at the last epoch.
    ctx: this process's rank when training under DDP (each rank simulates its share of the samples).
    """
    sysm = get_system(system)
    if cfg.energy.name != sysm.name:
        raise SyntheticError(f"config energy '{cfg.energy.name}' does not match system '{sysm.name}'")
    graph = point_cloud_graph(sysm.n_particles, name=sysm.name)
    return SyntheticTrainer(cfg, [graph], system_energy(sysm, cfg.energy.options), run_dir, dim=sysm.dim,
                            ctx=ctx, show_progress=show_progress, log=log, lr_final_frac=lr_final_frac, system=sysm)


@torch.no_grad()
def draw_samples(
    cfg: Config, system: str, n: int, controller=None, seed: int = 0, chunk: int = 500, nfe: Optional[int] = None,
) -> np.ndarray:
    """n samples [n, n_particles·dim] (float32, COM-free) of the controlled SDE (controller=None: the base).

    Integrated on the eval grid (cfg.sde.eval_nfe steps unless ``nfe`` is given) in chunks of ``chunk``.
    """
    return _simulate(cfg, system, n, controller, seed, chunk, nfe)[0]


@torch.no_grad()
def draw_weighted_samples(
    cfg: Config, system: str, n: int, controller=None, seed: int = 0, chunk: int = 500, nfe: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """n samples as in ``draw_samples`` (same seed, same samples) and their log importance weights [n].

    The weights (``adjoint_sampling.importance``) are against the system's Boltzmann density at
    cfg.loss.tau, unnormalised; for the base process (controller=None) they reduce to −E/τ up to a constant.
    """
    sysm = get_system(system)
    samples, log_rn, log_p1 = _simulate(cfg, system, n, controller, seed, chunk, nfe)
    energy = system_energy(sysm, cfg.energy.options).energy_fn(torch.as_tensor(to_particles(samples, sysm, center=False)))
    return samples, log_weights(energy, torch.as_tensor(log_p1), torch.as_tensor(log_rn), cfg.loss.tau).numpy()


def _simulate(cfg: Config, system: str, n: int, controller, seed: int, chunk: int, nfe: Optional[int]):
    """(samples [n, n·d] float32, log dP^u/dP^base [n], log p_1^base(X_1) [n]) of n paths on the eval grid."""
    sysm = get_system(system)
    sc = cfg.sde
    schedule = make_schedule(sc.schedule, sc.sigma_min, sc.sigma_max, sc.sigma)
    grid = time_grid(sc.grid, nfe or sc.eval_nfe, schedule=schedule)
    device = next(controller.parameters()).device if controller is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(seed)
    graph = point_cloud_graph(sysm.n_particles, name=sysm.name)
    if controller is not None:
        controller.eval()
    xs, rns, lps = [], [], []
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        graphs = collate([graph] * k, list(cfg.model.elements)).to(device)
        path = integrate(controller, graphs, schedule, grid, sysm.dim, gen)
        xs.append(path.x1.reshape(k, sysm.n_coords).cpu().numpy())
        rns.append(path.log_rn.cpu().numpy())
        lps.append(log_pbase(path.x1, graphs, schedule.h1_sq).cpu().numpy())
    return np.concatenate(xs).astype(np.float32), np.concatenate(rns), np.concatenate(lps)
