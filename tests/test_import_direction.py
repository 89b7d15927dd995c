"""Imports run one way: inference (sampling, ensemble, benchmark) never loads training code, and the
sampler's own modules never load the benchmark (the benchmark may use them, not the reverse)."""
import subprocess
import sys

import pytest

INFERENCE = ["adjoint_sampling.sampling", "benchmark.methods", "benchmark.runner", "benchmark.synthetic",
             "benchmark.torsional", "adjoint_sampling.spaces", "adjoint_sampling.sde", "adjoint_sampling.loss",
             "adjoint_sampling.ensemble", "adjoint_sampling.pretrained"]


@pytest.mark.parametrize("module", INFERENCE)
def test_module_does_not_load_the_trainer(module):
    banned = ("adjoint_sampling.trainer", "adjoint_sampling.synthetic")
    if module.startswith("adjoint_sampling."):
        banned += ("benchmark",)
    code = (f"import sys, importlib; importlib.import_module({module!r}); "
            f"bad = [m for m in {banned!r} if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "", f"{module} loads {out.stdout.strip()}"


def test_the_sample_command_never_loads_training_code(tmp_path):
    """cli.main catches the trainer's error type only when `train` has loaded it."""
    import subprocess
    import sys

    probe = ("import sys\nfrom adjoint_sampling.cli import main\n"
             f"rc = main(['sample', '--checkpoint', {str(tmp_path / 'missing.pt')!r}, '--smiles', 'CCO', '-n', '2', "
             f"'-o', {str(tmp_path / 'o.sdf')!r}])\n"
             "print(rc, 'adjoint_sampling.trainer' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]
