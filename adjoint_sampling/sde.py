"""Euler–Maruyama integration of the controlled SDE dX = g(t)^2 v_θ(t, X) dt + g(t) dB, X_0 = 0.

The state space (``adjoint_sampling.spaces``) says where states live: the centre-of-mass-free
subspace of Cartesian positions (COM projected after every step) or the torus of torsion angles
(wrapped into [−π, π) after every step).
Within a step the controller output v is held fixed and g(t)^2 is integrated exactly:
Δh² = h(t+Δt)^2 - h(t)^2 scales the drift (Δh²·v), the Brownian increment's variance, and the
control cost (½ Δh² ‖v‖²). The uncontrolled process then has exactly the base marginals on any grid;
the left-point rule g(t)^2 Δt would inflate X_1's variance, since the geometric g(t) changes by a
factor σ_max/σ_min over [0, 1], and would overshoot the drift where g is largest.

Each simulated path also carries log dP^u/dP^base, the log Radon–Nikodym derivative of the
controlled path measure against the base one. For this Euler–Maruyama chain it is exact per step:
the two transitions are Gaussians of covariance Δh²·I that differ only in their mean (Δh²·v), so
log N(ΔX; Δh² v, Δh²) − log N(ΔX; 0, Δh²) = ½ Δh² ‖v‖² + √Δh² v·ξ with ξ the step's noise.
``adjoint_sampling.importance`` turns it into importance weights against the Boltzmann target.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.schedules import NoiseSchedule
from adjoint_sampling.spaces import CartesianSpace, StateSpace

Controller = Callable[[torch.Tensor, torch.Tensor, GraphBatch], torch.Tensor]


class SDEPath(NamedTuple):
    """End of a batch of simulated paths.

    x1: terminal states [R, d]: positions [N, dim] (Å), COM-free per molecule copy, or torsion
      angles [T, 1] (radians) in [−π, π); ``space.positions`` maps them to Cartesian positions.
    cost: control cost ∫ ½‖u‖² dt per copy [B] (float64).
    log_rn: log dP^u/dP^base of each path [B] (float64): the cost plus the stochastic integral
      ∫ u·dB. Its mean is the cost's; per path it is what importance weights need.
    """

    x1: torch.Tensor
    cost: torch.Tensor
    log_rn: torch.Tensor


@torch.no_grad()
def integrate(
    controller: Optional[Controller],
    graphs: GraphBatch,
    schedule: NoiseSchedule,
    grid: torch.Tensor,
    dim: int = 3,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
    space: Optional[StateSpace] = None,
) -> SDEPath:
    """Simulate from X_0 = 0 along ``grid``. controller=None gives the uncontrolled base process.

    space: the state space (default: Cartesian of ``dim`` dimensions). Returns an SDEPath: X_1 [R, d],
    the control cost ∫ ½‖u‖² dt and log dP^u/dP^base per molecule copy [B].
    """
    space = space or CartesianSpace(dim)
    device = graphs.batch.device
    b = graphs.num_graphs
    x = space.initial(graphs, dtype)
    cost = torch.zeros(b, dtype=torch.float64, device=device)
    noise_work = torch.zeros(b, dtype=torch.float64, device=device)  # Σ √Δh² v·ξ = ∫ u·dB
    grid = grid.to(device=device, dtype=torch.float64)
    for k in range(len(grid) - 1):
        t = grid[k]
        dh2 = (schedule.h2(grid[k + 1]) - schedule.h2(t)).clamp_min(0)  # ∫ g² dt over the step
        noise = space.noise(graphs, generator, dtype)
        step = dh2.sqrt() * noise
        if controller is not None:
            v = controller(t.to(dtype), x, graphs)
            step = step + dh2 * v
            # ∫ ½‖u‖² dt with u = g·v and v held over the step
            vd = v.double()
            cost += 0.5 * dh2 * space.sum_rows((vd ** 2).sum(-1), graphs)
            noise_work += dh2.sqrt() * space.sum_rows((vd * noise.double()).sum(-1), graphs)
        x = space.wrap(x + step.to(dtype), graphs)
    return SDEPath(x, cost, cost + noise_work)
