"""Chapter 12's hand-over: a minilora adapter into PEFT, trained further by transformers.Trainer, back into minilora;
the Trainer's checkpoints hold no pickles we need; every name in the chapter's map exists in the pinned versions."""
import ast
import importlib
import importlib.util
import json
import pathlib

import peft
import pytest
import torch
import transformers

import minilora
from minilora.course import distributed
from minilora.course.data import load_sentiment
from minilora.course.experiments import SETUPS, build_model
from minilora.course.models import load_encoder

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make_trainer(model, tokenizer, out, steps, **kwargs):
    args = transformers.TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=40, max_steps=steps,
        learning_rate=5e-3, seed=0, use_cpu=True, report_to=[], disable_tqdm=True, logging_strategy="no",
        remove_unused_columns=False, **kwargs)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=load_sentiment("train")[:64],
                                   eval_dataset=load_sentiment("validation")[:40],
                                   data_collator=distributed.text_collator(tokenizer),
                                   compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1)
                                                                                 == p.label_ids).mean())})
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer


@pytest.fixture(scope="module")
def batch():
    _, tokenizer = load_encoder(num_labels=2)
    return distributed.text_collator(tokenizer)(load_sentiment("validation")[:6])


def logits(model, batch):
    with torch.no_grad():
        return model.eval()(**batch).logits


def test_minilora_adapter_to_peft_trainer_and_back(tmp_path, batch):
    transformers.logging.set_verbosity_error()
    ours, tokenizer = build_model(SETUPS["LoRA r=8"], seed=0)
    with torch.no_grad():  # as if trained: B is no longer zero
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    minilora.save_adapter(ours, tmp_path / "minilora")

    base = load_encoder(num_labels=2)[0]
    base.accepts_loss_kwargs = False
    theirs = peft.PeftModel.from_pretrained(base, tmp_path / "minilora", is_trainable=True)
    torch.testing.assert_close(logits(theirs, batch), logits(ours, batch), atol=1e-5, rtol=0)
    assert theirs.get_nb_trainable_parameters() == minilora.get_nb_trainable_parameters(ours)

    before = {k: v.clone() for k, v in peft.get_peft_model_state_dict(theirs).items()}
    make_trainer(theirs, tokenizer, tmp_path / "trainer", steps=3, save_strategy="no").train()
    after = peft.get_peft_model_state_dict(theirs)
    assert sum(not torch.equal(before[k], after[k]) for k in before) == len(before)  # every tensor trained
    theirs.save_pretrained(tmp_path / "peft", save_embedding_layers=False)
    assert sorted(p.name for p in (tmp_path / "peft").iterdir()) == ["README.md", "adapter_config.json",
                                                                      "adapter_model.safetensors"]

    back = minilora.load_adapter(load_encoder(num_labels=2)[0], tmp_path / "peft")
    torch.testing.assert_close(logits(back, batch), logits(theirs, batch), atol=1e-5, rtol=0)
    assert not torch.allclose(logits(back, batch), logits(ours, batch), atol=1e-4)  # it is the trained one


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # PEFT, saving a checkpoint of our classifier
def test_the_best_checkpoint_is_safetensors_and_minilora_loads_it(tmp_path, batch):
    transformers.logging.set_verbosity_error()
    minilora.seed_everything(0)
    base, tokenizer = load_encoder(num_labels=2)
    base.accepts_loss_kwargs = False
    model = peft.get_peft_model(base, peft.LoraConfig(**SETUPS["LoRA r=8"].to_dict()))
    trainer = make_trainer(model, tokenizer, tmp_path, steps=4, eval_strategy="steps", eval_steps=2,
                           save_strategy="steps", save_steps=2, save_only_model=True, metric_for_best_model="accuracy")
    trainer.train()
    best = pathlib.Path(trainer.state.best_model_checkpoint)
    names = {p.name for p in best.iterdir()}
    assert "adapter_model.safetensors" in names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng_state.pth", "pytorch_model.bin", "adapter_model.bin"}
    state = json.loads((best / "trainer_state.json").read_text())
    assert state["best_metric"] == trainer.state.best_metric
    loaded = minilora.load_adapter(load_encoder(num_labels=2)[0], best)
    reference = peft.PeftModel.from_pretrained(load_encoder(num_labels=2)[0], best)
    torch.testing.assert_close(logits(loaded, batch), logits(reference, batch), atol=1e-5, rtol=0)


def chapter_map():
    """The MAP list of chapter 12's notebook, read from its source (not executed)."""
    nb = json.loads((ROOT / "notebooks" / "12_scaling_out.ipynb").read_text())
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "MAP = [" in source:
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "MAP":
                    return ast.literal_eval(node.value)
    raise AssertionError("chapter 12 has no MAP = [...] cell")


def resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_every_name_in_the_chapter_map_exists_in_the_pinned_versions():
    rows = chapter_map()
    assert len(rows) >= 15 and {where.split()[0] for *_, where in rows} >= {"PEFT", "TRL", "accelerate",
                                                                             "bitsandbytes,"}
    for built, chapter, name, where in rows:
        if name.split(".")[0] == "trl" and importlib.util.find_spec("trl") is None:
            assert "not installed" in where  # the chapter says so beside it
            continue
        assert callable(resolve(name)), (built, name)
