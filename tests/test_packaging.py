"""A built wheel carries the presets and the bundled molecule lists, and a non-editable install finds them."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources: the build must not see the checkout (or write build/ into it)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("adjoint_sampling", "energies", "benchmark"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = dist.glob("adjoint_sampling-*.whl")
    return wheel


def test_wheel_ships_presets_and_molecule_lists_and_installed_copy_resolves_them(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for preset in sorted((ROOT / "adjoint_sampling" / "presets").glob("*.yaml")):
        assert f"adjoint_sampling/presets/{preset.name}" in names
    for lst in ("quick", "tiny"):
        assert f"adjoint_sampling/data/{lst}.txt" in names

    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target",
                           str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    probe = (
        "import adjoint_sampling, sys\n"
        "from adjoint_sampling.cli import _resolve_molecule_file\n"
        "from adjoint_sampling.config import load_config\n"
        "from adjoint_sampling.graphs import read_molecule_list\n"
        "cfg = load_config('quick')\n"
        "path = _resolve_molecule_file(cfg.data.molecules)\n"
        "print(adjoint_sampling.__file__)\n"
        "print(path)\n"
        "print(len(read_molecule_list(path)))\n"
    )
    # run outside the checkout so the installed copy, not the source tree, is the one imported
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module_file, list_path, count = proc.stdout.strip().splitlines()[-3:]
    assert Path(module_file).resolve().is_relative_to(target.resolve())
    assert Path(list_path).resolve().is_relative_to(target.resolve()) and Path(list_path).name == "quick.txt"
    assert int(count) > 0
