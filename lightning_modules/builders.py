"""The application's Python API in one import (README "Calling the builders from Python").

The code lives by job: :mod:`lightning_modules.config` (schemas, compose, config -> objects),
:mod:`lightning_modules.run` (simulate, train), :mod:`lightning_modules.results` (results.json,
table, logger summary); model mapping is :mod:`asim.mapping`. This module re-exports them::

    from lightning_modules import builders
    results = builders.simulate(builders.compose("simulate", ["macro=ideal"]))
"""

from __future__ import annotations

from asim.mapping import AttentionMacros, FirstLayer, LayerMacro, MacroDelta

from .config import (
    PROJECT_ROOT,
    ModelConfig,
    SimulateOptions,
    build_datamodule,
    build_float_model,
    build_trainer,
    compose,
    convert_model,
    cost_config,
    job_dirname,
    load_weights,
    macro_config,
    model_config,
    noise_config,
    register_configs,
    resolve_path,
)
from .results import ResultsFile, format_conversions, format_energy, format_table, hparams
from .resume import RunFinished
from .run import RunInterrupted, simulate, train

__all__ = [
    "PROJECT_ROOT",
    "AttentionMacros",
    "FirstLayer",
    "LayerMacro",
    "MacroDelta",
    "ModelConfig",
    "ResultsFile",
    "RunFinished",
    "RunInterrupted",
    "SimulateOptions",
    "build_datamodule",
    "build_float_model",
    "build_trainer",
    "compose",
    "convert_model",
    "cost_config",
    "format_conversions",
    "format_energy",
    "format_table",
    "hparams",
    "job_dirname",
    "load_weights",
    "macro_config",
    "model_config",
    "noise_config",
    "register_configs",
    "resolve_path",
    "simulate",
    "train",
]
