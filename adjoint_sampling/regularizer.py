"""Bond-structure regularizer for Cartesian runs (keeps bonded atoms together, others apart).

For each ordered atom pair with covalent radii r_cov and van der Waals radii r_vdw (Å, RDKit):
  bonded:     ReLU(d - 1.5 (r_cov,i + r_cov,j))
  non-bonded: ReLU((r_vdw,i + r_vdw,j) / 1.5 - d)
E_reg = α_reg · Σ penalties (dimensionless, added to the adjoint without dividing by τ).
"""
from __future__ import annotations

import torch
from rdkit import Chem
from torch_geometric.utils import scatter

from adjoint_sampling.graphs import GraphBatch

_TABLE = Chem.GetPeriodicTable()
R_COV = torch.tensor([0.0] + [_TABLE.GetRcovalent(z) for z in range(1, 119)])
R_VDW = torch.tensor([0.0] + [_TABLE.GetRvdw(z) for z in range(1, 119)])


def pair_thresholds(graphs: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-edge (max bonded length, min non-bonded distance) in Å."""
    src, dst = graphs.edge_index
    z = graphs.numbers.cpu()
    rc = R_COV[z].to(graphs.batch.device)
    rv = R_VDW[z].to(graphs.batch.device)
    return 1.5 * (rc[src] + rc[dst]), (rv[src] + rv[dst]) / 1.5


def regularizer_energy(x: torch.Tensor, graphs: GraphBatch, alpha: float) -> torch.Tensor:
    """E_reg per molecule copy [B] for positions x [N, 3] (Å)."""
    src, dst = graphs.edge_index
    d = (x[dst] - x[src]).norm(dim=-1)
    max_bonded, min_nonbonded = pair_thresholds(graphs)
    bonded = graphs.bonded.to(x.dtype)
    pen = bonded * torch.relu(d - max_bonded.to(x.dtype)) + (1 - bonded) * torch.relu(min_nonbonded.to(x.dtype) - d)
    return alpha * scatter(pen, graphs.batch[src], dim=0, dim_size=graphs.num_graphs, reduce="sum")


def regularizer_grad(x: torch.Tensor, graphs: GraphBatch, alpha: float) -> torch.Tensor:
    """∇_x E_reg [N, 3] (1/Å)."""
    if alpha == 0:
        return torch.zeros_like(x)
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(regularizer_energy(xr, graphs, alpha).sum(), xr)
    return grad.detach()
