"""adjoint_sampling.shared_data: the one place that finds the shared folder."""
from pathlib import Path

import adjoint_sampling
from adjoint_sampling import shared_data
from adjoint_sampling.shared_data import ENV_VAR, shared_dir, shared_location, synthetic_data_dir


def test_default_is_the_shared_folder_beside_the_repository_root(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    repo_root = Path(adjoint_sampling.__file__).resolve().parent.parent  # holds adjoint_sampling/, tests/
    assert (repo_root / "tests" / "test_shared_data.py").is_file()
    assert shared_location() == repo_root.parent / "shared"
    assert synthetic_data_dir() == repo_root.parent / "shared" / "data" / "synthetic"
    assert shared_dir() == (repo_root.parent / "shared" if (repo_root.parent / "shared").is_dir() else None)


def test_environment_variable_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert shared_dir() == tmp_path
    assert synthetic_data_dir() == tmp_path / "data" / "synthetic"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    assert shared_location() == tmp_path / "absent" and shared_dir() is None


def test_load_split_and_eval_synthetic_default_to_it(monkeypatch, tmp_path):
    import argparse

    import numpy as np
    import pytest

    from adjoint_sampling.synthetic import SyntheticError, load_split
    from adjoint_sampling.synthetic_cli import add_arguments

    folder = tmp_path / "data" / "synthetic"
    folder.mkdir(parents=True)
    np.save(folder / "val_split_DW4.npy", np.zeros((3, 8), dtype=np.float32))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert load_split("dw4", "val").shape == (3, 8)
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args([]).data == str(folder)
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(SyntheticError, match=ENV_VAR):
        load_split("dw4", "val")


def test_no_module_hard_codes_the_location():
    """Every lookup goes through shared_data: no other source or test builds the path itself."""
    root = Path(shared_data.__file__).resolve().parents[1]
    offenders = []
    for sub in ("adjoint_sampling", "benchmark", "energies", "scripts", "tests"):
        for path in (root / sub).rglob("*.py"):
            if path.name in ("shared_data.py", "test_shared_data.py"):
                continue
            text = path.read_text()
            if '/ "shared"' in text or "'shared'" in text or '"shared" /' in text:
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
