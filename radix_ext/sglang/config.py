"""Server-wide VL-Cache defaults, from environment variables the launcher passes to SGLang.

`VLCACHE_POLICY` (default `vlcache`), `VLCACHE_BUDGET` (default 0.1), `VLCACHE_POLICY_OPTIONS` (a JSON
object of policy options), `VLCACHE_LOGICAL_SLOTS_FACTOR` (logical slots per physical slot, default 4:
logical slots are cheap indices; compressed requests keep theirs while freeing physical ones),
`VLCACHE_REUSE` (what a compressed request leaves for a follow-up turn, `lazy`, `compressed` or `off`;
unset: `compressed` on the torch-native backend, `lazy` on the Triton one, which cannot read a partly
held prefix yet: see `docs/multiturn.md`). A request overrides policy, budget, options and reuse with
`custom_params: {"vl_cache": {...}}`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass, field

from radix_ext.contract import REQUEST_KEY  # noqa: F401  in custom_params (options in) and meta_info (report out)

RADIX_CACHE_BACKEND = "vlcache"
ATTENTION_BACKEND = "vlcache_torch_native"
TRITON_ATTENTION_BACKEND = "vlcache_triton"  # SGLang's Triton kernels, per-layer views: the CUDA default
# lazy: the prompt's full KV goes to the radix tree as evictable cache, the request reads a private copy
# of its kept tokens; compressed: the turn's compressed KV (kept tokens + output) enters the tree in a
# namespace of its own, and a follow-up prefills only its new text over it; off: the evicted tokens'
# slots are freed at once and nothing enters the tree.
REUSE_MODES = ("lazy", "compressed", "off")


@dataclass(frozen=True)
class VLCacheDefaults:
    policy: str = "vlcache"
    budget: float = 0.1
    options: dict = field(default_factory=dict)
    logical_slots_factor: int = 4
    reuse: str | None = None  # None: per attention backend (`resolved_for`)

    def resolved_for(self, attention_backend: str) -> VLCacheDefaults:
        """These defaults with `reuse` set: `compressed` (a follow-up prefills only its new text, over
        the turn's compressed KV) where the attention backend reads it, else `lazy`."""
        if self.reuse is not None:
            return self
        return dataclasses.replace(self, reuse="compressed" if attention_backend == ATTENTION_BACKEND else "lazy")

    @classmethod
    def from_env(cls, environ=os.environ) -> VLCacheDefaults:
        options = json.loads(environ.get("VLCACHE_POLICY_OPTIONS", "{}"))
        if not isinstance(options, dict):
            raise ValueError("VLCACHE_POLICY_OPTIONS must be a JSON object")
        return cls(
            policy=environ.get("VLCACHE_POLICY", cls.policy),
            budget=float(environ.get("VLCACHE_BUDGET", cls.budget)),
            options=options,
            logical_slots_factor=int(environ.get("VLCACHE_LOGICAL_SLOTS_FACTOR", cls.logical_slots_factor)),
            reuse=environ.get("VLCACHE_REUSE", cls.reuse),
        )


@functools.cache
def server_defaults() -> VLCacheDefaults:
    """Read once per process: the environment does not change under a running server."""
    return VLCacheDefaults.from_env()
