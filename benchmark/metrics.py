"""Coverage and AMR metrics from a reference x sample RMSD matrix.

Definitions as in ``../shared/design/ALGORITHM.md`` (the shared folder beside the repository),
section "Coverage metrics":

D[i, j] = best heavy-atom RMSD (Å) between reference i and generated sample j.
  recall coverage(d)    = mean_i [ min_j D[i, j] < d ]    recall AMR    = mean_i min_j D[i, j]
  precision coverage(d) = mean_j [ min_i D[i, j] < d ]    precision AMR = mean_j min_i D[i, j]

NaN handling (explicit):
  * a column that is entirely NaN is a failed sample: it covers no reference, it stays in the
    precision denominator as an uncovered sample, and it is left out of the precision AMR mean;
  * a row that is entirely NaN over the non-failed columns is an unusable reference: it is
    dropped from every metric (reported as ``n_bad_references``);
  * any other isolated NaN entry counts as an infinite distance.
If every sample failed, both coverages are 0 and both AMRs are NaN.
"""
from __future__ import annotations

import numpy as np

THRESHOLDS = np.arange(20) * 0.125  # 0, 0.125, ..., 2.375 Å
SUMMARY_THRESHOLDS = (0.75, 1.0, 1.25)


def _mean_or_nan(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def coverage_metrics(rmsd: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> dict:
    """Recall/precision coverage (fractions, one per threshold) and AMRs (Å) of one molecule.

    Returns a dict with keys thresholds, recall_coverage, precision_coverage, recall_amr,
    precision_amr, n_references, n_samples, n_failed_samples, n_bad_references.
    """
    d = np.asarray(rmsd, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"RMSD matrix must be 2-D [references, samples], got shape {d.shape}")
    thresholds = np.asarray(thresholds, dtype=np.float64)
    failed = np.isnan(d).all(axis=0) if d.shape[0] else np.ones(d.shape[1], bool)
    live = d[:, ~failed]
    bad_ref = np.isnan(live).all(axis=1) if live.shape[1] else np.zeros(d.shape[0], bool)
    d_ok = np.where(np.isnan(d), np.inf, d)[~bad_ref]
    n_ref, n_smp = d_ok.shape
    if n_ref == 0 or n_smp == 0:
        zeros = np.zeros(len(thresholds))
        return _pack(thresholds, zeros, zeros, float("nan"), float("nan"), n_ref, n_smp, int(failed.sum()),
                     int(bad_ref.sum()))
    min_over_samples = d_ok.min(axis=1)  # per reference, inf if no sample is usable
    min_over_refs = d_ok.min(axis=0)  # per sample, inf for failed samples
    recall = (min_over_samples[:, None] < thresholds[None, :]).mean(axis=0)
    precision = (min_over_refs[:, None] < thresholds[None, :]).mean(axis=0)
    recall_amr = _mean_or_nan(min_over_samples[np.isfinite(min_over_samples)])
    precision_amr = _mean_or_nan(min_over_refs[np.isfinite(min_over_refs)])
    return _pack(thresholds, recall, precision, recall_amr, precision_amr, n_ref, n_smp, int(failed.sum()),
                 int(bad_ref.sum()))


def _pack(thresholds, recall, precision, recall_amr, precision_amr, n_ref, n_smp, n_failed, n_bad) -> dict:
    return {
        "thresholds": [float(t) for t in thresholds],
        "recall_coverage": [float(x) for x in recall],
        "precision_coverage": [float(x) for x in precision],
        "recall_amr": float(recall_amr),
        "precision_amr": float(precision_amr),
        "n_references": int(n_ref),
        "n_samples": int(n_smp),
        "n_failed_samples": int(n_failed),
        "n_bad_references": int(n_bad),
    }


def aggregate(per_molecule: list[dict]) -> dict:
    """Mean and std over molecules of each metric (coverages per threshold; AMRs ignoring NaN)."""
    if not per_molecule:
        raise ValueError("no molecules to aggregate")
    out = {"n_molecules": len(per_molecule), "thresholds": per_molecule[0]["thresholds"]}
    for key in ("recall_coverage", "precision_coverage"):
        arr = np.array([m[key] for m in per_molecule])
        out[key + "_mean"] = arr.mean(axis=0).tolist()
        out[key + "_std"] = arr.std(axis=0).tolist()
    for key in ("recall_amr", "precision_amr"):
        arr = np.array([m[key] for m in per_molecule], dtype=float)
        arr = arr[np.isfinite(arr)]
        out[key + "_mean"] = float(arr.mean()) if arr.size else float("nan")
        out[key + "_std"] = float(arr.std()) if arr.size else float("nan")
    return out
