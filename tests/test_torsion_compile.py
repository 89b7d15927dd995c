"""model.compile (torsional controller): torch.compile'd interaction blocks compute the same function.

One compiled model is built for the whole module (compilation takes about a minute on 2 cores).
Tolerance 1e-5 relative (float32): inductor fuses and reorders the same arithmetic.
"""
import pytest
import torch

from adjoint_sampling.config import ConfigError, load_config
from adjoint_sampling.controllers import build_controller
from adjoint_sampling.graphs import collate
from adjoint_sampling.sampling import Sampler
from adjoint_sampling.torsion_controller import require_cpp_compiler


def _has_compiler() -> bool:
    try:
        require_cpp_compiler()
        return True
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def models():
    cfg = load_config("tiny-torsional", ["model.compile=true"])
    torch.manual_seed(0)
    eager = build_controller(load_config("tiny-torsional").model, "torsional")
    for p in eager.parameters():  # away from the initial weights
        p.data += 0.1 * torch.randn_like(p)
    compiled = build_controller(cfg.model, "torsional")
    compiled.load_state_dict(eager.state_dict())
    sampler = Sampler(cfg, torch.nn.Identity(), torch.device("cpu"))
    graphs = collate([sampler.graph(s) for s in ("CCCCO", "CC(=O)NCCc1ccccc1", "CCCCO")], cfg.model.elements)
    return eager, compiled, graphs


def _close(a, b, rtol=1e-5):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item() <= rtol


@pytest.mark.skipif(not _has_compiler(), reason="no C++ compiler for torch.compile")
def test_compiled_blocks_equal_eager_with_and_without_grad(models):
    eager, compiled, graphs = models
    assert compiled.compile_blocks and not eager.compile_blocks
    gen = torch.Generator().manual_seed(1)
    theta = (torch.rand(graphs.torsion.count, 1, generator=gen) * 2 - 1) * torch.pi
    t = torch.rand(graphs.torsion.count, generator=gen)
    with torch.no_grad():  # the SDE's path
        v_ref = eager(t, theta, graphs)
        assert v_ref.abs().max() > 1e-4  # not vacuous
        assert _close(compiled(t, theta, graphs), v_ref)
    weights = torch.linspace(-1, 1, graphs.torsion.count).unsqueeze(-1)
    grads = []
    for model in (eager, compiled):  # a training step's gradients
        model.zero_grad()
        (weights * model(t, theta, graphs)).sum().backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert _close(grads[1][name], g, 1e-4), name
    # the state dict is the eager model's: a compiled run's checkpoint loads without compile
    assert set(compiled.state_dict()) == set(eager.state_dict())


def test_compile_is_a_torsional_option_and_needs_a_compiler(monkeypatch):
    with pytest.raises(ConfigError, match="model.compile"):
        load_config("lj13", ["model.compile=true"])
    import torch._inductor.config as inductor_config
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-compiler-xyz",))
    with pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"):
        require_cpp_compiler()


def test_load_sampler_compiles_only_when_asked():
    """A sampler is compiled by `sample --compile` only, whatever its run trained with."""
    from adjoint_sampling.pretrained import shipped_checkpoint
    from adjoint_sampling.sampling import load_sampler

    path = shipped_checkpoint()
    assert not load_sampler(path).model.compile_blocks
    assert load_sampler(path, compile=True).model.compile_blocks
