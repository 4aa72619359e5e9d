"""Checkpoint import from generated files in the real formats: torchvision state_dicts, the
reference's ``.pkl`` (spec §9.5), Lightning checkpoints; head policy (Q27); shared alphas (Q20)."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from asim.checkpoint import load_checkpoint
from asim.models import VisionTransformer, create_model

VIT_KW = dict(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=48)


def _rand(g: torch.Generator):
    return lambda *shape: torch.randn(*shape, generator=g) * 0.2


def _reference_resnet18_state(num_classes: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """The reference ResNet-18's ``model_state_dict``, key by key as spec §9.5 lists it."""
    r = _rand(torch.Generator().manual_seed(seed))
    sd = {"conv1.weight": r(64, 3, 3, 3), "conv2.weight": r(64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        sd.update(
            {
                f"{prefix}.weight": 1 + r(c),
                f"{prefix}.bias": r(c),
                f"{prefix}.running_mean": r(c),
                f"{prefix}.running_var": 1 + r(c).abs(),
                f"{prefix}.num_batches_tracked": torch.tensor(123),
            }
        )

    bn("bn1", 64)
    cin = 64
    for s, c in enumerate([64, 128, 256, 512], start=1):
        for b in range(2):
            p = f"layer{s}.{b}"
            sd[f"{p}.conv1.weight"] = r(c, cin if b == 0 else c, 3, 3)
            bn(f"{p}.bn1", c)
            sd[f"{p}.conv2.weight"] = r(c, c, 3, 3)
            bn(f"{p}.bn2", c)
            if b == 0 and s > 1:
                sd[f"{p}.downsample.0.weight"] = r(c, cin, 1, 1)
                bn(f"{p}.downsample.1", c)
            sd[f"{p}.relu.alpha"] = torch.tensor(3.0 + s + b / 2)
        cin = c
    sd.update(
        {
            "fc.weight": r(num_classes, 512),
            "fc.bias": r(num_classes),
            "relu.alpha": torch.tensor(5.5),
        }
    )
    return sd


def _reference_vit_state(num_classes: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """A small reference ViT's ``model_state_dict`` with spec §9.5's key names."""
    r = _rand(torch.Generator().manual_seed(seed))
    D, M, P = VIT_KW["hidden_dim"], VIT_KW["mlp_dim"], VIT_KW["patch_size"]
    n_tokens = (VIT_KW["image_size"] // P) ** 2 + 1
    sd = {
        "cls_token": r(1, 1, D),
        "patch_embedding.conv_proj.weight": r(D, 3, P, P),
        "patch_embedding.conv_proj.bias": r(D),
        "encoder.pos_embedding": r(1, n_tokens, D),
    }
    for i in range(VIT_KW["num_layers"]):
        p = f"encoder.layers.{i}"
        sd.update(
            {
                f"{p}.ln_1.weight": 1 + r(D),
                f"{p}.ln_1.bias": r(D),
                f"{p}.self_attention.qkv.weight": r(3 * D, D),
                f"{p}.self_attention.qkv.bias": r(3 * D),
                f"{p}.self_attention.proj.weight": r(D, D),
                f"{p}.self_attention.proj.bias": r(D),
                f"{p}.ln_2.weight": 1 + r(D),
                f"{p}.ln_2.bias": r(D),
                f"{p}.mlp.mlp1.weight": r(M, D),
                f"{p}.mlp.mlp1.bias": r(M),
                f"{p}.mlp.mlp2.weight": r(D, M),
                f"{p}.mlp.mlp2.bias": r(D),
            }
        )
    sd.update(
        {
            "encoder.ln.weight": 1 + r(D),
            "encoder.ln.bias": r(D),
            "heads.weight": r(num_classes, D),
            "heads.bias": r(num_classes),
        }
    )
    return sd


def _reference_vit_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference ViT in eval mode, written from spec §9.4/§7.2 on the reference's keys."""
    H, P = VIT_KW["num_heads"], VIT_KW["patch_size"]
    D = sd["cls_token"].shape[-1]
    t = (
        F.conv2d(
            x,
            sd["patch_embedding.conv_proj.weight"],
            sd["patch_embedding.conv_proj.bias"],
            stride=P,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    t = torch.cat([sd["cls_token"].expand(len(x), -1, -1), t], 1) + sd["encoder.pos_embedding"]
    B, N, _ = t.shape

    def ln(v, p):  # nn.LayerNorm's default eps, as in the reference
        return F.layer_norm(v, (D,), sd[f"{p}.weight"], sd[f"{p}.bias"], eps=1e-5)

    for i in range(VIT_KW["num_layers"]):
        p = f"encoder.layers.{i}"
        qkv = F.linear(
            ln(t, f"{p}.ln_1"),
            sd[f"{p}.self_attention.qkv.weight"],
            sd[f"{p}.self_attention.qkv.bias"],
        )
        q, k, v = qkv.reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * D**-0.5, dim=-1)  # embed_dim (Q13)
        o = (a @ v).transpose(1, 2).reshape(B, N, D)
        t = t + F.linear(
            o, sd[f"{p}.self_attention.proj.weight"], sd[f"{p}.self_attention.proj.bias"]
        )
        y = F.gelu(
            F.linear(ln(t, f"{p}.ln_2"), sd[f"{p}.mlp.mlp1.weight"], sd[f"{p}.mlp.mlp1.bias"])
        )
        t = t + F.linear(y, sd[f"{p}.mlp.mlp2.weight"], sd[f"{p}.mlp.mlp2.bias"])
    t = ln(t, "encoder.ln")
    return F.linear(t[:, 0], sd["heads.weight"], sd["heads.bias"])


def _save_reference(path, state, epoch=7, best_acc=0.9312):
    torch.save(
        {
            "model_state_dict": state,
            "optimizer_state_dict": {},
            "epoch": epoch,
            "best_acc": best_acc,
        },
        path,
    )
    return path


# --- torchvision ----------------------------------------------------------------------------


def test_torchvision_resnet18_into_imagenet_stem(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18().eval()
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv.state_dict(), path)

    ours = create_model("resnet18", stem="imagenet", num_classes=1000)
    report = load_checkpoint(ours, path)
    assert report["format"] == "state_dict" and report["naming"] == "torchvision"
    assert report["classifier"] == "kept" and not report["remapped"] and not report["ignored"]
    assert len(report["missing"]) == 9 and all(k.endswith("relu.alpha") for k in report["missing"])
    assert ours.relu.alpha.detach().item() == 6.0  # missing alphas keep their init

    relu = create_model("resnet18", stem="imagenet", num_classes=1000, pact=False).eval()
    assert load_checkpoint(relu, path)["missing"] == []
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(relu(x), tv(x), rtol=0, atol=0)


def test_torchvision_resnet_stem_mismatch_names_the_fix(tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError) as e:
        load_checkpoint(create_model("resnet18"), path)
    msg = str(e.value)
    assert msg.startswith(
        f"checkpoint {path} does not fit resnet18: shape conv1.weight "
        "model [64,3,3,3] vs checkpoint [64,3,7,7]"
    )
    assert "stem='imagenet'" in msg and "\n" not in msg


def test_torchvision_vit_small_dims(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(**VIT_KW, num_classes=5).eval()
    for p in tv.parameters():
        nn.init.normal_(p, std=0.3)
    path = tmp_path / "vit-tv.pth"
    torch.save(tv.state_dict(), path)

    ours = VisionTransformer(**VIT_KW, num_classes=5, attn_scale="head_dim", norm_eps=1e-6).eval()
    report = load_checkpoint(ours, path)
    assert (report["naming"], report["classifier"], report["missing"]) == (
        "torchvision",
        "kept",
        [],
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)

    # torchvision < 0.13 files name the MLP linears linear_1/linear_2
    legacy = {
        k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
        for k, v in tv.state_dict().items()
    }
    report = load_checkpoint(VisionTransformer(**VIT_KW, num_classes=5), legacy)
    assert len(report["remapped"]) == 4 * VIT_KW["num_layers"]
    assert report["remapped"]["encoder.layers.encoder_layer_1.mlp.linear_2.bias"] == (
        "encoder.layers.encoder_layer_1.mlp.3.bias"
    )


# --- the reference's .pkl (spec §9.5) -------------------------------------------------------


def test_reference_resnet18_cifar_pkl(tmp_path):
    state = _reference_resnet18_state()
    assert len(state) == 132  # spec §9.5
    path = _save_reference(tmp_path / "checkpoint_best.pkl", state)

    model = create_model("resnet18")
    report = load_checkpoint(model, path)
    assert report["format"] == "reference" and report["naming"] == "reference"
    assert report["meta"] == {"epoch": 7, "best_acc": 0.9312}
    assert list(report["ignored"]) == ["conv2.weight"] and report["missing"] == []
    assert report["classifier"] == "kept" and report["loaded"] == 131
    ours = model.state_dict()
    assert set(ours) == set(state) - {"conv2.weight"}
    assert all(torch.equal(ours[k], state[k]) for k in ours)
    assert model.layer3[1].relu.alpha.detach().item() == 6.5


def test_reference_resnet18_imagenet_stem_takes_conv2(tmp_path):
    state = _reference_resnet18_state(num_classes=1000)
    path = _save_reference(tmp_path / "resnet18_cls_1000.pkl", state)
    model = create_model("resnet18", stem="imagenet", num_classes=1000)
    report = load_checkpoint(model, path)
    assert report["remapped"] == {"conv2.weight": "conv1.weight"}
    assert list(report["ignored"]) == ["conv1.weight"]
    assert torch.equal(model.conv1.weight.detach(), state["conv2.weight"])


def test_reference_vit_pkl_maps_keys_and_reproduces_reference_forward(tmp_path):
    state = _reference_vit_state()
    assert len(state) == 8 + 12 * VIT_KW["num_layers"]  # 152 for 12 layers (spec §9.5)
    path = _save_reference(tmp_path / "vit.pkl", state, epoch=0, best_acc=0.0)
    model = VisionTransformer(**VIT_KW, num_classes=5).eval()
    report = load_checkpoint(model, path)
    assert report["naming"] == "reference" and report["missing"] == []
    assert not report["ignored"] and report["classifier"] == "kept"
    assert len(report["remapped"]) == len(state) - 3  # pos_embedding and encoder.ln.* keep names
    assert report["remapped"]["encoder.layers.1.self_attention.qkv.weight"] == (
        "encoder.layers.encoder_layer_1.self_attention.in_proj_weight"
    )
    assert report["remapped"]["heads.bias"] == "heads.head.bias"
    assert torch.equal(model.class_token.detach(), state["cls_token"])
    assert torch.equal(
        model.encoder.layers.encoder_layer_0.mlp[3].weight.detach(),
        state["encoder.layers.0.mlp.mlp2.weight"],
    )
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _reference_vit_forward(state, x))


# --- Lightning, plain dicts -----------------------------------------------------------------


def test_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    trained = create_model("digits_cnn")
    for p in trained.parameters():
        nn.init.normal_(p)
    ckpt = {
        "state_dict": {
            **{f"model.{k}": v for k, v in trained.state_dict().items()},
            "criterion.weight": torch.ones(10),
        },
        "epoch": 2,
        "global_step": 40,
        "pytorch-lightning_version": "2.4.0",
        "hyper_parameters": argparse.Namespace(lr=0.1),
    }
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="holds pickled Python objects.*weights_only=False"):
        load_checkpoint(create_model("digits_cnn"), path)

    model = create_model("digits_cnn").eval()
    report = load_checkpoint(model, path, weights_only=False)
    assert report["format"] == "lightning" and report["meta"] == {"epoch": 2, "global_step": 40}
    assert list(report["ignored"]) == ["criterion.weight"]
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x), trained.eval()(x))


def test_own_state_dict_round_trip_from_dict_and_path(tmp_path):
    src = create_model("vit_tiny")
    for p in src.parameters():
        nn.init.normal_(p)
    report = load_checkpoint(create_model("vit_tiny"), src.state_dict())
    assert report["source"] == "<dict>" and report["remapped"] == {} and report["missing"] == []
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "dp.pt")
    model = create_model("vit_tiny")
    load_checkpoint(model, tmp_path / "dp.pt")  # DataParallel prefix stripped
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), src.state_dict().values(), strict=True)
    )


def test_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="is a list, not a dict"):
        load_checkpoint(create_model("digits_cnn"), tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a recognised format: entries note"):
        load_checkpoint(create_model("digits_cnn"), {"note": "hello", "w": torch.zeros(1)})


# --- classifier policy (Q27) ----------------------------------------------------------------


def test_class_count_mismatch_keeps_fresh_head(tmp_path):
    path = _save_reference(tmp_path / "cifar100.pkl", _reference_resnet18_state(100))
    model = create_model("resnet18", num_classes=10)
    head = model.fc.weight.detach().clone()
    report = load_checkpoint(model, path)
    assert report["classifier"] == "reset"
    assert "100 classes, the model 10" in report["ignored"]["fc.weight"]
    assert torch.equal(model.fc.weight.detach(), head)
    assert torch.equal(
        model.layer1[0].conv1.weight.detach(),
        _reference_resnet18_state(100)["layer1.0.conv1.weight"],
    )
    with pytest.raises(
        ValueError,
        match=r"classifier has 100 classes, the model 10 "
        r"\(strict_classifier=True\)",
    ):
        load_checkpoint(create_model("resnet18"), path, strict_classifier=True)


def test_vit_class_count_mismatch_keeps_fresh_head():
    model = VisionTransformer(**VIT_KW, num_classes=3)
    report = load_checkpoint(model, _reference_vit_state(num_classes=5))
    assert report["classifier"] == "reset" and set(report["ignored"]) == {
        "heads.weight",
        "heads.bias",
    }
    assert torch.all(model.heads.head.weight == 0)


# --- errors ---------------------------------------------------------------------------------


def test_wrong_model_one_line_error(tmp_path):
    path = _save_reference(tmp_path / "r18.pkl", _reference_resnet18_state())
    with pytest.raises(ValueError) as e:
        load_checkpoint(create_model("resnet34"), path)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        f"checkpoint {path} does not fit resnet34: missing layer1.2.conv1.weight"
        ", layer1.2.bn1.weight, layer1.2.bn1.bias, … (+"
    )

    vit = _save_reference(tmp_path / "vit.pkl", _reference_vit_state())
    with pytest.raises(ValueError) as e:
        load_checkpoint(create_model("resnet18"), vit)
    msg = str(e.value)
    assert "\n" not in msg
    assert "does not fit resnet18: missing conv1.weight, bn1.weight, bn1.bias, … (+" in msg
    assert "; unexpected cls_token, patch_embedding.conv_proj.weight" in msg


def test_wrong_shape_one_line_error():
    model = VisionTransformer(**{**VIT_KW, "hidden_dim": 48}, num_classes=5)
    with pytest.raises(ValueError) as e:
        load_checkpoint(model, _reference_vit_state())
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(
        "checkpoint <dict> does not fit VisionTransformer: shape class_token "
        "model [1,1,48] vs checkpoint [1,1,32], conv_proj.weight model "
        "[48,3,4,4] vs checkpoint [32,3,4,4]"
    )


# --- shared VGG alpha (Q20) -----------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg11():
    with torch.device("meta"):  # skip the 129M-parameter init; values come from the checkpoint
        model = create_model("vgg11")
    return model.to_empty(device="cpu")


def test_vgg_shared_alpha_loads_once_and_must_agree(vgg11):
    state = {k: v.clone() if k.endswith("alpha") else v for k, v in vgg11.state_dict().items()}
    alphas = [k for k in state if k.endswith("alpha")]
    assert alphas[0] == "features.3.alpha" and alphas[-1] == "classifier.4.alpha"
    for k in alphas:
        state[k].fill_(4.25)
    report = load_checkpoint(vgg11, state)
    assert report["shared"] == [alphas]
    assert vgg11.classifier[1].alpha.detach().item() == 4.25

    state[alphas[3]] = torch.tensor(1.0)
    with pytest.raises(
        ValueError,
        match=rf"{alphas[3]} and features.3.alpha hold one shared "
        r"parameter .* differ in the checkpoint \(Q20\)",
    ):
        load_checkpoint(vgg11, state)

    for k in alphas[1:]:  # one copy is enough
        del state[k]
    state[alphas[0]] = torch.tensor(3.0)
    report = load_checkpoint(vgg11, state)
    assert report["missing"] == [] and vgg11.features[6].alpha.detach().item() == 3.0
    assert math.isclose(vgg11.classifier[4].alpha.detach().item(), 3.0)
