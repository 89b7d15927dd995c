"""Replay buffer of terminal samples with their adjoint ingredients.

Each entry is one molecule copy: the molecule's key (index into the trainer's molecule list plus
its SMILES for checkpoints), the terminal state X_1 [r, d] (r atoms × 3 in Å, or r torsions × 1 in
radians), ∂E/∂X_1 [r, d] (eV/Å or eV/rad), ∂E_reg/∂X_1 [r, d], E (eV) and, in torsional mode, the
index of the seed conformer the state is applied to.
Fixed capacity, first in first out, uniform random minibatches.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class BufferEntry:
    mol_index: int
    key: str
    x1: torch.Tensor
    grad_energy: torch.Tensor
    grad_reg: torch.Tensor
    energy: float
    seed: int = 0


class ReplayBuffer:
    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.entries: deque[BufferEntry] = deque(maxlen=capacity)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: BufferEntry) -> None:
        self.entries.append(entry)  # deque(maxlen) drops the oldest

    def extend(self, entries) -> None:
        for e in entries:
            self.add(e)

    def sample(self, k: int, generator: Optional[torch.Generator] = None) -> list[BufferEntry]:
        """k entries drawn uniformly with replacement (the buffer may hold fewer than k)."""
        if not self.entries:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(len(self.entries), (k,), generator=generator).tolist()
        return [self.entries[i] for i in idx]

    def state_dict(self) -> dict:
        """Plain tensors, ints and strings only, so it loads with torch.load(weights_only=True)."""
        es = list(self.entries)
        sizes = torch.tensor([e.x1.shape[0] for e in es], dtype=torch.long)
        cat = (lambda name: torch.cat([getattr(e, name) for e in es]) if es else torch.zeros(0, 3))
        return {
            "capacity": self.capacity,
            "mol_index": torch.tensor([e.mol_index for e in es], dtype=torch.long),
            "keys": [e.key for e in es],
            "sizes": sizes,
            "x1": cat("x1"),
            "grad_energy": cat("grad_energy"),
            "grad_reg": cat("grad_reg"),
            "energy": torch.tensor([e.energy for e in es], dtype=torch.float64),
            "seed": torch.tensor([e.seed for e in es], dtype=torch.long),
        }

    def load_state_dict(self, state: dict) -> None:
        self.capacity = int(state["capacity"])
        self.entries = deque(maxlen=self.capacity)
        sizes = state["sizes"].tolist()
        parts = {k: torch.split(state[k], sizes) if sizes else [] for k in ("x1", "grad_energy", "grad_reg")}
        seeds = state.get("seed", torch.zeros(len(state["keys"]), dtype=torch.long))
        for i, key in enumerate(state["keys"]):
            self.entries.append(
                BufferEntry(
                    mol_index=int(state["mol_index"][i]), key=key, x1=parts["x1"][i].clone(),
                    grad_energy=parts["grad_energy"][i].clone(), grad_reg=parts["grad_reg"][i].clone(),
                    energy=float(state["energy"][i]), seed=int(seeds[i]),
                )
            )
