"""Adjoint target, Reciprocal Adjoint Matching loss and the SOC objective estimate.

Lean adjoint of a drift-free base: ã(X_1) = ∇E(X_1)/τ + ∇log p_1^base(X_1) (+ clipped ∇E_reg),
constant in t; Cartesian: ∇log p_1^base = −X_1/h(1)², torsional: the wrapped normal's score.
The controller outputs v with control u = g·v, so the reweighted RAM loss ‖u/g + ã‖² = ‖v + ã‖².
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from adjoint_sampling.energy_eval import energy_batch
from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.regularizer import regularizer_grad
from adjoint_sampling.schedules import NoiseSchedule
from adjoint_sampling.spaces import CartesianSpace, StateSpace, generator_device, remove_com

AdjointField = Callable[[torch.Tensor, GraphBatch], torch.Tensor]


def clip_per_atom(v: torch.Tensor, max_norm: float) -> torch.Tensor:
    """Scale down each atom's vector whose norm exceeds max_norm (0 or inf = no clip)."""
    if not max_norm or math.isinf(max_norm):
        return v
    norm = v.norm(dim=-1, keepdim=True)
    return v * torch.clamp(max_norm / (norm + 1e-12), max=1.0)


def adjoint_target(
    x1: torch.Tensor,
    grad_energy: torch.Tensor,
    grad_reg: Optional[torch.Tensor],
    graphs: GraphBatch,
    tau: float,
    h1_sq: float,
    max_norm: float,
    use_pbase: bool = True,
    space: Optional[StateSpace] = None,
) -> torch.Tensor:
    """ã per state row [R, d]: clip(∇E/τ + ∇log p_1^base) + clip(∇E_reg), projected (COM removed).

    grad_energy: ∂E/∂state (eV/Å, or eV/rad for torsions); tau in eV; x1 in Å (rad); h1_sq in Å² (rad²).
    The clip acts per row (atom or torsion). space defaults to Cartesian.
    """
    space = space or CartesianSpace(x1.shape[-1])
    a = grad_energy / tau
    if use_pbase:
        a = a + space.grad_log_pbase(x1, graphs, h1_sq)
    a = clip_per_atom(a, max_norm)
    if grad_reg is not None:
        a = a + clip_per_atom(grad_reg, max_norm)
    return space.project(a, graphs)


def sample_bridge(
    x1: torch.Tensor, graphs: GraphBatch, schedule: NoiseSchedule, generator: Optional[torch.Generator] = None,
    t_min: float = 0.0, t_max: float = 1.0, space: Optional[StateSpace] = None, times: str = "uniform",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw t per molecule copy and X_t ~ p^base(X_t | X_0 = 0, X_1) in the state space.

    times: "uniform" draws t ~ U(t_min, t_max); "variance" draws t with density ∝ g(t)² (h(t)² uniform),
    the weight with which the control enters the drift g²·v. Either has the same minimiser
    E[ã | X_t] at every t; "variance" spends the regression on the times where the noise (and with it
    the control's effect) is injected. Returns (t per state row [R], X_t [R, d]); Cartesian rows are
    atoms (COM-free), torsional rows torsions.
    """
    space = space or CartesianSpace(x1.shape[-1])
    return _bridge_times(x1, graphs, schedule, generator, space, times, t_min=t_min, t_max=t_max)


def _bridge_times(x1, graphs, schedule, generator, space, times, t_min=0.0, t_max=1.0, pair=False):
    """sample_bridge's draws; with pair=True the bridge part is (X_t, X_1 − X_t) (space.bridge_pair)."""
    b = graphs.num_graphs
    u = torch.rand(b, generator=generator, dtype=torch.float64, device=generator_device(generator, x1.device))
    t_mol = t_min + (t_max - t_min) * u.to(x1.device)
    if times == "variance":
        t_mol = schedule.t_of_h2(t_mol * schedule.h1_sq).clamp(t_min, t_max)
    elif times != "uniform":
        raise ValueError(f"unknown loss time sampling '{times}' (known: uniform, variance)")
    t = t_mol[space.row_batch(graphs)]
    draw = space.bridge_pair if pair else space.bridge
    return t.to(x1.dtype), draw(x1, t, graphs, schedule, generator)


def ram_loss(
    controller, x1: torch.Tensor, target: torch.Tensor, graphs: GraphBatch, schedule: NoiseSchedule,
    generator: Optional[torch.Generator] = None, space: Optional[StateSpace] = None, times: str = "uniform",
) -> torch.Tensor:
    """E_{t, X_t | X_1} ‖v_θ(t, X_t) + ã(X_1)‖², averaged over state rows (t drawn as ``times`` says)."""
    t, xt = sample_bridge(x1, graphs, schedule, generator, space=space, times=times)
    v = controller(t, xt, graphs)
    return ((v + target) ** 2).sum(-1).mean()


def bridge_matching_loss(
    controller, x1: torch.Tensor, graphs: GraphBatch, schedule: NoiseSchedule,
    generator: Optional[torch.Generator] = None, space: Optional[StateSpace] = None, times: str = "uniform",
) -> torch.Tensor:
    """Warm-start loss toward terminal samples x1 without energies: E_{t, X_t | X_1} ‖α(t)²·v_θ(t, X_t) − (X_1 − X_t)‖².

    The base bridge to X_1 has drift g²·(X_1 − X_t)/α(t)², so with drift g²·v the controller that
    minimises ‖v − (X_1 − X_t)/α²‖² has terminal law the law of x1 (bridge matching). That target
    blows up as α(t) → 0 at t = 1; multiplying the residual by α(t)² keeps the loss finite and is
    the reference's form. On the torus X_1 − X_t is taken from the lifted image the bridge was drawn
    to (TORSIONAL.md). x1 in the state's units (Å or rad); the loss in those units squared.
    """
    space = space or CartesianSpace(x1.shape[-1])
    t, (xt, delta) = _bridge_times(x1, graphs, schedule, generator, space, times, pair=True)
    v = controller(t, xt, graphs)
    alpha2 = schedule.alpha2(t.double()).to(v.dtype).unsqueeze(-1)
    return ((alpha2 * v - delta) ** 2).sum(-1).mean()


def posterior_target(
    xt: torch.Tensor, coef: torch.Tensor, std: torch.Tensor, bank_x1: torch.Tensor, bank_a: torch.Tensor,
) -> torch.Tensor:
    """E[ã | X_t] under the base bridge with the bank as prior: Σ_j w_j ã_j, w_j ∝ N(X_t; coef·X1_j, std²).

    xt [B, n, d] (Å) at per-sample bridge coefficient ``coef`` [B] and std ``std`` [B] (Å); bank_x1
    [M, n, d] terminal samples of one system (Å) and bank_a [M, n, d] their adjoint targets. With the
    generating X_1 of each row in the bank this is the exact conditional expectation of the RAM target
    under the empirical buffer, so the regression has the same minimiser as with the single-sample
    target ã(X_1) and far less variance wherever the bridge is wide (early t); as std -> 0 the weight
    collapses onto the generating sample and the target becomes ã(X_1) again.
    """
    b, m = xt.shape[0], bank_x1.shape[0]
    x = xt.reshape(b, -1)
    bank = bank_x1.reshape(m, -1).to(x.dtype)
    c = coef.to(x.dtype).unsqueeze(-1)
    var = (std.to(x.dtype) ** 2).clamp_min(1e-12).unsqueeze(-1)
    sq = (x * x).sum(-1, keepdim=True) - 2 * c * (x @ bank.T) + c * c * (bank * bank).sum(-1)
    w = torch.softmax(-sq.clamp_min(0) / (2 * var), dim=-1)
    return (w @ bank_a.reshape(m, -1).to(x.dtype)).reshape(xt.shape)


def symmetry_copies(
    x: torch.Tensor, a: torch.Tensor, generator: Optional[torch.Generator] = None, permute: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random orthogonal map (rotation or reflection) per sample, and optionally a random
    permutation of the particles, to samples x [M, n, d] and their equivariant targets a [M, n, d].

    E(d)-invariant energies (and identical particles, for ``permute``) leave the Boltzmann density
    unchanged under these maps, so the copies are draws from the same target: a fresh set every
    step widens the posterior's effective sample size without another energy evaluation.
    """
    m, n, d = x.shape
    where = generator_device(generator, x.device)
    q, r = torch.linalg.qr(torch.randn(m, d, d, generator=generator, dtype=x.dtype, device=where).to(x.device))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)  # Haar over O(d)
    if permute:
        order = torch.argsort(torch.rand(m, n, generator=generator, device=where), dim=1).to(x.device)
        index = order.unsqueeze(-1).expand(-1, -1, d)
        x, a = torch.gather(x, 1, index), torch.gather(a, 1, index)
    return x @ q, a @ q


def ram_loss_posterior(
    controller, x1: torch.Tensor, a1: torch.Tensor, bank_x1: torch.Tensor, bank_a: torch.Tensor,
    graphs: GraphBatch, schedule: NoiseSchedule, generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """RAM loss of one system with buffer-posterior targets: ‖v_θ(t, X_t) + E_bank[ã | X_t]‖².

    x1, a1 [B, n, d]: the minibatch's terminal samples and adjoint targets (they join the bank, which
    keeps the generating sample's term exact); bank_x1, bank_a [M, n, d]: the rest of the buffer.
    """
    b, n, d = x1.shape
    t, xt = sample_bridge(x1.reshape(b * n, d), graphs, schedule, generator)
    t_mol = t.reshape(b, n)[:, 0].double()
    coef, std = schedule.bridge_params(t_mol)
    target = posterior_target(xt.reshape(b, n, d), coef, std, torch.cat([bank_x1, x1]), torch.cat([bank_a, a1]))
    v = controller(t, xt, graphs)
    return ((v + target.reshape(b * n, d)) ** 2).sum(-1).mean()


def log_pbase(x1: torch.Tensor, graphs: GraphBatch, h1_sq: float, space: Optional[StateSpace] = None) -> torch.Tensor:
    """log p_1^base(X_1) per molecule copy [B]; Cartesian: N(X_1; 0, h1² I) on the COM-free subspace."""
    return (space or CartesianSpace(x1.shape[-1])).log_pbase(x1, graphs, h1_sq)


def soc_objective(control_cost: torch.Tensor, energy: torch.Tensor, log_p1: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-sample J = ∫½‖u‖²dt + E(X_1)/τ + log p_1^base(X_1); average the finite ones for the estimate."""
    return control_cost + energy.double() / tau + log_p1


def make_adjoint_field(energy, cfg, h1_sq: float) -> AdjointField:
    """ã(X) at arbitrary Cartesian states X (Å) with this run's τ, clip and regulariser: one energy call per use.

    The input of a gradient-informed controller (model.energy_gradient). Computed in float64 and
    sanitised first: a bridge or SDE state with overlapping atoms has astronomically large (or
    non-finite) forces, which the per-atom clip must see as large rather than as inf or NaN.
    """
    lc = cfg.loss

    def field(x: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        result = energy(energy_batch(graphs, x))
        grad_e = torch.nan_to_num(-result.forces.double(), nan=0.0, posinf=1e30, neginf=-1e30).to(x.device)
        # states are COM-free in the SDE and the bridge; centring here keeps the field (and with it the
        # controller) translation invariant for any input, since ã's −X/h(1)² term and the clip see positions
        xd = remove_com(x.detach().double(), graphs.batch, graphs.num_graphs)
        grad_r = regularizer_grad(xd, graphs, lc.reg_alpha) if lc.reg_alpha else None
        return adjoint_target(xd, grad_e, grad_r, graphs, lc.tau, h1_sq, lc.max_score_norm, lc.use_pbase).to(x.dtype)

    return field
