"""Presets and key=value overrides: types are checked, YAML quirks handled, mistakes reported."""
import pytest

from adjoint_sampling.config import ConfigError, load_config


def test_exponent_overrides_are_numbers():
    # PyYAML reads "5e-4" (no dot) as a string; the override must still mean 0.0005
    cfg = load_config("tiny", ["train.lr=5e-4", "loss.tau=1e-2", "train.epochs=1e3"])
    assert cfg.train.lr == pytest.approx(5e-4)
    assert cfg.loss.tau == pytest.approx(1e-2)
    assert cfg.train.epochs == 1000 and isinstance(cfg.train.epochs, int)


@pytest.mark.parametrize("override, words", [
    ("train.lr=fast", "expects a number"),
    ("train.epochs=2.5", "expects an integer"),
    ("train.nonsense=1", "nonsense"),
    ("train.use_pbase=1", "use_pbase"),
])
def test_bad_overrides_are_clear_errors(override, words):
    with pytest.raises(ConfigError, match=words):
        load_config("tiny", [override])


def test_a_single_block_torsional_controller_is_refused_since_it_outputs_zero():
    import torch

    from adjoint_sampling.graphs import collate, graph_from_smiles, with_torsions
    from adjoint_sampling.torsion_controller import TorsionController

    with pytest.raises(ConfigError, match="model.layers.*>= 2 for mode=torsional"):
        load_config("tiny-torsional", ["model.layers=1"])
    batch = collate([with_torsions(graph_from_smiles("CCCO"))], [1, 6, 8])
    theta = torch.randn(batch.torsion.count, 1, generator=torch.Generator().manual_seed(0))
    for layers, nonzero in ((1, False), (2, True)):  # why: the check above guards exactly this
        torch.manual_seed(0)
        v = TorsionController(3, scalars=8, vectors=2, layers=layers)(torch.tensor(0.3), theta, batch)
        assert bool(v.abs().max() > 0) == nonzero
