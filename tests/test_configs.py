"""Every YAML in every config group composes, validates against the schemas and instantiates;
bad overrides fail at compose time (Hydra) or with our one-line error (values)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError
from torch import nn

from asim import ACiMLayer, ACiMMultiheadAttention, MacroConfig, NoiseConfig, acim_modules
from asim.mapping import first_conv_name
from lightning_modules import builders

CONF = Path(__file__).resolve().parents[1] / "conf"


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _experiments(sub: str = "") -> list[str]:
    base = CONF / "experiment" / sub
    return sorted(f"{sub}/{p.stem}" if sub else p.stem for p in base.glob("*.yaml"))


def test_groups_have_presets():
    assert {
        "bitserial_255",
        "ideal",
        "bitparallel_enc2",
        "bitparallel_enc4",
        "bitserial_255_hybrid",
        "bitserial_255_vote",
    } <= set(_options("macro"))
    assert {"none", "gaussian", "measured"} <= set(_options("noise"))
    assert {"zigzag_28nm", "zigzag_28nm_dac_multibit", "adc_only"} <= set(_options("cost"))
    assert {"digits_cnn", "resnet18", "vit_b_32"} <= set(_options("model"))
    assert {"digits", "cifar10", "imagenet"} <= set(_options("dataset"))
    assert {"resnet18_cifar10", "resnet18_imagenet", "vitb32_cifar10", "vitb32_imagenet"} <= set(
        _experiments()
    )
    assert {"train/resnet18_cifar10_qat", "train/resnet18_cifar10_nat"} <= set(
        _experiments("train")
    )


@pytest.mark.parametrize("primary", ["simulate", "train"])
def test_primary_configs_compose(compose, primary, tmp_path):
    cfg = compose(primary)
    assert cfg.task_name == primary
    assert cfg.output_dir == str(tmp_path)
    assert cfg.trainer.use_distributed_sampler is False
    assert cfg.logger.save_dir == str(tmp_path)


@pytest.mark.parametrize("name", _options("macro"))
def test_macro_presets_validate(compose, name):
    cfg = compose("simulate", f"macro={name}")
    macro = builders.macro_config(cfg)
    assert isinstance(macro, MacroConfig)
    assert macro.name == name
    # a preset lists only what differs from the schema (plus its name)
    preset = OmegaConf.load(CONF / "macro" / f"{name}.yaml")
    _assert_only_deltas(preset, MacroConfig(), f"macro/{name}")


def _assert_only_deltas(preset, schema, where: str) -> None:
    for key, value in preset.items():
        assert key != "defaults", f"{where}: the schema is the root config's, no defaults list"
        if key == "name":
            continue
        assert hasattr(schema, key), f"{where}: {key} is not a schema field"
        default = getattr(schema, key)
        default = getattr(default, "value", default)
        assert value != default, f"{where}: {key}={value} restates the schema default"


@pytest.mark.parametrize(
    ("group", "name"),
    [("model", n) for n in _options("model")] + [("noise", n) for n in _options("noise")],
)
def test_model_and_noise_presets_list_only_deltas(group, name):
    preset = OmegaConf.load(CONF / group / f"{name}.yaml") or OmegaConf.create()
    schema = builders.ModelConfig() if group == "model" else NoiseConfig()
    _assert_only_deltas(preset, schema, f"{group}/{name}")


def test_division_true_is_an_accepted_alias(compose):
    from asim import Division

    assert builders.macro_config(compose("simulate", "macro.division=ieee")).division is (
        Division.ieee
    )
    # the old spelling, as a string (unquoted `true` is a YAML boolean, refused at compose)
    cfg = compose("simulate", "macro.division='true'")
    assert builders.macro_config(cfg).division is Division.ieee
    assert MacroConfig(division="true").division is Division.ieee
    with pytest.raises((ConfigCompositionException, ValidationError)):
        builders.compose("simulate", ["macro.division=true"])


def test_simulate_and_train_share_their_defaults_list():
    common = OmegaConf.load(CONF / "common.yaml")
    groups = [next(iter(d)) for d in common.defaults if not isinstance(d, str)]
    assert {"macro", "noise", "model", "dataset", "trainer", "logger"} <= set(groups)
    for primary in ("simulate", "train"):
        own = OmegaConf.load(CONF / f"{primary}.yaml").defaults
        assert "common" in own
        assert not {"macro", "noise", "model"} & {
            next(iter(d)) for d in own if not isinstance(d, str)
        }


@pytest.mark.slow  # a subprocess: 5-25 s
def test_help_offers_no_schema():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "simulate.py", "--help"],
        cwd=CONF.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    groups = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "schema" not in groups
    assert "macro: " in groups and "bitserial_255" in groups


def test_bitserial_255_is_the_reference_macro(compose):
    macro = builders.macro_config(compose("simulate", "macro=bitserial_255"))
    assert (macro.weight_bits, macro.input_bits, macro.nrow, macro.adc_bits) == (8, 8, 255, 8)
    assert macro.input_enc_bits is None and macro.lossless


@pytest.mark.parametrize("name", _options("noise"))
def test_noise_presets_validate(compose, name):
    noise = builders.noise_config(compose("simulate", f"noise={name}"))
    assert isinstance(noise, NoiseConfig)
    from asim import MacroConfig
    from asim.noise import GaussianNoise, HistogramNoise, TableNoise, build_noise

    model = build_noise(noise, MacroConfig())  # the model the preset describes, table parsed
    expected = {"none": type(None), "gaussian": GaussianNoise, "measured": TableNoise}
    expected["gaussian_lsb"] = GaussianNoise
    expected["histogram"] = HistogramNoise
    assert isinstance(model, expected.get(name, object)), (name, model)
    if name == "measured":
        assert Path(noise.file).is_absolute() and Path(noise.file).is_file()
        assert model.counts.numel() > 1 and model.source == noise.file


@pytest.mark.parametrize("name", _options("cost"))
def test_cost_presets_validate(compose, name):
    from asim import CostConfig

    cost = builders.cost_config(compose("simulate", f"cost={name}"))
    assert isinstance(cost, CostConfig) and cost.name == name


def test_cost_default_and_field_override(compose):
    from asim import CostConfig

    assert builders.cost_config(compose("simulate")) == CostConfig()  # zigzag_28nm: the schema
    cost = builders.cost_config(compose("simulate", "cost.adc_linear_fF=50"))
    assert cost.adc_linear_fF == 50.0 and cost.adc_pj(8) < CostConfig().adc_pj(8)
    assert builders.cost_config(compose("simulate", "~cost")) is None


@pytest.mark.parametrize("name", _options("model"))
def test_model_presets_build_and_convert(compose, name):
    dataset = {"digits_cnn": "digits", "vit_tiny": "digits", "gpt_tiny": "pycode"}.get(
        name, "cifar10"
    )
    extra = ["dataset.image_size=224"] if name.startswith("vit_b") else []
    cfg = compose("simulate", f"model={name}", f"dataset={dataset}", *extra)
    dm = builders.build_datamodule(cfg)
    float_model = builders.build_float_model(cfg, dm)
    acim = builders.convert_model(cfg, float_model, mode="simulate")
    layers = dict(acim_modules(acim))
    assert layers, name
    first = first_conv_name(float_model) if cfg.model.first_layer is not None else None
    if first is not None:
        assert first == float_model.first_conv  # found by the library, named by the model
    if cfg.model.first_layer == "digital":  # the reference's QuantConv2d: W8A8, signed
        assert layers[first].digital and layers[first].signed_input
    else:
        assert first not in layers
    head = layers[float_model.classifier_name]
    assert head.signed_input is cfg.model.classifier_signed_input
    assert all(
        m.signed_input is cfg.model.signed_input
        for n, m in layers.items()
        if n not in (first, float_model.classifier_name) and m.__class__.__name__ == "ACiMConv2d"
    )


@pytest.mark.parametrize("name", _options("dataset"))
def test_dataset_presets_instantiate(compose, name):
    dm = builders.build_datamodule(compose("simulate", f"dataset={name}"))
    assert dm.num_classes >= 10
    assert dm.class_names or dm.task == "language_modeling"  # a vocabulary has no class names


@pytest.mark.parametrize("name", _options("trainer"))
def test_trainer_presets_compose(compose, name):
    cfg = compose("simulate", f"trainer={name}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.use_distributed_sampler is False
    if name == "default":
        trainer = builders.build_trainer(cfg, logger=False)
        assert trainer.num_devices == 1


@pytest.mark.parametrize("name", _options("logger"))
def test_logger_presets_instantiate(compose, name, tmp_path):
    from hydra.utils import instantiate

    logger = instantiate(compose("simulate", f"logger={name}").logger)
    assert Path(logger.log_dir) == tmp_path


@pytest.mark.parametrize("primary", ["simulate", "train"])
def test_debug_preset_composes(compose, primary):
    cfg = compose(primary, "debug=fast")
    assert cfg.trainer.max_epochs == 1


@pytest.mark.parametrize("name", _experiments())
def test_simulation_experiments_compose(compose, name):
    cfg = compose("simulate", f"experiment={name}")
    builders.macro_config(cfg)
    builders.noise_config(cfg)
    mcfg = builders.model_config(cfg)
    assert cfg.ckpt is None  # the user must name the released checkpoint
    if name.startswith("vitb32"):
        assert mcfg.name == "vit_b_32"
        assert mcfg.attention.qk.input_bits == 9 and mcfg.attention.proj.input_bits == 9
        assert cfg.dataset.image_size == 224
    else:
        assert mcfg.name == "resnet18"
        assert mcfg.kwargs["stem"] == ("imagenet" if "imagenet" in name else "cifar")
    assert cfg.dataset.name == name.split("_")[1]


@pytest.mark.parametrize("name", _experiments("train"))
def test_training_experiments_compose(compose, name):
    cfg = compose("train", f"experiment={name}")
    builders.macro_config(cfg)
    if name.endswith("_nat"):
        assert cfg.trim_noise > 0
    if name.endswith("_qat"):
        assert cfg.trim_noise == 0 and cfg.ckpt is None


def test_attention_macros_follow_the_experiment(compose):
    """ViT attention parts get their own macros through macro_for (qk/av/proj deltas)."""
    cfg = compose(
        "simulate",
        "model=vit_tiny",
        "model.attention.qk.input_bits=9",  # documented keys: no `+` needed
        "model.attention.proj.input_bits=9",
        "model.attention.av.adc_bits=6",
    )
    dm = builders.build_datamodule(cfg)
    acim = builders.convert_model(cfg, builders.build_float_model(cfg, dm), mode="simulate")
    attn = [m for _, m in acim_modules(acim) if isinstance(m, ACiMMultiheadAttention)]
    assert attn
    for m in attn:
        assert m.macro.input_bits == 9 and m.qk_macro.input_bits == 9
        assert m.av_macro.input_bits == 8 and m.av_macro.adc_bits == 6
    assert "conv_proj" not in dict(acim_modules(acim))  # float patch embedding


def test_layer_macros_override_by_glob(compose):
    cfg = compose("simulate", 'model.layer_macros=[{match:"f*",adc_bits:5}]')
    dm = builders.build_datamodule(cfg)
    layers = dict(
        acim_modules(
            builders.convert_model(cfg, builders.build_float_model(cfg, dm), mode="simulate")
        )
    )
    assert layers["fc"].macro.adc_bits == 5 and layers["conv2"].macro.adc_bits == 8
    assert isinstance(layers["fc"], ACiMLayer) and isinstance(layers["fc"], nn.Linear)
    cfg = compose("simulate", "model.layer_macros=[{match:layer9,adc_bits:5}]")
    with pytest.raises(ValueError, match="selects no ACiM layer"):
        builders.convert_model(cfg, builders.build_float_model(cfg, dm), mode="simulate")


# ------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "override",
    [
        "macro.adcbits=6",
        "noise.randsigma=0.1",
        "simulate.repats=3",
        "model.frist_layer=float",
        "model.attention.qk.kbits=9",
        "model.layer_macros=[{match:fc,adcbits:5}]",
        "cost.adc_fF=3",
    ],
)
def test_typo_fails_at_compose(override):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        builders.compose("simulate", [override])


@pytest.mark.parametrize(
    "override",
    [
        "macro.adc_bits=six",
        "macro.act_scale=per_pixel",
        "noise.rand_sigma=high",
        "model.first_layer=analog",
        "cost.vdd=high",
    ],
)
def test_wrong_type_fails_at_compose(override):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        builders.compose("simulate", [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("macro.adc_bits=0", "MacroConfig.adc_bits=0 must be in 1..24"),
        ("macro.weight_bits=1", "MacroConfig.weight_bits=1 must be >= 2"),
        ("macro.input_enc_bits=9", "MacroConfig.input_enc_bits=9"),
        ("noise.rand_sigma=-1", "NoiseConfig.rand_sigma=-1.0 must be >= 0"),
    ],
)
def test_bad_value_is_one_line_error(compose, override, message):
    cfg = compose("simulate", override)
    with pytest.raises(ValueError) as err:
        builders.macro_config(cfg)
        builders.noise_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_attention_delta_is_one_line_error(compose):
    cfg = compose("simulate", "model=vit_tiny", "model.attention.qk.input_bits=1")
    dm = builders.build_datamodule(cfg)
    with pytest.raises(ValueError, match=r"model\.attention\.qk: MacroConfig.input_bits=1") as e:
        builders.convert_model(cfg, builders.build_float_model(cfg, dm), mode="simulate")
    assert "\n" not in str(e.value)


def test_missing_noise_file_is_one_line_error(compose):
    with pytest.raises(FileNotFoundError, match="noise.file=nowhere.csv not found"):
        builders.noise_config(compose("simulate", "noise=measured", "noise.file=nowhere.csv"))


def test_missing_dataset_folder_names_path_and_layout(compose, tmp_path):
    cfg = compose("simulate", "dataset=cifar10", f"dataset.root={tmp_path / 'nope'}")
    dm = builders.build_datamodule(cfg)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("validate")
    msg = str(err.value)
    assert str(tmp_path / "nope") in msg and "train/<class>" in msg and "\n" not in msg


# ------------------------------------------------------- checks before the first pass (checks.py)


@pytest.mark.parametrize(
    ("task", "overrides", "message"),
    [
        ("simulate", ["noise=measured", "noise.rand_sigma=0.3"], "would be ignored"),
        ("simulate", ["noise=measured", "noise.rand_sigma_lsb=1"], "would be ignored"),
        ("simulate", ["noise.rand_sigma_lsb=40"], "15.7 % of the 8-bit ADC's full scale"),
        ("simulate", ["noise=gaussian", "noise.rand_sigma_lsb=1"], "noise=gaussian_lsb"),
        (
            "simulate",
            ["noise=measured", "macro.nrow=511", "macro.adc_bits=9"],
            "measured at nrow=255, it does not cover",
        ),
        ("simulate", ["macro.vote_levels=2"], "votes over macro.vote_samples=1 draw"),
        ("simulate", ["macro.vote_samples=3"], "votes on no cycle"),
        (
            "simulate",
            ["noise=gaussian", "noise.rand_sigma=50"],
            "did you mean noise.rand_sigma=0.5",
        ),
        ("simulate", ["macro.nrow=5000"], "beyond any SRAM array"),
        ("simulate", ["+resume=auto"], "a simulation has no training state"),
        ("simulate", ["+trim_noise=5"], "it is a train.py option"),
        ("train", ["mixup_alpha=-1"], "mixup_alpha=-1.0 must be >= 0"),
        ("train", ["trim_noise=30", "noise=gaussian"], "rand_sigma=0.2, .* train.py does not"),
        ("train", ["noise.column_offset_lsb=0.5"], "column_offset_lsb=0.5: .* train.py does not"),
    ],
)
def test_silent_no_ops_and_implausible_values_are_errors(compose, task, overrides, message):
    from lightning_modules.checks import check_run

    with pytest.raises(ValueError, match=message) as info:
        check_run(compose(task, *overrides), task)
    assert "\n" not in str(info.value)


def test_force_runs_implausible_values(compose):
    from lightning_modules.checks import check_run

    check_run(
        compose("simulate", "noise=gaussian", "noise.rand_sigma=50", "force=true"), "simulate"
    )
    with pytest.raises(ValueError, match="add force=true"):
        check_run(compose("simulate", "noise=gaussian", "noise.rand_sigma=50"), "simulate")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("count;offset;std\n0;0;0.1\n", "count"),
        ("count,offset,std\n0,0,nan\n", "line 2"),
        ("count,offset,std\n4,0,0.1\n0,0,0.1\n", "line 3"),
        ("count,offset,std\n0,0,-1\n", "line 2"),
        ("", "bad.csv"),
    ],
)
def test_malformed_noise_tables_fail_before_any_pass(compose, tmp_path, text, message):
    from lightning_modules.checks import check_run

    table = tmp_path / "bad.csv"
    table.write_text(text)
    cfg = compose("simulate", "noise=measured", f"noise.file={table}")
    with pytest.raises(ValueError, match=message):
        check_run(cfg, "simulate")


def test_a_sweep_is_checked_job_by_job_before_it_runs():
    from lightning_modules.checks import check_sweep

    bad = check_sweep("simulate", ["macro.adc_bits=7,0", "noise.rand_sigma=0,50"])
    assert bad == [
        "job 1 (macro.adc_bits=7,noise.rand_sigma=50): noise.rand_sigma=50 is 50 % of the ADC "
        "full scale (above 10 %; one 8-bit LSB is 0.392 %): did you mean noise.rand_sigma=0.5? "
        "If meant, add force=true",
        "job 2 (macro.adc_bits=0,noise.rand_sigma=0): MacroConfig.adc_bits=0 must be in 1..24",
        "job 3 (macro.adc_bits=0,noise.rand_sigma=50): MacroConfig.adc_bits=0 must be in 1..24",
    ]
    assert check_sweep("simulate", ["macro.adc_bits=7,8"]) == []


def test_an_overridden_preset_is_labelled_by_its_changes(compose):
    assert builders.macro_config(compose("simulate")).name == "bitserial_255"
    custom = builders.macro_config(compose("simulate", "macro.nrow=63", "macro.adc_bits=7"))
    assert custom.describe().startswith("bitserial_255+nrow=63,adc_bits=7(W8A8, nrow=63, adc=7")
    assert builders.macro_config(compose("simulate", "macro=ideal")).name == "ideal"


def test_noise_in_lsb_composes_and_is_described_both_ways(compose):
    from lightning_modules.checks import check_run
    from lightning_modules.results import describe_noise

    cfg = compose("simulate", "noise.rand_sigma_lsb=1", "macro.adc_bits=6")
    check_run(cfg, "simulate")
    noise = builders.noise_config(cfg)
    assert noise == NoiseConfig(rand_sigma_lsb=1.0)
    assert describe_noise(noise, 6) == (
        "gaussian(rand=1.59% = 1 LSB, nonlinear=0% = 0 LSB; LSB of the 6-bit ADC)"
    )
    pct = NoiseConfig(rand_sigma=0.392156862745098)
    assert describe_noise(pct, 8).startswith("gaussian(rand=0.392% = 1 LSB")


def test_the_lsb_preset_states_the_noise_in_lsb(compose):
    """noise=gaussian_lsb is the Gaussian noise in LSB of each layer's ADC; its sweep composes."""
    from lightning_modules.checks import check_run

    cfg = compose("simulate", "noise=gaussian_lsb")
    check_run(cfg, "simulate")
    noise = builders.noise_config(cfg)
    assert noise == NoiseConfig(rand_sigma_lsb=0.5, nonlinear_sigma_lsb=0.5)
    assert noise.at_adc(8).rand_sigma == pytest.approx(50 / 255)
    cfg = compose("simulate", "noise=gaussian_lsb", "noise.rand_sigma_lsb=1", "macro.adc_bits=6")
    check_run(cfg, "simulate")
    assert builders.noise_config(cfg).at_adc(6).rand_sigma == pytest.approx(100 / 63)


def test_a_chips_fixed_pattern_is_described(compose):
    """The run header names a chip's fixed column pattern and which chip (spec §4.7)."""
    from lightning_modules.results import describe_noise

    cfg = compose("simulate", "noise.column_offset_lsb=0.25", "noise.adc_group=4")
    text = describe_noise(builders.noise_config(cfg), 8)
    assert "chip pattern(offset 0.25 LSB" in text and "4 column(s) per ADC" in text
    assert "chip the run's seed" in text
    assert "chip 7)" in describe_noise(NoiseConfig(column_gain_pct=1.0, chip_seed=7))
    assert "chip pattern" not in describe_noise(NoiseConfig(rand_sigma=0.2), 8)
