"""minilora.course.chat_runs.intruders: intruder counts per layer type, for LoRA and for full fine-tuning."""
import copy

import torch

import minilora
from minilora import LoRAConfig
from minilora.course.chat_runs import intruders
from minilora.intruders import intruder_dimensions


def test_lora_counts_only_adapted_layers_and_equals_the_detector(tiny):
    base = tiny.llama()
    model = copy.deepcopy(base)
    minilora.inject_lora(model, LoRAConfig(r=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for _, layer in minilora.lora_layers(model):
            layer.factors("default")[1].normal_(0, 1.0)
    counts = intruders(model, base)
    assert counts["layers_attention"] == 2 and counts["layers_mlp"] == 2  # q_proj and down_proj in 2 blocks
    want = sum(len(intruder_dimensions(layer.base_layer.weight, layer.base_layer.weight + layer.get_delta_weight(),
                                       10, 0.5)[0]) for name, layer in minilora.lora_layers(model) if "q_proj" in name)
    assert counts["intruders_attention"] == want > 0


def test_full_fine_tuning_counts_every_linear_layer_of_the_blocks(tiny):
    base = tiny.llama()
    model = copy.deepcopy(base)
    assert intruders(model, base) == {"intruders_attention": 0, "layers_attention": 8, "intruders_mlp": 0,
                                      "layers_mlp": 6}  # unchanged weights: no intruders
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.add_(3 * torch.outer(torch.randn(32), torch.randn(32)))
    assert intruders(model, base)["intruders_attention"] >= 1
