"""Gateway settings: one pydantic-settings model, read from `VLCACHE_*` environment variables and CLI flags.

Every limit the gateway enforces on untrusted input lives here, so an operator can read the whole
attack surface in one place. Defaults suit the embedded tiny model on a laptop; a deployment sets its
own through the environment (see deploy/).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from radix_ext.contract import POLICIES

# Every policy of the one policy library (radix_ext.policy, named in the wire contract). The gateway
# refuses others with a 400 so that a typo fails in the client, not inside the scheduler. Operators
# can narrow the list.
DEFAULT_POLICIES = POLICIES


def _split_csv(value):
    """`a,b, c` -> [a, b, c]: lists from env vars without JSON quoting."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(BaseSettings):
    """Everything the gateway and its CLI need. Env var = `VLCACHE_` + field name in upper case."""

    model_config = SettingsConfigDict(env_prefix="VLCACHE_", extra="ignore")

    # --- where the gateway listens -------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = 8000

    # --- the SGLang backend --------------------------------------------------------------------
    # Set: attach to this SGLang server. Unset: the CLI starts one on loopback (`sglang_port`).
    backend_url: str | None = None
    # Set when `backend_url` is a router in front of several workers (SMG with `--sticky-sessions`):
    # each generation carries its chat's routing key in this header (service/routing_key.py), so
    # every turn of a chat lands on the worker that holds its prefix KV.
    routing_key_header: str | None = None
    # Model folder served by a started SGLang child (default: the embedded grid-VQA model, models/grid-vqa).
    model: str | None = None
    # Where the gateway loads the chat template from. Default: the model path SGLang reports on
    # `/model_info` (works when the gateway sees the same files, e.g. a shared volume in the pod).
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    sglang_port: int = 0  # 0: a free loopback port
    device: str = "cpu"
    dtype: str = "float32"
    context_length: int = 8192
    max_total_tokens: int = 32768
    max_running_requests: int = 8
    backend_startup_timeout_s: float = 300.0
    # One generation may legitimately take long (first multimodal request on CPU: 10-20 s).
    backend_timeout_s: float = 300.0

    # --- the terminal and the logs (`vlcache-serve`) -------------------------------------------
    # The gateway's own log (uvicorn, `service.*`); `info` adds one access line per request.
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    # SGLang's output also on the terminal (it always goes to a log file under `log_dir`).
    verbose: bool = False
    log_dir: str | None = None  # default: <system temp dir>/vlcache-serve
    # At Ctrl-C / SIGTERM, in-flight requests get this long to finish; the rest are aborted.
    shutdown_timeout_s: float = Field(default=5.0, ge=0)

    # --- auth ----------------------------------------------------------------------------------
    # When set (VLCACHE_API_KEY), every /v1/* route requires `Authorization: Bearer <key>` (401
    # otherwise). /health, /ready and /metrics stay open: probes and Prometheus carry no key.
    api_key: SecretStr | None = None

    # --- admission -----------------------------------------------------------------------------
    # Requests the gateway works on at once (media decoding + generation). Beyond it: 429 with
    # Retry-After, instead of queueing unboundedly in front of SGLang.
    max_inflight_requests: int = Field(default=32, ge=1)
    retry_after_s: int = Field(default=1, ge=0)
    max_request_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    # /metrics also asks SGLang's /server_info for the plugin's per-layer pool figures.
    scrape_plugin_layer_figures: bool = True

    # --- per-request VL-Cache defaults ---------------------------------------------------------
    # Requests without a policy / budget get these (unset: the plugin's server default, vlcache at 0.1).
    default_policy: str | None = None
    default_budget: float | None = Field(default=None, gt=0.0, le=1.0)
    allowed_policies: Annotated[list[str], NoDecode] = list(DEFAULT_POLICIES)

    # --- media: visual tokens ------------------------------------------------------------------
    # Visual tokens of one request (images + videos, computed from the pixels the way Qwen2-VL
    # resizes them, service/media/visual_tokens.py): 413 beyond, before SGLang sees the media.
    # Unset: the engine's longest accepted input (`max_req_input_len` of SGLang's /server_info).
    max_visual_tokens: int | None = Field(default=None, ge=1)

    # --- media: counts -------------------------------------------------------------------------
    max_images_per_request: int = Field(default=8, ge=0)
    max_videos_per_request: int = Field(default=2, ge=0)

    # --- media: images -------------------------------------------------------------------------
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    # Width x height after decoding the header; refused before any pixel is decoded (bombs).
    max_image_pixels: int = Field(default=36_000_000, ge=1)
    # Qwen-VL's resize refuses aspect ratios above 200; refusing here gives the client a clear 400.
    max_image_aspect_ratio: float = Field(default=200.0, ge=1.0)

    # --- media: videos -------------------------------------------------------------------------
    max_video_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    max_video_duration_s: float = Field(default=600.0, gt=0)
    max_video_frame_pixels: int = Field(default=3840 * 2160, ge=1)
    # Frames sent to the model: uniform over the clip, at most `video_fps` per second of video and at
    # most `video_max_frames` (an even number: Qwen-VL merges frames in pairs).
    video_max_frames: int = Field(default=16, ge=2)
    video_fps: float = Field(default=2.0, gt=0)
    # Sampled frames are scaled down to this longest side before re-encoding (bounds gateway CPU and
    # upload size; the model's processor resizes again within its own pixel budget).
    video_frame_max_side: int = Field(default=640, ge=28)
    # Hard stop for decoding (a stream that lies about its duration cannot make us decode forever).
    max_video_decoded_frames: int = Field(default=20_000, ge=1)

    # --- media: URLs ---------------------------------------------------------------------------
    allow_media_urls: bool = True
    # SSRF guard: http(s) URLs that resolve to private, loopback, link-local, multicast or reserved
    # addresses are refused unless this is true or the host is listed in `media_url_allowed_hosts`.
    allow_private_media_urls: bool = False
    media_url_allowed_hosts: Annotated[list[str], NoDecode] = []
    media_fetch_timeout_s: float = Field(default=15.0, gt=0)
    media_fetch_max_redirects: int = Field(default=3, ge=0)

    _split_lists = field_validator("allowed_policies", "media_url_allowed_hosts", mode="before")(_split_csv)

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value):
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("video_max_frames")
    @classmethod
    def _even_frames(cls, value: int) -> int:
        if value % 2:
            raise ValueError("video_max_frames must be even (Qwen-VL merges frames in pairs)")
        return value
