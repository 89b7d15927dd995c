from pathlib import Path

import pytest

from adjoint_sampling.shared_data import ENV_VAR, shared_dir as find_shared_dir, shared_location


@pytest.fixture
def shared_dir() -> Path:
    """The shared folder (adjoint_sampling.shared_data); the test is skipped when it is absent."""
    found = find_shared_dir()
    if found is None or not (found / "data").is_dir():
        pytest.skip(f"shared folder not present at {shared_location()} (set {ENV_VAR})")
    return found


@pytest.fixture
def synthetic_dir(shared_dir) -> Path:
    """data/synthetic of the shared folder, with the DW-4 / LJ-13 ground-truth splits."""
    path = shared_dir / "data" / "synthetic"
    if not (path / "test_split_DW4.npy").is_file():
        pytest.skip(f"ground-truth samples not present at {path}")
    return path
