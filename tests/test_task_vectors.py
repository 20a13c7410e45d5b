"""minilora.task_vectors: a LoRA adapter's task vector is its ΔW; merges are minilora.merging per layer;
adding a vector to a plain model is the same model as the adapter, and is undone exactly."""
import copy

import pytest
import torch
from peft.utils import merge_utils

import minilora as ml
from minilora import merging
from minilora.errors import UnknownAdapterError
from minilora.task_vectors import COMBINATION_TYPES, added, merge_task_vectors, task_vector

TARGETS = ["query", "value"]


def adapted(tiny, names=("a", "b"), seed=3):
    """A tiny BERT with one trained-looking LoRA adapter per name (its head left alone)."""
    model = tiny.bert()
    for i, name in enumerate(names):
        ml.add_adapter(model, name, ml.LoRAConfig(r=2 + i, lora_alpha=4, target_modules=TARGETS))
        g = torch.Generator().manual_seed(seed + i)
        with torch.no_grad():
            for _, layer in ml.lora_layers(model):
                layer.lora_B[name].weight.copy_(torch.randn(layer.lora_B[name].weight.shape, generator=g))
    return model


def test_a_task_vector_is_the_adapters_delta_weight_and_adding_it_is_the_adapted_model(tiny):
    model = adapted(tiny, ("a",))
    vector = task_vector(model, "a")
    assert sorted(vector) == sorted(name for name, _ in ml.lora_layers(model)) and len(vector) == 4
    for name, layer in ml.lora_layers(model):
        torch.testing.assert_close(vector[name], layer.get_delta_weight("a"), rtol=0, atol=0)
    plain = tiny.bert()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with added(plain, vector):
        torch.testing.assert_close(tiny.logits(plain), tiny.logits(model), atol=1e-5, rtol=0)
    for k, v in plain.state_dict().items():  # put back bit for bit
        assert torch.equal(v, before[k]), k


def test_scale_and_negation(tiny):
    model = adapted(tiny, ("a",))
    vector, plain = task_vector(model, "a"), tiny.bert()
    with added(plain, vector, scale=-1.0):
        negated = tiny.logits(plain)
    with added(plain, merge_task_vectors([vector], [-1.0])):
        torch.testing.assert_close(tiny.logits(plain), negated, rtol=0, atol=1e-6)


def test_task_arithmetic_is_the_weighted_sum(tiny):
    model = adapted(tiny)
    va, vb = task_vector(model, "a"), task_vector(model, "b")
    merged = merge_task_vectors([va, vb], [0.7, -0.3])
    for name in va:
        torch.testing.assert_close(merged[name], 0.7 * va[name] - 0.3 * vb[name], atol=1e-6, rtol=0)
    ml.set_adapter(model, ["a", "b"])  # stacking with both weights 1 is task arithmetic at (1, 1)
    plain = tiny.bert()
    with added(plain, merge_task_vectors([va, vb], [1.0, 1.0])):
        torch.testing.assert_close(tiny.logits(plain), tiny.logits(model), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["magnitude_prune", "ties", "dare_linear", "dare_ties"])
def test_each_layer_is_merged_as_peft_merge_utils_does(tiny, kind):
    model = adapted(tiny)
    va, vb = task_vector(model, "a"), task_vector(model, "b")
    merged = merge_task_vectors([va, vb], [0.8, 1.2], kind, density=0.3, seed=5)
    torch.manual_seed(5)  # the same draws, layer by layer in sorted order
    for name in sorted(va):
        fn = getattr(merge_utils, kind)
        args = ([va[name], vb[name]], torch.tensor([0.8, 1.2]), 0.3)
        want = fn(*args, "total") if kind in ("ties", "dare_ties") else fn(*args)
        torch.testing.assert_close(merged[name], want, atol=1e-6, rtol=0)


def test_dare_is_reproducible_for_its_seed_and_leaves_the_global_generator_alone(tiny):
    model = adapted(tiny)
    vectors = [task_vector(model, "a"), task_vector(model, "b")]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = merge_task_vectors(vectors, [1.0, 1.0], "dare_ties", 0.5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    again = merge_task_vectors(vectors, [1.0, 1.0], "dare_ties", 0.5, seed=1)
    other = merge_task_vectors(vectors, [1.0, 1.0], "dare_ties", 0.5, seed=2)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_ties_at_density_1_of_one_task_is_the_task_itself(tiny):
    vector = task_vector(adapted(tiny, ("a",)), "a")
    merged = merge_task_vectors([vector], [1.0], "ties", density=1.0)
    assert all(torch.allclose(merged[k], vector[k], atol=1e-7) for k in vector)


def test_a_layer_missing_from_one_vector_counts_as_zero(tiny):
    model = adapted(tiny)
    va, vb = task_vector(model, "a"), task_vector(model, "b")
    only = sorted(vb)[:1]
    merged = merge_task_vectors([va, {k: vb[k] for k in only}], [1.0, 1.0])
    for name in va:
        want = va[name] + (vb[name] if name in only else 0)
        torch.testing.assert_close(merged[name], want, atol=1e-6, rtol=0)


def test_bad_input_is_refused_with_what_to_do(tiny):
    model = adapted(tiny, ("a",))
    v = task_vector(model, "a")
    with pytest.raises(UnknownAdapterError, match=r"no adapter named 'b' in the model's LoRA layers; it has \['a'\]"):
        task_vector(model, "b")
    with pytest.raises(TypeError, match="adapter_name must be a string"):
        task_vector(model, 0)
    with pytest.raises(ValueError, match="unknown combination_type 'svd'.*'task_arithmetic'"):
        merge_task_vectors([v], [1.0], "svd")
    with pytest.raises(ValueError, match="needs a density"):
        merge_task_vectors([v], [1.0], "ties")
    with pytest.raises(ValueError, match=r"density must be a number in \(0, 1\], got 0.0. It is the fraction"):
        merge_task_vectors([v], [1.0], "dare_ties", density=0.0)
    with pytest.raises(TypeError, match="density must be a number"):
        merge_task_vectors([v], [1.0], "ties", density="0.5")
    with pytest.raises(ValueError, match="task arithmetic keeps every entry"):
        merge_task_vectors([v], [1.0], density=0.5)
    with pytest.raises(ValueError, match="one weight per task vector: 2 vectors, 1 weights"):
        merge_task_vectors([v, v], [1.0])
    with pytest.raises(TypeError, match="vectors must be a list of task vectors"):
        merge_task_vectors(v, [1.0])
    with pytest.raises(ValueError, match="non-empty list"):
        merge_task_vectors([], [])
    with pytest.raises(TypeError, match="weights must be a list of numbers"):
        merge_task_vectors([v], ["1.0"])
    with pytest.raises(TypeError, match="combination_type must be one of"):
        merge_task_vectors([v], [1.0], None)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        merge_task_vectors([v], [1.0], "dare_linear", density=0.5, seed=-1)
    name = next(iter(v))
    with pytest.raises(ValueError, match="disagree on the shape"):
        merge_task_vectors([v, {name: v[name][:, :3]}], [1.0, 1.0])
    plain = tiny.bert()
    before = copy.deepcopy(plain.state_dict())
    with pytest.raises(ValueError, match="has no layer 'nope'"):
        with added(plain, {**v, "nope": v[name]}):
            pass
    with pytest.raises(ValueError, match="no weight of shape"):
        with added(plain, {**v, name: v[name][:, :3]}):
            pass
    with pytest.raises(TypeError, match="scale must be a number"):
        with added(plain, v, scale="1"):
            pass
    with pytest.raises(TypeError, match="vector must be a task vector"):
        with added(plain, [v]):
            pass
    assert all(torch.equal(t, before[k]) for k, t in plain.state_dict().items())  # nothing was changed


def test_the_weights_come_back_after_an_error_inside_the_block(tiny):
    v = task_vector(adapted(tiny, ("a",)), "a")
    plain = tiny.bert()
    before = copy.deepcopy(plain.state_dict())
    with pytest.raises(RuntimeError):
        with added(plain, v):
            raise RuntimeError("inside")
    assert all(torch.equal(t, before[k]) for k, t in plain.state_dict().items())


def test_the_combination_types_are_merging_functions():
    assert all(callable(getattr(merging, kind)) for kind in COMBINATION_TYPES)
