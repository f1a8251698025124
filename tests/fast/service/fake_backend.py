"""A stand-in for SGLang, for unit tests of the gateway code *around* the backend only.

It answers like SGLang's `/generate` (cumulative `text`, `meta_info` on every chunk) and records what
the gateway sent and aborted. Anything about real generation is tested against real SGLang in
tests/integration/service.
"""

from __future__ import annotations

import asyncio
import threading

from radix_ext.contract import KVReport
from service.errors import APIError

# The plugin's report, built through the wire contract the plugin builds it with (radix_ext/contract.py).
REPORT = KVReport(
    policy="vlcache", budget=0.1, compressed=True, reason="", prompt_tokens=100, visual_tokens=64,
    kept_tokens_per_layer=[15, 5], freed_slots_per_layer=[85, 95], layer_sparsity=[0.4, 0.9],
    kv_bytes_full=102400, kv_bytes_kept=10240, realized_budget=0.1, scoring_ms=1.5,
).to_wire()  # fmt: skip
# The same report as the gateway answers it (`usage.kv_cache`: every field, absent ones null).
REPORT_AS_ANSWERED = KVReport.model_validate(REPORT).model_dump(mode="json")


class FakeBackend:
    def __init__(self, pieces=("Hel", "lo", " world"), meta_extra=None):
        self.pieces = list(pieces)
        self.meta_extra = dict(meta_extra or {})
        self.payloads: list[dict] = []
        self.headers: list[dict | None] = []  # the headers each generation was sent with
        self.aborted: list[str] = []
        self.error: APIError | None = None  # raised before any output
        self.error_after: int | None = None  # raised after this many stream events
        self.gate: threading.Event | None = None  # generation waits until it is set
        self.step_s = 0.0
        self.healthy = True
        self.loads_json = {"loads": [{"num_used_tokens": 50, "max_total_num_tokens": 1000, "num_running_reqs": 1,
                                      "num_waiting_reqs": 2, "memory": {"kv_cache_gb": 0.5}}]}  # fmt: skip
        self.server_info_json: dict = {"incremental_streaming_output": False, "internal_states": [{}]}

    def _meta(self, n: int, finished: bool) -> dict:
        meta = {
            "id": "x", "prompt_tokens": 100, "completion_tokens": n, "cached_tokens": 0,
            "finish_reason": {"type": "length", "length": n} if finished else None,
        }  # fmt: skip
        if finished:  # SGLang with --enable-metrics stamps the finished output
            meta |= {"queue_time": 0.002, "first_token_latency": 0.01, "e2e_latency": 0.03}
        return {**meta, **(self.meta_extra if finished else {})}

    async def _wait_gate(self) -> None:
        while self.gate is not None and not self.gate.is_set():
            await asyncio.sleep(0.01)

    async def generate(self, payload: dict, headers: dict | None = None) -> dict:
        self.payloads.append(payload)
        self.headers.append(headers)
        if self.error:
            raise self.error
        await self._wait_gate()
        return {"text": "".join(self.pieces), "output_ids": list(range(len(self.pieces))),
                "meta_info": self._meta(len(self.pieces), True)}  # fmt: skip

    async def generate_stream(self, payload: dict, headers: dict | None = None):
        self.payloads.append(payload)
        self.headers.append(headers)
        if self.error:
            raise self.error
        await self._wait_gate()
        for i in range(1, len(self.pieces) + 1):
            if self.error_after is not None and i > self.error_after:
                raise APIError("boom inside SGLang", status_code=500, code="backend_error")
            await asyncio.sleep(self.step_s)
            yield {"text": "".join(self.pieces[:i]), "meta_info": self._meta(i, i == len(self.pieces))}

    async def abort(self, rid: str) -> None:
        self.aborted.append(rid)

    async def health(self) -> bool:
        return self.healthy

    async def model_info(self) -> dict:
        return {"model_path": "/models/tiny-qwen2vl", "served_model_name": "/models/tiny-qwen2vl"}

    async def server_info(self) -> dict:
        return self.server_info_json

    async def loads(self) -> dict:
        return self.loads_json

    async def aclose(self) -> None:
        pass
