"""The policies applied in HF transformers: the oracle for the SGLang path and an accuracy engine."""

from radix_ext.reference.cache import CompressibleCache
from radix_ext.reference.engine import ReferenceResult, generate, prompt_layout

__all__ = ["CompressibleCache", "ReferenceResult", "generate", "prompt_layout"]
