"""The SGLang plugin. Every SGLang import of the project lives under this package.

SGLang calls `register` (entry point `vlcache`, group `sglang.srt.plugins`, declared in
pyproject.toml) once in each of its processes: the HTTP server, the scheduler, the detokenizer.
"""

from radix_ext.sglang.registration import PINNED_SGLANG_VERSION, check_sglang_version, register

__all__ = ["PINNED_SGLANG_VERSION", "check_sglang_version", "register"]
