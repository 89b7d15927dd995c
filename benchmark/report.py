"""Aggregate per-molecule results into metrics.csv, a coverage plot and a Markdown summary."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from benchmark.metrics import SUMMARY_THRESHOLDS, aggregate

CSV_FIELDS = ["method", "threshold", "n_molecules", "recall_coverage_mean", "recall_coverage_std",
              "precision_coverage_mean", "precision_coverage_std", "recall_amr_mean", "recall_amr_std",
              "precision_amr_mean", "precision_amr_std"]


def collect(records: list[dict], methods: list[str]) -> dict:
    """Per method: aggregated metrics plus summed wall time and validity shares over molecules."""
    out = {}
    for m in methods:
        rows = [r["methods"][m] for r in records if m in r.get("methods", {}) and "metrics" in r["methods"][m]]
        if not rows:
            continue
        agg = aggregate([r["metrics"] for r in rows])
        n_samples = sum(r["n_generated"] for r in rows)
        agg["wall_time_s"] = float(sum(r["wall_time_s"] for r in rows))
        agg["wrong_connectivity_share"] = sum(r["n_wrong_connectivity"] for r in rows) / max(n_samples, 1)
        agg["wrong_stereo_share"] = sum(r["n_wrong_stereo"] for r in rows) / max(n_samples, 1)
        agg["failed_share"] = sum(r["metrics"]["n_failed_samples"] for r in rows) / max(n_samples, 1)
        out[m] = agg
    return out


def write_csv(summary: dict, path: Path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for method, agg in summary.items():
            for k, t in enumerate(agg["thresholds"]):
                w.writerow({
                    "method": method, "threshold": t, "n_molecules": agg["n_molecules"],
                    "recall_coverage_mean": agg["recall_coverage_mean"][k],
                    "recall_coverage_std": agg["recall_coverage_std"][k],
                    "precision_coverage_mean": agg["precision_coverage_mean"][k],
                    "precision_coverage_std": agg["precision_coverage_std"][k],
                    "recall_amr_mean": agg["recall_amr_mean"], "recall_amr_std": agg["recall_amr_std"],
                    "precision_amr_mean": agg["precision_amr_mean"], "precision_amr_std": agg["precision_amr_std"],
                })


def plot_coverage(summary: dict, path: Path) -> None:
    """Recall and precision coverage (%) vs RMSD threshold (Å), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for method, agg in summary.items():
        t = np.array(agg["thresholds"])
        for ax, key in zip(axes, ("recall_coverage", "precision_coverage")):
            mean = 100 * np.array(agg[key + "_mean"])
            std = 100 * np.array(agg[key + "_std"])
            ax.plot(t, mean, marker="o", ms=3, label=f"{method} (n={agg['n_molecules']})")
            ax.fill_between(t, np.clip(mean - std, 0, 100), np.clip(mean + std, 0, 100), alpha=0.12)
    for ax, title in zip(axes, ("Recall coverage", "Precision coverage")):
        ax.set_title(title)
        ax.set_xlabel("heavy-atom RMSD threshold (Å)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("coverage (%), mean ± std over molecules")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def summary_markdown(summary: dict, thresholds=SUMMARY_THRESHOLDS) -> str:
    """Markdown table: coverage (%) at the summary thresholds, AMR (Å), validity and wall time."""
    head = (["method", "mols"] + [f"recall@{t:g}Å" for t in thresholds] + [f"precision@{t:g}Å" for t in thresholds]
            + ["recall AMR (Å)", "precision AMR (Å)", "wrong conn. %", "wrong stereo %", "failed %", "wall time (s)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, agg in summary.items():
        grid = np.array(agg["thresholds"])
        cells = [method, str(agg["n_molecules"])]
        for key in ("recall_coverage", "precision_coverage"):
            for t in thresholds:
                k = int(np.argmin(np.abs(grid - t)))
                cells.append(_pm(agg[key + "_mean"][k], agg[key + "_std"][k]))
        cells += [_pm(agg["recall_amr_mean"], agg["recall_amr_std"], 1.0, 3),
                  _pm(agg["precision_amr_mean"], agg["precision_amr_std"], 1.0, 3),
                  f"{100 * agg['wrong_connectivity_share']:.1f}", f"{100 * agg['wrong_stereo_share']:.1f}",
                  f"{100 * agg['failed_share']:.1f}", f"{agg['wall_time_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
