"""Start-up safety of the plugin: unsupported setups refused with a message, unsafe features turned off."""

from types import SimpleNamespace

import pytest

from radix_ext.sglang.hooks import check_server_args


def _args(**overrides):
    base = dict(
        radix_cache_backend="vlcache", attention_backend="torch_native", prefill_attention_backend=None,
        decode_attention_backend=None, speculative_algorithm=None, page_size=1, disable_radix_cache=False,
        enable_hierarchical_cache=False, tp_size=1, dp_size=1, pp_size=1, disaggregation_mode="null",
        enable_torch_compile=False, kv_canary="none", enable_mixed_chunk=True, disable_overlap_schedule=False,
        cuda_graph_backend_decode="auto", cuda_graph_backend_prefill="auto",
    )  # fmt: skip
    return SimpleNamespace(**{**base, **overrides})


def test_supported_setup_is_made_safe():
    args = _args()
    check_server_args(args)
    assert args.attention_backend == "vlcache_torch_native"
    assert args.disable_overlap_schedule and not args.enable_mixed_chunk
    assert args.cuda_graph_backend_decode == args.cuda_graph_backend_prefill == "disabled"


@pytest.mark.parametrize(
    "override,needle",
    [
        ({"speculative_algorithm": "EAGLE"}, "speculative decoding"),
        ({"page_size": 16}, "--page-size"),
        ({"tp_size": 2}, "parallelism"),
        ({"pp_size": 2}, "parallelism"),
        ({"disaggregation_mode": "prefill"}, "disaggregation"),
        ({"attention_backend": "flashinfer"}, "--attention-backend flashinfer"),
        ({"decode_attention_backend": "torch_native_other"}, "--decode-attention-backend"),
        ({"enable_hierarchical_cache": True}, "hierarchical"),
        ({"kv_canary": "sweep"}, "--kv-canary"),
    ],
)
def test_unsupported_setups_are_refused_at_start(override, needle):
    with pytest.raises(ValueError, match="cannot run with") as error:
        check_server_args(_args(**override))
    assert needle in str(error.value)


def test_stock_servers_are_left_alone():
    args = _args(radix_cache_backend=None, attention_backend="flashinfer", page_size=16)
    check_server_args(args)
    assert args.attention_backend == "flashinfer" and args.enable_mixed_chunk
