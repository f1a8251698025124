"""Activates the CPU shims lazily; imported by the `.pth` the CPU install writes (never on GPU).

Importing this module is cheap (it imports nothing heavy): it puts an import hook first on
`sys.meta_path` that
- before `torchvision` is first imported, defines the operator schemas it needs;
- before `sglang` is first imported, installs the `torch.ops.sgl_kernel` stand-in namespace;
- serves `import sgl_kernel` from `cpu_shims.sgl_kernel_standin`.
A `.pth` is used (not a conftest) because SGLang spawns scheduler and detokenizer processes that must
see the same shims. The CPU venv also means the CPU engine, so `SGLANG_USE_CPU_ENGINE` defaults to 1.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys


class _CpuShimFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            from cpu_shims.torchvision_ops import define_schemas

            define_schemas()
        elif fullname == "sglang":
            from cpu_shims.sgl_kernel_standin import install_op_namespace

            install_op_namespace()
        elif fullname == "sgl_kernel":
            return importlib.util.spec_from_loader("sgl_kernel", _AliasLoader())
        return None  # let the normal finders load the real module


class _AliasLoader(importlib.abc.Loader):
    """Loads `sgl_kernel` as the very same module object as the stand-in (one copy, one namespace)."""

    def create_module(self, spec):
        return importlib.import_module("cpu_shims.sgl_kernel_standin")

    def exec_module(self, module):
        pass


def activate() -> None:
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    if not any(isinstance(f, _CpuShimFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CpuShimFinder())


activate()
