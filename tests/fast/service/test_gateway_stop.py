"""A stop's drain deadline (service/lifecycle.py sets `state.stopping`): requests still in flight end
with 503 `server_stopping` and are aborted in the backend, instead of being cancelled mid-answer."""

import threading

import pytest

from service.lifecycle import _Banner, _progress_lines


@pytest.mark.parametrize("stream", [False, True])
def test_in_flight_request_ends_with_503_when_the_drain_time_is_over(make_client, fake, stream):
    client = make_client()
    state = client.app.state.gateway
    fake.gate = threading.Event()  # SGLang never answers
    answer = {}
    body = {"model": "default", "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    thread = threading.Thread(target=lambda: answer.update(r=client.post("/v1/chat/completions", json=body)))
    thread.start()
    try:
        while not fake.payloads:  # the request reached the backend (the fake records it first)
            threading.Event().wait(0.01)
        client.portal.call(state.stopping.set)
        thread.join(30)
    finally:
        fake.gate.set()
    resp = answer["r"]
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "server_stopping", resp.text
    assert state.stopped_requests == 1 and state.limiter.inflight == 0
    client.portal.call(state.drain_background)
    assert fake.aborted == [fake.payloads[0]["rid"]]


def test_banner_waits_for_the_socket_and_the_model():
    printed = []
    banner = _Banner(printed.append)
    banner.update(model="m")
    assert printed == []
    banner.update(listening=True)
    banner.update(listening=True, model="m")
    assert printed == ["m"]


def test_progress_lines_thin_out_after_30_s(capsys):
    progress = _progress_lines()
    for elapsed in range(5, 125, 5):
        progress(float(elapsed))
    seconds = [line.rsplit(" ", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert seconds == ["5s", "10s", "15s", "20s", "25s", "30s", "45s", "60s", "75s", "90s", "105s", "120s"]
