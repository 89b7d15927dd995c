"""The Adjoint Sampling loop: simulate + evaluate energies once, then many RAM gradient steps.

Runs single-process or under ``torchrun`` (DDP): each rank simulates and evaluates its share of
molecules into its own replay buffer; gradients are averaged across ranks.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from adjoint_sampling.buffer import BufferEntry, ReplayBuffer
from adjoint_sampling.checkpoint import (  # noqa: F401 (KNOWN_FORMATS re-exported)
    KNOWN_FORMATS, CheckpointError, check_format, load_checkpoint, save_checkpoint, atomic_open,
)
from adjoint_sampling.config import Config, to_dict
from adjoint_sampling.controllers import GradientInformedController, build_controller
from adjoint_sampling.energy_eval import evaluate_states
from adjoint_sampling.graphs import GraphBatch, MoleculeGraph, collate
from adjoint_sampling.importance import effective_sample_size, path_log_weights
from adjoint_sampling.loss import (
    adjoint_target, bridge_matching_loss, make_adjoint_field, ram_loss, ram_loss_posterior, soc_objective,
    symmetry_copies,
)
from adjoint_sampling.regularizer import regularizer_energy, regularizer_grad
from adjoint_sampling.schedules import make_schedule, time_grid
from adjoint_sampling.sde import integrate
from adjoint_sampling.spaces import make_space
from adjoint_sampling.torsions import embed_seeds
from energies.base import EnergyModel

CHECKPOINT_NAME = "checkpoint.pt"
PRETRAINED_NAME = "pretrained.pt"  # the model at the end of the warm start (train.pretrain_epochs)
CHECKPOINT_FORMAT = 2  # 2: mode, torsional seeds and the simulation streams; 1 (Cartesian) still loads
assert CHECKPOINT_FORMAT in KNOWN_FORMATS
LOG_NAME = "metrics.csv"
LOG_FIELDS = ["epoch", "time_s", "loss", "buffer", "n_samples", "n_failed", "energy_mean", "energy_min",
              "soc", "eval_energy_mean", "eval_failed", "eval_ess", "sim_s", "energy_s", "train_s", "phase"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss or model, or no finite sample to learn from)."""


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def teardown_distributed() -> None:
    """Leave the process group. Callers drop their Trainer (and its DDP reducer) first: a reducer
    destroyed after the group leaves gloo's worker thread waiting for the GIL while the main
    thread joins it (a teardown deadlock)."""
    import gc

    dist.barrier()
    gc.collect()
    dist.destroy_process_group()


def setup_distributed() -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); gloo on CPU, nccl on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("AS_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size())


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is available")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", ctx.rank)) % torch.cuda.device_count())
    return torch.device(name)


class Trainer:
    """Owns the controller, optimizer, replay buffer and the energy; ``fit`` runs the epochs."""

    def __init__(
        self, cfg: Config, molecules: list[MoleculeGraph], energy: EnergyModel, run_dir: str | Path,
        ctx: Optional[DistContext] = None, dim: int = 3, show_progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        if not molecules:
            raise ValueError("no training molecules")
        self.cfg = cfg
        self.molecules = molecules
        self.energy = energy
        self.run_dir = Path(run_dir)
        self.ctx = ctx or DistContext()
        self.dim = dim
        self.show_progress = show_progress and self.ctx.is_main
        self.log = log if self.ctx.is_main else (lambda *_: None)
        self.device = resolve_device(cfg.train.device, self.ctx)
        self.elements = list(cfg.model.elements)

        torch.manual_seed(cfg.train.seed)
        self.space = make_space(cfg.mode, dim)
        if cfg.mode == "torsional":
            if any(g.num_torsions == 0 for g in molecules):
                raise ValueError("torsional training needs molecules with rotatable bonds (leave out the others)")
            if cfg.loss.posterior_targets:
                raise ValueError("loss.posterior_targets is a Cartesian single-system option, not for mode=torsional")
        self.schedule = make_schedule(cfg.sde.schedule, cfg.sde.sigma_min, cfg.sde.sigma_max, cfg.sde.sigma)
        self.model = build_controller(cfg.model, cfg.mode).to(self.device)
        if isinstance(self.model, GradientInformedController):
            self.model.attach(make_adjoint_field(energy, cfg, self.schedule.h1_sq))
        self.ddp_model = self.model
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.train.lr)
        self.train_grid = time_grid(cfg.sde.grid, cfg.sde.train_nfe, schedule=self.schedule)
        self.eval_grid = time_grid(cfg.sde.grid, cfg.sde.eval_nfe, schedule=self.schedule)
        self.buffer = ReplayBuffer(cfg.train.buffer_size)
        # one generator per rank: ranks draw different molecules and noise, reproducibly
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.train.seed * 1000 + self.ctx.rank)
        self.sim_gen = torch.Generator(device=self.device).manual_seed(cfg.train.seed * 1000 + 17 + self.ctx.rank)
        self.epoch = 0
        self.saved_epoch: Optional[int] = None  # epoch of the last checkpoint written or loaded
        self.total_failed = 0
        self.best_soc = math.inf
        # epoch at which Adjoint Sampling began; None while the bridge-matching warm start runs
        self.as_start_epoch: Optional[int] = None if cfg.train.pretrain_epochs > 0 else 0
        self._batch_cache: dict[int, GraphBatch] = {}

    # ------------------------------------------------------------------ sampling
    def _molecule_indices(self, n_copies: int, generator: Optional[torch.Generator] = None) -> list[int]:
        """Molecule index of each copy for one rank: n_copies // duplicates molecules, each duplicated."""
        dup = max(1, min(self.cfg.data.duplicates, n_copies))
        n_mol = max(1, n_copies // dup)
        picks = torch.randint(len(self.molecules), (n_mol,), generator=generator or self.gen).tolist()
        return [i for i in picks for _ in range(dup)]

    @property
    def _multi_seed(self) -> bool:
        """Whether copies choose among several seed conformers (torsional mode, torsion.seeds > 1)."""
        return self.cfg.mode == "torsional" and self.cfg.torsion.seeds > 1

    def _seed_indices(self, mol_indices: list[int], generator: Optional[torch.Generator] = None) -> Optional[list]:
        """Torsional mode: a random seed conformer per copy (None in Cartesian mode or with one seed each)."""
        if not self._multi_seed:
            return None
        draws = torch.randint(1 << 30, (len(mol_indices),), generator=generator or self.gen).tolist()
        return [d % len(self.molecules[m].seeds) for d, m in zip(draws, mol_indices)]

    def batch_of(self, mol_indices: list[int], seeds: Optional[list] = None) -> GraphBatch:
        """The GraphBatch of these molecule copies on the training device (copy i on seed conformer seeds[i]).

        With a single training molecule (the synthetic systems) every batch of k copies is the same,
        so it is built once per k: collating 128 copies cost a tenth of a small model's step.
        """
        if len(self.molecules) > 1 or seeds is not None:
            return collate([self.molecules[i] for i in mol_indices], self.elements, seeds).to(self.device)
        k = len(mol_indices)
        if k not in self._batch_cache:
            self._batch_cache[k] = collate([self.molecules[0]] * k, self.elements).to(self.device)
        return self._batch_cache[k]

    def simulate(self, mol_indices: list[int], grid: torch.Tensor, generator: Optional[torch.Generator] = None,
                 seeds: Optional[list] = None):
        """Integrate the controlled SDE for these molecule copies: (graphs, SDEPath with states X_1 [R, d])."""
        graphs = self.batch_of(mol_indices, seeds)
        self.model.eval()
        path = integrate(self.model, graphs, self.schedule, grid, self.dim, generator or self.sim_gen, space=self.space)
        self.model.train()
        return graphs, path

    def evaluate_energy(self, graphs: GraphBatch, x1: torch.Tensor):
        """Energies (eV) [B], ∂E/∂state [R, d] (eV/Å or eV/rad) and a finite mask [B] of states x1."""
        res = evaluate_states(self.energy, self.space, graphs, x1)
        return res.energy, res.grad, res.ok

    def store(self, mol_idx: list[int], graphs: GraphBatch, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluate E, ∂E/∂X_1 and ∂E_reg/∂X_1 of terminal states once and add the finite ones to the buffer.

        Returns (energies (eV) [B], finite mask [B]).
        """
        res = evaluate_states(self.energy, self.space, graphs, x1)
        energy, grad_e, ok = res.energy, res.grad, res.ok
        grad_r = self.space.pullback(res.positions, regularizer_grad(res.positions, graphs, self.cfg.loss.reg_alpha),
                                     graphs).to(x1.dtype)
        split = self.space.split
        xs, ges, grs = split(x1.cpu(), graphs), split(grad_e.cpu(), graphs), split(grad_r.cpu(), graphs)
        seeds = graphs.seed_index or [0] * len(mol_idx)
        for i, m in enumerate(mol_idx):
            if ok[i]:
                g = self.molecules[m]
                self.buffer.add(BufferEntry(m, g.smiles or g.name, xs[i], ges[i], grs[i], float(energy[i]), seeds[i]))
        return energy, ok

    def collect(self) -> dict:
        """Simulate this rank's share of the epoch's samples, evaluate E once, fill the buffer."""
        per_rank = max(1, self.cfg.train.samples_per_epoch // self.ctx.world_size)
        mol_idx = self._molecule_indices(per_rank)
        seeds = self._seed_indices(mol_idx)
        t0 = time.time()
        graphs, path = self.simulate(mol_idx, self.train_grid, seeds=seeds)
        x1 = path.x1
        t1 = time.time()
        energy, ok = self.store(mol_idx, graphs, x1)
        t2 = time.time()
        n_failed = int((~ok).sum())
        self.total_failed += n_failed
        finite = energy[ok]
        return {
            "n_samples": len(mol_idx), "n_failed": n_failed,
            "energy_mean": float(finite.mean()) if len(finite) else float("nan"),
            "energy_min": float(finite.min()) if len(finite) else float("nan"),
            "sim_s": round(t1 - t0, 2), "energy_s": round(t2 - t1, 2),
        }

    def collect_reference(self) -> dict:
        """Warm-start epoch: fill the buffer with RDKit ETKDG conformers of this rank's share of the
        epoch's molecule copies (their states: centred positions, or dihedral angles on the seed)."""
        per_rank = max(1, self.cfg.train.samples_per_epoch // self.ctx.world_size)
        mol_idx = self._molecule_indices(per_rank)
        seeds = self._seed_indices(mol_idx) or [0] * len(mol_idx)
        t0 = time.time()
        kept, coords, n_failed = [], [], 0
        dup = max(1, min(self.cfg.data.duplicates, len(mol_idx)))  # _molecule_indices: blocks of dup copies
        for start in range(0, len(mol_idx), dup):
            group = list(range(start, min(start + dup, len(mol_idx))))
            g = self.molecules[mol_idx[start]]
            rdkit_seed = int(torch.randint(1 << 30, (1,), generator=self.gen))
            try:
                conformers = embed_seeds(g.mol, len(group), seed=rdkit_seed, relax=False, name=g.name)
            except ValueError:
                n_failed += len(group)
                continue
            kept += group
            coords += list(conformers.to(torch.float32))
        self.total_failed += n_failed
        if kept:
            idx = [mol_idx[i] for i in kept]
            graphs = self.batch_of(idx, [seeds[i] for i in kept] if self._multi_seed else None)
            x1 = self.space.state_of(torch.cat(coords).to(self.device), graphs).to(torch.float32)
            for i, (m, x) in enumerate(zip(idx, self.space.split(x1.cpu(), graphs))):
                g, zero = self.molecules[m], torch.zeros_like(x)
                self.buffer.add(BufferEntry(m, g.smiles or g.name, x.clone(), zero, zero, float("nan"), seeds[kept[i]]))
        return {"n_samples": len(mol_idx), "n_failed": n_failed, "energy_mean": float("nan"),
                "energy_min": float("nan"), "sim_s": round(time.time() - t0, 2), "energy_s": 0.0}

    @property
    def in_pretrain(self) -> bool:
        return self.as_start_epoch is None

    @property
    def end_epoch(self) -> int:
        """The epoch count at which the run is complete (warm start + train.epochs of Adjoint Sampling)."""
        first_as = self.as_start_epoch if self.as_start_epoch is not None else self.cfg.train.pretrain_epochs
        return first_as + self.cfg.train.epochs

    def start_adjoint_sampling(self) -> None:
        """End the warm start: the buffer's ETKDG states carry no energies, so Adjoint Sampling starts
        from an empty buffer (and the pretrained controller)."""
        state = self.state_dict()  # collective under DDP: every rank ends the warm start at the same epoch
        if self.ctx.is_main:  # the warm-started model on its own, for comparisons and --init-from
            save_checkpoint(state, self.run_dir / PRETRAINED_NAME)
        self.as_start_epoch = self.epoch
        self.buffer.entries.clear()
        self.log(f"warm start done after {self.epoch} epochs of bridge matching; Adjoint Sampling from epoch "
                 f"{self.epoch + 1} to {self.end_epoch}")

    # ------------------------------------------------------------------ learning
    def minibatch(self, k: int) -> tuple[GraphBatch, torch.Tensor, torch.Tensor]:
        return self._with_targets(self.buffer.sample(k, self.gen))

    def _entries_batch(self, entries: list[BufferEntry]) -> tuple[GraphBatch, torch.Tensor]:
        """Buffer entries as (graphs on their seed conformers, X_1 [R, d]) on the training device."""
        graphs = self.batch_of([e.mol_index for e in entries], [e.seed for e in entries] if self._multi_seed else None)
        return graphs, torch.cat([e.x1 for e in entries]).to(self.device)

    def _with_targets(self, entries: list[BufferEntry]) -> tuple[GraphBatch, torch.Tensor, torch.Tensor]:
        """Buffer entries as (graphs, X_1 [R, d], adjoint target ã [R, d]) on the training device."""
        graphs, x1 = self._entries_batch(entries)
        grad_e = torch.cat([e.grad_energy for e in entries]).to(self.device)
        grad_r = torch.cat([e.grad_reg for e in entries]).to(self.device)
        lc = self.cfg.loss
        target = adjoint_target(x1, grad_e, grad_r, graphs, lc.tau, self.schedule.h1_sq, lc.max_score_norm, lc.use_pbase,
                                space=self.space)
        return graphs, x1, target

    def posterior_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole buffer of a single-system run as tensors X_1 [M, n, d] and ã [M, n, d]."""
        if len(self.molecules) != 1:
            raise ValueError("loss.posterior_targets needs a single-system run (one molecule or point cloud): "
                             f"this run trains on {len(self.molecules)} molecules")
        _, x1, a = self._with_targets(list(self.buffer.entries))
        shape = (len(self.buffer), -1, x1.shape[-1])
        return x1.reshape(shape), a.reshape(shape)

    def _posterior_loss(self, bank_x1: torch.Tensor, bank_a: torch.Tensor, permute: bool) -> torch.Tensor:
        k = self.cfg.train.batch_size
        idx = torch.randint(len(bank_x1), (k,), generator=self.gen).to(self.device)
        copies_x1, copies_a = symmetry_copies(bank_x1, bank_a, self.gen, permute)
        return ram_loss_posterior(self.ddp_model, bank_x1[idx], bank_a[idx], copies_x1, copies_a,
                                  self.batch_of([0] * k), self.schedule, self.gen)

    def set_lr_fraction(self, progress: float) -> None:
        """Cosine decay from train.lr to train.lr_final_frac·lr as the run's budget (epochs, wall or CPU
        minutes, whichever runs out first) goes from 0 to 1: the last epochs average the regression noise."""
        f = self.cfg.train.lr_final_frac
        lr = self.cfg.train.lr * (f + (1 - f) * 0.5 * (1 + math.cos(math.pi * progress)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_steps(self) -> float:
        """cfg.train.grad_steps RAM steps on minibatches from the buffer; returns the mean loss."""
        losses = []
        posterior = self.cfg.loss.posterior_targets
        if posterior:
            bank_x1, bank_a = self.posterior_bank()
            mol = self.molecules[0]
            # identical particles (point clouds) may also be relabelled; atoms of a molecule may not
            permute = mol.bonds.numel() == 0 and bool((mol.numbers == mol.numbers[0]).all())
        for _ in range(self.cfg.train.grad_steps):
            if posterior:
                loss = self._posterior_loss(bank_x1, bank_a, permute)
            elif self.in_pretrain:
                graphs, x1 = self._entries_batch(self.buffer.sample(self.cfg.train.batch_size, self.gen))
                loss = bridge_matching_loss(self.ddp_model, x1, graphs, self.schedule, self.gen, space=self.space,
                                            times=self.cfg.loss.times)
            else:
                graphs, x1, target = self.minibatch(self.cfg.train.batch_size)
                loss = ram_loss(self.ddp_model, x1, target, graphs, self.schedule, self.gen, space=self.space,
                                times=self.cfg.loss.times)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            losses.append(loss.item())
        return float(np.mean(losses)) if losses else float("nan")

    @torch.no_grad()
    def evaluate(self, n_samples: Optional[int] = None, seed: int = 12345) -> dict:
        """SOC objective, energy statistics and importance ESS of fresh samples (eval NFE grid).

        The same molecules and noise at every call (common random numbers), so values are
        comparable across epochs, and training's own random streams are left untouched.
        eval_ess is the Kish effective sample size of the paths' importance weights against the
        target, as a fraction of the copies of each molecule, averaged over molecules: 1 for a
        perfect sampler, and needing no reference data.
        """
        n = n_samples or self.cfg.train.eval_samples
        per_rank = max(1, n // self.ctx.world_size)
        pick_gen = torch.Generator().manual_seed(seed + self.ctx.rank)
        noise_gen = torch.Generator(device=self.device).manual_seed(seed + 7919 + self.ctx.rank)
        mol_idx = self._molecule_indices(per_rank, pick_gen)
        graphs, path = self.simulate(mol_idx, self.eval_grid, noise_gen, seeds=self._seed_indices(mol_idx, pick_gen))
        res = evaluate_states(self.energy, self.space, graphs, path.x1)
        energy, ok = res.energy, res.ok
        lc = self.cfg.loss
        log_w = path_log_weights(path.x1, graphs, energy, path.log_rn, self.schedule.h1_sq, lc.tau, lc.reg_alpha,
                                 space=self.space, positions=res.positions)
        lp = self.space.log_pbase(path.x1, graphs, self.schedule.h1_sq).cpu()
        soc = soc_objective(path.cost.cpu(), energy, lp, lc.tau)
        if lc.reg_alpha:  # the objective being trained (and weighted by eval_ess) includes E_reg
            soc = soc + regularizer_energy(res.positions, graphs, lc.reg_alpha).cpu().double()
        soc = soc[ok]
        ess_sum, n_mol = _ess_per_molecule(log_w, mol_idx)
        stats = torch.tensor([soc.sum(), float(len(soc)), energy[ok].sum(), float((~ok).sum()), ess_sum, n_mol],
                             dtype=torch.float64)
        if self.ctx.enabled:
            dist.all_reduce(stats)
        count = stats[1].item()
        nan = float("nan")
        return {
            "soc": stats[0].item() / count if count else nan,
            "eval_energy_mean": stats[2].item() / count if count else nan,
            "eval_failed": int(stats[3].item()),
            "eval_ess": stats[4].item() / stats[5].item() if stats[5].item() else nan,
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        buffers = [self.buffer.state_dict()]
        gens = [self.gen.get_state()]
        sim_gens = [self.sim_gen.get_state().cpu()]
        if self.ctx.enabled:  # every rank's buffer and RNG go into the one checkpoint
            gathered = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, (buffers[0], gens[0], sim_gens[0]))
            buffers = [g[0] for g in gathered]
            gens = [g[1] for g in gathered]
            sim_gens = [g[2] for g in gathered]
        seeds = [g.seeds for g in self.molecules] if self.cfg.mode == "torsional" else []
        return {
            "format": CHECKPOINT_FORMAT,
            "mode": self.cfg.mode,
            "seeds": seeds,
            "epoch": self.epoch,
            "config": to_dict(self.cfg),
            "molecules": [[g.smiles, g.name] for g in self.molecules],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "buffers": buffers,
            "rng": {"gens": gens, "sim_gens": sim_gens, "torch": torch.get_rng_state()},
            "total_failed": self.total_failed,
            "dim": self.dim,
            "as_start_epoch": self.as_start_epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        check_format(state)
        if state.get("mode", "cartesian") != self.cfg.mode:
            raise CheckpointError(f"checkpoint is a {state.get('mode', 'cartesian')} run, the config says {self.cfg.mode}")
        saved = [tuple(m) for m in state.get("molecules", [])]
        current = [(g.smiles, g.name) for g in self.molecules]
        if saved != current:
            raise CheckpointError("checkpoint was trained on a different molecule set than the one configured")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint does not match the configured model: {str(exc).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        buffers, gens = state["buffers"], state["rng"]["gens"]
        if self.ctx.world_size > len(buffers):  # extra ranks would replay rank 0's buffer and random streams
            raise CheckpointError(f"checkpoint holds {len(buffers)} rank(s) of replay buffers and random streams; "
                                  f"resume it with at most that many processes, not {self.ctx.world_size}")
        r = self.ctx.rank
        self.buffer.load_state_dict(buffers[r])
        self.gen.set_state(gens[r])
        sim_gens = state["rng"].get("sim_gens")
        if sim_gens:  # older checkpoints did not save the simulation stream
            self.sim_gen.set_state(sim_gens[r])
        torch.set_rng_state(state["rng"]["torch"])
        self.epoch = int(state["epoch"])
        self.saved_epoch = self.epoch
        self.total_failed = int(state.get("total_failed", 0))
        self.as_start_epoch = state.get("as_start_epoch", 0)  # older checkpoints had no warm start

    def init_from(self, state: dict) -> None:
        """Start from another run's model (same mode and model config, any molecules): Adjoint Sampling
        begins at once, with this run's fresh optimizer and empty buffer."""
        check_format(state)
        if state.get("mode", "cartesian") != self.cfg.mode:
            raise CheckpointError(f"--init-from: the checkpoint is a {state.get('mode', 'cartesian')} model, "
                                  f"this run is {self.cfg.mode}")
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"--init-from: the checkpoint's model does not match the configured one: "
                                  f"{str(exc).splitlines()[0]}") from None
        if self.cfg.train.pretrain_epochs:
            self.log(f"--init-from: train.pretrain_epochs={self.cfg.train.pretrain_epochs} is not run, the model "
                     "starts Adjoint Sampling directly")
        self.as_start_epoch = 0

    def save(self) -> Optional[Path]:
        state = self.state_dict()  # collective under DDP: every rank must call it
        if not self.ctx.is_main:
            return None
        path = self.run_dir / CHECKPOINT_NAME
        save_checkpoint(state, path)
        self.saved_epoch = self.epoch
        return path

    # ------------------------------------------------------------------ loop
    def _write_log(self, row: dict) -> None:
        if not self.ctx.is_main:
            return
        path = self.run_dir / LOG_NAME
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _trim_log(self) -> None:
        """Drop the log rows of epochs after self.epoch (a resumed run logged them after its last
        checkpoint, and is about to redo them), replacing the file atomically."""
        path = self.run_dir / LOG_NAME
        if not self.ctx.is_main or not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        if not rows:
            return

        def keep(r: list) -> bool:
            try:
                return int(r[0]) <= self.epoch
            except (ValueError, IndexError):  # a row cut short by a kill, or garbage
                return False

        kept = [rows[0]] + [r for r in rows[1:] if keep(r)]
        if len(kept) == len(rows):
            return
        with atomic_open(path, "w", newline="") as f:
            csv.writer(f).writerows(kept)
        self.log(f"{LOG_NAME}: dropped {len(rows) - len(kept)} row(s) logged after the checkpoint of epoch {self.epoch}")

    def _divergence(self, row: dict) -> str:
        """Why training cannot continue after this epoch ('' when it can)."""
        if not len(self.buffer):
            return (f"no sample so far had a finite energy and force ({self.total_failed} failed): "
                    f"energy '{self.cfg.energy.name}' cannot evaluate these molecules at the sampled geometries")
        if not math.isfinite(row["loss"]):
            return f"the training loss became {row['loss']} at epoch {self.epoch}"
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return f"the model's parameters became non-finite at epoch {self.epoch}"
        return ""

    def _pretrain_over(self, cpu_start: float) -> bool:
        tc = self.cfg.train
        over = self.epoch >= tc.pretrain_epochs or (
            tc.pretrain_cpu_minutes > 0 and time.process_time() - cpu_start > 60 * tc.pretrain_cpu_minutes)
        if self.ctx.enabled:  # all ranks switch together, or the collectives deadlock
            flag = torch.tensor([float(over)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        return over

    def _as_progress(self, as_wall: float, as_cpu: float, start: float, cpu_start: float) -> float:
        """Fraction in [0, 1] of the Adjoint Sampling phase's budget spent: its epochs, or what the warm
        start left of the wall and CPU budgets, whichever runs out first."""
        tc = self.cfg.train
        done = (self.epoch - (self.as_start_epoch or 0)) / tc.epochs
        if tc.max_minutes > 0:
            left = 60 * tc.max_minutes - (as_wall - start)
            done = max(done, (time.time() - as_wall) / max(left, 1e-9))
        if tc.max_cpu_minutes > 0:
            left = 60 * tc.max_cpu_minutes - (as_cpu - cpu_start)
            done = max(done, (time.process_time() - as_cpu) / max(left, 1e-9))
        return min(done, 1.0)

    def fit(self) -> dict:
        """Run the warm-start epochs (train.pretrain_epochs), then train.epochs of Adjoint Sampling, from
        self.epoch; checkpoint periodically and at the end."""
        tc = self.cfg.train
        start = time.time()
        cpu_start = time.process_time()
        last: dict = {}
        self._trim_log()
        as_wall, as_cpu = start, cpu_start  # where this process's Adjoint Sampling phase began
        bar = tqdm(total=self.end_epoch, initial=self.epoch, desc="train", disable=not self.show_progress,
                   dynamic_ncols=True)
        while self.epoch < self.end_epoch:
            if self.in_pretrain and self._pretrain_over(cpu_start):
                self.start_adjoint_sampling()
                as_wall, as_cpu = time.time(), time.process_time()
                bar.total = self.end_epoch
            pretrain = self.in_pretrain
            row = {"epoch": self.epoch + 1, "phase": "pretrain" if pretrain else "as"}
            row.update(self.collect_reference() if pretrain else self.collect())
            row["buffer"] = len(self.buffer)
            t0 = time.time()
            if tc.lr_final_frac < 1 and not pretrain:  # the warm start runs at train.lr
                self.set_lr_fraction(self._as_progress(as_wall, as_cpu, start, cpu_start))
            row["loss"] = self.train_steps() if len(self.buffer) else float("nan")
            row["train_s"] = round(time.time() - t0, 2)
            self.epoch += 1
            if tc.eval_every and (self.epoch % tc.eval_every == 0 or self.epoch == self.end_epoch):
                row.update(self.evaluate())
            row["time_s"] = round(time.time() - start, 2)
            self._write_log(row)
            last = row
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3g}", E=f"{row['energy_mean']:.4g}", failed=self.total_failed)
            out_of_time = (tc.max_minutes > 0 and (time.time() - start) > 60 * tc.max_minutes) or (
                tc.max_cpu_minutes > 0 and (time.process_time() - cpu_start) > 60 * tc.max_cpu_minutes)
            diverged = self._divergence(row)
            if self.ctx.enabled:  # all ranks must agree to stop, or the collectives deadlock
                flag = torch.tensor([float(out_of_time), float(bool(diverged))])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                out_of_time = bool(flag[0].item())
                diverged = diverged or ("training diverged on another process" if flag[1].item() else "")
            if diverged:  # stop before a checkpoint of a broken model replaces the last good one
                bar.close()
                kept = (f"the checkpoint of epoch {self.saved_epoch} is kept" if self.saved_epoch is not None
                        else "no checkpoint was written")
                raise TrainingError(f"{diverged}; training stopped, {kept} (try a smaller train.lr, "
                                    "train.grad_clip, or another energy)")
            if self.epoch % max(tc.checkpoint_every, 1) == 0 or self.epoch == self.end_epoch or out_of_time:
                self.save()
            if out_of_time:
                self.log(f"stopping after {self.epoch} epochs: the time budget (train.max_minutes={tc.max_minutes}, "
                         f"train.max_cpu_minutes={tc.max_cpu_minutes}) is spent")
                break
        bar.close()
        if self.total_failed:
            self.log(f"{self.total_failed} samples had non-finite energies or forces and were kept out of the buffer")
        return last


def _ess_per_molecule(log_w: torch.Tensor, mol_idx: list[int]) -> tuple[float, float]:
    """(Σ over molecules of ESS / copies, number of molecules with a finite weight); weights of different
    molecules are never mixed, since each has its own normalising constant."""
    total, count = 0.0, 0
    idx = torch.tensor(mol_idx)
    for m in idx.unique():
        lw = log_w[idx == m]
        if torch.isfinite(lw).any():
            total += effective_sample_size(lw) / len(lw)
            count += 1
    return total, float(count)


def resume_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    state = load_checkpoint(path)
    check_format(state, path)
    return state
