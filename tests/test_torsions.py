"""Torsional state space: perception, the map θ → x, its gradient, the wrapped normal and the torus bridge."""
import math

import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import rdMolTransforms

from adjoint_sampling.graphs import collate, graph_from_smiles, with_torsions
from adjoint_sampling.schedules import GeometricSchedule
from adjoint_sampling.spaces import TorsionSpace, wrapped_normal_log_density, wrapped_normal_score
from adjoint_sampling.torsions import measure, rotatable_torsions, set_torsions, torsion_gradient
from energies.base import EnergyBatch

ELEMENTS = [1, 6, 7, 8, 9, 16, 17]


def _batch(smiles_list, seeds=1):
    graphs = [with_torsions(graph_from_smiles(s), seeds=seeds) for s in smiles_list]
    return graphs, collate(graphs, ELEMENTS)


def _bond_geometry(mol, pos):
    """Every bond length and every bond angle (i-j-k over bonded pairs) of positions [n, 3]."""
    lengths = [np.linalg.norm(pos[b.GetBeginAtomIdx()] - pos[b.GetEndAtomIdx()]) for b in mol.GetBonds()]
    angles = []
    for atom in mol.GetAtoms():
        nbs = [n.GetIdx() for n in atom.GetNeighbors()]
        j = atom.GetIdx()
        for x in range(len(nbs)):
            for y in range(x + 1, len(nbs)):
                u, v = pos[nbs[x]] - pos[j], pos[nbs[y]] - pos[j]
                angles.append(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))
    return np.array(lengths), np.array(angles)


def test_perception_counts_and_exclusions():
    assert rotatable_torsions(Chem.AddHs(Chem.MolFromSmiles("ClCCCl"))).count == 1
    assert rotatable_torsions(Chem.AddHs(Chem.MolFromSmiles("CCCC"))).count == 3  # C-C plus two methyl rotors
    assert rotatable_torsions(Chem.AddHs(Chem.MolFromSmiles("OCCO"))).count == 3
    # C-C≡N: the nitrile side lies on the axis; benzene ring bonds never rotate
    assert rotatable_torsions(Chem.AddHs(Chem.MolFromSmiles("CCC#N"))).count == 1  # only the methyl rotor
    assert rotatable_torsions(Chem.AddHs(Chem.MolFromSmiles("c1ccccc1"))).count == 0
    amide = Chem.AddHs(Chem.MolFromSmiles("CC(=O)NC"))
    assert rotatable_torsions(amide, amides=True).count == rotatable_torsions(amide).count + 1


def test_set_then_measure_and_rigid_geometry():
    smiles = ["CCCC", "OCCO", "CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O"]
    graphs, batch = _batch(smiles)
    tb = batch.torsion.to("cpu")
    gen = torch.Generator().manual_seed(0)
    theta = (torch.rand(tb.count, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    pos = set_torsions(theta, tb)
    got = measure(pos, tb.atoms)
    assert torch.allclose(torch.remainder(got - theta + math.pi, 2 * math.pi) - math.pi, torch.zeros_like(theta), atol=1e-9)
    for g, seed, new in zip(graphs, batch.split(tb.seed_pos), batch.split(pos)):
        l0, a0 = _bond_geometry(g.mol, seed.numpy())
        l1, a1 = _bond_geometry(g.mol, new.numpy())
        assert np.abs(l0 - l1).max() < 1e-6 and np.abs(a0 - a1).max() < 1e-6


def test_dihedral_matches_rdkit():
    graphs, batch = _batch(["OCCO"])
    g = graphs[0]
    mol = Chem.Mol(g.mol)
    conf = Chem.Conformer(mol.GetNumAtoms())
    for i, p in enumerate(g.seeds[0].numpy()):
        conf.SetAtomPosition(i, p.tolist())
    mol.AddConformer(conf)
    ours = measure(g.seeds[0], g.torsions.atoms)
    for k, (a, b, c, d) in enumerate(g.torsions.atoms.tolist()):
        assert math.isclose(float(ours[k]), rdMolTransforms.GetDihedralRad(mol.GetConformer(), a, b, c, d), abs_tol=1e-9)


@pytest.mark.parametrize("energy_name", ["mmff", "xtb"])
def test_torsion_gradient_matches_finite_differences(energy_name):
    from energies import EnergyConfig, make_energy

    graphs, batch = _batch(["OCCO"] if energy_name == "xtb" else ["OCCO", "CC(=O)Nc1ccc(O)cc1"])
    tb = batch.torsion
    energy = make_energy(EnergyConfig(name=energy_name, workers=1))
    try:
        def energies(theta):
            pos = set_torsions(theta, tb)
            res = energy(EnergyBatch(numbers=batch.numbers, positions=pos, batch=batch.batch, charges=batch.charges,
                                     spins=batch.spins, mols=[g.mol for g in graphs], keys=[g.smiles for g in graphs]))
            return res.energy.double(), res.forces.double(), pos

        theta = measure(tb.seed_pos, tb.atoms) + 0.4
        e0, forces, pos = energies(theta)
        grad = torsion_gradient(pos, -forces, tb)
        eps = 1e-4
        for k in range(tb.count):
            step = torch.zeros_like(theta)
            step[k] = eps
            ep, _, _ = energies(theta + step)
            em, _, _ = energies(theta - step)
            copy = int(tb.batch[k])
            fd = (ep[copy] - em[copy]) / (2 * eps)
            assert abs(float(fd) - float(grad[k])) < 1e-4 + 1e-3 * abs(float(fd)), (k, float(fd), float(grad[k]))
    finally:
        energy.close()


def test_wrapped_normal_density_and_score():
    var = 1.3
    grid = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
    p = wrapped_normal_log_density(grid, var).exp()
    assert abs(float(torch.trapezoid(p, grid)) - 1) < 1e-8
    theta = torch.tensor([-3.0, -1.0, 0.2, 2.5, 3.1], dtype=torch.float64)
    eps = 1e-6
    fd = (wrapped_normal_log_density(theta + eps, var) - wrapped_normal_log_density(theta - eps, var)) / (2 * eps)
    assert torch.allclose(wrapped_normal_score(theta, var), fd, atol=1e-7)


def test_torus_bridge_matches_closed_form():
    """Bridge samples at time t given θ_1 against the exact wrapped conditional density on a grid."""
    graphs, batch = _batch(["ClCCCl"])
    space, sched = TorsionSpace(), GeometricSchedule(math.pi / 100, math.pi)
    n = 40000
    big = collate([graphs[0]] * n, ELEMENTS)
    theta1 = torch.full((n, 1), 2.8, dtype=torch.float64)
    t = torch.full((n,), 0.7, dtype=torch.float64)
    xt = space.bridge(theta1, t, big, sched, torch.Generator().manual_seed(1)).reshape(-1)
    # exact: p(θ_t | θ_1) ∝ p_t(θ_t) p(θ_1 | θ_t), both wrapped normals
    h1, ht = sched.h1_sq, float(sched.h2(torch.tensor(0.7, dtype=torch.float64)))
    grid = torch.linspace(-math.pi, math.pi, 721, dtype=torch.float64)[:-1] + math.pi / 720
    logp = wrapped_normal_log_density(grid, ht) + wrapped_normal_log_density(2.8 - grid, h1 - ht)
    p = torch.softmax(logp, 0)
    hist = torch.histc(xt, bins=720, min=-math.pi, max=math.pi) / n
    cdf_err = (torch.cumsum(hist, 0) - torch.cumsum(p, 0)).abs().max()
    assert cdf_err < 0.01, float(cdf_err)
    # circular mean, against the exact one
    mean_exact = torch.atan2((p * grid.sin()).sum(), (p * grid.cos()).sum())
    assert abs(float(torch.atan2(xt.sin().mean(), xt.cos().mean()) - mean_exact)) < 0.02


def test_zero_rotatable_bonds():
    g = with_torsions(graph_from_smiles("c1ccccc1"), seeds=2)
    assert g.num_torsions == 0 and g.seeds.shape == (2, 12, 3)
    batch = collate([g], ELEMENTS)
    assert torch.equal(set_torsions(torch.zeros(0), batch.torsion), g.seeds[0])
