"""Plugin registration, the pinned-version guard, and a load marker the tests read.

The plugin targets exactly one SGLang version: its cache API changed several times in 2025-26, and
the plugin subclasses and hooks internals. Any other version is refused loudly.
"""

from __future__ import annotations

import json
import logging
import os
from importlib.metadata import version
from pathlib import Path

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

    Registers nothing into SGLang yet; the radix-cache backend, the attention backend and the hooks
    are added here by later milestones.
    """
    global _registered
    if _registered:
        return
    check_sglang_version()
    _registered = True
    _write_marker()
    logger.info("vlcache plugin registered in %s (pid %d)", _process_title() or "process", os.getpid())
