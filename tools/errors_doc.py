"""Write docs/errors.md: the inputs minilora refuses, each with the error it raises, its message and the fix.

Every row is run, not typed: each example is executed on fresh tiny models (random weights, the
shapes of BERT and Llama) in a scratch folder, and the table records the exception it raised and
the first line of its message, as a learner sees them. tests/test_errors_doc.py renders the table
again and requires it to equal the committed file, so a message that changes without the table,
or an example that stops raising, fails the tests.

    python tools/errors_doc.py            # rewrite docs/errors.md
    python tools/errors_doc.py --check    # exit 1 if docs/errors.md is not current
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import sys
import tempfile
import warnings
from dataclasses import dataclass

from minilora.files import write_atomic

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"

#: Run before every example, in a fresh namespace and a fresh scratch folder (the working directory).
SETUP = '''
import json, pathlib
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForCausalLM
import minilora as ml
from minilora import LoRAConfig
from minilora.layers import LoRALinear
from minilora.embedding import LoRAEmbedding
from minilora.prompting import PromptTuningConfig
from minilora.preference import dpo_loss, get_batch_logps
from minilora.rl import group_advantages

def tiny_bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64, num_labels=3)).eval()

def tiny_llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)).eval()

base = tiny_bert()   # a plain model
model = tiny_bert()  # the same model with a trained-looking adapter "default" and its own classifier head
ml.inject_lora(model, LoRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"]))
ml.add_adapter(model, "other", LoRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(0, 0.1)
ml.save_adapter(model, "saved-adapter")
ids = torch.randint(0, 100, (2, 8), generator=torch.Generator().manual_seed(1))
batches = [{"input_ids": ids, "labels": torch.tensor([0, 1])}]
'''


@dataclass
class Case:
    area: str
    example: str  # one line of Python, run after SETUP; it must raise
    fix: str  # what to do instead, for the table
    prepare: str = ""  # extra set-up lines for this row only (not shown)


CASES = [
    # --- the config
    Case("config", "LoRAConfig(r=0)", "a rank of at least 1, e.g. `r=8`"),
    Case("config", "LoRAConfig(r=True)", "an int: `True` is a bool, not a rank"),
    Case("config", 'LoRAConfig(r="8")', "a number, not a string: `r=8`"),
    Case("config", 'LoRAConfig(lora_alpha="16")', "a number: `lora_alpha=16`"),
    Case("config", "LoRAConfig(lora_dropout=1.0)", "a probability below 1, e.g. `lora_dropout=0.05`"),
    Case("config", 'LoRAConfig(bias="some")', '`"none"`, `"all"` or `"lora_only"`'),
    Case("config", 'LoRAConfig(init_lora_weights="olora")', "one of the initialisations minilora has, or PEFT"),
    Case("config", 'LoRAConfig(target_modules="[query")', "a valid regular expression, or a list of names"),
    Case("config", 'LoRAConfig(exclude_modules="all-linear")', "the names to leave out, as a list"),
    # --- putting LoRA in
    Case("inject", 'ml.inject_lora(base, LoRAConfig(target_modules=["q_proj"]))',
         "the names the message lists for this model (`query`, `value`, ...)"),
    Case("inject", 'ml.inject_lora(base, LoRAConfig(target_modules=["query"], modules_to_save=["clasifier"]))',
         "a module that exists: the message lists the top-level ones"),
    Case("inject", 'ml.inject_lora(base, LoRAConfig(target_modules=["query", "classifier"], '
                   'modules_to_save=["classifier"]))',
         "one role per module: low-rank update (`target_modules`) or full copy (`modules_to_save`)"),
    Case("inject", 'ml.inject_lora(model, LoRAConfig(target_modules=["query"]))',
         "another adapter name, or `delete_adapter` first"),
    Case("inject", 'ml.inject_lora(base, {"r": 8, "target_modules": ["query"]})',
         "a `minilora.LoRAConfig`: `LoRAConfig(**that_dict)`"),
    Case("inject", 'ml.inject_lora(base, LoRAConfig(target_modules=["query"]), adapter_name="my.adapter")',
         "a name without dots, e.g. `my_adapter`"),
    Case("inject", 'LoRALinear(nn.Conv2d(3, 3, 3))', "`LoRALinear` for `nn.Linear`/`Conv1D`, `LoRAEmbedding` for "
         "`nn.Embedding`; PEFT for convolutions"),
    Case("inject", 'LoRAEmbedding(nn.Embedding(10, 4), use_dora=True)', "DoRA on linear layers only; PEFT for DoRA "
         "on embeddings"),
    # --- adapters by name
    Case("adapters", 'ml.set_adapter(model, "defualt")', "a name from `list_adapters(model)`"),
    Case("adapters", 'ml.set_adapter(model, [])', "one name, or `with disable_adapter(model):` for the base model"),
    Case("adapters", 'ml.delete_adapter(model, "defualt")', "a name from `list_adapters(model)`"),
    Case("adapters", 'ml.set_adapter(model, "other")', "`unmerge_adapter(model)` first",
         prepare="ml.merge_adapter(model)"),
    Case("merge", 'ml.merge_and_unload(model, adapter_names=["defualt"])',
         "a name from `list_adapters(model)`: nothing is unloaded, the adapter is safe"),
    Case("merge", 'ml.merge_adapter(model, adapter_names=["defualt"])', "a name from `list_adapters(model)`"),
    Case("merge", 'ml.add_weighted_adapter(model, ["default", "other"], [0.5], "mix")', "one weight per adapter"),
    Case("merge", 'ml.add_weighted_adapter(model, ["default", "other"], [0.5, 0.5], "mix", '
                  'combination_type="average")', "one of PEFT's combination types, e.g. `\"svd\"` or `\"cat\"`"),
    Case("merge", 'ml.add_weighted_adapter(model, ["default", "other"], [0.5, 0.5], "mix", combination_type="ties")',
         "a `density` in (0, 1], e.g. `density=0.2`"),
    Case("merge", 'ml.add_weighted_adapter(model, ["default", "defualt"], [0.5, 0.5], "mix")',
         "names from `list_adapters(model)`"),
    # --- files
    Case("files", 'ml.save_adapter(model, "out", adapter_name="defualt")', "a name from `list_adapters(model)`"),
    Case("files", 'ml.load_adapter(base, "missing-adapter")', "the folder `save_adapter` wrote"),
    Case("files", 'ml.load_adapter(base, "pickled")', "re-save with safetensors (PEFT: `safe_serialization=True`)",
         prepare='pathlib.Path("pickled").mkdir(); pathlib.Path("pickled/adapter_model.bin").write_bytes(b"x")'),
    Case("files", 'ml.load_adapter(base, "saved-adapter")', "save the adapter again",
         prepare='pathlib.Path("saved-adapter/adapter_config.json").write_text("{broken")'),
    Case("files", 'ml.load_adapter(tiny_llama(), "saved-adapter")', "load it into the model it was trained on"),
    Case("files", 'ml.load_adapter(base, "saved-adapter")', "PEFT, for adapter types minilora does not implement",
         prepare='p = pathlib.Path("saved-adapter/adapter_config.json"); c = json.loads(p.read_text()); '
                 'c["peft_type"] = "IA3"; p.write_text(json.dumps(c))'),
    # --- training
    Case("train", "ml.fit(model, batches, optimizer=opt)", "build the optimizer after `inject_lora`/`set_adapter`",
         prepare="fresh = tiny_bert(); opt = torch.optim.AdamW(fresh.parameters()); model = fresh; "
                 "ml.inject_lora(model, LoRAConfig(target_modules=['query']))"),
    Case("train", "ml.fit(model, batches, epochs=True)", "an int number of epochs, e.g. `epochs=1`"),
    Case("train", "ml.fit(model, batches, lr=0)", "a positive learning rate, e.g. `lr=1e-3`"),
    Case("train", "ml.seed_everything(-1)", "a seed in [0, 2**32), e.g. `seed_everything(0)`"),
    # --- QLoRA and prompt learning
    Case("qlora", "ml.quantize_model_nf4(tiny_llama(), blocksize=3)", "an even block size, e.g. 64 (QLoRA's)"),
    Case("prompting", "ml.add_prompt_learning(tiny_llama(), PromptTuningConfig(num_virtual_tokens=0))",
         "at least one virtual token, e.g. 20"),
    # --- preference tuning and RL (chapter 15)
    Case("preference", "get_batch_logps(torch.zeros(2, 5, 10), torch.zeros(2, 4, dtype=torch.long))",
         "the model's logits and the batch's labels, of the same (batch, seq)"),
    Case("preference", "dpo_loss(torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(3))",
         "one log-probability per pair in each of the four tensors"),
    Case("preference", "dpo_loss(*[torch.zeros(2)] * 4, ipo=True, label_smoothing=0.1)",
         "IPO without smoothing, or DPO with it"),
    Case("rl", "group_advantages(torch.ones(10), group_size=4)", "`group_size` rewards per prompt, prompt-major"),
]


def run_case(case: Case) -> tuple[str, str]:
    """The exception's class name and the first line of its message (raises if the example does not raise)."""
    namespace: dict = {}
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(SETUP, namespace)
        if case.prepare:
            exec(case.prepare, namespace)
        try:
            exec(case.example, namespace)
        except Exception as e:  # the row records whatever the library raised
            return type(e).__name__, str(e).splitlines()[0]
    raise AssertionError(f"{case.example!r} did not raise")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Refused inputs: every error minilora raises on purpose, with its fix",
        "",
        "minilora checks its input before it changes a model: a refused call leaves the model exactly as it",
        "was. It raises one of four kinds of error (`minilora.errors`):",
        "",
        "- `TypeError`: an argument of the wrong type (a bool where an int is meant, a dict where a config is meant);",
        "- `ValueError`: the right type, a wrong value, or an action the model's state forbids;",
        "- `UnknownAdapterError`: an adapter name the model does not hold (a `KeyError` and a `ValueError`, so",
        "  either `except` catches it). Unknown names are always refused, never skipped;",
        "- `AdapterFileError` (a `ValueError`): any problem with an adapter folder.",
        "",
        "Each row below was run, not typed: `python tools/errors_doc.py` executes every example on tiny",
        "models (`base`: a 2-layer BERT classifier; `model`: the same with adapters `default` and `other`;",
        "the set-up is at the top of `tools/errors_doc.py`) and writes the error and the first line of its",
        "message. `tests/test_errors_doc.py` checks that this file is current.",
        "",
        "| # | area | call | raises | message (first line) | do instead |",
        "|---|---|---|---|---|---|",
    ]
    for i, case in enumerate(CASES, 1):
        error, message = run_case(case)
        cells = [str(i), case.area, f"`{_cell(case.example)}`", f"`{error}`", _cell(message), _cell(case.fix)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/errors.md is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = DOC.read_text() if DOC.exists() else ""
        print("docs/errors.md is current" if current == text else "docs/errors.md is out of date: "
              "run python tools/errors_doc.py")
        return 0 if current == text else 1
    write_atomic(DOC, text)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(CASES)} rows)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
