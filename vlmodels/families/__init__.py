"""Tiny offline builds of the VLM families SGLang serves: one builder per family, one registry.

Every build is random (seeded) and deterministic, downloads nothing, and lands in the project cache
(`.cache/models/<family>/`) on first use: `ensure_family("qwen2_5_vl")`. `FAMILIES` is the test
matrix's source (tests/integration/families/): each entry names the SGLang entry class that serves it.
"""

from __future__ import annotations

from pathlib import Path

from vlmodels.families.base import Family, FamilySpec
from vlmodels.families.gemma3 import GEMMA3
from vlmodels.families.internvl import INTERNVL
from vlmodels.families.llava import LLAVA_NEXT, LLAVA_ONEVISION
from vlmodels.families.qwen import QWEN2_5_VL, QWEN3_VL
from vlmodels.tiny_qwen2vl import default_cache_dir, is_built

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL, GEMMA3, LLAVA_ONEVISION, LLAVA_NEXT, INTERNVL)}
DEFAULT_SPEC = FamilySpec()
# Qwen3-VL-8B's attention geometry (36 layers, 32 query heads over 8 KV heads of 128) over small widths
# elsewhere: its KV cache per token and layer is the real model's, its weights stay small. (Qwen2.5-VL
# cannot: on the CPU engine SGLang's qwen2.py derives head_dim as hidden_size / heads, ignoring the config's.)
QWEN3_VL_8B_SHAPE = FamilySpec(
    hidden_size=128, intermediate_size=256, num_layers=36, num_heads=32, num_kv_heads=8, attention_head_dim=128
)


def family_dir(name: str) -> Path:
    return default_cache_dir().parent / f"tiny-{name.replace('_', '-')}"


def ensure_family(name: str, out_dir: str | Path | None = None, spec: FamilySpec = DEFAULT_SPEC) -> Path:
    """The family's model folder, built first if it is missing or was built from another spec (a spec
    other than the default gets its own folder, named by its digest, unless `out_dir` is given)."""
    family = FAMILIES[name]
    default = (
        family_dir(name)
        if spec == DEFAULT_SPEC
        else family_dir(name).with_name(f"{family_dir(name).name}-{spec.digest()}")
    )
    out = Path(out_dir) if out_dir else default
    if is_built(out, family.stamp(spec)):
        return out
    print(f"[vlcache] building the tiny {family.title} (seed {spec.seed}) into {out} ...", flush=True)
    return family.build(out, spec)


__all__ = ["DEFAULT_SPEC", "FAMILIES", "QWEN3_VL_8B_SHAPE", "Family", "FamilySpec", "ensure_family", "family_dir"]
