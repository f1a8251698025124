"""Render a conversation to the model's prompt text with the model's own chat template.

The gateway talks to SGLang's native `/generate` (see docs/gateway.md for why), so it renders the
prompt itself: with the tokenizer's chat template loaded by transformers from the model folder, the
same template SGLang's OpenAI endpoint and transformers' `generate()` use. Media become the template's
`{"type": "image"}` / `{"type": "video"}` parts, which a Qwen-VL template renders as
`<|vision_start|><|image_pad|><|vision_end|>`; SGLang's multimodal processor then expands each pad to
the item's visual tokens, taking `image_data` / `video_data` in the order the pads appear.
"""

from __future__ import annotations

from pathlib import Path


class ChatTemplate:
    """The chat template of one model, loaded once (a few seconds: transformers import)."""

    def __init__(self, tokenizer_path: str | Path):
        from transformers import AutoTokenizer  # heavy import, only where a template is needed

        self.path = str(tokenizer_path)
        self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        if not self._tokenizer.chat_template:
            raise ValueError(f"the tokenizer at {self.path} has no chat template")

    def render(self, messages: list[dict]) -> str:
        """`messages` in transformers' format (content: str or list of text/image/video parts)."""
        return self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
