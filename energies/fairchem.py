"""fairchem-core 2.x machine-learned potentials (UMA, eSEN) from a LOCAL checkpoint file.

Energies are in eV and forces in eV/Å (fairchem's native units); forces are the autograd
gradient of the energy (conservative models only, unless ``allow_direct_forces``). Total
charge and spin multiplicity go to the model through ``atoms.info["charge"]`` and
``atoms.info["spin"]``, as fairchem's own ASE calculator passes them for the ``omol`` task.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from energies._jobs import outcomes_to_result
from energies._pool import Outcome
from energies.base import EnergyBatch, EnergyModel, EnergyResult

WEIGHTS_HELP = (
    "get UMA or eSEN weights from Hugging Face (https://huggingface.co/facebook/UMA, accept the "
    "licence, e.g. `huggingface-cli download facebook/UMA checkpoints/uma-s-1p1.pt`), then run with "
    "`energy=fairchem energy.checkpoint=PATH energy.task=omol`"
)
GRAPH_RADIUS = 6.0  # Å; the radius fairchem's ASE calculator uses when building inputs


class MissingCheckpointError(FileNotFoundError, ValueError):
    """The fairchem checkpoint is not a readable local file."""


def resolve_local_checkpoint(checkpoint: Optional[str]) -> str:
    """A local checkpoint path; also accepts a fairchem model name already in the HF cache.

    Never touches the network: a model name resolves only with ``local_files_only=True``.
    """
    if not checkpoint:
        raise MissingCheckpointError(f"energy 'fairchem' needs energy.checkpoint=PATH; {WEIGHTS_HELP}")
    path = Path(os.path.expanduser(str(checkpoint)))
    if path.is_file():
        return str(path)
    cached = _cached_pretrained(str(checkpoint))
    if cached is not None:
        return cached
    raise MissingCheckpointError(f"fairchem checkpoint {str(checkpoint)!r} not found; {WEIGHTS_HELP}")


def _cached_pretrained(name: str) -> Optional[str]:
    """Path of a registered fairchem model (e.g. 'uma-s-1p1') if it is already downloaded."""
    try:
        from huggingface_hub import hf_hub_download

        from fairchem.core._config import CACHE_DIR
        from fairchem.core.calculate.pretrained_mlip import _MODEL_CKPTS

        entry = _MODEL_CKPTS.checkpoints.get(name)
        if entry is None:
            return None
        return hf_hub_download(
            filename=entry.filename,
            repo_id=entry.repo_id,
            subfolder=entry.subfolder,
            revision=entry.revision,
            cache_dir=CACHE_DIR,
            local_files_only=True,
        )
    except Exception:  # noqa: BLE001 - not cached, or fairchem internals moved: treat as missing
        return None


def inference_settings(preset: str = "batch", dtype: str = "float32"):
    """fairchem InferenceSettings: the given preset, in ``dtype``, without untrained extras
    (stress), so that only energy and forces are computed."""
    from fairchem.core.units.mlip_unit.api.inference import guess_inference_settings

    settings = guess_inference_settings(preset)
    return dataclasses.replace(
        settings,
        base_precision_dtype=getattr(torch, dtype),
        auto_add_default_untrained_tasks=False,
    )


class FairChemEnergy(EnergyModel):
    """UMA / eSEN energies and forces: Å in, eV and eV/Å out, batched on cpu or cuda.

    checkpoint: local path of a fairchem-core 2.x inference checkpoint (or the name of a
        fairchem model already in the Hugging Face cache); nothing is downloaded.
    task: the model's task/dataset head, "omol" for molecules.
    device: "cpu" or "cuda".
    max_atoms_per_call: split large batches into model calls of at most this many atoms.
    inference_preset: fairchem inference settings name ("batch" suits mixed molecules).
    dtype: "float32" or "float64" model precision.
    """

    name = "fairchem"
    supported_charges = range(-100, 101)  # fairchem's CHARGE_RANGE

    def __init__(
        self,
        checkpoint: Optional[str] = None,
        task: str = "omol",
        device: str = "cpu",
        max_atoms_per_call: int = 4096,
        inference_preset: str = "batch",
        dtype: str = "float32",
        allow_direct_forces: bool = False,
        seed: int = 0,
    ):
        path = resolve_local_checkpoint(checkpoint)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"energy 'fairchem': device {device!r} requested but CUDA is not available")
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        from fairchem.core.units.mlip_unit import load_predict_unit

        self.checkpoint = path
        self.device = device
        self.max_atoms_per_call = int(max_atoms_per_call)
        self._dtype = getattr(torch, dtype)
        self.predictor = load_predict_unit(
            path, inference_settings=inference_settings(inference_preset, dtype), device=device, seed=seed
        )
        tasks = self.predictor.dataset_to_tasks
        if task not in tasks:
            raise ValueError(f"checkpoint {path} has no task {task!r}; available: {', '.join(sorted(tasks))}")
        properties = {t.property for t in tasks[task]}
        if not {"energy", "forces"} <= properties:
            raise ValueError(f"checkpoint {path}: task {task!r} predicts {sorted(properties)}, need energy and forces")
        backbone = self.predictor.model.module.backbone
        if backbone.regress_config.direct_forces and not allow_direct_forces:
            raise ValueError(
                f"checkpoint {path} predicts forces directly (not -dE/dx); use a conserving model "
                "or pass energy.options.allow_direct_forces=true"
            )
        self.task = task
        max_z = int(getattr(backbone, "max_num_elements", 100))
        self.supported_elements = frozenset(range(1, max_z))

    def _to_data(self, numbers: np.ndarray, positions: np.ndarray, charge: int, spin: int):
        from ase import Atoms

        from fairchem.core.datasets.atomic_data import AtomicData

        atoms = Atoms(numbers=numbers, positions=positions)
        atoms.info["charge"] = int(charge)
        atoms.info["spin"] = int(spin)
        return AtomicData.from_ase(
            atoms,
            task_name=self.task,
            r_edges=False,
            radius=GRAPH_RADIUS,
            r_data_keys=["spin", "charge"],
            target_dtype=self._dtype,
        )

    def _predict(self, items: list[tuple]) -> list[Outcome]:
        """One model call for a list of (index, numbers, positions, charge, spin)."""
        from fairchem.core.datasets.atomic_data import atomicdata_list_to_batch

        data = atomicdata_list_to_batch([self._to_data(z, x, c, s) for _, z, x, c, s in items])
        pred = self.predictor.predict(data)
        energy = pred["energy"].detach().double().cpu().numpy().reshape(-1)
        forces = pred["forces"].detach().double().cpu().numpy()
        outcomes, start = [], 0
        for k, (index, z, _, _, _) in enumerate(items):
            f = forces[start : start + len(z)]
            start += len(z)
            if np.isfinite(energy[k]) and np.isfinite(f).all():
                outcomes.append(Outcome(index, float(energy[k]), f, None))
            else:
                outcomes.append(Outcome(index, float("nan"), None, "non-finite energy or forces"))
        return outcomes

    def _predict_isolated(self, items: list[tuple]) -> list[Outcome]:
        """Run a chunk; if the model call fails, retry molecule by molecule to isolate the culprit."""
        try:
            return self._predict(items)
        except Exception as exc:  # noqa: BLE001
            if len(items) == 1:
                return [Outcome(items[0][0], float("nan"), None, f"{type(exc).__name__}: {exc}")]
            return [o for item in items for o in self._predict_isolated([item])]

    def evaluate(self, batch: EnergyBatch) -> EnergyResult:
        """Energies [B] (eV) and forces [N, 3] (eV/Å); failed molecules are NaN plus a reason."""
        numbers = batch.numbers.detach().cpu().numpy()
        positions = batch.positions.detach().cpu().double().numpy()
        charges = batch.charges.tolist()
        spins = batch.spins_or_singlet().tolist()
        outcomes: list[Outcome] = []
        chunk: list[tuple] = []
        chunk_atoms = 0
        for i, sl in enumerate(batch.molecule_slices()):
            z, x = numbers[sl], positions[sl]
            reason = self._precheck(z, x, int(charges[i]), int(spins[i]))
            if reason is not None:
                outcomes.append(Outcome(i, float("nan"), None, reason))
                continue
            if chunk and chunk_atoms + len(z) > self.max_atoms_per_call:
                outcomes += self._predict_isolated(chunk)
                chunk, chunk_atoms = [], 0
            chunk.append((i, z, x, int(charges[i]), int(spins[i])))
            chunk_atoms += len(z)
        if chunk:
            outcomes += self._predict_isolated(chunk)
        return outcomes_to_result(batch, outcomes)

    def _precheck(self, numbers, positions, charge: int, spin: int) -> Optional[str]:
        if not np.isfinite(positions).all():
            return "non-finite positions"
        try:
            self.check_supported(numbers, charge, spin)
        except ValueError as exc:
            return str(exc)
        if not 0 <= spin <= 100:
            return f"spin multiplicity {spin} outside fairchem's range 0..100"
        return None

    def close(self) -> None:
        self.predictor = None
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
