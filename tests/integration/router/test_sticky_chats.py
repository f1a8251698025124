"""Every turn of a chat lands on one worker when the gateway sends its routing key: 10 three-turn chats
(one image each, the worker defaults' compression and `reuse`), run three times on emptied radix
trees: straight to one worker (the reference), through SMG with the key, through SMG without it. With
the key, the cached tokens of turns 2 and 3 equal the one-worker figures, chat by chat; without it
(`round_robin` alone) follow-ups land on the worker that never saw the chat and reuse less."""

from concurrent.futures import ThreadPoolExecutor

import httpx

from testkit import flush_when_idle, make_image, png_data_url

QUESTIONS = ("Describe the picture.", "What colour dominates?", "Anything in the corners?")


def _chat(url: str, image: str) -> list[int]:
    """Three turns of one chat; each turn's cached prompt tokens."""
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}},
                                             {"type": "text", "text": QUESTIONS[0]}]}]  # fmt: skip
    cached = []
    with httpx.Client(base_url=url, timeout=300) as c:
        for turn in range(3):
            if turn:
                messages.append({"role": "user", "content": QUESTIONS[turn]})
            resp = c.post("/v1/chat/completions", json={"model": "default", "max_tokens": 3, "temperature": 0,
                                                        "messages": messages})  # fmt: skip
            assert resp.status_code == 200, resp.text
            body = resp.json()
            cached.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
            messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    return cached


def _run(stack, url: str, images: list[str]) -> list[list[int]]:
    for worker in stack.worker_urls:  # every run starts from empty radix trees
        flush_when_idle(worker)
    with ThreadPoolExecutor(max_workers=3) as pool:
        return list(pool.map(lambda image: _chat(url, image), images))


def test_routing_key_pins_each_chat_to_one_worker(router_stack):
    images = [png_data_url(make_image((224, 224), (20 * i, 200 - 15 * i, 90), i)) for i in range(10)]
    single = _run(router_stack, router_stack.single, images)
    keyed = _run(router_stack, router_stack.keyed, images)
    plain = _run(router_stack, router_stack.plain, images)
    followups = {name: [c[1:] for c in run] for name, run in (("single", single), ("keyed", keyed), ("plain", plain))}
    for name, figures in followups.items():
        turn2, turn3 = zip(*figures, strict=True)
        print(f"{name}: turn-2 cached {sum(turn2) / 10:.0f}, turn-3 cached {sum(turn3) / 10:.0f} (mean of 10 chats)")
    assert all(turn2 > 0 and turn3 > turn2 for turn2, turn3 in followups["single"])  # the reference reuses
    assert followups["keyed"] == followups["single"]
    assert sum(map(sum, followups["plain"])) < sum(map(sum, followups["keyed"]))
