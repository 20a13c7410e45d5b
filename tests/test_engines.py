"""minilora.course.engines.vllm_problems: vLLM's PEFTHelper rules applied to folders save_adapter wrote."""
import json

import pytest

import minilora
from minilora import LoRAConfig
from minilora.course.engines import vllm_problems


def saved(tiny, tmp_path, arch="llama", **config):
    model = tiny.make[arch]()
    minilora.inject_lora(model, LoRAConfig(**config))
    return minilora.save_adapter(model, tmp_path / "adapter")


def test_a_plain_adapter_would_load(tiny, tmp_path):
    assert vllm_problems(saved(tiny, tmp_path, r=8, target_modules=["q_proj", "v_proj"])) == []


@pytest.mark.parametrize("config, words", [
    (dict(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"]), "modules_to_save"),
    (dict(r=4, target_modules=["q_proj"], use_dora=True), "DoRA"),
    (dict(r=4, target_modules=["q_proj"], bias="lora_only"), "bias"),
    (dict(r=17, target_modules=["q_proj"]), "max-lora-rank 16"),
])
def test_what_vllm_refuses(tiny, tmp_path, config, words):
    problems = vllm_problems(saved(tiny, tmp_path, **config))
    assert len(problems) == 1 and words in problems[0]


def test_a_classifier_head_only_for_classification_and_the_rank_limit_moves(tiny, tmp_path):
    folder = saved(tiny, tmp_path, "bert", r=17, target_modules=["query"], modules_to_save=["classifier"])
    assert len(vllm_problems(folder)) == 2
    assert vllm_problems(folder, max_lora_rank=32, classification=True) == []


def test_a_config_that_changes_the_base_or_lacks_a_field(tiny, tmp_path):
    folder = saved(tiny, tmp_path, r=4, target_modules=["q_proj"])
    config = json.loads((folder / "adapter_config.json").read_text())
    config["init_lora_weights"] = "pissa"
    del config["lora_alpha"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    problems = vllm_problems(folder)
    assert any("lora_alpha" in p for p in problems) and any("pissa" in p for p in problems)


def test_not_an_adapter_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_adapter"):
        vllm_problems(tmp_path)
