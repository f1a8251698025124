"""Loud on SGLang drift at start: a ServerArgs record without a field the plugin reads fails the start with
the field named (not a silent default). That the pinned SGLang declares them all is checked with the rest
of the inventory (test_upstream_inventory.py)."""

from types import SimpleNamespace

import pytest

from radix_ext.sglang.hooks import check_server_args
from radix_ext.sglang.upstream import SERVER_ARGS_FIELDS


def test_a_renamed_field_fails_the_start_naming_it():
    fields = {name: None for name in SERVER_ARGS_FIELDS if name != "kv_canary"}
    with pytest.raises(RuntimeError, match=r"no field\(s\) \['kv_canary'\]"):
        check_server_args(SimpleNamespace(**fields, kv_canary_mode="none"))
