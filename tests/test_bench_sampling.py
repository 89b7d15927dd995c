"""scripts/bench_sampling.py: one small molecule, 2 conformers, 3 steps (no shared folder needed)."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_sampling.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_sampling", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_sampling_runs_three_generators(tmp_path):
    bench = _load()
    mols = tmp_path / "mols.txt"
    mols.write_text("CCCO propanol\n")
    out = tmp_path / "bench.json"
    report = bench.main(["--molecule-file", str(mols), "--molecules", "1", "-n", "2", "--nfe", "3", "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["molecules"] == ["propanol"]
    assert set(data["generators"]) == {"etkdg", "torsional", "cartesian"}
    for name, r in data["generators"].items():
        assert r["conformers"] == 2, name
        assert r["conformers_per_s"] > 0, name
        assert 0.0 <= r["connectivity_ok_fraction"] <= 1.0, name
    assert data["samplers"]["torsional"]["mode"] == "torsional" and data["samplers"]["torsional"]["nfe"] == 3
    assert data["samplers"]["cartesian"]["mode"] == "cartesian" and data["samplers"]["cartesian"]["nfe"] == 3
    assert data["ratios"]["torsional_vs_etkdg"] > 0 and data["ratios"]["torsional_vs_cartesian"] > 0
    assert report["generators"]["etkdg"]["conformers_per_s"] == data["generators"]["etkdg"]["conformers_per_s"]


def test_pick_is_seeded_and_in_file_order():
    bench = _load()
    entries = [(f"C{'C' * i}", f"m{i}") for i in range(20)]
    a = bench.pick_molecules(entries, 5, 0)
    assert a == bench.pick_molecules(entries, 5, 0)
    assert [int(n[1:]) for _, n in a] == sorted(int(n[1:]) for _, n in a)
    assert bench.pick_molecules(entries, 50, 0) == entries


def test_wrong_mode_preset_exits(tmp_path):
    bench = _load()
    mols = tmp_path / "mols.txt"
    mols.write_text("CCO\n")
    with pytest.raises(SystemExit, match="not cartesian"):
        bench.main(["--molecule-file", str(mols), "--molecules", "1", "-n", "1", "--cartesian-preset", "tiny-torsional"])
