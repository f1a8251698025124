"""CPU-only support for running SGLang 0.5.23 on a machine without a GPU.

PyPI gives a CPU machine neither torchvision's C++ operators nor SGLang's CPU kernel package
(`sgl_kernel`). This package closes both gaps (docs/cpu_engine.md):

- `torchvision_ops`: defines the `torchvision::nms` / `torchvision::qnms` operator schemas that the
  CUDA build of torchvision expects to find, so `import torchvision` works with CPU torch.
- `sgl_kernel_standin`: a pure-torch stand-in for the `sgl_kernel` module (bookkeeping helpers SGLang
  calls on CPU), plus a `torch.ops.sgl_kernel` namespace that hands out `*_cpu` names.

`bootstrap` wires both in lazily through an import hook. It is activated only by the `.pth` file that
`scripts/install_cpu.sh` writes into the CPU virtualenv; a GPU install (`pip install
vlcache-serve[gpu]`) never writes that file, so none of this ever loads next to real CUDA kernels.
"""
