"""E(3)-equivariant controller of torsional Adjoint Sampling: an e3nn tensor-product network.

Input: the 3-D conformer x(θ_t) (seed with its dihedrals set to θ_t), element one-hot, time features
and bonded flags. Output: one parity-odd scalar (irrep 0o) per rotatable bond, the control v in
rad⁻¹ units (the same units as the adjoint ã). A dihedral angle is a pseudoscalar: under a proper
rotation or translation of the conformer v is unchanged, under a reflection it changes sign. The
hidden features are scalars (0e), vectors (1o) and pseudovectors (1e) on a radius graph; the head
combines the two bond atoms' features with the bond direction (1e ⊗ 1o → 0o).
"""
from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import nn
from torch_geometric.utils import scatter

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.torsions import set_torsions


def require_cpp_compiler() -> None:
    """torch.compile's CPU backend writes and builds C++: fail with a clear message when no compiler is found."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as err:  # inductor raises InvalidCxxCompiler; any failure here means the same
        raise RuntimeError("model.compile=true needs a C++ compiler (g++ or clang++ on PATH, or $CXX) for "
                           "torch.compile; install one or set model.compile=false") from err


class EquivariantConv(nn.Module):
    """One interaction block: depthwise tensor product of neighbour features with the edge's spherical
    harmonics, weighted by an MLP of the distance (and bonded flag), mean-aggregated, gated, residual."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, irreps_sh: o3.Irreps, edge_features: int,
                 radial_hidden: int = 32):
        super().__init__()
        wanted = {ir for _, ir in irreps_out}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        mid_sorted, perm, _ = mid.sort()
        instructions = [(i, j, perm[k], mode, train) for i, j, k, mode, train in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, mid_sorted, instructions,
                                   shared_weights=False, internal_weights=False)
        self.radial = FullyConnectedNet([edge_features, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
        self.gate = Gate(scalars, [torch.nn.functional.silu] * len(scalars),
                         o3.Irreps(f"{gated.num_irreps}x0e"), [torch.sigmoid], gated)
        self.linear = o3.Linear(mid_sorted, self.gate.irreps_in)
        self.skip = o3.Linear(irreps_in, self.gate.irreps_out)

    def forward(self, h, sh, edge_feat, src, dst, n):
        msg = self.tp(h[src], sh, self.radial(edge_feat))
        agg = scatter(msg, dst, dim=0, dim_size=n, reduce="mean")
        return self.skip(h) + self.gate(self.linear(agg))


def run_blocks(blocks: nn.ModuleList, h, sh, edge_feat, src, dst, n: int) -> torch.Tensor:
    """The interaction blocks in turn on atom features h."""
    for block in blocks:
        h = block(h, sh, edge_feat, src, dst, n)
    return h


class TorsionController(nn.Module):
    """v(t, x(θ)) per rotatable bond [T, 1]; see module docstring. Sizes: ``scalars`` 0e and ``vectors``
    1o + 1e channels per atom, ``layers`` interaction blocks, neighbours within ``radius`` Å (and bonds)."""

    def __init__(self, n_elements: int, scalars: int = 32, vectors: int = 8, layers: int = 3, radius: float = 5.0,
                 time_features: int = 8, n_basis: int = 8, max_output_norm: float = 0.0, compile_blocks: bool = False):
        super().__init__()
        if layers < 1 or scalars < 1 or vectors < 1:
            raise ValueError(f"torsion controller needs layers, hidden and vectors >= 1, got {layers}, {scalars}, {vectors}")
        self.n_elements, self.radius, self.n_basis = n_elements, float(radius), n_basis
        self.max_output_norm = max_output_norm
        freqs = math.pi * torch.arange(1, time_features + 1, dtype=torch.float32)
        self.register_buffer("freqs", freqs, persistent=False)
        self.embed = nn.Linear(n_elements + 1 + 2 * time_features, scalars)
        self.irreps_sh = o3.Irreps.spherical_harmonics(1)
        hidden = o3.Irreps(f"{scalars}x0e + {vectors}x1o + {vectors}x1e")
        irreps = o3.Irreps(f"{scalars}x0e")
        blocks = []
        for _ in range(layers):
            blocks.append(EquivariantConv(irreps, hidden, self.irreps_sh, n_basis + 1))
            irreps = blocks[-1].gate.irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.head = o3.FullyConnectedTensorProduct(irreps + irreps, self.irreps_sh, o3.Irreps("1x0o"))
        # compile_blocks: run the blocks through torch.compile (inductor fuses the tensor products'
        # elementwise work into generated C++); built at the first call, not part of the state dict
        self.compile_blocks = compile_blocks
        self._compiled = None

    def _run_blocks(self, h, sh, edge_feat, src, dst, n: int) -> torch.Tensor:
        """All interaction blocks, eager or compiled. Compiled, they are one graph (one dynamo frame:
        per-block frames would exceed dynamo's recompile limit of 8 beyond 3 blocks with and without
        grad); dynamic, because atom and edge counts change with every batch and radius graph. The
        compiled function reads the modules' parameters, so .to(), load_state_dict and optimisers act on it."""
        if not self.compile_blocks:
            return run_blocks(self.blocks, h, sh, edge_feat, src, dst, n)
        if self._compiled is None:
            require_cpp_compiler()
            self._compiled = torch.compile(run_blocks, dynamic=True)
        return self._compiled(self.blocks, h, sh, edge_feat, src, dst, n)

    def _node_times(self, t: torch.Tensor, graphs: GraphBatch, dtype) -> torch.Tensor:
        """Per-atom time from a scalar or per-torsion-row t (all rows of a copy share one time)."""
        t = t.reshape(-1).to(dtype)
        if t.numel() == 1:
            return t.expand(graphs.num_atoms)
        t_copy = torch.zeros(graphs.num_graphs, dtype=dtype, device=t.device).index_copy(0, graphs.torsion.batch, t)
        return t_copy[graphs.batch]

    def forward(self, t: torch.Tensor, theta: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        """t: scalar or [T] times; θ: [T, 1] torsion angles (radians). Returns v [T, 1]."""
        tb = graphs.torsion
        with torch.no_grad():
            pos = set_torsions(theta.detach().reshape(-1), tb).to(theta.dtype)
        return self.forward_positions(t, pos, graphs)

    def forward_positions(self, t: torch.Tensor, pos: torch.Tensor, graphs: GraphBatch) -> torch.Tensor:
        """The network on explicit positions pos [N, 3] (Å) of the batch's atoms (for symmetry checks)."""
        tb = graphs.torsion
        dtype = pos.dtype
        if tb.count == 0:
            return pos.new_zeros(0, 1)
        tn = self._node_times(t, graphs, dtype).unsqueeze(-1)
        ang = tn * self.freqs.to(dtype)
        onehot = nn.functional.one_hot(graphs.node_type, self.n_elements).to(dtype)
        h = self.embed(torch.cat([onehot, tn, torch.sin(ang), torch.cos(ang)], dim=-1))
        src, dst = graphs.edge_index
        vec = pos[dst] - pos[src]
        dist = vec.norm(dim=-1)
        keep = (dist < self.radius) | (graphs.bonded > 0)
        src, dst, vec, dist = src[keep], dst[keep], vec[keep], dist[keep]
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        basis = soft_one_hot_linspace(dist, 0.0, self.radius, self.n_basis, basis="smooth_finite", cutoff=True)
        edge_feat = torch.cat([basis * math.sqrt(self.n_basis), graphs.bonded[keep].to(dtype).unsqueeze(-1)], dim=-1)
        h = self._run_blocks(h, sh, edge_feat, src, dst, graphs.num_atoms)
        b, c = tb.atoms[:, 1], tb.atoms[:, 2]
        bond_sh = o3.spherical_harmonics(self.irreps_sh, pos[c] - pos[b], normalize=True, normalization="component")
        v = self.head(torch.cat([h[b], h[c]], dim=-1), bond_sh)
        if self.max_output_norm > 0:
            v = v * torch.clamp(self.max_output_norm / (v.abs() + 1e-12), max=1.0)
        return v
