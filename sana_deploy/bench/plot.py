"""Bar chart of per-stage median latency per backend (p90 as the error bar), one panel per case."""

from __future__ import annotations

from pathlib import Path

from sana_deploy.bench.case import STAGE_LABELS
from sana_deploy.bench.report import _case_groups, _case_title, _stages_present, write_atomic
from sana_deploy.errors import fail


def plot(result: dict, path: Path | str) -> Path:
    """Write a PNG: for each case, grouped bars (stage x backend) of the median in ms, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install matplotlib (or pip install 'sana-deploy[bench]').")
    import io

    groups = [(c, [r for r in rs if r["stages"]]) for c, rs in _case_groups(result)]
    groups = [(c, rs) for c, rs in groups if rs]
    if not groups:
        fail("Nothing to plot: no backend produced timings.")
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 4.2 * len(groups)), squeeze=False)
    for ax, (case, results) in zip(axes[:, 0], groups, strict=True):
        stages = _stages_present(results)
        width = 0.8 / len(results)
        for i, r in enumerate(results):
            xs = [j + (i - (len(results) - 1) / 2) * width for j in range(len(stages))]
            med = [r["stages"][s]["median_ms"] if s in r["stages"] else 0 for s in stages]
            err = [r["stages"][s]["p90_ms"] - r["stages"][s]["median_ms"] if s in r["stages"] else 0 for s in stages]
            ax.bar(xs, med, width, yerr=[[0] * len(err), err], capsize=2, label=r["backend"])
        ax.set_xticks(range(len(stages)), [STAGE_LABELS[s] for s in stages])
        ax.set_yscale("log")
        ax.set_ylabel("median latency, ms (log; bar = p90)")
        ax.set_title(_case_title(case), fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, buf.getvalue())
