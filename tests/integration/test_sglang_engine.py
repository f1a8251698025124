"""The real SGLang runtime serves the tiny Qwen2-VL on CPU, matches transformers, and loads the plugin."""

import json

import psutil
import pytest
import torch

from testkit import make_image, png_data_url

MAX_NEW_TOKENS = 16


def chat(content):
    return [{"role": "user", "content": content}]


CASES = {
    "one-image": (
        [make_image((224, 224), (200, 30, 30))],
        chat([{"type": "image"}, {"type": "text", "text": "Describe the image in one sentence."}]),
    ),
    "two-images": (
        [make_image((448, 224), (20, 120, 200), 1), make_image((168, 336), (240, 200, 10), 2)],
        chat(
            [
                {"type": "image"},
                {"type": "image"},
                {"type": "text", "text": "Compare the two images and say what changed between them."},
            ]
        ),
    ),
    "text-only": ([], chat([{"type": "text", "text": "How many objects are there?"}])),
}


@pytest.fixture(scope="module")
def hf(tiny_model_dir):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return processor, model


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_output_equals_transformers_generate(client, hf, case):
    processor, model = hf
    images, messages = CASES[case]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)

    inputs = processor(text=[prompt], images=images or None, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
    expected = out[0, inputs["input_ids"].shape[1] :].tolist()

    body = {
        "text": prompt,
        "sampling_params": {"temperature": 0, "max_new_tokens": MAX_NEW_TOKENS},
    }
    if images:
        body["image_data"] = [png_data_url(img) for img in images]
    resp = client.post("/generate", json=body)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["meta_info"]["prompt_tokens"] == inputs["input_ids"].shape[1]  # same visual token count
    assert result["output_ids"] == expected
    assert len(expected) >= 4  # a real continuation, not an immediate stop


def test_openai_chat_with_image_answers(client):
    image = make_image((224, 224), (30, 160, 60))
    body = {
        "model": "default",
        "max_tokens": 8,
        "temperature": 0,
        "messages": chat(
            [
                {"type": "image_url", "image_url": {"url": png_data_url(image)}},
                {"type": "text", "text": "What is in this picture?"},
            ]
        ),
    }
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["choices"][0]["message"]["content"]
    assert result["usage"]["completion_tokens"] >= 1
    assert result["usage"]["prompt_tokens_details"]["image_tokens"] == 64  # 224x224 -> 8x8 tokens


def test_plugin_registered_in_the_scheduler_process(client, sglang_server, plugin_marker_dir):
    client.get("/health")
    server = psutil.Process(sglang_server.process.pid)
    # SGLang renames its processes (setproctitle) once they know their role, which can be after the
    # plugin loaded: read each marker's process title now, from the live process.
    titles = {p.pid: " ".join(p.cmdline()) for p in [server, *server.children(recursive=True)]}
    registered = {json.loads(m.read_text())["pid"] for m in plugin_marker_dir.glob("*.json")}
    by_role = {titles[pid].split()[0]: pid for pid in registered if pid in titles}
    assert any(role.startswith("sglang::scheduler") for role in by_role), (
        f"the plugin did not register in this server's scheduler; registered: {registered}, live: {titles}"
    )
    assert "sglang::detokenizer" in by_role
