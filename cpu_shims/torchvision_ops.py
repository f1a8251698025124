"""Operator schemas that PyPI's (CUDA) torchvision build registers from its `_C.so`.

With CPU torch that library fails to load, and torchvision's Python code then dies at import while
registering fake kernels for `torchvision::nms` and `torchvision::qnms`. Defining the two schemas first
lets the import succeed; the Python image transforms the Qwen2-VL processors use need no C++ op.
Calling the ops themselves still fails (there is no kernel), which is the honest outcome.
"""

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # kept alive: dropping the Library object would unregister the schemas


def define_schemas() -> None:
    """Define the schemas once per process; no-op if torchvision's own library already did."""
    global _library
    if _library is not None or hasattr(torch.ops.torchvision, "nms"):
        return
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
