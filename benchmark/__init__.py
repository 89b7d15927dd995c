"""Coverage benchmark of conformer generators against reference conformers (e.g. CREST).

Public pieces: benchmark.rmsd (symmetry-aware RMSD matrices), benchmark.metrics (coverage/AMR),
benchmark.references (reference-set reader), benchmark.mapping (SMILES atom order, validity),
benchmark.methods (generators), benchmark.runner (run_benchmark), benchmark.cli (CLI hook).
"""
from benchmark.metrics import THRESHOLDS, coverage_metrics
from benchmark.rmsd import heavy_atom_automorphisms, rmsd_matrix

__all__ = ["THRESHOLDS", "coverage_metrics", "heavy_atom_automorphisms", "rmsd_matrix"]
