"""FairChemEnergy on a tiny randomly initialised UMA-style model saved as a real fairchem checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("fairchem.core")

from ase import Atoms  # noqa: E402
from rdkit import Chem  # noqa: E402
from rdkit.Chem import AllChem  # noqa: E402

from energies import EnergyConfig, make_energy  # noqa: E402
from energies.base import EnergyBatch  # noqa: E402
from energies.fairchem import FairChemEnergy, MissingCheckpointError  # noqa: E402


def tiny_model_config() -> dict:
    """Hydra config of a one-layer eSCN-MD backbone with an omol energy(+autograd forces) head."""
    return {
        "_target_": "fairchem.core.models.base.HydraModel",
        "backbone": {
            "model": "fairchem.core.models.uma.escn_md.eSCNMDBackbone",
            "max_num_elements": 100,
            "sphere_channels": 16,
            "lmax": 2,
            "mmax": 2,
            "otf_graph": True,
            "max_neighbors": 30,
            "cutoff": 6.0,
            "edge_channels": 16,
            "num_distance_basis": 16,
            "direct_forces": False,
            "regress_forces": True,
            "num_layers": 1,
            "hidden_channels": 16,
            "chg_spin_emb_type": "rand_emb",
            "dataset_mapping": {"omol": "omol"},
            "always_use_pbc": False,
        },
        # prefix "omol": outputs are named omol_energy / omol_forces, matching the task names.
        "heads": {"energyandforcehead": {"module": "fairchem.core.models.uma.escn_md.MLP_EFS_Head", "prefix": "omol"}},
        "pass_through_head_outputs": True,
    }


def tiny_tasks_config() -> list:
    def task(name, level, prop, dim):
        return {
            "_target_": "fairchem.core.units.mlip_unit.mlip_unit.Task",
            "name": name,
            "level": level,
            "property": prop,
            "out_spec": {"_target_": "fairchem.core.units.mlip_unit.mlip_unit.OutputSpec", "dim": dim, "dtype": "float32"},
            "normalizer": {"_target_": "fairchem.core.modules.normalization.normalizer.Normalizer", "mean": 0.0, "rmsd": 1.0},
            "datasets": ["omol"],
        }

    return [task("omol_energy", "system", "energy", [1]), task("omol_forces", "atom", "forces", [3])]


def save_tiny_checkpoint(path) -> str:
    """Instantiate the model with fairchem's own classes and save an MLIPInferenceCheckpoint."""
    import hydra

    from fairchem.core.units.mlip_unit.api.inference import MLIPInferenceCheckpoint

    torch.manual_seed(0)
    config = tiny_model_config()
    model = hydra.utils.instantiate(config)
    # Scale weights up so that the random model's energy surface is not nearly flat.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    ema = torch.optim.swa_utils.AveragedModel(model)
    checkpoint = MLIPInferenceCheckpoint(
        model_config=config,
        model_state_dict=model.state_dict(),
        ema_state_dict=ema.state_dict(),
        tasks_config=tiny_tasks_config(),
    )
    torch.save(checkpoint, path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("fairchem") / "tiny_uma.pt")


@pytest.fixture(scope="module")
def energy64(checkpoint):
    return make_energy(EnergyConfig(name="fairchem", checkpoint=checkpoint, task="omol", options={"dtype": "float64"}))


@pytest.fixture(scope="module")
def molecules():
    out = []
    for i, smiles in enumerate(["CCO", "CC(=O)[O-]", "c1ccncc1"]):
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=i)
        out.append((np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), mol.GetConformer().GetPositions(), Chem.GetFormalCharge(mol)))
    return out


def test_loads_through_registry_and_returns_shapes(energy64, molecules):
    assert isinstance(energy64, FairChemEnergy)
    batch = EnergyBatch.from_molecules([z for z, _, _ in molecules], [x for _, x, _ in molecules], charges=[c for _, _, c in molecules])
    result = energy64(batch)
    assert result.energy.shape == (3,) and result.forces.shape == (batch.numbers.shape[0], 3)
    assert not result.failures and torch.isfinite(result.energy).all()
    assert not result.energy.requires_grad and not result.forces.requires_grad


def test_matches_fairchem_ase_calculator(checkpoint, molecules):
    """Same numbers as fairchem's own calculator (which reports eV and eV/Å)."""
    from fairchem.core import FAIRChemCalculator
    from fairchem.core.units.mlip_unit import load_predict_unit

    from energies.fairchem import inference_settings

    z, x, charge = molecules[1]
    predictor = load_predict_unit(checkpoint, inference_settings=inference_settings("batch", "float64"), device="cpu")
    atoms = Atoms(numbers=z, positions=x)
    atoms.info.update(charge=charge, spin=1)
    atoms.calc = FAIRChemCalculator(predictor, task_name="omol")
    ours = FairChemEnergy(checkpoint, dtype="float64")(EnergyBatch.from_molecules([z], [x], charges=[charge]))
    assert ours.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    np.testing.assert_allclose(ours.forces.numpy(), atoms.get_forces(), atol=1e-8)


def test_forces_are_minus_energy_gradient(energy64, molecules):
    z, x, _ = molecules[0]
    forces = energy64(EnergyBatch.from_molecules([z], [x])).forces.numpy().ravel()
    assert np.abs(forces).max() > 1e-3
    h = 1e-4
    picks = np.random.default_rng(0).choice(x.size, 6, replace=False)
    displaced = []
    for flat in picks:
        for sign in (1, -1):
            y = x.copy().ravel()
            y[flat] += sign * h
            displaced.append(y.reshape(x.shape))
    e = energy64(EnergyBatch.from_molecules([z] * len(displaced), displaced)).energy.numpy().reshape(-1, 2)
    np.testing.assert_allclose(forces[picks], -(e[:, 0] - e[:, 1]) / (2 * h), rtol=1e-4, atol=1e-6)


def test_batch_equals_single_and_charge_spin_matter(energy64, molecules):
    batch = EnergyBatch.from_molecules([z for z, _, _ in molecules], [x for _, x, _ in molecules], charges=[c for _, _, c in molecules])
    together = energy64(batch)
    for i, (z, x, c) in enumerate(molecules):
        alone = energy64(EnergyBatch.from_molecules([z], [x], charges=[c]))
        assert together.energy[i].item() == pytest.approx(alone.energy.item(), abs=1e-8)
        np.testing.assert_allclose(together.forces[batch.batch == i].numpy(), alone.forces.numpy(), atol=1e-8)
    z, x, _ = molecules[0]
    variants = energy64(EnergyBatch.from_molecules([z] * 3, [x] * 3, charges=[0, 1, 0], spins=[1, 2, 3])).energy
    assert len(set(np.round(variants.numpy(), 8))) == 3


def test_bad_molecule_fails_alone_and_float32_default(checkpoint, molecules):
    energy = FairChemEnergy(checkpoint, max_atoms_per_call=20)  # forces several model calls
    (z0, x0, _), (z1, x1, c1) = molecules[0], molecules[1]
    bad = x1.copy()
    bad[0] = np.nan
    batch = EnergyBatch.from_molecules([z0, z1, z0], [x0, bad, x0], charges=[0, c1, 0])
    result = energy(batch)
    assert [i for i, _ in result.failures] == [1]
    assert result.energy[0].item() == pytest.approx(result.energy[2].item(), abs=1e-5)
    assert result.forces.dtype == torch.float64  # follows the input positions' dtype


def test_missing_checkpoint_says_where_to_get_weights(tmp_path):
    with pytest.raises(MissingCheckpointError, match="facebook/UMA.*energy.checkpoint=PATH"):
        FairChemEnergy(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="energy.checkpoint=PATH"):
        make_energy(EnergyConfig(name="fairchem", checkpoint=None))


def test_rejects_unknown_task(checkpoint):
    with pytest.raises(ValueError, match="no task 'omat'.*omol"):
        FairChemEnergy(checkpoint, task="omat")
