"""minilora.layers: LoRALinear (nn.Linear, Conv1D) and LoRAEmbedding, checked in fp32 against the
maths and against Hugging Face PEFT."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from minilora.config import lora_scaling
from minilora.embedding import LoRAEmbedding
from minilora.layers import LoRALayer, LoRALinear

IN, OUT, R = 12, 10, 4


def make_base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(IN, OUT)
    if kind == "conv1d":
        conv = Conv1D(OUT, IN)  # nf = out features, nx = in features; weight is (in, out)
        nn.init.normal_(conv.weight, std=0.3)
        nn.init.normal_(conv.bias, std=0.1)
        return conv
    return nn.Embedding(20, OUT)


def wrap(base: nn.Module, **kw) -> nn.Module:
    kw = {"r": R, "lora_alpha": 8, **kw}
    return LoRAEmbedding(base, **kw) if isinstance(base, nn.Embedding) else LoRALinear(base, **kw)


def make_input(layer: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if isinstance(layer, LoRAEmbedding) or isinstance(layer, nn.Embedding):
        return torch.randint(0, 20, (3, 7), generator=g)
    return torch.randn(3, 7, IN, generator=g)


def randomise(layer: nn.Module, seed: int = 2) -> None:
    """Give both A and B non-zero values, so the update is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.factors():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


KINDS = ["linear", "conv1d", "embedding"]


# ----- identity at initialisation ---------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:init_lora_weights='gaussian' acts as True")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("init", [True, "gaussian"])
def test_identity_at_init(kind, init):
    base = make_base(kind)
    x = make_input(base)
    ref = base(x)
    layer = wrap(copy.deepcopy(base), init_lora_weights=init)
    assert torch.equal(layer(x), ref)
    assert torch.count_nonzero(layer.get_delta_weight()) == 0


# ----- only A and B train -----------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_only_A_and_B_change(kind):
    layer = wrap(make_base(kind))
    frozen = {k: v.clone() for k, v in layer.base_layer.state_dict().items()}
    A0, B0 = (p.detach().clone() for p in layer.factors())
    trainable = [p for p in layer.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in layer.factors()}
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2)  # frozen params get no grad, so no update
    x = make_input(layer)
    target = torch.randn(layer(x).shape, generator=torch.Generator().manual_seed(3))
    for _ in range(5):
        opt.zero_grad()
        F.mse_loss(layer(x), target).backward()
        opt.step()
    for k, v in layer.base_layer.state_dict().items():
        assert torch.equal(v, frozen[k]), f"base {k} changed"
    A, B = layer.factors()
    assert not torch.equal(A, A0) and not torch.equal(B, B0)


# ----- merge / unmerge --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_merge_unmerge(kind):
    layer = wrap(make_base(kind))
    randomise(layer)
    x = make_input(layer)
    w0 = layer.base_layer.weight.detach().clone()
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    assert not torch.allclose(layer.base_layer.weight, w0)  # the update really went into the weight
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.get_delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    merged_w = layer.base_layer.weight.detach().clone()
    with pytest.warns(UserWarning, match="already merged"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, merged_w)  # idempotent
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    with pytest.warns(UserWarning, match="not merged"):
        layer.unmerge()


# ----- initialisation statistics ----------------------------------------------------------------
def test_kaiming_uniform_init_statistics():
    torch.manual_seed(0)
    fan_in = 1024
    layer = LoRALinear(nn.Linear(fan_in, 512), r=64, lora_alpha=64)
    A, B = layer.factors()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt 5): gain sqrt(1/3), bound = gain*sqrt(3/fan_in)
    assert A.abs().max() <= bound
    assert A.abs().max() > 0.99 * bound  # the range is really used
    assert A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert abs(A.mean().item()) < 0.01 * bound
    counts = torch.histc(A, bins=10, min=-bound, max=bound) / A.numel()
    assert torch.all((counts - 0.1).abs() < 0.01), counts  # flat histogram: uniform
    assert torch.count_nonzero(B) == 0


@pytest.mark.parametrize("r", [4, 16])
def test_gaussian_init_statistics(r):
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(4096, 512), r=r, lora_alpha=r, init_lora_weights="gaussian")
    A, B = layer.factors()
    assert A.std().item() == pytest.approx(1 / r, rel=0.03)  # PEFT's convention: std = 1/r
    assert abs(A.mean().item()) < 0.03 / r
    assert A.abs().max() > 3 / r  # tails: not uniform
    assert torch.count_nonzero(B) == 0


def test_embedding_init():
    torch.manual_seed(0)
    layer = LoRAEmbedding(nn.Embedding(1000, 512), r=16, lora_alpha=16)
    A, B = layer.factors()
    assert torch.count_nonzero(A) == 0  # PEFT's embedding layout: A starts at zero, B ~ N(0, 1)
    assert B.std().item() == pytest.approx(1.0, rel=0.03)


# ----- scaling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("r,alpha", [(1, 1), (4, 8), (8, 16), (16, 4), (7, 3.5)])
def test_scaling_values(r, alpha):
    base = nn.Linear(32, 32)
    assert LoRALinear(base, r=r, lora_alpha=alpha).scaling["default"] == alpha / r
    base = nn.Linear(32, 32)
    assert LoRALinear(base, r=r, lora_alpha=alpha, use_rslora=True).scaling["default"] == alpha / math.sqrt(r)
    assert lora_scaling(r, alpha) == alpha / r
    assert lora_scaling(r, alpha, use_rslora=True) == alpha / math.sqrt(r)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_output_delta_is_scaling_B_A_x(kind, use_rslora):
    layer = wrap(make_base(kind), r=4, lora_alpha=6, use_rslora=use_rslora)
    randomise(layer)
    A, B = layer.factors()
    x = make_input(layer)
    s = 6 / (math.sqrt(4) if use_rslora else 4)
    expected = s * x @ (B @ A).T
    torch.testing.assert_close(layer(x) - layer.base_layer(x), expected, atol=1e-6, rtol=0)
    delta = (s * B @ A).T if kind == "conv1d" else s * B @ A  # in the base weight's own layout
    torch.testing.assert_close(layer.get_delta_weight(), delta, atol=1e-6, rtol=0)


def test_embedding_delta():
    layer = wrap(make_base("embedding"), r=4, lora_alpha=6)
    randomise(layer)
    A, B = layer.factors()
    x = make_input(layer)
    expected = 1.5 * (B @ A).T[x]  # row x of the (num_embeddings, dim) table
    torch.testing.assert_close(layer(x) - layer.base_layer(x), expected, atol=1e-6, rtol=0)


# ----- Conv1D is a transposed Linear ------------------------------------------------------------
def test_conv1d_matches_equivalent_linear():
    conv = make_base("conv1d")
    lin = nn.Linear(IN, OUT)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.T)
        lin.bias.copy_(conv.bias)
    lc, ll = LoRALinear(conv, r=R, lora_alpha=8), LoRALinear(lin, r=R, lora_alpha=8)
    randomise(lc)
    with torch.no_grad():
        for src, dst in zip(lc.factors(), ll.factors()):
            dst.copy_(src)  # same (r, in) and (out, r) layout for both
    x = make_input(ll)
    torch.testing.assert_close(lc(x), ll(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(lc.get_delta_weight(), ll.get_delta_weight().T, atol=1e-6, rtol=0)
    lc.merge()
    ll.merge()
    torch.testing.assert_close(lc.base_layer.weight, ll.base_layer.weight.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(lc(x), ll(x), atol=1e-6, rtol=0)


# ----- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    ({"r": 0}, ValueError, "^r must be an integer >= 1"),
    ({"r": -2}, ValueError, "^r must be an integer >= 1"),
    ({"r": 2.0}, TypeError, "^r must be an integer >= 1"),
    ({"r": True}, TypeError, "^r must be an integer >= 1"),
    ({"lora_alpha": 0}, ValueError, "^lora_alpha must be a number > 0"),
    ({"lora_alpha": -1.0}, ValueError, "^lora_alpha must be a number > 0"),
    ({"lora_alpha": float("nan")}, ValueError, "^lora_alpha must be a number > 0"),
    ({"lora_alpha": "8"}, TypeError, "^lora_alpha must be a number > 0"),
    ({"lora_dropout": 1.0}, ValueError, r"^lora_dropout must be a number in \[0, 1\)"),
    ({"lora_dropout": -0.1}, ValueError, r"^lora_dropout must be a number in \[0, 1\)"),
    ({"init_lora_weights": "xavier"}, ValueError, "^init_lora_weights must be True"),
    ({"init_lora_weights": 1}, TypeError, "^init_lora_weights must be True"),
    ({"use_rslora": "yes"}, TypeError, "^use_rslora must be True or False"),
    ({"use_dora": 1}, TypeError, "^use_dora must be True or False"),
    ({"adapter_name": 3}, TypeError, "an adapter name must be a string"),
    ({"adapter_name": ""}, ValueError, "a non-empty string without dots"),
    ({"adapter_name": "a.b"}, ValueError, "a non-empty string without dots"),
    ({"adapter_name": "half"}, ValueError, "'half' is the name of an nn.Module attribute"),
])
@pytest.mark.parametrize("kind", KINDS)
def test_bad_arguments_raise(kind, kwargs, error, match):
    with pytest.raises(error, match=match):
        wrap(make_base(kind), **kwargs)


def test_unsupported_base_types_raise():
    with pytest.raises(TypeError, match="nn.Linear or transformers' Conv1D, got Conv2d"):
        LoRALinear(nn.Conv2d(3, 3, 3), r=2, lora_alpha=2)
    with pytest.raises(TypeError, match="For nn.Embedding use LoRAEmbedding"):
        LoRALinear(nn.Embedding(10, 4), r=2, lora_alpha=2)
    with pytest.raises(TypeError, match="LoRAEmbedding wraps nn.Embedding, got Linear"):
        LoRAEmbedding(nn.Linear(4, 4), r=2, lora_alpha=2)
    for cls in (LoRALinear, LoRAEmbedding):
        with pytest.raises(ValueError, match="already has LoRA"):
            cls(LoRALinear(nn.Linear(8, 8), r=2, lora_alpha=2), r=2, lora_alpha=2)


@pytest.mark.parametrize("kind,r", [("linear", OUT), ("linear", 50), ("conv1d", OUT), ("embedding", OUT)])
def test_full_rank_warns(kind, r):
    with pytest.warns(UserWarning, match="low rank"):
        wrap(make_base(kind), r=r)


def test_low_rank_does_not_warn(recwarn):
    wrap(make_base("linear"), r=OUT - 1)
    assert not [w for w in recwarn if "low rank" in str(w.message)]


# ----- dropout ----------------------------------------------------------------------------------
def test_dropout_acts_on_the_lora_path_only():
    layer = LoRALinear(make_base("linear"), r=R, lora_alpha=8, lora_dropout=0.9)
    x = make_input(layer)
    base_out = layer.base_layer(x)
    layer.train()
    # B = 0: the LoRA path is zero whatever dropout does, so the output is exactly the base's
    assert torch.equal(layer(x), base_out)
    randomise(layer)
    A, B = layer.factors()
    s = layer.scaling["default"]
    torch.manual_seed(123)
    out = layer(x)
    torch.manual_seed(123)  # replay the same dropout mask on the LoRA input only
    expected = base_out + s * F.dropout(x, p=0.9, training=True) @ (B @ A).T
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)  # values ~10: x / (1 - p)
    assert not torch.allclose(layer(x), out)  # train mode: a fresh mask each call
    layer.eval()
    full = base_out + s * x @ (B @ A).T
    torch.testing.assert_close(layer(x), full, atol=1e-6, rtol=0)
    assert torch.equal(layer(x), layer(x))  # eval mode: deterministic


# ----- switching the LoRA path off -------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_enable_adapters_false_computes_the_base_layer(kind):
    layer = wrap(make_base(kind))
    randomise(layer)
    x = make_input(layer)
    base_out, full_out = layer.base_layer(x), layer(x)
    assert not torch.allclose(base_out, full_out)
    layer.enable_adapters(False)
    assert layer.disable_adapters
    torch.testing.assert_close(layer(x), base_out, atol=0, rtol=0)
    layer.enable_adapters(True)
    torch.testing.assert_close(layer(x), full_out, atol=0, rtol=0)


# ----- against Hugging Face PEFT ----------------------------------------------------------------
class Tiny(nn.Module):
    """One layer of each kind LoRA supports here: Embedding -> Linear -> Conv1D."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, IN)
        self.lin = nn.Linear(IN, OUT)
        self.conv = Conv1D(8, OUT)  # (in=OUT, out=8), GPT-2 style

    def forward(self, ids):
        return self.conv(torch.tanh(self.lin(self.emb(ids))))


@pytest.mark.filterwarnings("ignore:fan_in_fan_out")
@pytest.mark.parametrize("use_rslora", [False, True])
def test_matches_peft(use_rslora):
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    tiny = Tiny()
    nn.init.normal_(tiny.conv.weight, std=0.3)
    cfg = peft.LoraConfig(r=R, lora_alpha=6, target_modules=["emb", "lin", "conv"],
                          init_lora_weights=False, use_rslora=use_rslora)  # False: B is random too
    pm = peft.get_peft_model(copy.deepcopy(tiny), cfg)
    pm.eval()
    ours = copy.deepcopy(tiny)
    ids = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(4))
    for name in ["emb", "lin", "conv"]:
        pl = getattr(pm.base_model.model, name)
        if name == "emb":
            ml = LoRAEmbedding(getattr(ours, name), r=R, lora_alpha=6, use_rslora=use_rslora)
            pA, pB = pl.lora_embedding_A["default"], pl.lora_embedding_B["default"]
        else:
            ml = LoRALinear(getattr(ours, name), r=R, lora_alpha=6, use_rslora=use_rslora)
            pA, pB = pl.lora_A["default"].weight, pl.lora_B["default"].weight
        assert torch.count_nonzero(pB) > 0 and torch.count_nonzero(pA) > 0
        A, B = ml.factors()
        assert A.shape == pA.shape and B.shape == pB.shape  # same layout as PEFT
        with torch.no_grad():
            A.copy_(pA)
            B.copy_(pB)
        setattr(ours, name, ml)
        assert ml.scaling["default"] == pl.scaling["default"]
        torch.testing.assert_close(ml.get_delta_weight(), pl.get_delta_weight("default"), atol=1e-6, rtol=0)
        x = ids if name == "emb" else torch.randn(3, 7, ml.in_features)
        torch.testing.assert_close(ml(x), pl(x), atol=1e-6, rtol=0)
    out_peft = pm(ids)
    torch.testing.assert_close(ours(ids), out_peft, atol=1e-6, rtol=0)
    # merged weights agree too
    merged = pm.merge_and_unload()
    for name in ["emb", "lin", "conv"]:
        getattr(ours, name).merge()
        torch.testing.assert_close(getattr(ours, name).base_layer.weight, getattr(merged, name).weight,
                                   atol=1e-6, rtol=0)
    torch.testing.assert_close(ours(ids), out_peft, atol=1e-5, rtol=0)


def test_embedding_says_that_init_does_not_apply():
    with pytest.warns(UserWarning, match="acts as True on an embedding"):
        LoRAEmbedding(nn.Embedding(10, 4), r=2, lora_alpha=2, init_lora_weights="gaussian")


# ----- the base class, PEFT's initialisation order, safe merging -----------------------------------
def test_one_base_class_with_peft_names():
    lin, emb = wrap(make_base("linear")), wrap(make_base("embedding"))
    assert isinstance(lin, LoRALayer) and isinstance(emb, LoRALayer)
    assert lin.adapter_layer_names == ("lora_A", "lora_B", "lora_magnitude_vector")  # PEFT's names, fixed
    assert emb.adapter_layer_names == ("lora_embedding_A", "lora_embedding_B")
    assert len(lin.lora_magnitude_vector) == 0  # DoRA's container exists, empty: no parameter, no state_dict key
    for layer in (lin, emb):
        assert layer.get_base_layer() is layer.base_layer
        trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
        assert trainable == {f"{c}.default" + (".weight" if layer is lin else "") for c in layer.adapter_layer_names
                             if "default" in getattr(layer, c)} == {n for n in layer.state_dict() if "lora_" in n}
    assert isinstance(lin.lora_A["default"], nn.Linear) and lin.lora_A["default"].bias is None


@pytest.mark.filterwarnings("ignore:fan_in_fan_out", "ignore:init_lora_weights='gaussian' acts as True")
@pytest.mark.parametrize("init", [True, "gaussian", False])
def test_seeded_alike_minilora_and_peft_draw_the_same_adapters(init):
    peft = pytest.importorskip("peft")
    kinds = {"emb": "embedding", "lin": "linear", "conv": "conv1d"}
    torch.manual_seed(5)
    theirs = peft.get_peft_model(Tiny(), peft.LoraConfig(r=R, lora_alpha=6, target_modules=list(kinds),
                                                         init_lora_weights=init))
    torch.manual_seed(5)
    ours = Tiny()
    for name in kinds:  # in module order, as PEFT injects
        cls = LoRAEmbedding if name == "emb" else LoRALinear
        setattr(ours, name, cls(getattr(ours, name), r=R, lora_alpha=6, init_lora_weights=init))
    mine = dict(ours.named_parameters())
    for key, value in theirs.base_model.model.named_parameters():
        assert torch.equal(mine[key], value), key  # the same names, the same numbers
    assert mine.keys() == dict(theirs.base_model.model.named_parameters()).keys()


def test_init_false_makes_b_random_too():
    layer = LoRALinear(make_base("linear"), r=R, init_lora_weights=False)
    x = make_input(layer)
    assert torch.count_nonzero(layer.lora_B["default"].weight) == R * OUT
    assert not torch.allclose(layer(x), layer.base_layer(x))


def test_safe_merge_refuses_a_broken_adapter():
    layer = wrap(make_base("linear"))
    randomise(layer)
    w0 = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B["default"].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        layer.merge(safe_merge=True)
    assert torch.equal(layer.base_layer.weight, w0) and not layer.merged


def test_merge_a_chosen_adapter_only():
    layer = wrap(make_base("linear"))
    layer.update_layer("other", r=2, lora_alpha=2)
    randomise(layer)
    with torch.no_grad():
        layer.lora_B["other"].weight.normal_()
    layer.set_adapter(["default", "other"])
    x = make_input(layer)
    both = layer(x)
    w0 = layer.base_layer.weight.detach().clone()
    layer.merge(adapter_names=["other"])
    assert layer.merged_adapters == ["other"]
    torch.testing.assert_close(layer.base_layer.weight, w0 + layer.get_delta_weight("other"), atol=1e-6, rtol=0)
    torch.testing.assert_close(layer(x), both, atol=1e-5, rtol=0)  # "default" still added in forward
