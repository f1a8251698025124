"""`attention_stats` on long prompts: time and peak memory of the chunked computation vs a dense one.

Layer shape of Qwen2-VL-7B (28 query heads, 4 KV heads, head dim 128), 64 post-vision rows, prompts
from 4k to 128k tokens. The dense reference materialises the `[H, r, m]` float32 logits; the chunked
one never holds more than `[H, row_chunk, key_chunk]`. Prints a table and the ratios, writes
`bench/results/attention_stats_scaling.png`. Runs on CUDA when available, else on the CPU (smaller sizes).

    python bench/attention_stats_scaling.py [--lengths 4096 16384 65536 131072] [--rows 64]
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import torch

from radix_ext.policy import attention_stats

RESULTS = Path(__file__).resolve().parent / "results"
H, HKV, D = 28, 4, 128


def dense_stats(q, k, rows, p=0.01):
    """The obvious implementation: full logits, softmax, sums (memory grows with r x m x H)."""
    z = torch.einsum("hgrd,hkd->hgrk", q.view(HKV, H // HKV, -1, D).float() / math.sqrt(D), k.float())
    z = z.masked_fill(torch.arange(k.shape[1], device=k.device)[None, :] > rows[:, None], -math.inf)
    a = torch.softmax(z, -1)
    below = ((a < p * a.amax(-1, keepdim=True)) & torch.isfinite(z)).sum((2, 3))
    return a.sum(2).reshape(H, -1), below


def measure(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000, (torch.cuda.max_memory_allocated() - base) / 2**20
    return (time.perf_counter() - start) * 1000, float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 131072] if cuda else [2048, 8192]
    )
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--dense-limit", type=int, default=65536, help="skip the dense reference above this length")
    args = parser.parse_args()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"device: {name}; layer: H={H}, Hkv={HKV}, d={D}; rows={args.rows}")

    table = []
    for m in args.lengths:
        g = torch.Generator(device=device).manual_seed(m)
        q = torch.randn(H, args.rows, D, device=device, generator=g, dtype=torch.bfloat16)
        k = torch.randn(HKV, m, D, device=device, generator=g, dtype=torch.bfloat16)
        rows = torch.arange(m - args.rows, m, device=device)
        attention_stats(q, k, rows)  # warm-up (kernels, allocator)
        chunked_ms, chunked_mb = measure(functools.partial(attention_stats, q, k, rows), device)
        dense_ms = dense_mb = float("nan")
        if m <= args.dense_limit:
            dense_ms, dense_mb = measure(functools.partial(dense_stats, q, k, rows), device)
        table.append((m, chunked_ms, chunked_mb, dense_ms, dense_mb))
        print(f"[bench] m={m}: chunked {chunked_ms:.1f} ms", flush=True)

    columns = [("prompt m", 9), ("chunked ms", 12), ("chunked MiB", 13), ("dense ms", 10), ("dense MiB", 11),
               ("mem ratio", 11), ("time ratio", 12)]  # fmt: skip
    print("\n" + "".join(f"{title:>{width}}" for title, width in columns))
    for m, cms, cmb, dms, dmb in table:
        print(f"{m:>9}{cms:>12.1f}{cmb:>13.1f}{dms:>10.1f}{dmb:>11.1f}{dmb / cmb:>11.1f}{dms / cms:>12.2f}")
    _plot(table, name)


def _plot(table, name) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    RESULTS.mkdir(exist_ok=True)
    with_memory = any(math.isfinite(row[2]) for row in table)  # peak memory is measured on CUDA only
    fig, axes = plt.subplots(1, 2 if with_memory else 1, figsize=(10 if with_memory else 5, 4), squeeze=False)
    lengths = [row[0] for row in table]
    panels = [(1, 3, "ms per layer", "time")] + ([(2, 4, "peak extra MiB", "memory")] if with_memory else [])
    for ax, (chunked, dense, ylabel, title) in zip(axes[0], panels, strict=True):
        ax.plot(lengths, [row[chunked] for row in table], marker="o", label="chunked")
        ax.plot(lengths, [row[dense] for row in table], marker="s", label="dense")
        ax.set(xscale="log", yscale="log", xlabel="prompt tokens", ylabel=ylabel, title=title)
        ax.legend()
    fig.suptitle(f"attention_stats, one layer (28 heads, 64 rows), {name}")
    fig.tight_layout()
    fig.savefig(RESULTS / "attention_stats_scaling.png", dpi=120)
    print(f"plot: {RESULTS / 'attention_stats_scaling.png'}")


if __name__ == "__main__":
    main()
