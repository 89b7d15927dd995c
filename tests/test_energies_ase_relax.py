"""ASE calculators as energies and back, and conformer relaxation."""
from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import CalculationFailed
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from rdkit import Chem
from rdkit.Chem import AllChem

from energies import EnergyConfig, make_energy
from energies.ase_calc import ASECalculatorEnergy, EnergyCalculator
from energies.base import EnergyBatch
from energies.mmff import MMFFEnergy
from energies.relax import max_force, relax_conformers
from energies.xtb import XTBEnergy


def conformers(smiles: str, n: int, seed: int = 0):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = list(AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed))
    x = np.array([mol.GetConformer(i).GetPositions() for i in ids])
    x += np.random.default_rng(seed).normal(0.0, 0.05, x.shape)  # off-minimum starting points
    return mol, np.array([a.GetAtomicNum() for a in mol.GetAtoms()]), x


def copper_clusters(n: int, atoms: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0], [2.5, 0, 2.5]], float)[:atoms]
    return [base + rng.normal(0, 0.1, base.shape) for _ in range(n)]


def test_ase_registry_energy_in_workers_matches_direct_emt():
    xs = copper_clusters(4)
    xs[2] = xs[2].copy()
    xs[2][1, 1] = np.nan
    z = np.full(6, 29)
    batch = EnergyBatch.from_molecules([z] * 4, xs)
    with make_energy(EnergyConfig(name="ase:ase.calculators.emt.EMT", workers=2)) as energy:
        assert energy.parallel
        result = energy(batch)
    assert [i for i, _ in result.failures] == [2]
    for i in (0, 1, 3):
        atoms = Atoms(numbers=z, positions=xs[i])
        atoms.calc = EMT()
        assert result.energy[i].item() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(result.forces[batch.batch == i].numpy(), atoms.get_forces(), atol=1e-10)


def test_ase_lennard_jones_kwargs_and_forces():
    energy = ASECalculatorEnergy(LennardJones, {"sigma": 2.3, "epsilon": 0.4, "rc": 8.0})
    x = copper_clusters(1)[0]
    z = np.full(6, 18)
    res = energy(EnergyBatch.from_molecules([z], [x]))
    ref = Atoms(numbers=z, positions=x)
    ref.calc = LennardJones(sigma=2.3, epsilon=0.4, rc=8.0)
    assert res.energy.item() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    h = 1e-5
    xp, xm = x.copy(), x.copy()
    xp[0, 0] += h
    xm[0, 0] -= h
    e = energy(EnergyBatch.from_molecules([z, z], [xp, xm])).energy
    assert res.forces[0, 0].item() == pytest.approx(-(e[0] - e[1]).item() / (2 * h), abs=1e-5)


def test_round_trip_energy_model_through_ase():
    mol, z, xs = conformers("CC(=O)O", 3)
    direct = MMFFEnergy()
    batch = EnergyBatch.from_molecules([z] * 3, list(xs), mols=[mol] * 3)
    expected = direct(batch)
    # EnergyModel -> ASE calculator -> EnergyModel again; a closure cannot be pickled: in-process.
    wrapped = ASECalculatorEnergy(lambda: EnergyCalculator(MMFFEnergy(), mol=mol), workers=2)
    assert not wrapped.parallel
    got = wrapped(EnergyBatch.from_molecules([z] * 3, list(xs)))
    np.testing.assert_allclose(got.energy.numpy(), expected.energy.numpy(), atol=1e-12)
    np.testing.assert_allclose(got.forces.numpy(), expected.forces.numpy(), atol=1e-12)


def test_energy_calculator_reads_charge_from_atoms_info():
    mol, z, xs = conformers("CC(=O)[O-]", 1)
    xtb = XTBEnergy(workers=0)
    atoms = Atoms(numbers=z, positions=xs[0])
    atoms.info["charge"] = -1
    atoms.calc = EnergyCalculator(xtb)
    direct = xtb(EnergyBatch.from_molecules([z], [xs[0]], charges=[-1]))
    neutral = xtb(EnergyBatch.from_molecules([z], [xs[0]], charges=[0], spins=[2]))
    assert atoms.get_potential_energy() == pytest.approx(direct.energy.item(), abs=1e-8)
    assert abs(direct.energy.item() - neutral.energy.item()) > 0.1  # the charge really mattered
    np.testing.assert_allclose(atoms.get_forces(), direct.forces.numpy(), atol=1e-8)


def test_energy_calculator_raises_on_failed_evaluation():
    atoms = Atoms("OHH", positions=np.zeros((3, 3)))
    atoms.calc = EnergyCalculator(XTBEnergy(workers=0))
    with pytest.raises(CalculationFailed, match="xtb"):
        atoms.get_potential_energy()


@pytest.mark.parametrize("optimizer", ["lbfgs", "fire"])
def test_relax_conformers_mmff(optimizer):
    mol, z, xs = conformers("CCOC(=O)C", 4, seed=2)
    energy = MMFFEnergy()
    result = relax_conformers(energy, z, xs, mol=mol, fmax=0.05, steps=400, optimizer=optimizer)
    assert result.coords.shape == xs.shape and result.energies.shape == (4,)
    assert result.converged.all() and (result.n_steps > 0).all()
    assert (result.energies < result.initial_energies - 1e-3).all()
    check = energy(EnergyBatch.from_molecules([z] * 4, list(result.coords), mols=[mol] * 4))
    np.testing.assert_allclose(check.energy.numpy(), result.energies, atol=1e-9)
    for i in range(4):
        assert max_force(check.forces[check_batch_slice(z, i)].numpy()) < 0.05


def check_batch_slice(z, i):
    return slice(i * len(z), (i + 1) * len(z))


def test_relax_reports_unconverged_and_failed():
    mol, z, xs = conformers("CCOC(=O)C", 3, seed=3)
    xs[1] = np.nan
    result = relax_conformers(MMFFEnergy(), z, xs, mol=mol, steps=2)
    assert not result.converged.any()
    assert result.n_steps.tolist() == [2, 0, 2]
    assert [i for i, _ in result.failures] == [1]
    assert np.isnan(result.energies[1]) and np.isfinite(result.energies[[0, 2]]).all()
    with pytest.raises(ValueError, match="optimizer"):
        relax_conformers(MMFFEnergy(), z, xs, mol=mol, optimizer="bfgs-typo")
