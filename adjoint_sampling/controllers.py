"""E(n)-equivariant GNN controller (EGNN, Satorras et al. 2021) on fully connected molecular graphs.

The network returns v_θ(t, X_t) per atom (Å-free "score" units, same as the adjoint ã): the
control is u = g(t)·v and the SDE velocity g(t)·u = g(t)^2·v. Output is x_L - x_0 with the
centre of mass removed, so it rotates with the input and ignores translations.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import nn
from torch_geometric.utils import scatter

from adjoint_sampling.dense_egnn import dense_forward
from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.spaces import remove_com


def _mlp(d_in: int, d_hidden: int, d_out: int, final_act: bool = True) -> nn.Sequential:
    layers = [nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out)]
    if final_act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class EGNNLayer(nn.Module):
    """One message-passing layer updating invariant features h and positions x."""

    def __init__(self, hidden: int, edge_dim: int, update_h: bool = True):
        super().__init__()
        # phi_e's first linear map of [h_i, h_j, d², e_ij] is split into per-node projections
        # gathered onto edges: the same function, without an (edges x 2·hidden) matmul and concat
        self.e_dst = nn.Linear(hidden, hidden)
        self.e_src = nn.Linear(hidden, hidden, bias=False)
        self.e_geo = nn.Linear(edge_dim + 1, hidden, bias=False)
        self.phi_e = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.phi_x = _mlp(hidden, hidden, 1, final_act=False)
        # the last layer's features would never reach the output (only x is returned): leave it out
        self.phi_h = _mlp(2 * hidden, hidden, hidden, final_act=False) if update_h else None
        # start near the identity map on positions: small coordinate updates keep deep stacks stable
        nn.init.xavier_uniform_(self.phi_x[-1].weight, gain=1e-3)
        nn.init.zeros_(self.phi_x[-1].bias)

    def forward(self, h, x, edge_index, edge_attr, num_nodes):
        src, dst = edge_index
        diff = x[dst] - x[src]
        d2 = (diff * diff).sum(-1, keepdim=True)
        pre = self.e_dst(h)[dst] + self.e_src(h)[src] + self.e_geo(torch.cat([d2, edge_attr], dim=-1))
        m = self.phi_e(pre)
        # normalised direction: updates stay bounded however far apart atoms are
        shift = diff / (d2.sqrt() + 1.0) * self.phi_x(m)
        x = x + scatter(shift, dst, dim=0, dim_size=num_nodes, reduce="mean")
        if self.phi_h is not None:
            agg = scatter(m, dst, dim=0, dim_size=num_nodes, reduce="mean")
            h = h + self.phi_h(torch.cat([h, agg], dim=-1))
        return h, x


class EGNNController(nn.Module):
    """Node input: one-hot element + time features; edge input: bonded one-hot + squared distance."""

    def __init__(self, n_elements: int, hidden: int = 128, layers: int = 12, time_features: int = 8,
                 max_output_norm: float = 0.0, fast: bool = False, pair_matmul_dtype: str = "float32"):
        super().__init__()
        self.n_elements = n_elements
        self.max_output_norm = max_output_norm
        self.time_features = time_features
        # fast: the dense per-molecule computation (adjoint_sampling.dense_egnn) of the same function
        # with the same parameters; False: the edge-list reference path below
        self.fast = fast
        # fast path only: "bfloat16" rounds the operands of the per-pair hidden x hidden matmuls
        # (mixed precision, about 2x their float32 rate on CPUs with AVX512-BF16 or AMX)
        if pair_matmul_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"pair_matmul_dtype must be float32 or bfloat16, not {pair_matmul_dtype!r}")
        if pair_matmul_dtype != "float32" and not fast:
            raise ValueError("pair_matmul_dtype=bfloat16 needs the fast path (fast=True)")
        self.pair_matmul_dtype = pair_matmul_dtype
        node_in = n_elements + 1 + 2 * time_features
        self.embed = nn.Linear(node_in, hidden)
        self.edge_dim = 3  # bonded, not bonded, |x_i - x_j|^2 at input
        self.layers = nn.ModuleList([EGNNLayer(hidden, self.edge_dim, update_h=i < layers - 1) for i in range(layers)])
        freqs = math.pi * torch.arange(1, time_features + 1, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)

    def _time_features(self, t: torch.Tensor, n: int, dtype) -> torch.Tensor:
        t = t.to(dtype).reshape(-1, 1).expand(n, 1)
        ang = t * self.freqs.to(dtype)
        return torch.cat([t, torch.sin(ang), torch.cos(ang)], dim=-1)

    def forward(self, t: torch.Tensor, x: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        """t: scalar or [N] times; x: [N, d] positions (Å). Returns v: [N, d], COM-free per molecule."""
        if self.fast:
            return dense_forward(self, t, x, graphs)
        n = x.shape[0]
        if t.dim() == 0 or t.numel() == 1:
            t = t.reshape(1).expand(n)
        onehot = nn.functional.one_hot(graphs.node_type, self.n_elements).to(x.dtype)
        h = self.embed(torch.cat([onehot, self._time_features(t, n, x.dtype)], dim=-1))
        src, dst = graphs.edge_index
        bonded = graphs.bonded.to(x.dtype).unsqueeze(-1)
        d2_in = ((x[dst] - x[src]) ** 2).sum(-1, keepdim=True)
        edge_attr = torch.cat([bonded, 1 - bonded, d2_in], dim=-1)
        x_l = x
        for layer in self.layers:
            h, x_l = layer(h, x_l, graphs.edge_index, edge_attr, n)
        v = x_l - x
        if self.max_output_norm > 0:
            # the optimal v = -E[ã | X_t] is bounded by the clipped adjoint; capping v per atom breaks the
            # feedback loop (far atoms -> large d² features -> larger v) that can blow up early training
            norm = v.norm(dim=-1, keepdim=True)
            v = v * torch.clamp(self.max_output_norm / (norm + 1e-12), max=1.0)
        return remove_com(v, graphs.batch, graphs.num_graphs)


AdjointField = Callable[[torch.Tensor, GraphBatch], torch.Tensor]


class GradientInformedController(nn.Module):
    """v = EGNN(t, X) − β(t)·ã(X): the EGNN plus the lean adjoint at the current state, scaled by a learned β(t).

    ã(X) = clip(∇E(X)/τ − X/h(1)²) is the RAM target evaluated at X_t instead of X_1 (1/Å, equivariant
    for an E(3)-invariant energy). As t → 1 the bridge pins X_1 to X_t, so the optimal v = −E[ã | X_t]
    tends to −ã(X_t): with β(1) ≈ 1 the network only learns a correction there, instead of the whole
    force field from noisy one-sample targets. The price is one energy gradient per SDE step and per
    training step, so this suits cheap energies (the synthetic systems, MMFF). β starts at 0: the
    untrained controller is the plain EGNN. The field (the energy) is not part of the weights: the owner
    attaches it with ``attach`` before the first call.
    """

    def __init__(self, base: EGNNController, hidden: int = 32):
        super().__init__()
        self.base = base
        self.beta = nn.Sequential(nn.Linear(1 + 2 * base.time_features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.beta[-1].weight)
        nn.init.zeros_(self.beta[-1].bias)
        self.field: Optional[AdjointField] = None

    def attach(self, field: AdjointField) -> "GradientInformedController":
        """Set the adjoint field: (X [N, d] Å, graphs) -> clipped ã(X) [N, d], COM-free."""
        self.field = field
        return self

    def forward(self, t: torch.Tensor, x: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        if self.field is None:
            raise RuntimeError("this controller uses energy gradients (model.energy_gradient): attach an energy first")
        with torch.no_grad():
            a = self.field(x, graphs)
        beta = self.beta(self.base._time_features(t, x.shape[0], x.dtype))  # expands a scalar t itself
        return self.base(t, x, graphs) - beta * a


def build_controller(model_cfg, mode: str = "cartesian") -> nn.Module:
    """The controller of a run: for ``mode`` cartesian the EGNN of ``model_cfg`` (wrapped in a
    GradientInformedController when model_cfg.energy_gradient), for torsional the e3nn network."""
    if mode == "torsional":
        from adjoint_sampling.torsion_controller import TorsionController

        if model_cfg.energy_gradient:
            raise ValueError("model.energy_gradient is a Cartesian option; it cannot be used with mode=torsional")
        return TorsionController(
            n_elements=len(model_cfg.elements), scalars=model_cfg.hidden, vectors=model_cfg.vectors,
            layers=model_cfg.layers, radius=model_cfg.radius, time_features=model_cfg.time_features,
            max_output_norm=model_cfg.max_output_norm, compile_blocks=getattr(model_cfg, "compile", False),
        )
    egnn = EGNNController(
        n_elements=len(model_cfg.elements), hidden=model_cfg.hidden, layers=model_cfg.layers,
        time_features=model_cfg.time_features, max_output_norm=model_cfg.max_output_norm,
        fast=getattr(model_cfg, "fast", False),
        pair_matmul_dtype=getattr(model_cfg, "pair_matmul_dtype", "float32"),
    )
    return GradientInformedController(egnn) if model_cfg.energy_gradient else egnn
