"""Euler–Maruyama integration of the controlled SDE dX = g(t)^2 v_θ(t, X) dt + g(t) dB, X_0 = 0.

Noise and state live in the centre-of-mass-free subspace (COM projected after every step).
Within a step the controller output v is held fixed and g(t)^2 is integrated exactly:
Δh² = h(t+Δt)^2 - h(t)^2 scales the drift (Δh²·v), the Brownian increment's variance, and the
control cost (½ Δh² ‖v‖²). The uncontrolled process then has exactly the base marginals on any grid;
the left-point rule g(t)^2 Δt would inflate X_1's variance, since the geometric g(t) changes by a
factor σ_max/σ_min over [0, 1], and would overshoot the drift where g is largest.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch_geometric.utils import scatter

from adjoint_sampling.controllers import remove_com
from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.schedules import NoiseSchedule

Controller = Callable[[torch.Tensor, torch.Tensor, GraphBatch], torch.Tensor]


def generator_device(generator: Optional[torch.Generator], default) -> torch.device:
    """The device random numbers must be drawn on: the generator's own, or ``default`` without one."""
    return generator.device if generator is not None else torch.device(default)


def com_free_noise(shape, batch: torch.Tensor, num_graphs: int, generator=None, dtype=torch.float32, device="cpu"):
    """Standard Gaussian projected onto the COM-free subspace of each molecule."""
    # draw where the generator lives (the trainer's minibatch generator stays on the CPU), then move
    z = torch.randn(shape, generator=generator, dtype=dtype, device=generator_device(generator, device)).to(device)
    return remove_com(z, batch, num_graphs)


@torch.no_grad()
def integrate(
    controller: Optional[Controller],
    graphs: GraphBatch,
    schedule: NoiseSchedule,
    grid: torch.Tensor,
    dim: int = 3,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate from X_0 = 0 along ``grid``. controller=None gives the uncontrolled base process.

    Returns X_1 [N, dim] (Å) and the control cost ∫ ½‖u‖² dt per molecule copy [B].
    """
    device = graphs.batch.device
    n, b = graphs.num_atoms, graphs.num_graphs
    x = torch.zeros(n, dim, dtype=dtype, device=device)
    cost = torch.zeros(b, dtype=torch.float64, device=device)
    grid = grid.to(device=device, dtype=torch.float64)
    for k in range(len(grid) - 1):
        t = grid[k]
        dh2 = (schedule.h2(grid[k + 1]) - schedule.h2(t)).clamp_min(0)  # ∫ g² dt over the step
        noise = com_free_noise((n, dim), graphs.batch, b, generator, dtype, device)
        step = dh2.sqrt() * noise
        if controller is not None:
            v = controller(t.to(dtype), x, graphs)
            step = step + dh2 * v
            # ∫ ½‖u‖² dt with u = g·v and v held over the step
            cost += 0.5 * dh2 * scatter((v.double() ** 2).sum(-1), graphs.batch, dim=0, dim_size=b, reduce="sum")
        x = remove_com(x + step.to(dtype), graphs.batch, b)
    return x, cost
