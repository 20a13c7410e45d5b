"""LoRAConfig: every field documented, PEFT's defaults, and the error vocabulary (TypeError for a wrong
type, ValueError for a wrong value), each message saying what to pass."""
import dataclasses
import math
import re

import peft
import pytest
from torch import nn

import minilora as ml
from minilora.config import LoRAConfig, lora_scaling
from minilora.layers import LoRALinear

FIELDS = dataclasses.fields(LoRAConfig)


def _documented() -> dict[str, str]:
    """The "Args:" entries of LoRAConfig's docstring: {field name: its whole text}."""
    doc = LoRAConfig.__doc__
    args = doc[doc.index("    Args:\n") + len("    Args:\n"):doc.index("\n    Raises:")]
    entries = re.split(r"\n        (?=\w+: )", "\n" + args)
    return {e.split(":", 1)[0].strip(): " ".join(e.split(":", 1)[1].split()) for e in entries if e.strip()}


def test_the_docstring_documents_exactly_the_fields():
    assert list(_documented()) == [f.name for f in FIELDS]


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: f.name)
def test_every_field_says_what_it_means_its_default_and_where_it_comes_from(field):
    text = _documented()[field.name]
    assert len(text.split()) >= 20, f"{field.name}: say what it means in PEFT: {text!r}"
    assert f"Default: ``{field.default!r}``" in text, f"{field.name}: the documented default must be {field.default!r}"
    assert re.search(r"et al\. 20\d\d|Kalajdzievski 2023|section \d|PEFT", text), f"{field.name}: cite a source"
    assert re.search(r"Chapters? \d\d", text), f"{field.name}: name the chapter that teaches it"


def test_the_papers_are_cited_at_their_sections():
    doc = " ".join(LoRAConfig.__doc__.split())
    for citation in ("Hu et al. 2021), section 4.1", "section 7.1 (Table 5", "Kalajdzievski 2023",
                     "Meng et al. 2024, section 3", "Liu et al. 2024, section 4"):
        assert citation in doc


def test_the_defaults_are_peft_defaults():
    theirs = {f.name: f.default for f in dataclasses.fields(peft.LoraConfig)}
    for field in FIELDS:
        assert field.default == theirs[field.name], field.name
    assert peft.LoraConfig(**LoRAConfig().to_dict()).r == 8


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(r=True), r"r must be an integer >= 1, got True \(bool\)\. r is the rank"),
    (dict(r="8"), r"r must be an integer >= 1, got '8' \(str\)"),
    (dict(r=2.0), r"r must be an integer >= 1, got 2.0 \(float\)"),
    (dict(lora_alpha="16"), r"lora_alpha must be a number > 0, got '16' \(str\)\. The update is scaled"),
    (dict(lora_dropout=None), r"lora_dropout must be a number in \[0, 1\), got None"),
    (dict(use_rslora=1), r"use_rslora must be True or False, got 1 \(int\)"),
    (dict(use_dora="yes"), r"use_dora must be True or False, got 'yes' \(str\)"),
    (dict(init_lora_weights=1), r"init_lora_weights must be True .*'pissa_niter_K'.*got 1 \(int\)"),
    (dict(bias=None), r"bias must be one of \('none', 'all', 'lora_only'\), got None"),
    (dict(target_modules=5), r"target_modules must be a list of names, a regex string or 'all-linear'; got 5 \(int\)"),
    (dict(target_modules=["query", 2]), r"target_modules must list module names as strings, got 2 \(int\)"),
    (dict(exclude_modules=3.5), "exclude_modules must be a list of names"),
    (dict(modules_to_save=[1]), r"modules_to_save must list module names as strings, got 1 \(int\).*'classifier'"),
    (dict(modules_to_save=5), r"modules_to_save must be a list of module names, got 5 \(int\)"),
])
def test_a_wrong_type_is_a_type_error(kwargs, fragment):
    with pytest.raises(TypeError, match=fragment):
        LoRAConfig(**kwargs)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(r=0), r"r must be an integer >= 1, got 0\. r is the rank of the update"),
    (dict(r=-2), "got -2"),
    (dict(lora_alpha=0), r"lora_alpha must be a number > 0, got 0\."),
    (dict(lora_alpha=float("nan")), "lora_alpha must be a number > 0, got nan"),
    (dict(lora_dropout=1.0), r"lora_dropout must be a number in \[0, 1\), got 1.0\. .*0.0 turns it off"),
    (dict(lora_dropout=-0.1), r"lora_dropout must be a number in \[0, 1\)"),
    (dict(bias="some"), "bias must be one of"),
    (dict(init_lora_weights="xavier"), "init_lora_weights must be True"),
    (dict(init_lora_weights="pissa_niter_"), "init_lora_weights must be True"),
    (dict(target_modules=[]), "non-empty list"),
    (dict(target_modules=["query", ""]), "holds an empty name"),
    (dict(target_modules="q_proj(("), "does not compile"),
    (dict(target_modules="all-linear", exclude_modules="all-linear"), "exclude every target"),
    (dict(modules_to_save=[""]), "modules_to_save holds an empty name"),
])
def test_a_wrong_value_is_a_value_error(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("((", r"\(\(")) as e:
        LoRAConfig(**kwargs)
    assert not isinstance(e.value, TypeError)


def test_layers_refuse_what_the_config_refuses():
    """LoRALinear runs the same checks, so a layer built by hand fails as a config would."""
    with pytest.raises(TypeError, match="r must be an integer >= 1"):
        LoRALinear(nn.Linear(4, 4), r="2", lora_alpha=2)
    with pytest.raises(ValueError, match="lora_dropout must be a number in"):
        LoRALinear(nn.Linear(4, 4), r=2, lora_alpha=2, lora_dropout=1.0)


def test_accepted_values_are_normalised_as_peft_would_read_them():
    config = LoRAConfig(r=4, lora_alpha=16, target_modules=("query", "value"), exclude_modules={"b", "a"},
                        modules_to_save="classifier", init_lora_weights="pissa_niter_4")
    assert config.target_modules == ["query", "value"] and config.exclude_modules == ["a", "b"]
    assert config.modules_to_save == ["classifier"]
    assert config.lora_alpha == 16 and type(config.lora_alpha) is int  # kept as given, as PEFT does
    assert peft.LoraConfig(**config.to_dict()).modules_to_save == ["classifier"]
    for init in (True, False, "gaussian", "pissa", "pissa_niter_0"):
        assert LoRAConfig(init_lora_weights=init).init_lora_weights == init


def test_scaling_is_alpha_over_r_or_over_sqrt_r():
    assert LoRAConfig(r=16, lora_alpha=32).scaling == 2.0
    assert math.isclose(LoRAConfig(r=16, lora_alpha=32, use_rslora=True).scaling, 8.0)
    assert lora_scaling(64, 16, use_rslora=True) == 16 / 8


def test_the_package_exports_the_config():
    assert ml.LoRAConfig is LoRAConfig
