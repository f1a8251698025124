"""vlcache-serve's SGLang runtime extension: VL-Cache KV eviction for vision-language models.

Subpackages, each importing only the ones above it in this list:
  policy     -- the algorithms in plain PyTorch (no SGLang import)
  reference  -- the policies applied in HF transformers (the oracle)
  sglang     -- the SGLang plugin (every SGLang import lives here)
"""
