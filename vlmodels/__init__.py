"""Offline model builders: the embedded default model and the tiny models the tests run."""
