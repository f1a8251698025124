"""Plot TTFT, inter-token latency and request latency percentiles over time from Locust's
`<prefix>_stats_history.csv` (written with `--csv <prefix> --csv-full-history`).

    python -m loadtest.plot loadtest/results/run_stats_history.csv loadtest/results/percentiles.png
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

ENTRIES = {  # (Type, Name) in Locust's CSV -> panel title
    ("METRIC", "time_to_first_token"): "time to first token",
    ("METRIC", "inter_token_latency"): "inter-token latency",
    ("METRIC", "e2e_latency"): "request (whole stream)",
}
PERCENTILES = ("50%", "90%", "99%")


def read_history(path: Path) -> dict[tuple[str, str], list[dict]]:
    rows: dict[tuple[str, str], list[dict]] = {key: [] for key in ENTRIES}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["Type"], row["Name"])
            if key in rows and row.get("50%") not in (None, "", "N/A"):
                rows[key].append(row)
    return rows


def plot(history: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history)
    fig, axes = plt.subplots(1, len(ENTRIES), figsize=(5 * len(ENTRIES), 3.8), sharex=True)
    start = min((int(r["Timestamp"]) for series in rows.values() for r in series), default=0)
    for ax, (key, title) in zip(axes, ENTRIES.items(), strict=True):
        series = rows[key]
        t = [int(r["Timestamp"]) - start for r in series]
        for p in PERCENTILES:
            ax.plot(t, [float(r[p]) for r in series], label=f"p{p.rstrip('%')}")
        ax.set_title(title)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("ms (cumulative percentile)")
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
