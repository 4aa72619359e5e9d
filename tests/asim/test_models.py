"""Float model zoo: registry, every model's forward, structure vs spec §9 and torchvision,
PACT gradients (§1.5) and ScaledMultiheadAttention (§7.2, Q13)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from asim.models import (
    PACT,
    VGG,
    ScaledMultiheadAttention,
    VisionTransformer,
    create_model,
    list_models,
    pact,
)

CHEAP = {"digits_cnn", "vit_tiny", "resnet20", "resnet18"}
IMAGE_MODELS = [
    n for n in list_models() if n not in list_models("gpt*")
]  # gpt: tests/asim/test_gpt.py


def _input_for(model: nn.Module, batch: int = 2, device: str | torch.device = "cpu"):
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    size = getattr(model, "image_size", 16)
    return torch.randn(batch, conv.in_channels, size, size, device=device)


# --- registry -------------------------------------------------------------------------------


def test_list_models_has_every_family():
    names = list_models()
    assert names == sorted(names)
    for n in [
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "vgg11",
        "vgg11_bn",
        "vgg13",
        "vgg13_bn",
        "vgg16",
        "vgg16_bn",
        "vgg19",
        "vgg19_bn",
        "vit_b_16",
        "vit_b_32",
        "vit_l_16",
        "vit_l_32",
        "vit_h_14",
        "digits_cnn",
        "vit_tiny",
    ]:
        assert n in names
    assert list_models("vgg*_bn") == ["vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]


def test_create_model_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="unknown model 'resnt18'; did you mean resnet18") as e:
        create_model("resnt18")
    assert "\n" not in str(e.value)


def test_create_model_tags_name():
    assert create_model("digits_cnn").model_name == "digits_cnn"


# --- every model runs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_model_forward_shape_on_meta(name):
    """Every registered model builds and runs (shapes only) without allocating memory."""
    with torch.device("meta"):
        model = create_model(name, num_classes=7)
        y = model(_input_for(model, device="meta"))
    assert y.shape == (2, 7)
    assert type(model.get_submodule(model.first_conv)) is nn.Conv2d
    head = model.get_submodule(model.classifier_name)
    assert type(head) is nn.Linear and head.out_features == 7


@pytest.mark.parametrize(
    "name", [n if n in CHEAP else pytest.param(n, marks=pytest.mark.slow) for n in IMAGE_MODELS]
)
def test_model_forward_backward_cpu(name):
    torch.manual_seed(0)
    kwargs = {"num_classes": 5}
    if name.startswith("vit_") and name != "vit_tiny":  # two patches a side keep it cheap
        kwargs["image_size"] = 2 * int(name.rsplit("_", 1)[1])
    model = create_model(name, **kwargs)
    y = model(_input_for(model))
    assert y.shape == (2, 5) and torch.isfinite(y).all()
    y.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_digits_models_on_8x8_grayscale():
    x = torch.randn(3, 1, 8, 8)
    for name in ["digits_cnn", "vit_tiny"]:
        model = create_model(name).eval()
        assert model(x).shape == (3, 10)
    assert sum(p.numel() for p in create_model("digits_cnn").parameters()) < 50_000


# --- ResNet (spec §9.2) ---------------------------------------------------------------------


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_resnet_imagenet_matches_torchvision_keys(depth):
    """Same keys and shapes as torchvision's ResNet plus one PACT alpha per block and the stem."""
    with torch.device("meta"):
        ours = create_model(f"resnet{depth}", stem="imagenet", num_classes=1000)
        tv = getattr(torchvision.models, f"resnet{depth}")()
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    alphas = {k for k in ours_sd if k.endswith(".alpha")}
    n_blocks = sum(len(getattr(ours, f"layer{i}")) for i in range(1, 5))
    assert len(alphas) == n_blocks + 1 and "relu.alpha" in alphas
    assert set(ours_sd) - alphas == set(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in tv_sd)
    assert all(ours_sd[k].shape == () for k in alphas)


def test_resnet_stems():
    with torch.device("meta"):
        cifar, imagenet = create_model("resnet18"), create_model("resnet18", stem="imagenet")
    assert (cifar.conv1.kernel_size, cifar.conv1.stride, cifar.conv1.padding) == (
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert (imagenet.conv1.kernel_size, imagenet.conv1.stride, imagenet.conv1.padding) == (
        (7, 7),
        (2, 2),
        (3, 3),
    )
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    for m in (cifar, imagenet):
        assert m.conv1.bias is None and not hasattr(m, "conv2")
        assert m.fc.out_features == 10 and isinstance(m.relu, PACT)
    with pytest.raises(ValueError, match="stem='mnist' is not valid"):
        create_model("resnet18", stem="mnist")


def test_resnet_pact_false_uses_inplace_relu():
    with torch.device("meta"):
        model = create_model("resnet50", pact=False)
    assert not any(isinstance(m, PACT) for m in model.modules())
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(r.inplace for r in relus)


def test_resnet_one_pact_per_block_used_twice():
    """BasicBlock: the same alpha clips after bn1 and after the residual add (Q20)."""
    model = create_model("resnet18").eval()
    block = model.layer1[0]
    calls = []
    block.relu.register_forward_hook(lambda *_: calls.append(1))
    block(torch.randn(1, 64, 4, 4))
    assert len(calls) == 2
    bottleneck = create_model("resnet50").layer1[0].eval()
    calls.clear()
    bottleneck.relu.register_forward_hook(lambda *_: calls.append(1))
    bottleneck(torch.randn(1, 64, 4, 4))
    assert len(calls) == 3


def test_resnet_init():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    w = model.layer4[0].conv1.weight  # fan_out = 512 * 9
    assert w.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.05)
    assert all(
        torch.all(m.weight == 1) and torch.all(m.bias == 0)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
    )
    assert model.relu.alpha.detach().item() == 6.0
    bound = 1 / math.sqrt(512)  # PyTorch's default Linear init is kept
    assert model.fc.weight.abs().max() <= bound and model.fc.bias.abs().max() <= bound


# --- VGG (spec §9.3) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "n_convs"), [("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16)]
)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_vgg_tables(name, n_convs, stem):
    size = 32 if stem == "cifar" else 224
    with torch.device("meta"):
        model = create_model(name, stem=stem)
        y = model.features(torch.empty(1, 3, size, size))
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == n_convs and all(c.bias is not None for c in convs)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in model.features)
    assert pools == (2 if stem == "cifar" else 5)
    assert y.shape == ((1, 512, 8, 8) if stem == "cifar" else (1, 512, 7, 7))
    assert isinstance(model.features[1], nn.ReLU) and model.features[1].inplace


def test_vgg_shares_one_pact_per_model_not_across_models():
    with torch.device("meta"):
        a, b = create_model("vgg11_bn"), create_model("vgg11_bn")
    acts = [m for m in [*a.features, *a.classifier] if isinstance(m, PACT)]
    assert len(acts) == 9  # the 7 convs after the first + 2 in the classifier
    assert len({id(m) for m in acts}) == 1
    assert a.classifier[1] is a.features[5] and a.classifier[1] is not b.classifier[1]
    assert isinstance(a.features[2], nn.ReLU)  # first conv: conv, BN, plain ReLU
    keys = [k for k in a.state_dict() if k.endswith("alpha")]
    assert "classifier.1.alpha" in keys and "classifier.4.alpha" in keys and len(keys) == 9
    assert (
        sum(p.numel() for p in a.parameters())
        == sum(p.numel() for n, p in a.named_parameters() if not n.endswith("alpha")) + 1
    )


@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn"])
def test_vgg_imagenet_matches_torchvision_keys(name):
    with torch.device("meta"):
        ours = create_model(name, stem="imagenet", num_classes=1000, pact=False)
        tv = getattr(torchvision.models, name)()
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert set(ours_sd) == set(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in tv_sd)


def test_vgg_head_and_init():
    with torch.device("meta"):
        model = create_model("vgg13", num_classes=3)
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (25088, 4096),
        (4096, 4096),
        (4096, 3),
    ]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    assert isinstance(model, VGG) and model.avgpool.output_size == (7, 7)


# --- ViT (spec §9.4) ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"])
def test_vit_matches_torchvision_keys(name):
    with torch.device("meta"):
        ours = create_model(name)
        tv = getattr(torchvision.models, name)()
    ours_sd, tv_sd = ours.state_dict(), tv.state_dict()
    assert set(ours_sd) == set(tv_sd)
    assert all(ours_sd[k].shape == tv_sd[k].shape for k in tv_sd)
    attn = ours.encoder.layers.encoder_layer_0.self_attention
    assert type(attn) is ScaledMultiheadAttention and attn.scale == "embed_dim"
    assert attn.batch_first and attn.dropout == 0.1
    assert ours.encoder.layers.encoder_layer_0.mlp[2].p == 0.1


def test_vit_reproduces_torchvision_numerics_with_standard_options():
    torch.manual_seed(0)
    kw = dict(
        image_size=16,
        patch_size=4,
        num_layers=2,
        num_heads=4,
        hidden_dim=32,
        mlp_dim=48,
        num_classes=5,
    )
    tv = torchvision.models.VisionTransformer(**kw).eval()
    for p in tv.parameters():
        nn.init.normal_(p, std=0.3)
    ours = VisionTransformer(**kw, attn_scale="head_dim", norm_eps=1e-6).eval()
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(ours(x), tv(x), rtol=0, atol=0)
    default = VisionTransformer(**kw).eval()  # reference scale (Q13) and eps change the numbers
    default.load_state_dict(tv.state_dict())
    assert not torch.allclose(default(x), tv(x), atol=1e-4)


def test_vit_init_and_input_check():
    model = create_model("vit_tiny")
    assert torch.all(model.class_token == 0) and torch.all(model.heads.head.weight == 0)
    assert model.encoder.pos_embedding.shape == (1, 17, 64)
    with pytest.raises(ValueError, match="expects 8x8"):
        model(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="attn_scale='tokens' is not valid"):
        create_model("vit_b_32", attn_scale="tokens")


# --- PACT (spec §1.5) -----------------------------------------------------------------------


def test_pact_forward_and_state():
    act = PACT()
    assert list(act.state_dict()) == ["alpha"] and act.alpha.shape == () and act.alpha == 6.0
    x = torch.tensor([-2.0, 0.0, 3.0, 6.0, 9.0])
    assert torch.equal(act(x), torch.tensor([0.0, 0.0, 3.0, 6.0, 6.0]))


def test_pact_gradients_follow_spec_rules():
    """dx = g where 0 <= x <= alpha (ends included), else 0; dalpha = sum g where x > alpha."""
    act = PACT(alpha=2.0)
    x = torch.tensor([-1.0, 0.0, 0.5, 2.0, 2.5, 7.0], requires_grad=True)
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    act(x).backward(g)
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 3.0, 4.0, 0.0, 0.0]))
    assert act.alpha.grad.shape == () and act.alpha.grad.item() == 11.0


def test_pact_gradients_numerically():
    """Away from the kinks the custom backward equals finite differences (incl. clipped x)."""
    x = torch.tensor([[-0.7, 0.3, 1.2], [1.9, 3.0, -2.0]], dtype=torch.float64, requires_grad=True)
    alpha = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(pact, (x, alpha))


# --- ScaledMultiheadAttention (spec §7.2, Q13) ----------------------------------------------


def test_scaled_mha_validates_scale():
    assert ScaledMultiheadAttention(8, 2).scale == "embed_dim"
    with pytest.raises(ValueError, match="scale='model_dim' is not valid"):
        ScaledMultiheadAttention(8, 2, scale="model_dim")
    names = [n for n, _ in ScaledMultiheadAttention(8, 2).named_parameters()]
    assert names == [n for n, _ in nn.MultiheadAttention(8, 2).named_parameters()]


def _masks(B, H, L, S, kind):
    g = torch.Generator().manual_seed(1)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, -1] = True
    if kind == "none":
        return None, None
    if kind == "bool2d":
        return torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=1), None
    if kind == "float3d":
        return torch.randn(B * H, L, S, generator=g), None
    if kind == "kpm":
        return None, kpm
    return torch.triu(torch.ones(L, S, dtype=torch.bool), diagonal=1), kpm  # both


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool2d", "float3d", "kpm", "both"])
def test_scaled_mha_head_dim_equals_torch(batch_first, mask):
    torch.manual_seed(0)
    E, H, B, L = 16, 4, 2, 5
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first)
    ours = ScaledMultiheadAttention(E, H, batch_first=batch_first, scale="head_dim")
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    attn_mask, kpm = _masks(B, H, L, L, mask)
    out, w = ours(x, x, x, key_padding_mask=kpm, attn_mask=attn_mask)
    out_ref, w_ref = ref(x, x, x, key_padding_mask=kpm, attn_mask=attn_mask)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(w, w_ref)


def test_scaled_mha_embed_dim_equals_hand_computation():
    torch.manual_seed(0)
    E, H, B, N = 12, 3, 2, 4
    d = E // H
    mha = ScaledMultiheadAttention(E, H, batch_first=True).eval()
    nn.init.normal_(mha.in_proj_bias)
    x = torch.randn(B, N, E)
    out, w = mha(x, x, x, average_attn_weights=False)

    wq, wk, wv = mha.in_proj_weight.chunk(3)
    bq, bk, bv = mha.in_proj_bias.chunk(3)
    expected = torch.empty(B, N, E)
    for b in range(B):
        heads = []
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            q = x[b] @ wq[s].T + bq[s]
            k = x[b] @ wk[s].T + bk[s]
            v = x[b] @ wv[s].T + bv[s]
            a = torch.softmax((q @ k.T) / math.sqrt(E), dim=-1)  # embed_dim, not head_dim
            torch.testing.assert_close(w[b, h], a)
            heads.append(a @ v)
        expected[b] = torch.cat(heads, dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias
    torch.testing.assert_close(out, expected)
    assert mha(x, x, x, need_weights=False)[1] is None


def _torch_equivalent(ours: ScaledMultiheadAttention) -> nn.MultiheadAttention:
    """Torch MHA whose q projection is pre-scaled by sqrt(head_dim / embed_dim): same logits."""
    ref = nn.MultiheadAttention(
        ours.embed_dim, ours.num_heads, batch_first=ours.batch_first, kdim=ours.kdim, vdim=ours.vdim
    )
    ref.load_state_dict(ours.state_dict())
    c = math.sqrt(ours.head_dim / ours.embed_dim)
    with torch.no_grad():
        if ours._qkv_same_embed_dim:
            ref.in_proj_weight[: ours.embed_dim] *= c
        else:
            ref.q_proj_weight *= c
        ref.in_proj_bias[: ours.embed_dim] *= c
    return ref


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "bool2d", "float3d", "kpm", "both"])
@pytest.mark.parametrize("average", [True, False])
def test_scaled_mha_embed_dim_masks_and_cross_attention(batch_first, mask, average):
    torch.manual_seed(0)
    E, H, B, L, S = 16, 4, 2, 3, 5
    ours = ScaledMultiheadAttention(E, H, batch_first=batch_first)
    nn.init.normal_(ours.in_proj_bias)
    ref = _torch_equivalent(ours)
    q = torch.randn(B, L, E) if batch_first else torch.randn(L, B, E)
    kv = torch.randn(B, S, E) if batch_first else torch.randn(S, B, E)
    attn_mask, kpm = _masks(B, H, L, S, mask)
    out, w = ours(
        q, kv, kv, key_padding_mask=kpm, attn_mask=attn_mask, average_attn_weights=average
    )
    out_ref, w_ref = ref(
        q, kv, kv, key_padding_mask=kpm, attn_mask=attn_mask, average_attn_weights=average
    )
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(w, w_ref)


def test_scaled_mha_embed_dim_unbatched_and_kdim():
    torch.manual_seed(0)
    ours = ScaledMultiheadAttention(8, 2, kdim=6, vdim=5)
    ref = _torch_equivalent(ours)
    q, k, v = torch.randn(3, 8), torch.randn(4, 6), torch.randn(4, 5)
    for a, b in zip(ours(q, k, v), ref(q, k, v), strict=True):
        torch.testing.assert_close(a, b)


def test_scaled_mha_one_head_scales_agree():
    torch.manual_seed(0)
    a = ScaledMultiheadAttention(8, 1, batch_first=True, scale="embed_dim")
    b = ScaledMultiheadAttention(8, 1, batch_first=True, scale="head_dim")
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(a(x, x, x)[0], b(x, x, x)[0])
