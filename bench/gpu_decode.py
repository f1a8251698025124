"""One decode step through SGLang's Triton decode kernel: full KV vs per-layer VL-Cache views.

A Qwen2-VL-7B-shaped model (28 layers, 28 query heads, 4 KV heads, head dim 128, bf16), synthetic KV,
`--lengths` tokens per request x `--batches` requests. "full" is stock: every layer reads every token
through one `kv_indices`. "views" is `VLCacheTritonBackend`'s path: per-layer `kv_indptr` / `kv_indices`
built for all layers at once (`radix_ext.sglang.layer_indices` + its Triton fill), each layer keeping an
uneven share of the prompt (mean `--budget`, from 0.25x to 1.75x of it across layers; kept tokens stay
where they were in the pool, i.e. sparse slots) plus the decode token. Per configuration: time per step
(CUDA events, median of `--iters`, the step captured in a CUDA graph as the server does), bytes read
(K/V rows + the int64 indices), achieved bandwidth against this device's measured copy bandwidth, the
byte-count bound (full bytes / view bytes), the speedup, and the index construction's share of the step.
Every configuration also checks layer 0 of request 0 against a float32 reference.

The machine needs torch and Triton, not SGLang: the script loads the three SGLang kernel modules it
uses (decode_attention, score_mod, metadata) from what `--sglang` names, without installing SGLang or
its dependencies, behind stubs of the two SGLang helpers they import:
- a wheel:  `pip download sglang==0.5.23 --no-deps -d /tmp/w` (on any machine with PyPI), then
  `python -m bench.gpu_decode --sglang /tmp/w/sglang-0.5.23-py3-none-any.whl`;
- an sdist (`.tar.gz`), or a directory holding `sglang/kernels/ops/attention/` (an installed site-packages).

    python -m bench.gpu_decode --sglang WHEEL                      # H200: 3 lengths x 3 batches, ~2-4 min
    python -m bench.gpu_decode --sglang DIR --device cpu --toy     # seconds: Triton's CPU interpreter

Writes `gpu_decode.json` and `gpu_decode.png` under `--out` (default `bench/results/`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import torch

RESULTS = Path(__file__).resolve().parent / "results"
KERNELS = ("decode_attention.py", "score_mod.py", "metadata.py")
MEMBER = "sglang/kernels/ops/attention/"
STUBS = {
    "sglang/srt/environ.py": (
        "class _Flag:\n    def get(self):\n        return False\n\n\n"
        "class _Envs:\n    def __getattr__(self, name):\n        return _Flag()\n\n\nenvs = _Envs()\n"
    ),
    "sglang/srt/utils.py": (
        "import torch\n\n\ndef is_hip():\n    return False\n\n\n"
        "is_gfx95_supported = is_gfx1250_supported = is_hip\n\n\n"
        "def get_device_core_count(device_id=0):\n"
        "    return torch.cuda.get_device_properties(device_id).multi_processor_count "
        "if torch.cuda.is_available() else 0\n"
    ),
    "sglang/srt/runtime_context.py": "def get_exec():\n    raise ValueError('no SGLang runtime here')\n",
}


def load_sglang_kernels(source: str):
    """Import SGLang's decode and metadata kernel modules from a wheel, an sdist or a directory, into a
    stub `sglang` package in a temp dir (no SGLang install, no SGLang dependencies)."""
    root = Path(tempfile.mkdtemp(prefix="sglang_kernels_"))
    target = root / MEMBER
    target.mkdir(parents=True)
    src = Path(source)
    if src.is_dir():
        layouts = (src / MEMBER, src / "python" / MEMBER, src.parent / MEMBER)  # site-packages, sdist, package
        found = next((d for d in layouts if (d / KERNELS[0]).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no {MEMBER}{KERNELS[0]} under {src}")
        for name in KERNELS:
            shutil.copy(found / name, target / name)
    elif src.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(src) as archive:
            for name in KERNELS:
                (target / name).write_bytes(archive.read(MEMBER + name))
    else:
        with tarfile.open(src) as archive:
            for member in archive.getmembers():
                if any(member.name.endswith(MEMBER + name) for name in KERNELS):
                    (target / Path(member.name).name).write_bytes(archive.extractfile(member).read())
    for path, text in STUBS.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    for package in ("sglang", "sglang/kernels", "sglang/kernels/ops", "sglang/kernels/ops/attention", "sglang/srt"):
        (root / package / "__init__.py").touch()
    if "sglang" in sys.modules:
        raise RuntimeError("an sglang package is imported already: run this script in a fresh interpreter")
    sys.path.insert(0, str(root))
    from sglang.kernels.ops.attention import decode_attention, metadata

    assert Path(decode_attention.__file__).is_relative_to(root)
    return decode_attention, metadata


class Timer:
    """Median milliseconds of `fn` over `iters` runs: CUDA events on a GPU, wall clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, iters: int) -> float:
        fn()  # warm-up (compiles the kernels)
        times = []
        for _ in range(iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)


def graphed(fn, device):
    """`fn` captured in a CUDA graph (what the server replays per decode step), or `fn` itself on the CPU."""
    if device.type != "cuda":
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def copy_bandwidth(device, timer, nbytes: int) -> float:
    """GB/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), 10)
    return 2 * nbytes / ms / 1e6


def run_config(kernels, shape, n: int, bs: int, budget: float, iters: int, device, timer, seed: int = 0):
    from radix_ext.sglang.layer_indices import ViewStore, fill_indptr, layer_lengths
    from radix_ext.sglang.layer_indices_kernel import fill_layer_kv_indices

    decode_attention, metadata = kernels
    num_layers, heads, kv_heads, dim, max_splits = shape
    gen = torch.Generator(device="cpu").manual_seed(seed)
    slots = bs * n + 1  # slot 0: padding; request b holds slots [1 + b n, 1 + (b + 1) n)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(seed)  # K/V drawn on the device: 128k x 32 tokens would take minutes on the host
    k_buf = torch.randn((slots, kv_heads, dim), device=device, dtype=dtype)
    v_buf = torch.randn((slots, kv_heads, dim), device=device, dtype=dtype)
    q = torch.randn((num_layers, bs, heads, dim), device=device, dtype=dtype)
    o = torch.empty((bs, heads, dim), dtype=dtype, device=device)
    req_to_token = (torch.arange(bs * n, dtype=torch.int32) + 1).view(bs, n).to(device)
    phys = (torch.arange(slots, dtype=torch.int32)).expand(num_layers, slots).contiguous().to(device)
    rows = torch.arange(bs, device=device)
    seq_lens = torch.full((bs,), n, dtype=torch.int64, device=device)
    logits = torch.empty((bs, heads, max_splits, dim), dtype=torch.float32, device=device)
    lse = torch.empty((bs, heads, max_splits), dtype=torch.float32, device=device)
    cores = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 0

    def splits_for(lens):
        splits = torch.full((bs,), max_splits, dtype=torch.int32, device=device)
        if cores:  # SGLang's own heuristic (TritonAttnBackend.get_num_kv_splits)
            metadata.get_num_kv_splits_triton[(1,)](
                splits, lens, bs, 1, heads, kv_heads, max_splits, cores, MAX_NUM_SEQ=max(256, triton_pow2(bs))
            )
        return splits

    # Full KV: stock's one table for every layer.
    full_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=device)
    full_indptr[1:] = torch.cumsum(seq_lens, 0)
    full_indices = req_to_token.flatten().to(torch.int64)
    full_splits = splits_for(seq_lens)

    # Views: uneven kept counts per layer, mean `budget` of the prompt (n - 1 tokens) + the decode token.
    weights = torch.linspace(0.25, 1.75, num_layers)[torch.randperm(num_layers, generator=gen)]
    counts = [max(1, min(n - 1, round(budget * (n - 1) * float(w)))) for w in weights]
    views = {}
    for b in range(bs):
        kept = [torch.randperm(n - 1, generator=gen)[:c].sort().values for c in counts]
        views[b] = SimpleNamespace(prompt_len=n - 1, kept=kept)  # a RequestView (its module needs SGLang)
    store = ViewStore(num_layers, bs, sum(counts) * bs, device)
    store.sync(views)
    indptr = torch.zeros((num_layers, bs + 1), dtype=torch.int32, device=device)
    indices = torch.zeros((num_layers, bs * n), dtype=torch.int64, device=device)
    view_splits = torch.empty(bs, dtype=torch.int32, device=device)

    def build():
        lens = layer_lengths(store, rows, seq_lens, True)
        fill_indptr(lens, indptr)
        fill_layer_kv_indices(indices, indptr, store, req_to_token, phys, rows, seq_lens, True)
        view_splits.copy_(splits_for(lens.amax(0)))

    def attend(layer_indptr, layer_indices, splits):
        for layer in range(num_layers):
            ip, ix = layer_indptr(layer), layer_indices(layer)
            decode_attention.decode_attention_fwd(
                q[layer], k_buf, v_buf, o, ip, ix, logits, lse, splits, max_splits, dim**-0.5, 1.0, 1.0
            )

    def full_step():
        attend(lambda _: full_indptr, lambda _: full_indices, full_splits)

    def view_step():
        build()
        attend(lambda layer: indptr[layer], lambda layer: indices[layer], view_splits)

    build()
    attend(lambda layer: indptr[layer], lambda layer: indices[layer], view_splits)
    error = check_layer0(q, k_buf, v_buf, o, indptr, indices, decode_attention, logits, lse, view_splits, dim)
    full_ms = timer(graphed(full_step, device), iters)
    view_ms = timer(graphed(view_step, device), iters)
    build_ms = timer(graphed(build, device), iters)

    token_bytes = 2 * kv_heads * dim * k_buf.element_size()
    full_entries = num_layers * bs * n
    view_entries = int(indptr[:, -1].sum())
    full_bytes = full_entries * token_bytes + bs * n * 8  # one shared table
    view_bytes = view_entries * (token_bytes + 8)
    return {
        "tokens": n, "batch": bs, "budget": budget, "kept_per_layer": counts,
        "full_ms": full_ms, "view_ms": view_ms, "index_build_ms": build_ms,
        "full_bytes": full_bytes, "view_bytes": view_bytes,
        "full_gbps": full_bytes / full_ms / 1e6, "view_gbps": view_bytes / view_ms / 1e6,
        "bound": full_bytes / view_bytes, "speedup": full_ms / view_ms,
        "of_bound": (full_ms / view_ms) / (full_bytes / view_bytes), "index_share": build_ms / view_ms,
        "layer0_max_abs_err": error,
    }  # fmt: skip


def triton_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def check_layer0(q, k_buf, v_buf, o, indptr, indices, decode_attention, logits, lse, splits, dim) -> float:
    """Layer 0, request 0 of the views path against float32 attention over the same slots."""
    decode_attention.decode_attention_fwd(
        q[0], k_buf, v_buf, o, indptr[0], indices[0], logits, lse, splits, logits.shape[2], dim**-0.5, 1.0, 1.0
    )
    sel = indices[0, int(indptr[0, 0]) : int(indptr[0, 1])]
    group = q.shape[2] // k_buf.shape[1]
    keys = k_buf[sel].float().repeat_interleave(group, 1)
    values = v_buf[sel].float().repeat_interleave(group, 1)
    weights = (torch.einsum("hd,khd->hk", q[0, 0].float(), keys) * dim**-0.5).softmax(-1)
    return float((torch.einsum("hk,khd->hd", weights, values) - o[0].float()).abs().max())


def plot(results, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['tokens']} x{r['batch']}" for r in results]
    x = range(len(results))
    fig, ax = plt.subplots(figsize=(max(6, len(results)), 4))
    ax.bar([i - 0.2 for i in x], [r["bound"] for r in results], 0.4, label="byte-count bound")
    ax.bar([i + 0.2 for i in x], [r["speedup"] for r in results], 0.4, label="measured speedup")
    ax.set_xticks(list(x), labels, rotation=30)
    ax.set_ylabel("full KV time / views time")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sglang", required=True, help="SGLang wheel, sdist, or a directory holding its sources")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--toy", action="store_true", help="tiny shapes (seconds; for --device cpu)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before any Triton kernel is defined
    elif not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU (use --device cpu --toy for a check on the CPU)")
    if args.toy:
        shape, args.lengths, args.batches, args.iters = (2, 4, 2, 16, 4), [40], [1, 2], 1
    else:
        shape = (28, 28, 4, 128, 8)  # layers, query heads, KV heads, head dim, max kv splits (SGLang's default)
    device = torch.device(args.device)
    kernels = load_sglang_kernels(args.sglang)
    timer = Timer(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    copy_gbps = copy_bandwidth(device, timer, 2**30 if device.type == "cuda" else 2**20)
    print(f"device: {name}; copy bandwidth {copy_gbps:.1f} GB/s; shape (L, H, Hkv, d, splits) = {shape}")
    print(
        f"{'tokens':>7} {'batch':>5} | {'full ms':>8} {'views ms':>8} {'index ms':>8} | {'full GB/s':>9} "
        f"{'view GB/s':>9} | {'bound':>6} {'speedup':>7} {'of bound':>8} {'index %':>7} {'err':>8}"
    )
    results = []
    for n in args.lengths:
        for bs in args.batches:
            r = run_config(kernels, shape, n, bs, args.budget, args.iters, device, timer)
            results.append(r)
            print(
                f"{n:>7} {bs:>5} | {r['full_ms']:8.3f} {r['view_ms']:8.3f} {r['index_build_ms']:8.3f} | "
                f"{r['full_gbps']:9.0f} {r['view_gbps']:9.0f} | {r['bound']:6.2f} {r['speedup']:7.2f} "
                f"{r['of_bound']:8.2f} {100 * r['index_share']:6.1f}% {r['layer0_max_abs_err']:8.1e}"
            )
            if device.type == "cuda":
                torch.cuda.empty_cache()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"device": name, "copy_gbps": copy_gbps, "shape": shape, "toy": args.toy, "results": results}
    (args.out / "gpu_decode.json").write_text(json.dumps(record, indent=1))
    plot(results, args.out / "gpu_decode.png", f"decode step at budget {args.budget}: {name}")
    print(f"wrote {args.out / 'gpu_decode.json'} and gpu_decode.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
