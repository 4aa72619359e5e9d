"""asim: bit-exact, fast simulation of SRAM analog compute-in-memory macros in PyTorch.

Convert any model and simulate it::

    from asim import MacroConfig, NoiseConfig, convert_to_acim
    acim = convert_to_acim(model, MacroConfig(adc_bits=6), NoiseConfig(rand_sigma=0.39))
"""

from .adc_levels import read_adc_levels, uniform_levels, write_adc_levels
from .calibrate import Calibration, LayerCalibration, calibrate_adc
from .config import (
    ActScale,
    CellVariation,
    ConvTiling,
    Division,
    MacroConfig,
    NoiseConfig,
    SignCycleCompression,
    WeightParallelADC,
)
from .convert import LAYER_MAP, acim_modules, convert_to_acim, resample_noise, set_mode, to_float
from .cost import CostConfig, CostRecorder, CostReport, estimate_cost
from .engine import acim_matmul, activation_cycles
from .engine.pattern import ColumnRanges
from .layers import (
    MODES,
    ACiMConv2d,
    ACiMLayer,
    ACiMLinear,
    ACiMMultiheadAttention,
    set_sample_index,
)
from .mapping import AttentionMacros, FirstLayer, LayerMacro, MacroDelta
from .noise import GaussianNoise, HistogramNoise, TableNoise, build_noise

__version__ = "0.1.0"

__all__ = [
    "LAYER_MAP",
    "MODES",
    "ACiMConv2d",
    "ACiMLayer",
    "ACiMLinear",
    "ACiMMultiheadAttention",
    "ActScale",
    "AttentionMacros",
    "Calibration",
    "CellVariation",
    "ColumnRanges",
    "ConvTiling",
    "CostConfig",
    "CostRecorder",
    "CostReport",
    "Division",
    "FirstLayer",
    "GaussianNoise",
    "HistogramNoise",
    "LayerCalibration",
    "LayerMacro",
    "MacroConfig",
    "MacroDelta",
    "NoiseConfig",
    "SignCycleCompression",
    "TableNoise",
    "WeightParallelADC",
    "acim_matmul",
    "acim_modules",
    "activation_cycles",
    "build_noise",
    "calibrate_adc",
    "convert_to_acim",
    "estimate_cost",
    "read_adc_levels",
    "resample_noise",
    "set_mode",
    "set_sample_index",
    "to_float",
    "uniform_levels",
    "write_adc_levels",
]
