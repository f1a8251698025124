"""The gateway's routing key behind a router (service/routing_key.py): one key for every turn of a
chat, different keys for different chats, no header unless configured."""

from service.routing_key import ROUTING_KEY_HEADER
from testkit import make_image, png_data_url

IMAGES = [png_data_url(make_image((64, 64), (200, 30, 30), i)) for i in range(2)]


def _turns(image: str | None, system: str | None = None) -> list[dict]:
    """The three bodies of a three-turn chat (history resent each turn), with `image` in turn 1."""
    first = [{"type": "text", "text": "What is it?"}]
    if image:
        first.insert(0, {"type": "image_url", "image_url": {"url": image}})
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": first}]
    bodies = []
    for follow_up in ("Which colour?", "Anything else?", None):
        bodies.append({"model": "default", "max_tokens": 2, "messages": list(messages)})
        messages += [{"role": "assistant", "content": "Hello world"}, {"role": "user", "content": follow_up or ""}]
    return bodies


def _keys(make_client, fake, bodies) -> list[str]:
    client = make_client(routing_key_header=ROUTING_KEY_HEADER)
    start = len(fake.headers)
    for body in bodies:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    return [headers[ROUTING_KEY_HEADER] for headers in fake.headers[start:]]


def test_every_turn_of_a_chat_has_one_key_and_chats_differ(make_client, fake):
    chat_a, chat_b = _keys(make_client, fake, _turns(IMAGES[0])), _keys(make_client, fake, _turns(IMAGES[1]))
    assert len(set(chat_a)) == 1 and len(set(chat_b)) == 1 and chat_a[0] != chat_b[0]
    # no image: the first user message names the chat, not a system prompt many chats share
    text_a = _keys(make_client, fake, _turns(None, system="Be brief."))
    text_b = _keys(make_client, fake, [{**b, "messages": [*b["messages"][:1], {"role": "user", "content": "Hi"}]}
                                       for b in _turns(None, system="Be brief.")[:1]])  # fmt: skip
    assert len(set(text_a)) == 1 and text_a[0] != text_b[0] and text_a[0] not in (chat_a[0], chat_b[0])


def test_no_header_without_the_setting(make_client, fake):
    client = make_client()
    assert client.post("/v1/chat/completions", json=_turns(IMAGES[0])[0]).status_code == 200
    assert fake.headers[-1] is None
