"""Plugin registration, the pinned-version guard, and a load marker the tests read.

The plugin targets exactly one SGLang version: its cache API changed several times in 2025-26, and
the plugin subclasses and hooks internals. Any other version is refused loudly.
"""

from __future__ import annotations

import json
import logging
import os
import pkgutil
from importlib.metadata import version
from pathlib import Path

from radix_ext.sglang.upstream import HOOKS  # plain data, no SGLang import

logger = logging.getLogger(__name__)

PINNED_SGLANG_VERSION = "0.5.23"
PLUGIN_NAME = "vlcache"
# If set, each process that registers the plugin writes `<dir>/<pid>.json`: proof, for tests and
# for operators, of which SGLang processes actually loaded it.
MARKER_DIR_ENV = "VLCACHE_PLUGIN_MARKER_DIR"

_registered = False


def check_sglang_version() -> str:
    """Return the installed SGLang version; raise if it is not the pinned one."""
    installed = version("sglang")
    if installed != PINNED_SGLANG_VERSION:
        raise RuntimeError(
            f"vlcache-serve's SGLang plugin supports sglang=={PINNED_SGLANG_VERSION} only; "
            f"sglang=={installed} is installed. Install the pinned version "
            f"(pip install vlcache-serve[gpu], or make install on CPU)."
        )
    return installed


def _register_backends_and_hooks() -> None:
    from sglang.srt.arg_groups.choices import add_attention_backend_choices
    from sglang.srt.layers.attention.attention_registry import register_attention_backend
    from sglang.srt.mem_cache.registry import register_radix_cache_backend
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from radix_ext.sglang import hooks
    from radix_ext.sglang.config import ATTENTION_BACKEND, RADIX_CACHE_BACKEND, TRITON_ATTENTION_BACKEND

    register_radix_cache_backend(RADIX_CACHE_BACKEND, _create_radix_cache)
    register_attention_backend(ATTENTION_BACKEND)(_create_attention_backend)
    register_attention_backend(TRITON_ATTENTION_BACKEND)(_create_triton_attention_backend)
    add_attention_backend_choices([ATTENTION_BACKEND, TRITON_ATTENTION_BACKEND])
    for hook in HOOKS:
        HookRegistry.register(hook.target, getattr(hooks, hook.hook), HookType[hook.kind])


def missing_hooks() -> list[str]:
    """The `upstream.HOOKS` targets SGLang has not wrapped (in this process).

    `HookRegistry` keeps no public record of what it applied, so this reads the target itself: every
    wrapper SGLang installs sets `__wrapped__` (the stdlib convention), which no stock target has (the
    inventory test checks), and SGLang wraps a target with all of its hooks or none.
    """
    missing = []
    for hook in HOOKS:
        try:
            target = pkgutil.resolve_name(hook.target)
        except (ImportError, AttributeError):
            target = None
        if not hasattr(target, "__wrapped__"):
            missing.append(hook.target)
    return missing


def verify_hooks_applied() -> None:
    """SGLang only logs a hook it fails to apply (before logging is set up): check ours took."""
    missing = missing_hooks()
    if missing:
        raise RuntimeError(
            f"vlcache: SGLang did not apply the plugin's hooks on {missing}; is sglang=={PINNED_SGLANG_VERSION}?"
        )


def _create_radix_cache(ctx):
    from radix_ext.sglang.layerwise_allocator import LayerwiseTokenAllocator
    from radix_ext.sglang.radix_cache import VLCacheRadixCache

    refused = [
        name
        for name, on in (
            ("hybrid sliding-window models", ctx.is_hybrid_swa),
            ("hybrid state-space models", ctx.is_hybrid_ssm),
            ("hierarchical cache", ctx.enable_hierarchical_cache),
            ("--disable-radix-cache", ctx.disable_radix_cache),
            ("sparse-attention (DSA) models", ctx.is_dsa),
        )
        if on
    ]
    if refused:
        raise ValueError(f"--radix-cache-backend vlcache does not support: {', '.join(refused)}")
    verify_hooks_applied()
    _check_defaults()
    if not isinstance(ctx.params.token_to_kv_pool_allocator, LayerwiseTokenAllocator):
        raise ValueError(
            "--radix-cache-backend vlcache needs the layer-wise KV allocator; this model/setup is not supported"
        )
    return VLCacheRadixCache(ctx.params)


def _check_defaults() -> None:
    """A bad server-wide default fails the start, not every request."""
    from radix_ext.policy import check_budget, get_policy
    from radix_ext.sglang.config import REUSE_MODES, server_defaults

    defaults = server_defaults()
    if defaults.reuse not in (None, *REUSE_MODES):  # None: per attention backend (`resolved_for`)
        raise ValueError(f"VLCACHE_REUSE must be one of {list(REUSE_MODES)}, got {defaults.reuse!r}")
    get_policy(defaults.policy, **defaults.options)
    check_budget(defaults.budget)
    if defaults.logical_slots_factor < 1:
        raise ValueError(f"VLCACHE_LOGICAL_SLOTS_FACTOR must be >= 1, got {defaults.logical_slots_factor}")


def _create_attention_backend(model_runner):
    from radix_ext.sglang.attention_backend import VLCacheTorchNativeBackend

    return VLCacheTorchNativeBackend(model_runner)


def _create_triton_attention_backend(model_runner):
    from radix_ext.sglang.triton_backend import VLCacheTritonBackend

    return VLCacheTritonBackend(model_runner)


def _process_title() -> str:
    try:
        import setproctitle
    except ImportError:  # SGLang depends on it; stay importable without it
        return ""
    return setproctitle.getproctitle()


def _write_marker() -> None:
    marker_dir = os.environ.get(MARKER_DIR_ENV)
    if not marker_dir:
        return
    path = Path(marker_dir)
    path.mkdir(parents=True, exist_ok=True)
    record = {"plugin": PLUGIN_NAME, "pid": os.getpid(), "process_title": _process_title()}
    (path / f"{os.getpid()}.json").write_text(json.dumps(record))


def register() -> None:
    """SGLang plugin entry point: runs once per SGLang process (idempotent).

    Registers the `vlcache` radix-cache backend, the `vlcache_torch_native` attention backend and the
    hooks of `upstream.HOOKS`. Every hook is inert unless the server runs with `--radix-cache-backend vlcache`.
    """
    global _registered
    if _registered:
        return
    check_sglang_version()
    _registered = True
    _register_backends_and_hooks()
    _write_marker()
    logger.info("vlcache plugin registered in %s (pid %d)", _process_title() or "process", os.getpid())
