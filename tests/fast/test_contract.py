"""The wire contract (radix_ext/contract.py): one definition of the request key, the option names, the
policy names, the budget rule and the KV report, used by the plugin and the gateway alike."""

import math
import subprocess
import sys

import pytest
from pydantic import ValidationError

from radix_ext import contract
from radix_ext.contract import KVReport, check_budget
from tests.fast.service.fake_backend import REPORT


def test_policy_names_are_the_policy_librarys():
    from radix_ext.policy import available_policies

    assert contract.POLICIES == tuple(available_policies())


def test_both_sides_use_the_one_definition():
    from radix_ext.policy import check_budget as policy_check_budget
    from radix_ext.sglang.config import REQUEST_KEY as plugin_key
    from service import kv_report, vl_cache

    assert policy_check_budget is check_budget
    assert plugin_key == vl_cache.REQUEST_KEY == contract.REQUEST_KEY
    assert kv_report.KVCacheReport is KVReport


@pytest.mark.parametrize("ok", [1e-9, 0.1, 0.5, 1, 1.0])
def test_budget_in_the_half_open_interval(ok):
    assert check_budget(ok) == float(ok)


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.0000001, math.nan, math.inf, True, "0.5", None])
def test_budget_outside_is_refused_with_the_rule(bad):
    with pytest.raises(ValueError, match=r"budget must be a number in \(0, 1\]"):
        check_budget(bad)


def test_a_renamed_report_field_fails():
    """What the plugin sends (REPORT is built like compress_request builds it) parses on the gateway;
    a field renamed on either side does not."""
    assert KVReport.model_validate(REPORT).to_wire() == REPORT
    renamed = {**{k: v for k, v in REPORT.items() if k != "kv_bytes_kept"}, "kv_bytes_retained": 10240}
    with pytest.raises(ValidationError):
        KVReport.model_validate(renamed)
    with pytest.raises(ValidationError):
        KVReport(**{**REPORT, "kv_bytes_retained": 1})  # the plugin side: unknown keyword


def test_optional_fields_are_left_out_of_the_wire_form():
    report = KVReport.model_validate(REPORT)
    assert "kept_positions" not in report.to_wire()
    with_kept = KVReport.model_validate({**REPORT, "kept_positions": [[0, 1], [1]]}).to_wire()
    assert with_kept["kept_positions"] == [[0, 1], [1]]


def test_the_contract_pulls_in_neither_torch_nor_sglang():
    code = (
        "import sys, radix_ext.contract, service.vl_cache, service.kv_report\n"
        "print(sorted(m for m in ('torch', 'sglang') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
