"""Loud on SGLang drift: every ServerArgs field the plugin reads exists in the pinned SGLang, and a
record without one fails the start with the field named (not a silent default)."""

from types import SimpleNamespace

import pytest
from sglang.srt.server_args import ServerArgs

from radix_ext.sglang.hooks import SERVER_ARGS_FIELDS, check_server_args, missing_server_args_fields


def test_the_pinned_sglang_declares_every_field_the_plugin_reads():
    assert missing_server_args_fields(ServerArgs) == []


def test_a_renamed_field_fails_the_start_naming_it():
    fields = {name: None for name in SERVER_ARGS_FIELDS if name != "kv_canary"}
    with pytest.raises(RuntimeError, match=r"no field\(s\) \['kv_canary'\]"):
        check_server_args(SimpleNamespace(**fields, kv_canary_mode="none"))
