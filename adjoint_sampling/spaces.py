"""State spaces of the SDE: what differs between Cartesian and torsional Adjoint Sampling.

A state is a tensor of rows [R, d] (R atoms × d = 3 Cartesian, or R torsions × d = 1), each row
belonging to one molecule copy (``row_batch``). The SDE, the loss, the buffer and the trainer
only use this interface:

  initial / noise / wrap   the base process dX = g(t) dB from X_0 = 0 (COM-free, or on the torus)
  log_pbase / grad_log_pbase   the base terminal density p_1^base (Gaussian, or wrapped normal)
  bridge                   X_t | X_0 = 0, X_1 under the base
  positions / pullback     the map to Cartesian positions (Å) and the chain rule for ∂E/∂x
  state_of                 positions back to the state (inverse of ``positions`` on its image)

Units: Cartesian states Å; torsion states radians; h(1)² in the state's units squared.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch_geometric.utils import scatter

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.schedules import NoiseSchedule
from adjoint_sampling.torsions import measure, set_torsions, torsion_gradient, wrap_angle

MODES = ("cartesian", "torsional")
IMAGES = 6  # |k| ≤ 6 images of the wrapped normal: exact to float64 for σ ≤ π


def generator_device(generator: Optional[torch.Generator], default) -> torch.device:
    """The device random numbers must be drawn on: the generator's own, or ``default`` without one."""
    return generator.device if generator is not None else torch.device(default)


def randn(shape, generator=None, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Standard normal drawn where the generator lives (the trainer's stays on the CPU), then moved."""
    return torch.randn(shape, generator=generator, dtype=dtype, device=generator_device(generator, device)).to(device)


def remove_com(x: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> torch.Tensor:
    """Subtract each molecule's mean position (unweighted centre) from its atoms."""
    return x - scatter(x, batch, dim=0, dim_size=num_graphs, reduce="mean")[batch]


def com_free_noise(shape, batch: torch.Tensor, num_graphs: int, generator=None, dtype=torch.float32, device="cpu"):
    """Standard Gaussian projected onto the COM-free subspace of each molecule."""
    return remove_com(randn(shape, generator, dtype, device), batch, num_graphs)


class StateSpace:
    """Interface (see module docstring). ``dim`` is the number of columns of a state row."""

    name: str = ""
    dim: int = 3

    def row_batch(self, graphs: GraphBatch) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def rows_per_copy(self, graphs: GraphBatch) -> list:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial(self, graphs: GraphBatch, dtype=torch.float32) -> torch.Tensor:
        return torch.zeros(len(self.row_batch(graphs)), self.dim, dtype=dtype, device=graphs.batch.device)

    def split(self, x: torch.Tensor, graphs: GraphBatch) -> list:
        """One tensor of rows per molecule copy."""
        return list(torch.split(x, self.rows_per_copy(graphs)))

    def sum_rows(self, values: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        """Per-copy sums [B] of per-row values [R]."""
        return scatter(values, self.row_batch(graphs), dim=0, dim_size=graphs.num_graphs, reduce="sum")

    def bridge(self, x1, t_rows, graphs, schedule: NoiseSchedule, generator=None) -> torch.Tensor:
        """X_t [R, d] drawn from the base bridge between X_0 = 0 and X_1 at per-row times t_rows [R]."""
        return self.bridge_pair(x1, t_rows, graphs, schedule, generator)[0]

    def bridge_pair(self, x1, t_rows, graphs, schedule: NoiseSchedule, generator=None):
        """(X_t, X_1 − X_t) [R, d]: a bridge draw and the displacement left to the end point, taken
        before wrapping (on the torus: from the lifted image the bridge was drawn to)."""
        raise NotImplementedError  # pragma: no cover


class CartesianSpace(StateSpace):
    """Positions [N, d] (Å) in the centre-of-mass-free subspace of each molecule copy."""

    name = "cartesian"

    def __init__(self, dim: int = 3):
        self.dim = dim

    def row_batch(self, graphs):
        return graphs.batch

    def rows_per_copy(self, graphs):
        return [g.num_atoms for g in graphs.graphs]

    def noise(self, graphs, generator=None, dtype=torch.float32):
        return com_free_noise((graphs.num_atoms, self.dim), graphs.batch, graphs.num_graphs, generator, dtype,
                              graphs.batch.device)

    def wrap(self, x, graphs):
        return remove_com(x, graphs.batch, graphs.num_graphs)

    def project(self, a, graphs):
        return remove_com(a, graphs.batch, graphs.num_graphs)

    def positions(self, x, graphs):
        return x

    def state_of(self, pos, graphs):
        return remove_com(pos, graphs.batch, graphs.num_graphs)

    def pullback(self, pos, grad_x, graphs):
        return grad_x

    def grad_log_pbase(self, x1, graphs, h1_sq: float):
        return -x1 / h1_sq

    def log_pbase(self, x1, graphs, h1_sq: float) -> torch.Tensor:
        """log N(X_1; 0, h1² I) on the COM-free subspace (dimension d·(n-1)) per molecule copy [B]."""
        b = graphs.num_graphs
        sq = scatter((x1.double() ** 2).sum(-1), graphs.batch, dim=0, dim_size=b, reduce="sum")
        counts = scatter(torch.ones_like(graphs.batch, dtype=torch.float64), graphs.batch, dim=0, dim_size=b,
                         reduce="sum")
        dof = x1.shape[-1] * (counts - 1)
        return -0.5 * sq / h1_sq - 0.5 * dof * math.log(2 * math.pi * h1_sq)

    def bridge_pair(self, x1, t_rows, graphs, schedule, generator=None):
        coef, std = schedule.bridge_params(t_rows)
        noise = com_free_noise(x1.shape, graphs.batch, graphs.num_graphs, generator, x1.dtype, x1.device)
        xt = coef.to(x1.dtype).unsqueeze(-1) * x1 + std.to(x1.dtype).unsqueeze(-1) * noise
        return xt, x1 - xt


def _images(theta: torch.Tensor) -> torch.Tensor:
    """θ + 2πk for k = −IMAGES..IMAGES along a new last axis."""
    k = torch.arange(-IMAGES, IMAGES + 1, dtype=theta.dtype, device=theta.device)
    return theta.unsqueeze(-1) + 2 * math.pi * k


def wrapped_normal_log_density(theta: torch.Tensor, var: float) -> torch.Tensor:
    """log Σ_k N(θ + 2πk; 0, var) per element of θ (radians; var in rad²)."""
    lifted = _images(theta.double())
    return torch.logsumexp(-0.5 * lifted ** 2 / var, dim=-1) - 0.5 * math.log(2 * math.pi * var)


def wrapped_normal_score(theta: torch.Tensor, var: float) -> torch.Tensor:
    """∂/∂θ log of the wrapped normal: Σ_k w_k · (−(θ + 2πk)/var), w_k ∝ N(θ + 2πk; 0, var)."""
    lifted = _images(theta.double())
    w = torch.softmax(-0.5 * lifted ** 2 / var, dim=-1)
    return (w * (-lifted / var)).sum(-1).to(theta.dtype)


class TorsionSpace(StateSpace):
    """Torsion angles [T, 1] (radians) on the torus [−π, π)^m of each copy's rotatable bonds.

    The graphs carry a TorsionBatch (rotatable bonds and a seed conformer per copy): positions are
    the seed with its dihedrals set to θ, so bond lengths, angles and rings are the seed's.
    """

    name = "torsional"
    dim = 1

    @staticmethod
    def _tb(graphs):
        if graphs.torsion is None:
            raise ValueError("torsional mode needs graphs with rotatable bonds and seed conformers "
                             "(graphs.with_torsions)")
        return graphs.torsion

    def row_batch(self, graphs):
        return self._tb(graphs).batch

    def rows_per_copy(self, graphs):
        return [g.torsions.count for g in graphs.graphs]

    def noise(self, graphs, generator=None, dtype=torch.float32):
        return randn((self._tb(graphs).count, 1), generator, dtype, graphs.batch.device)

    def wrap(self, x, graphs):
        return wrap_angle(x)

    def project(self, a, graphs):
        return a

    def positions(self, x, graphs):
        return set_torsions(x.reshape(-1), self._tb(graphs))

    def state_of(self, pos, graphs):
        return measure(pos, self._tb(graphs).atoms).unsqueeze(-1)

    def pullback(self, pos, grad_x, graphs):
        return torsion_gradient(pos, grad_x, self._tb(graphs)).unsqueeze(-1)

    def grad_log_pbase(self, x1, graphs, h1_sq: float):
        return wrapped_normal_score(x1, h1_sq)

    def log_pbase(self, x1, graphs, h1_sq: float) -> torch.Tensor:
        """log of the wrapped normal p_1^base(θ_1) per molecule copy [B] (flat measure on the torus)."""
        per_row = wrapped_normal_log_density(x1.reshape(-1), h1_sq)
        return self.sum_rows(per_row, graphs)

    def bridge_pair(self, x1, t_rows, graphs, schedule, generator=None):
        """Lift θ_1 to X_1 = θ_1 + 2πk (k ∝ N(θ_1 + 2πk; 0, h1²)), bridge in R, then wrap X_t."""
        h1_sq = schedule.h1_sq
        where = generator_device(generator, x1.device)
        theta = x1.reshape(-1)
        lifted = _images(theta.double())
        logits = (-0.5 * lifted ** 2 / h1_sq).to(where)
        k = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).to(x1.device)
        x1_lift = lifted.gather(-1, k).squeeze(-1).to(x1.dtype)
        coef, std = schedule.bridge_params(t_rows)
        noise = randn(theta.shape, generator, x1.dtype, x1.device)
        xt = coef.to(x1.dtype) * x1_lift + std.to(x1.dtype) * noise
        return wrap_angle(xt).unsqueeze(-1), (x1_lift - xt).unsqueeze(-1)


def make_space(mode: str, dim: int = 3) -> StateSpace:
    if mode == "cartesian":
        return CartesianSpace(dim)
    if mode == "torsional":
        return TorsionSpace()
    raise ValueError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
