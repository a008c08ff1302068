"""Result files of the evaluation (and benchmark): JSON, a Markdown table and a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path

METRIC_COLUMNS = ("precision", "recall", "ndcg", "map", "hit_rate", "coverage")


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_evaluation(results: list[dict], out_dir: str) -> str:
    """Write ``metrics.json``, ``metrics.md`` and ``metrics.png``; return the Markdown table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    columns = ["split", "model", "k", *METRIC_COLUMNS, "users", "seconds"]
    table = markdown_table(results, columns)
    (out / "metrics.md").write_text(table + "\n", encoding="utf-8")
    _plot(results, out / "metrics.png")
    return table


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = sorted({r["split"] for r in results})
    fig, axes = plt.subplots(1, len(splits), figsize=(7 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        rows = [r for r in results if r["split"] == split]
        width = 0.8 / max(len(rows), 1)
        for n, row in enumerate(rows):
            positions = [m + n * width for m in range(len(METRIC_COLUMNS))]
            ax.bar(positions, [row[m] for m in METRIC_COLUMNS], width, label=row["model"])
        ax.set_xticks([m + 0.4 - width / 2 for m in range(len(METRIC_COLUMNS))])
        ax.set_xticklabels([f"{m}@{rows[0]['k']}" if m not in ("hit_rate", "coverage") else m for m in METRIC_COLUMNS])
        ax.set_title(f"{split} split")
        ax.set_ylim(0, 1)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
