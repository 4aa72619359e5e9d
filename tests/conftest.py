"""Shared fixtures: composing the application's configs into a per-test folder."""

from __future__ import annotations

import pytest

from lightning_modules import builders


@pytest.fixture
def compose(tmp_path):
    """``compose(name, *overrides)``: ``builders.compose`` with ``output_dir=tmp_path``."""

    def _compose(name: str, *overrides: str):
        return builders.compose(name, [*overrides, f"output_dir={tmp_path}"])

    return _compose


@pytest.fixture
def compose_run(tmp_path):
    """As ``compose``, for configs that run: CSV logger, no progress bar."""

    def _compose(name: str, *overrides: str):
        return builders.compose(
            name,
            [
                *overrides,
                f"output_dir={tmp_path}",
                "logger=csv",
                "trainer.enable_progress_bar=false",
            ],
        )

    return _compose


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Every case of tests/asim/test_triton.py is a Triton-interpreter case (marker
    ``triton``: out of the default run, its own CI step), before ``-m`` selects."""
    for item in items:
        if item.path.name == "test_triton.py":
            item.add_marker(pytest.mark.triton)


@pytest.fixture(autouse=True)
def _interpreter_child_selects_triton(request, monkeypatch):
    """test_triton.py re-runs its cases in a child pytest where the interpreter could not be
    switched on in this process; the child must select the ``triton`` cases, which the
    default ``-m`` of pyproject.toml leaves out."""
    if request.node.name == "test_cases_under_the_interpreter":
        monkeypatch.setenv("PYTEST_ADDOPTS", "-m 'triton and not gpu'")
