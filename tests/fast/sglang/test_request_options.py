"""`parse_request_options`: what a request's `custom_params["vl_cache"]` may ask for, defaults filling gaps."""

import pytest

from radix_ext.sglang.config import ATTENTION_BACKEND, TRITON_ATTENTION_BACKEND, VLCacheDefaults
from radix_ext.sglang.request_plan import parse_request_options

DEFAULTS = VLCacheDefaults(policy="vlcache", budget=0.1, options={"window_fraction": 0.2}, reuse="lazy")


def test_nothing_sent_gives_the_server_defaults():
    for params in (None, {}, {"vl_cache": None}, {"other": 1}):
        opts = parse_request_options(params, DEFAULTS)
        assert (opts.policy.name, opts.budget, opts.report_kept, opts.reuse) == ("vlcache", 0.1, False, "lazy")
        assert opts.policy.window_fraction == 0.2


def test_a_request_overrides_policy_budget_reuse_and_report_kept():
    opts = parse_request_options(
        {"vl_cache": {"policy": "snapkv", "budget": 0.5, "reuse": "off", "report_kept": True}}, DEFAULTS
    )
    assert (opts.policy.name, opts.budget, opts.report_kept, opts.reuse) == ("snapkv", 0.5, True, "off")
    assert opts.policy.window_fraction != 0.2  # a named policy starts from its own defaults


def test_options_without_a_policy_extend_the_server_default_options():
    opts = parse_request_options({"vl_cache": {"sparsity_threshold": 0.05}}, DEFAULTS)
    assert (
        opts.policy.name == "vlcache" and opts.policy.sparsity_threshold == 0.05 and opts.policy.window_fraction == 0.2
    )


@pytest.mark.parametrize(
    "raw,needle",
    [
        ({"reuse": "eager"}, "reuse must be one of ['lazy', 'compressed', 'off']"),
        ({"reuse": True}, "reuse must be one of"),
        ({"report_kept": "yes"}, "report_kept must be true or false"),
        ({"policy": "nope"}, "unknown policy 'nope'"),
        ({"budget": 0}, "budget must be a number in (0, 1]"),
        ({"policy": "vlcache", "window": 3}, "unknown option(s) ['window']"),
    ],
)
def test_bad_options_say_what_is_allowed(raw, needle):
    with pytest.raises((ValueError, TypeError)) as error:
        parse_request_options({"vl_cache": raw}, DEFAULTS)
    assert needle in str(error.value)


def test_a_non_object_is_refused():
    with pytest.raises(ValueError, match="must be an object"):
        parse_request_options({"vl_cache": "vlcache"}, DEFAULTS)


def test_the_reuse_default_comes_from_the_environment_else_from_the_attention_backend():
    assert VLCacheDefaults.from_env({"VLCACHE_REUSE": "off"}).resolved_for(TRITON_ATTENTION_BACKEND).reuse == "off"
    unset = VLCacheDefaults.from_env({})
    assert unset.resolved_for(ATTENTION_BACKEND).reuse == "compressed"
    assert unset.resolved_for(TRITON_ATTENTION_BACKEND).reuse == "lazy"  # it cannot read a partly held prefix
