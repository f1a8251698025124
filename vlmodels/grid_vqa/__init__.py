"""The grid-VQA task (synthetic shapes on a grid) and the small Qwen2-VL trained on it."""
