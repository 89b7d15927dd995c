"""Energies of simulated states: graphs and positions to the energy contract, and back to the state space.

Units: positions Å, energies eV, forces eV/Å; state gradients in eV per state unit (Å or rad).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from adjoint_sampling.graphs import GraphBatch
from adjoint_sampling.spaces import StateSpace
from energies.base import EnergyBatch, EnergyModel


def energy_batch(graphs: GraphBatch, x: torch.Tensor) -> EnergyBatch:
    """Positions [N, 3] (Å) of a GraphBatch as the energy contract's input (float64 on CPU)."""
    return EnergyBatch(
        numbers=graphs.numbers.cpu(), positions=x.detach().double().cpu(), batch=graphs.batch.cpu(),
        charges=graphs.charges.cpu(), spins=graphs.spins.cpu(),
        mols=[g.mol for g in graphs.graphs], keys=[g.smiles or g.name for g in graphs.graphs],
    )


class StateEnergy(NamedTuple):
    """energy [B] (eV, float64), grad [R, d] ∂E/∂state, positions [N, 3] (Å), finite mask [B]."""

    energy: torch.Tensor
    grad: torch.Tensor
    positions: torch.Tensor
    ok: torch.Tensor


def evaluate_states(energy: EnergyModel, space: StateSpace, graphs: GraphBatch, x: torch.Tensor) -> StateEnergy:
    """E and ∂E/∂state of states x [R, d]: map to positions, evaluate once, pull the forces back."""
    pos = space.positions(x, graphs)
    result = energy(energy_batch(graphs, pos))
    ok = result.finite_mask(graphs.batch.cpu())
    grad_x = (-result.forces).to(device=pos.device, dtype=pos.dtype)
    grad = space.pullback(pos, grad_x, graphs).to(x.dtype)
    return StateEnergy(result.energy.double(), grad, pos, ok)
