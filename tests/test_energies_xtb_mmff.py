"""GFN2-xTB and MMFF energies: forces, units, batching, failure isolation, parallel workers, registry."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem

from energies import EnergyConfig, make_energy
from energies._pool import WorkerPool, Job
from energies.base import EnergyBatch, EnergyModel, UnsupportedMoleculeError
from energies.mmff import MMFFEnergy
from energies.registry import available_energies, register
from energies.xtb import XTBEnergy

HARTREE_EV = 27.211386245988
WATER = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])


def embed(smiles: str, seed: int = 0, noise: float = 0.05):
    """Mol with explicit H, its atomic numbers and ETKDG positions (Å) plus small noise."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    x = mol.GetConformer().GetPositions()
    x = x + np.random.default_rng(seed).normal(0.0, noise, x.shape)
    return mol, np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), x


@pytest.fixture(scope="module")
def xtb_serial():
    energy = XTBEnergy(workers=0)
    yield energy
    energy.close()


@pytest.fixture(scope="module")
def molecules():
    """Several small molecules: (mol, numbers, positions)."""
    return [embed(s, seed=i) for i, s in enumerate(["CCO", "CN", "O=C=O", "c1ccoc1", "CC(=O)[O-]"])]


def batch_of(mols_data, charges=None, with_mols=False):
    return EnergyBatch.from_molecules(
        [z for _, z, _ in mols_data],
        [x for _, _, x in mols_data],
        charges=charges if charges is not None else [Chem.GetFormalCharge(m) for m, _, _ in mols_data],
        mols=[m for m, _, _ in mols_data] if with_mols else None,
    )


def finite_difference_forces(energy, numbers, x0, mol=None, h=1e-3, n_components=8, seed=0):
    """-dE/dx by central differences for a random subset of coordinates, all in one batch."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(x0.size, size=n_components, replace=False)
    displaced = []
    for flat in picks:
        for sign in (1.0, -1.0):
            x = x0.copy().ravel()
            x[flat] += sign * h
            displaced.append(x.reshape(x0.shape))
    n = len(displaced)
    batch = EnergyBatch.from_molecules([numbers] * n, displaced, mols=[mol] * n if mol is not None else None)
    e = energy(batch).energy.numpy().reshape(-1, 2)
    return picks, -(e[:, 0] - e[:, 1]) / (2 * h)


def analytic_forces(energy, numbers, x, mol=None):
    batch = EnergyBatch.from_molecules([numbers], [x], mols=[mol] if mol is not None else None)
    result = energy(batch)
    assert not result.failures
    return result.forces.numpy().ravel()


# ---- xTB ------------------------------------------------------------------------------------

def test_xtb_forces_are_minus_energy_gradient(xtb_serial):
    _, z, x = embed("CCO", seed=3)
    forces = analytic_forces(xtb_serial, z, x)
    picks, fd = finite_difference_forces(xtb_serial, z, x)
    assert np.abs(forces).max() > 0.1  # perturbed geometry: forces are not trivially zero
    np.testing.assert_allclose(forces[picks], fd, atol=2e-3)


def test_xtb_water_energy_is_in_ev(xtb_serial):
    result = xtb_serial(EnergyBatch.from_molecules([np.array([8, 1, 1])], [WATER]))
    assert result.energy.dtype == torch.float64
    assert result.energy.item() == pytest.approx(-5.07 * HARTREE_EV, abs=0.01 * HARTREE_EV)
    # Forces of a near-equilibrium water are small in eV/Å (they would be ~50x larger in Hartree/Bohr^-1 mix-ups).
    assert result.forces.abs().max().item() < 1.0


def test_xtb_batch_equals_one_at_a_time(xtb_serial, molecules):
    batch = batch_of(molecules)
    together = xtb_serial(batch)
    assert not together.failures
    for i, (m, z, x) in enumerate(molecules):
        alone = xtb_serial(EnergyBatch.from_molecules([z], [x], charges=[Chem.GetFormalCharge(m)]))
        assert together.energy[i].item() == pytest.approx(alone.energy.item(), abs=1e-6)
        np.testing.assert_allclose(together.forces[batch.batch == i].numpy(), alone.forces.numpy(), atol=1e-6)


def test_xtb_broken_geometry_fails_only_that_molecule(xtb_serial, molecules):
    (_, z0, x0), (_, z1, x1), (_, z2, x2) = molecules[:3]
    collapsed = np.zeros_like(x1)
    nan_positions = x2.copy()
    nan_positions[0, 0] = np.nan
    batch = EnergyBatch.from_molecules([z0, z1, z2, z0], [x0, collapsed, nan_positions, x0])
    result = xtb_serial(batch)
    assert sorted(i for i, _ in result.failures) == [1, 2]
    assert all(isinstance(reason, str) and reason for _, reason in result.failures)
    assert result.finite_mask(batch.batch).tolist() == [True, False, False, True]
    assert torch.isfinite(result.forces[batch.batch == 0]).all()
    assert torch.isnan(result.forces[batch.batch == 1]).all()


def test_xtb_scf_not_converged_is_a_failure(molecules):
    _, z, x = molecules[3]
    energy = XTBEnergy(workers=0, max_iter=2)
    result = energy(EnergyBatch.from_molecules([z], [x]))
    assert result.failures and "SCF" in result.failures[0][1]
    assert not torch.isfinite(result.energy).any()


def test_xtb_parallel_equals_serial(xtb_serial, molecules):
    batch = batch_of(molecules * 2)  # same molecules twice: exercises per-worker calculator reuse
    with XTBEnergy(workers=2) as parallel:
        first = parallel(batch)
        again = parallel(batch)
        pids = parallel.pool.worker_pids()
    serial = xtb_serial(batch)
    assert len(set(pids)) == 2 and None not in pids  # both workers were used
    assert not first.failures
    np.testing.assert_allclose(first.energy.numpy(), serial.energy.numpy(), atol=1e-6)
    np.testing.assert_allclose(first.forces.numpy(), serial.forces.numpy(), atol=1e-6)
    np.testing.assert_allclose(again.energy.numpy(), serial.energy.numpy(), atol=1e-6)


def test_xtb_killed_worker_is_restarted(molecules):
    batch = batch_of(molecules)
    with XTBEnergy(workers=1) as energy:
        reference = energy(batch)
        os.kill(energy.pool.worker_pids()[0], signal.SIGKILL)
        time.sleep(0.2)
        after = energy(batch)
        assert energy.pool.worker_pids()[0] is not None
    assert not after.failures
    np.testing.assert_allclose(after.energy.numpy(), reference.energy.numpy(), atol=1e-6)


def test_xtb_unsupported_element_and_spin(xtb_serial):
    with pytest.raises(UnsupportedMoleculeError, match=r"uranyl.*\bU\b"):
        xtb_serial.check_supported([92, 8, 8], charge=2, name="uranyl")
    with pytest.raises(UnsupportedMoleculeError, match="spin multiplicity 2"):
        xtb_serial.check_supported([8, 1, 1], charge=0, spin=2, name="water")
    # In a batch, the unsupported molecule fails alone instead of raising.
    batch = EnergyBatch.from_molecules([np.array([92, 8, 8]), np.array([8, 1, 1])], [WATER * 1.2, WATER])
    result = xtb_serial(batch)
    assert [i for i, _ in result.failures] == [0]
    assert "U" in result.failures[0][1]
    assert torch.isfinite(result.energy[1])


class FaultyBackend:
    """Test backend: key 'crash' kills the worker, 'hang' sleeps, anything else returns E = sum x."""

    def compute(self, key, numbers, positions, charge, spin):
        if key == "crash":
            os._exit(3)
        if key == "hang":
            time.sleep(30)
        return float(positions.sum()), -np.ones_like(positions)


def test_worker_pool_isolates_crashes_and_timeouts():
    pool = WorkerPool(FaultyBackend, workers=1, timeout_s=3.0, start_grace_s=60.0)
    try:
        z, x = np.array([1, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.7]])
        keys = ["ok", "crash", "ok", "hang", "ok"]
        jobs = [Job(i, k, z, x + i, 0, 1) for i, k in enumerate(keys)]
        outcomes = pool.run(jobs)
    finally:
        pool.close()
    reasons = {o.index: o.reason for o in outcomes}
    assert "died" in reasons[1] and "timeout" in reasons[3]
    for i in (0, 2, 4):
        assert reasons[i] is None and outcomes[i].energy == pytest.approx(float((x + i).sum()))
    assert pool.restarts == 2


# ---- MMFF ---------------------------------------------------------------------------------

def test_mmff_forces_are_minus_energy_gradient():
    mol, z, x = embed("CCO", seed=5)
    energy = MMFFEnergy()
    forces = analytic_forces(energy, z, x, mol)
    picks, fd = finite_difference_forces(energy, z, x, mol=mol, h=1e-4)
    assert np.abs(forces).max() > 0.1
    np.testing.assert_allclose(forces[picks], fd, atol=1e-4)


def test_mmff_energy_in_ev_and_matches_rdkit(molecules):
    from rdkit.Chem import rdForceFieldHelpers

    mol, z, x = molecules[0]
    mol = Chem.Mol(mol)
    conf = mol.GetConformer()
    for i, p in enumerate(x):
        conf.SetAtomPosition(i, p.tolist())
    kcal = rdForceFieldHelpers.MMFFGetMoleculeForceField(
        mol, rdForceFieldHelpers.MMFFGetMoleculeProperties(mol)
    ).CalcEnergy()
    result = MMFFEnergy()(EnergyBatch.from_molecules([z], [x], mols=[mol]))
    assert result.energy.item() == pytest.approx(kcal * 0.0433641, rel=1e-4)


def test_mmff_batch_with_bad_molecule(molecules):
    batch_data = list(molecules)
    _, z, x = batch_data[1]
    bad = x.copy()
    bad[2] = np.nan
    batch_data[1] = (batch_data[1][0], z, bad)
    batch = batch_of(batch_data, with_mols=True)
    energy = MMFFEnergy()
    result = energy(batch)
    assert [i for i, _ in result.failures] == [1]
    mask = result.finite_mask(batch.batch)
    assert mask.tolist() == [True, False, True, True, True]
    for i, (m, z, x) in enumerate(batch_data):
        if i != 1:
            alone = energy(EnergyBatch.from_molecules([z], [x], charges=[Chem.GetFormalCharge(m)], mols=[m]))
            assert result.energy[i].item() == pytest.approx(alone.energy.item(), abs=1e-9)


def test_mmff_unsupported_molecules_are_named():
    selenide = Chem.AddHs(Chem.MolFromSmiles("C[Se]C"))
    with pytest.raises(UnsupportedMoleculeError, match=r"C\[Se\]C.*\bSe\b"):
        MMFFEnergy(mols=[selenide])
    energy = MMFFEnergy()
    water = Chem.AddHs(Chem.MolFromSmiles("O"))
    with pytest.raises(UnsupportedMoleculeError, match="formal charge"):
        energy.check_supported([8, 1, 1], charge=1, name="water", mol=water)
    with pytest.raises(UnsupportedMoleculeError, match="closed-shell"):
        energy.check_supported([8, 1, 1], spin=3, name="water", mol=water)
    with pytest.raises(ValueError, match="EnergyBatch.mols"):
        energy(EnergyBatch.from_molecules([np.array([8, 1, 1])], [WATER]))


# ---- registry -----------------------------------------------------------------------------

def test_registry_builds_and_lists_energies():
    with make_energy(EnergyConfig(name="xtb", workers=0)) as energy:
        assert isinstance(energy, XTBEnergy)
    assert isinstance(make_energy(EnergyConfig(name="mmff")), MMFFEnergy)
    with pytest.raises(ValueError, match=r"unknown energy 'nope'.*mmff.*xtb"):
        make_energy(EnergyConfig(name="nope"))
    rows = {row["name"]: row for row in available_energies()}
    assert {"xtb", "mmff", "fairchem"} <= set(rows)
    assert rows["xtb"]["deps_ok"] and rows["mmff"]["deps_ok"]
    assert rows["xtb"]["elements"].startswith("H-Rn")
    assert "Cl" in rows["mmff"]["elements"].split()


def test_register_custom_energy():
    class Constant(EnergyModel):
        name = "constant-test"

    register("constant-test", lambda cfg: Constant(), "test energy", requirements=("numpy",), overwrite=True)
    assert isinstance(make_energy(EnergyConfig(name="constant-test")), Constant)
    with pytest.raises(ValueError, match="already registered"):
        register("constant-test", lambda cfg: Constant())
    row = next(r for r in available_energies() if r["name"] == "constant-test")
    assert row["deps_ok"] and row["elements"] == "any"


def test_cli_prints_energy_table(capsys):
    import argparse

    from energies import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["--no-import-check"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| name |")
    names = [line.split("|")[1].strip() for line in lines[2:]]
    assert {"xtb", "mmff", "fairchem", "ase:<module.Class>"} <= set(names)


def test_assignment_keeps_molecules_together_and_balances_load():
    from energies._pool import assign_contiguous

    keys = ["a", "b", "a", "c", "b", "a", "c", "d"]
    chunks = assign_contiguous(keys, [1.0] * len(keys), workers=4)
    assert sorted(i for c in chunks for i in c) == list(range(len(keys)))
    assert [len(c) for c in chunks] == [2, 2, 2, 2]
    for key in set(keys):
        assert sum(any(keys[i] == key for i in c) for c in chunks) <= 2  # a molecule spans <= 2 workers
    one_molecule = assign_contiguous(["x"] * 10, [1.0] * 10, workers=2)
    assert [len(c) for c in one_molecule] == [5, 5]  # a single molecule is still split for parallelism
