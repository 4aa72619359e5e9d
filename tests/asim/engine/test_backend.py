"""The engine's backend choice (asim.engine.core.select_backend): the default per device,
``ASIM_BACKEND`` forcing one, one-line errors where a forced backend cannot run, and the
record of what ran (``summary.backend`` of ``results.json``)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from asim import ACiMLinear, MacroConfig, NoiseConfig
from asim.engine import acim_matmul, backends_used, core, describe_backends, reset_backends_used
from asim.engine import native as native_module

from ..golden import bits

LOSSY = MacroConfig(weight_bits=4, input_bits=4, nrow=8, adc_bits=3)


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("ASIM_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the triton tests may have switched it on
    reset_backends_used()


def _operands(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 16, (3, 20), generator=g).float()
    w = torch.randint(-7, 8, (20, 5), generator=g).float()
    return x, w


def _used(macro=LOSSY, **kw) -> tuple[torch.Tensor, frozenset[str]]:
    reset_backends_used()
    x, w = _operands()
    y = acim_matmul(x, w, macro=macro, signed_input=False, **kw)
    return y, backends_used()


def test_default_on_cpu_is_native_and_recorded():
    y, used = _used()
    assert used == {"native"}
    assert describe_backends() == "native"


@pytest.mark.parametrize("name", ["native", "torch", " Torch "])
def test_env_var_forces_the_backend_with_the_same_bits(name, monkeypatch):
    want, _ = _used()
    monkeypatch.setenv("ASIM_BACKEND", name)
    got, used = _used(noise=None)
    assert used == {name.strip().lower()}
    assert bits(got) == bits(want)


def test_empty_env_var_is_the_default(monkeypatch):
    monkeypatch.setenv("ASIM_BACKEND", "")
    assert _used()[1] == {"native"}


def test_unknown_value_is_one_line_listing_the_choices(monkeypatch):
    monkeypatch.setenv("ASIM_BACKEND", "cuda")
    with pytest.raises(ValueError) as err:
        _used()
    msg = str(err.value)
    assert "\n" not in msg and "ASIM_BACKEND='cuda'" in msg
    assert "native, torch, triton" in msg


def test_forced_triton_on_cpu_without_the_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("ASIM_BACKEND", "triton")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 set before Python starts"):
        _used()
    # also where the exact shortcut would answer: the forced backend cannot run here
    lossless = MacroConfig(weight_bits=4, input_bits=4, nrow=7, adc_bits=3)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        _used(lossless)


def test_forced_triton_without_triton_installed(monkeypatch):
    monkeypatch.setattr(core._triton, "importable", lambda: False)
    monkeypatch.setenv("ASIM_BACKEND", "triton")
    with pytest.raises(ValueError, match="needs the triton package .*ASIM_BACKEND=torch"):
        _used()


def _cell_noise_layer():
    return ACiMLinear(6, 2, macro=MacroConfig(adc_bits=4, nrow=4), noise=NoiseConfig(cell_sigma=2))


def test_cell_variation_runs_on_torch_by_default():
    with torch.no_grad():
        _cell_noise_layer()(torch.randn(3, 6))
    assert backends_used() == {"torch"}


@pytest.mark.parametrize(
    "name, fix",
    [("native", "needs ASIM_BACKEND=torch$"), ("triton", "needs ASIM_BACKEND=torch or native$")],
)
def test_forced_backend_declines_cell_variation_in_one_line(name, fix, monkeypatch):
    monkeypatch.setattr(core._triton, "available", lambda device: True)  # as on a GPU
    monkeypatch.setenv("ASIM_BACKEND", name)
    layer = _cell_noise_layer()
    with pytest.raises(ValueError, match=r"weight-cell variation \(noise.cell_sigma\) " + fix):
        with torch.no_grad():
            layer(torch.randn(3, 6))


def test_forced_torch_runs_cell_variation(monkeypatch):
    monkeypatch.setenv("ASIM_BACKEND", "torch")
    with torch.no_grad():
        _cell_noise_layer()(torch.randn(3, 6))
    assert backends_used() == {"torch"}


def test_cuda_default_is_triton_when_importable_else_torch(monkeypatch):
    cuda = torch.device("cuda")
    assert core.device_backend(cuda) == ("triton" if core._triton.importable() else "torch")
    monkeypatch.setattr(core._triton, "importable", lambda: False)
    assert core.device_backend(cuda) == "torch"


def test_forced_native_on_cuda_is_refused(monkeypatch):
    monkeypatch.setenv("ASIM_BACKEND", "native")
    with pytest.raises(ValueError, match="native runs on CPU tensors only .*triton or torch"):
        core.device_backend(torch.device("cuda"))


def test_without_the_c_library_cpu_falls_back_to_torch(monkeypatch):
    monkeypatch.setattr(native_module, "engine_lib", lambda: None)
    assert _used()[1] == {"torch"}
    monkeypatch.setenv("ASIM_BACKEND", "native")
    with pytest.raises(
        ValueError, match="C kernel is off .ASIM_NATIVE=0. or did not build.*ASIM_BACKEND=torch"
    ):
        _used()


def test_weight_parallel_is_its_own_torch_path(monkeypatch):
    macro = LOSSY.replace(input_enc_bits=2, weight_parallel=True, adc_bits=4)
    assert _used(macro)[1] == {"torch"}
    monkeypatch.setenv("ASIM_BACKEND", "native")
    with pytest.raises(ValueError, match="weight-parallel mode .* use ASIM_BACKEND=torch"):
        _used(macro)


def test_exact_shortcut_is_recorded_and_described():
    lossless = MacroConfig(weight_bits=4, input_bits=4, nrow=7, adc_bits=3)
    assert _used(lossless)[1] == {"exact"}
    assert describe_backends() == "native (exact shortcut)"
    assert describe_backends({"exact", "native"}) == "native"
    assert describe_backends({"torch", "native"}) == "native+torch"
    assert describe_backends(set()) is None


FAST = ["simulate.float=false", "simulate.inference=false", "trainer.limit_val_batches=1"]


@pytest.mark.parametrize(
    "env, overrides, want",
    [
        (None, [], "native (exact shortcut)"),  # the default macro is lossless, noise off
        (None, ["macro.adc_bits=6"], "native"),
        ("torch", ["macro.adc_bits=6"], "torch"),
    ],
)
def test_results_json_reports_the_backend(env, overrides, want, compose_run, tmp_path, monkeypatch):
    from lightning_modules import builders

    if env is not None:
        monkeypatch.setenv("ASIM_BACKEND", env)
    builders.simulate(compose_run("simulate", *overrides, *FAST))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summary"]["backend"] == want


@pytest.fixture
def fresh_fallbacks(monkeypatch):
    """No backend proven, broken or fallen back in this test (the record is per process)."""
    for state in ("_BROKEN", "_PROVEN", "_FALLBACKS", "_pending"):
        monkeypatch.setattr(core, state, type(getattr(core, state))())


def test_a_backend_failing_its_first_call_falls_back_with_one_warning(fresh_fallbacks, monkeypatch):
    """A backend whose first call raises (a compile or launch error on a GPU nobody tested)
    is replaced by the next one that can run the call, the same bits, one warning line,
    and the fallback in summary.backend; later calls skip it without a warning."""
    want, _ = _used()
    core._PROVEN.clear()  # as if that had been another process
    native_run = core.NATIVE.run
    monkeypatch.setattr(core.NATIVE, "run", lambda *a: (_ for _ in ()).throw(OSError("bad\nlib")))
    with pytest.warns(RuntimeWarning) as caught:
        got, used = _used()
    assert bits(got) == bits(want) and used == {"torch"}
    (message,) = [str(c.message) for c in caught]
    assert message.startswith("asim: the native failed on cpu (OSError: bad lib); fell back")
    assert "\n" not in message and "report" in message
    assert describe_backends() == (
        "torch (fallback: native failed on cpu (OSError: bad lib); fell back to torch)"
    )
    monkeypatch.setattr(core.NATIVE, "run", native_run)  # even if it would work now
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _used()[1] == {"torch"}


def test_a_forced_backend_failing_its_first_call_is_an_error(fresh_fallbacks, monkeypatch):
    monkeypatch.setattr(core.NATIVE, "run", lambda *a: (_ for _ in ()).throw(OSError("bad")))
    monkeypatch.setenv("ASIM_BACKEND", "native")
    with pytest.raises(RuntimeError, match=r"^ASIM_BACKEND=native: the backend failed on its "):
        _used()
    assert core.backend_fallbacks() == ()


def test_a_proven_backend_failing_later_raises(fresh_fallbacks, monkeypatch):
    """Only a first call falls back: a later failure is a bug to see, not to hide."""
    _used()
    monkeypatch.setattr(core.NATIVE, "run", lambda *a: (_ for _ in ()).throw(ValueError("x")))
    with pytest.raises(ValueError, match="^x$"):
        _used()
