"""The plugin is declared under SGLang's entry-point group, loads, and guards the pinned version."""

import json
import tomllib
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest

from radix_ext.sglang import PINNED_SGLANG_VERSION, check_sglang_version, register, registration

ROOT = Path(__file__).resolve().parents[3]


def test_installed_sglang_is_the_pinned_version():
    # Fails loudly on any other version: the plugin hooks internals of exactly this one.
    assert version("sglang") == PINNED_SGLANG_VERSION, (
        f"installed sglang {version('sglang')} != pinned {PINNED_SGLANG_VERSION}; run `make install`"
    )
    assert check_sglang_version() == PINNED_SGLANG_VERSION


def test_every_pin_names_the_same_sglang_version():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"sglang=={PINNED_SGLANG_VERSION}" in pyproject["project"]["optional-dependencies"]["gpu"]
    lock = (ROOT / "constraints" / "cpu.lock").read_text().splitlines()
    assert f"sglang=={PINNED_SGLANG_VERSION}" in lock


def test_version_guard_refuses_other_versions(monkeypatch):
    monkeypatch.setattr(registration, "version", lambda _: "0.5.99")
    with pytest.raises(RuntimeError, match="supports sglang==0.5.23 only"):
        check_sglang_version()


def test_entry_point_loads_the_registration_function():
    (ep,) = [ep for ep in entry_points(group="sglang.srt.plugins") if ep.name == "vlcache"]
    assert ep.value == "radix_ext.sglang:register"
    assert ep.load() is register


def test_register_writes_a_marker_once(tmp_path, monkeypatch):
    monkeypatch.setenv(registration.MARKER_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(registration, "_registered", False)
    register()
    register()
    (marker,) = tmp_path.iterdir()
    record = json.loads(marker.read_text())
    assert record["plugin"] == "vlcache" and marker.name == f"{record['pid']}.json"
