"""The one extension point of a LoRA layer (minilora.variants.LoraVariant, documented in minilora.layers):
a variant defined here plugs in through it; DoRA and plain adapters share a layer; and the layer checks
every argument before it changes anything (a refused call leaves it exactly as it was)."""
import copy
import inspect

import pytest
import snapshot
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from minilora.dora import DoraVariant
from minilora.embedding import LoRAEmbedding
from minilora.errors import UnknownAdapterError
from minilora.layers import LoRALinear, LoraVariant
from minilora.pissa import PissaDoraVariant, PissaVariant
from minilora.qlora import LinearNF4

K = 3.0


class Scaled(LoraVariant):
    """A variant that multiplies plain LoRA's update by ``k``: it overrides forward and the update only;
    merge and unmerge follow from the update (the base class's defaults)."""

    def __init__(self, k: float):
        self.k = k

    def forward(self, layer, adapter_name, x, result):
        return result + self.k * layer.plain_output(adapter_name, x).to(result.dtype)

    def get_delta_weight(self, layer, adapter_name):
        return self.k * layer.plain_delta_weight(adapter_name)


class ScaledLinear(LoRALinear):
    def resolve_lora_variant(self, **kwargs):  # the documented way in: a subclass picks the variant
        return Scaled(K)


class ScaledEmbedding(LoRAEmbedding):
    def resolve_lora_variant(self, **kwargs):
        return Scaled(K)


def base(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return {"linear": lambda: nn.Linear(6, 5), "conv1d": lambda: Conv1D(5, 6),
            "embedding": lambda: nn.Embedding(20, 5)}[kind]()


def inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 20, (2, 4), generator=g) if kind == "embedding" else torch.randn(2, 4, 6, generator=g)


def pair(kind: str):
    """(plain layer, scaled layer), with the same base and the same A and B (B random: not a no-op)."""
    plain_cls, scaled_cls = (LoRAEmbedding, ScaledEmbedding) if kind == "embedding" else (LoRALinear, ScaledLinear)
    b = base(kind)
    torch.manual_seed(2)
    plain = plain_cls(copy.deepcopy(b), r=2, lora_alpha=4, init_lora_weights=False)
    torch.manual_seed(2)
    scaled = scaled_cls(copy.deepcopy(b), r=2, lora_alpha=4, init_lora_weights=False)
    for p, q in zip(plain.factors(), scaled.factors()):
        assert torch.equal(p, q) and torch.count_nonzero(p) > 0
    return plain, scaled


@pytest.mark.parametrize("kind", ["linear", "conv1d", "embedding"])
def test_a_custom_variant_changes_forward_merge_unmerge_and_delta_together(kind):
    plain, scaled = pair(kind)
    assert isinstance(scaled.lora_variant["default"], Scaled) and type(plain.lora_variant["default"]) is LoraVariant
    x = inputs(kind)
    base_out = plain.base_layer(x)
    assert (plain(x) - base_out).abs().max() > 1e-2  # the update is not negligible
    torch.testing.assert_close(scaled(x) - base_out, K * (plain(x) - base_out), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.get_delta_weight(), K * plain.get_delta_weight(), atol=1e-6, rtol=0)
    w0, before = scaled.base_layer.weight.detach().clone(), scaled(x)
    scaled.merge()
    torch.testing.assert_close(scaled.base_layer.weight, w0 + scaled.get_delta_weight(), atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled(x), before, atol=1e-5, rtol=0)  # merged == unmerged outputs
    scaled.unmerge()
    torch.testing.assert_close(scaled.base_layer.weight, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(scaled(x), before, atol=1e-5, rtol=0)
    assert sorted(scaled.state_dict()) == sorted(plain.state_dict())  # a variant adds no key of its own


def test_dora_and_plain_adapters_side_by_side_in_one_layer():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(lin), r=2, lora_alpha=4, use_dora=True)  # "default": DoRA, scaling 2
    layer.update_layer("plain", r=3, lora_alpha=3)  # scaling 1
    assert isinstance(layer.lora_variant["default"], DoraVariant) and type(layer.lora_variant["plain"]) is LoraVariant
    assert list(layer.lora_magnitude_vector) == ["default"]
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name in ("default", "plain"):
            layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=g))
        layer.lora_magnitude_vector["default"].weight.mul_(torch.linspace(0.5, 1.5, 5))
    layer.set_adapter(["default", "plain"])
    (A1, B1), (A2, B2) = layer.factors("default"), layer.factors("plain")
    m = layer.lora_magnitude_vector["default"].weight.detach()
    W0, b = lin.weight.detach(), lin.bias.detach()
    V = W0 + 2.0 * B1 @ A1
    x = torch.randn(3, 6, generator=g)
    dora = x @ ((m / V.norm(dim=1))[:, None] * V).T + b  # the paper's W' = m V / ||V||_c
    expected = dora + x @ (1.0 * B2 @ A2).T  # then the plain adapter adds its update
    y = layer(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    layer.merge()
    assert layer.merged_adapters == ["default", "plain"]
    torch.testing.assert_close(layer(x), y, atol=1e-5, rtol=0)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, W0, atol=1e-6, rtol=0)
    layer.delete_adapter("default")  # the plain adapter is left; the magnitude goes with its adapter
    assert layer.adapters == ["plain"] and len(layer.lora_magnitude_vector) == 0
    assert not any("magnitude" in k for k in layer.state_dict())
    assert layer.adapter_layer_names == ("lora_A", "lora_B", "lora_magnitude_vector")


def test_pissa_and_dora_variants_are_chosen_and_pissa_replaces_the_base_through_the_layer():
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    layer = LoRALinear(copy.deepcopy(lin), r=2, lora_alpha=4, init_lora_weights="pissa", use_dora=True)
    variant = layer.lora_variant["default"]
    assert type(variant) is PissaDoraVariant and isinstance(variant, PissaVariant) and isinstance(variant, DoraVariant)
    assert layer.base_layer.weight is not None and not torch.allclose(layer.base_layer.weight, lin.weight)
    x = torch.randn(3, 6)
    torch.testing.assert_close(layer(x), lin(x), atol=1e-5, rtol=0)  # residual + s B A = W, m = ||W||
    with pytest.raises(ValueError, match="same shape"):
        layer.replace_base_weight(torch.zeros(6, 5))
    layer.merge()
    with pytest.raises(ValueError, match="unmerge"):
        layer.replace_base_weight(torch.zeros(5, 6))


def test_update_layer_takes_the_same_arguments_on_every_layer_type():
    names = ["self", "adapter_name", "r", "lora_alpha", "lora_dropout", "init_lora_weights", "use_rslora", "use_dora"]
    for cls in (LoRALinear, LoRAEmbedding):
        assert list(inspect.signature(cls.update_layer).parameters) == names


def _layer(kind: str):
    torch.manual_seed(0)
    if kind == "embedding":
        return LoRAEmbedding(nn.Embedding(20, 5), r=2, lora_alpha=4)
    if kind == "nf4":
        return LoRALinear(LinearNF4.from_linear(nn.Linear(64, 64)), r=2, lora_alpha=4)
    if kind == "fp64":
        return LoRALinear(nn.Linear(6, 5).double(), r=2, lora_alpha=4)
    layer = LoRALinear(nn.Linear(6, 5), r=2, lora_alpha=4)
    if kind == "merged":
        layer.update_layer("other", r=2, lora_alpha=4, init_lora_weights=False)
        layer.merge(adapter_names=["other"])
    return layer


REFUSED = [  # (layer kind, update_layer arguments, error, message)
    ("linear", dict(r=0), ValueError, "r must be"),
    ("linear", dict(r="2"), TypeError, "r must be"),
    ("linear", dict(lora_alpha=0), ValueError, "lora_alpha must be"),
    ("linear", dict(lora_dropout=1.0), ValueError, "lora_dropout must be"),
    ("linear", dict(init_lora_weights="xavier"), ValueError, "init_lora_weights must be"),
    ("linear", dict(use_rslora="yes"), TypeError, "use_rslora must be"),
    ("linear", dict(use_dora="yes"), TypeError, "use_dora must be"),
    ("linear", dict(adapter_name=""), ValueError, "non-empty string"),
    ("linear", dict(adapter_name=5), TypeError, "must be a string"),
    ("linear", dict(adapter_name="half"), ValueError, "nn.Module attribute"),
    ("linear", dict(adapter_name="default"), ValueError, "already exists"),
    ("linear", dict(r=6, init_lora_weights="pissa"), ValueError, "choose r <= 5"),
    ("fp64", dict(init_lora_weights="pissa"), TypeError, "float32, float16 or bfloat16"),
    ("merged", dict(init_lora_weights="pissa"), ValueError, "unmerge"),
    ("nf4", dict(use_dora=True), ValueError, "quantized"),
    ("nf4", dict(init_lora_weights="pissa"), ValueError, "quantized"),
    ("embedding", dict(use_dora=True), ValueError, "minilora implements DoRA for linear layers only.*PEFT"),
    ("embedding", dict(init_lora_weights="pissa"), ValueError, "an embedding: PiSSA"),
    ("embedding", dict(r=0), ValueError, "r must be"),
    ("embedding", dict(adapter_name="default"), ValueError, "already exists"),
]


@pytest.mark.filterwarnings("ignore:r=6 >= min")
@pytest.mark.parametrize("kind, kwargs, error, match", REFUSED)
def test_a_refused_update_layer_leaves_the_layer_unchanged(kind, kwargs, error, match):
    layer = _layer(kind)
    before, variants = snapshot.take(layer), dict(layer.lora_variant)
    args = {"adapter_name": "new", "r": 2, "lora_alpha": 4, **kwargs}
    with pytest.raises(error, match=match):
        layer.update_layer(**args)
    snapshot.assert_same(before, layer)
    assert layer.lora_variant == variants


def test_embedding_refuses_use_dora_when_built():
    with pytest.raises(ValueError, match="an embedding: minilora implements DoRA for linear layers only"):
        LoRAEmbedding(nn.Embedding(20, 5), r=2, use_dora=True)


class Boom(LoraVariant):
    def init(self, layer, adapter_name, **kwargs):
        super().init(layer, adapter_name, **kwargs)
        raise RuntimeError("boom")


class BoomLinear(LoRALinear):
    def resolve_lora_variant(self, **kwargs):
        return Boom() if getattr(self, "explode", False) else super().resolve_lora_variant(**kwargs)


def test_a_variant_whose_init_fails_leaves_the_layer_as_it_was():
    torch.manual_seed(0)
    layer = BoomLinear(nn.Linear(6, 5), r=2)
    layer.explode = True
    before = snapshot.take(layer)
    with pytest.raises(RuntimeError, match="boom"):
        layer.update_layer("new", r=2, lora_alpha=2)
    snapshot.assert_same(before, layer)
    assert list(layer.lora_variant) == ["default"]


def test_unknown_names_are_refused_before_anything_changes():
    layer = _layer("linear")
    layer.update_layer("b", r=2, lora_alpha=2, init_lora_weights=False)
    before = snapshot.take(layer)
    for call in (lambda: layer.merge(adapter_names=["b", "nope"]), lambda: layer.set_adapter(["b", "nope"]),
                 lambda: layer.delete_adapter("nope"), lambda: layer.get_delta_weight("nope")):
        with pytest.raises(UnknownAdapterError, match=r"no adapter named 'nope' in this layer; it has \['default'"):
            call()
        snapshot.assert_same(before, layer)
    with pytest.raises(KeyError):  # UnknownAdapterError is a KeyError and a ValueError: old callers still catch it
        layer.set_adapter("nope")
    with pytest.raises(TypeError, match="adapter name or a list of names"):
        layer.set_adapter(3)
    with pytest.raises(TypeError, match="enabled must be True or False"):
        layer.enable_adapters("no")
    snapshot.assert_same(before, layer)


def test_a_refused_safe_merge_of_several_adapters_leaves_the_weight_as_it_was():
    layer = _layer("linear")
    layer.update_layer("b", r=2, lora_alpha=2, init_lora_weights=False)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        layer.lora_B["b"].weight[0, 0] = float("inf")  # "b" is broken (inf: the snapshot compares equal to itself)
    before = snapshot.take(layer)
    with pytest.raises(ValueError, match="NaNs detected.*'b'"):
        layer.merge(safe_merge=True, adapter_names=["default", "b"])
    snapshot.assert_same(before, layer)
    assert not layer.merged
