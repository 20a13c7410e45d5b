"""Chapter 07's training protocol, reusable, with checkpoints: learning, forgetting and intruders.  (Chapter 14)

``train`` is chapter 07's training exactly (SmolLM2-135M-Instruct, 30 AdamW steps of 8 length-grouped
instructions, seeded), for a LoRA ``LoRAConfig`` or ``"full"`` fine-tuning, with one optimizer throughout and
an evaluation after each checkpoint's steps. ``task_scores`` is chapter 07's exact match and "contains" on a
split; ``forgetting`` the two measures of ``minilora.course.forgetting``; ``intruders`` counts intruder
dimensions (``minilora.intruders``) per layer type. ``tools/sweep_ch14.py`` runs them for every setup and
learning rate; chapter 14 runs one again and checks that it agrees with the file.

``curve`` is the same protocol made longer, for loss curves against log-steps: one pass over the larger
``large_train`` split (each batch is seen once, so its training loss is measured before the model has seen
it), with the mean NLL per answer token on ``large_validation`` (``answer_loss``) at log-spaced steps.
``tools/sweep_ch14_curves.py`` runs it for LoRA at ranks 1 to 64 and full fine-tuning.

``instruction_tuned`` is chapter 07's chosen run (``CHAPTER_07``: r=8 on q_proj and v_proj, rate 1e-3, seed 0)
merged into the weights: the instruction-tuned model that chapter 15 preference-tunes and trains with RL.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import LoRAConfig
from ..inject import inject_lora, lora_layers
from ..instruct import IGNORE_INDEX, ChatCollator, answer_rows, evaluate_contains, evaluate_exact_match, token_budgets
from ..intruders import intruder_dimensions
from ..merge import merge_and_unload
from ..train import fit
from ..utils import seed_everything
from .data import length_grouped_batches, load_instructions
from .forgetting import continuation_nll, quiz_accuracy
from .models import load_chat_model

__all__ = ["STEPS", "BATCH", "CHECKPOINTS", "CURVE_STEPS", "CHAPTER_07", "start", "instruction_tuned", "train", "curve",
           "answer_loss", "forgetting", "task_scores", "intruders"]

STEPS, BATCH, WINDOW, CHECKPOINTS = 30, 8, 4, (10, 20, 30)
CURVE_STEPS = (1, 2, 4, 8, 16, 32, 64, 128)  # log-spaced checkpoints of ``curve``
CHAPTER_07 = (LoRAConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), 1e-3)  # (config, rate), seed 0
_TUNED: dict[str, torch.Tensor] = {}  # instruction_tuned's weights, computed once per process


def instruction_tuned() -> tuple[torch.nn.Module, object]:
    """SmolLM2 with chapter 07's chosen run (``CHAPTER_07``, seed 0, 30 steps) merged in, and its tokenizer.

    The first call trains it (about 30 seconds on 2 cores); later calls copy the weights kept from the first."""
    if not _TUNED:
        model, tok, _ = train(*CHAPTER_07, seed=0, evaluate=lambda m, t: {}, checkpoints=(STEPS,))
        _TUNED.update({k: v.detach().clone() for k, v in merge_and_unload(model).state_dict().items()})
    model, tok = load_chat_model()
    model.load_state_dict(_TUNED)
    return model.eval(), tok


def start(setup, seed: int, tuned: bool = False) -> tuple[torch.nn.Module, object]:
    """SmolLM2 (``tuned``: ``instruction_tuned``'s) and its tokenizer, seeded, with ``setup`` applied: a
    ``LoRAConfig`` injected, or, for ``"full"``, every weight trainable."""
    model, tok = instruction_tuned() if tuned else load_chat_model()
    seed_everything(seed)
    if setup == "full":
        model.requires_grad_(True)
    else:
        inject_lora(model, setup)
    return model, tok


def train(setup, lr: float, seed: int, evaluate, *, split: str = "train",
          checkpoints: tuple[int, ...] = CHECKPOINTS) -> tuple[torch.nn.Module, object, list[dict]]:
    """Chapter 07's training; ``evaluate(model, tok)`` after each checkpoint's steps gives the checkpoint's row.

    ``train_loss`` in a row is the mean training loss of the steps since the previous checkpoint."""
    model, tok = start(setup, seed)
    rows = load_instructions(split)
    collate = ChatCollator(tok)
    lengths = [len(collate.encode(r)["input_ids"]) for r in rows]
    batches = length_grouped_batches(lengths, batch_size=BATCH, seed=seed, window=WINDOW)
    if len(batches) < checkpoints[-1]:
        raise ValueError(f"{split!r} has {len(batches)} batches of {BATCH}, fewer than the {checkpoints[-1]} steps "
                         "asked for (one pass, no batch seen twice); stop earlier or use a larger split.")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    out, done = [], 0
    for step in checkpoints:
        loader = DataLoader(rows, batch_sampler=batches[done:step], collate_fn=collate)
        history = fit(model, loader, epochs=1, optimizer=optimizer, progress=False)
        done = step
        out.append({"step": step, "train_loss": f"{sum(history.train_loss) / len(history.train_loss):.4f}",
                    **evaluate(model, tok)})
    return model, tok, out


def curve(setup, lr: float, seed: int, checkpoints: tuple[int, ...] = CURVE_STEPS) -> tuple[torch.nn.Module, object,
                                                                                             list[dict]]:
    """One pass over ``large_train`` for ``checkpoints[-1]`` steps: (model, tokenizer, rows ``{step, train_loss,
    val_loss}``), ``val_loss`` being ``answer_loss`` on ``large_validation``."""
    return train(setup, lr, seed, lambda m, t: {"val_loss": f"{answer_loss(m, t):.4f}"}, split="large_train",
                 checkpoints=checkpoints)


@torch.no_grad()
def answer_loss(model, tok, split: str = "large_validation", batch_size: int = 16) -> float:
    """Mean negative log-likelihood per answer token (``<|im_end|>`` included, prompts masked as in training)."""
    rows, collate = load_instructions(split), ChatCollator(tok)
    order = sorted(range(len(rows)), key=lambda i: len(collate.encode(rows[i])["input_ids"]))  # little padding
    was_training, total, count = model.training, 0.0, 0
    model.eval()
    for i in range(0, len(order), batch_size):
        batch = collate([rows[j] for j in order[i:i + batch_size]])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        labels = batch["labels"][:, 1:]
        total += F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


def forgetting(model, tok) -> dict:
    model.eval()
    return {"quiz_accuracy": f"{quiz_accuracy(model, tok):.2f}", "neutral_nll": f"{continuation_nll(model, tok):.4f}"}


def task_scores(model, tok, split: str) -> tuple[float, float]:
    rows = load_instructions(split)
    answers = answer_rows(model, tok, rows, token_budgets(tok, load_instructions("train")), batch_size=64)
    return evaluate_exact_match(answers, rows)["overall"], evaluate_contains(answers, rows)["overall"]


def intruders(model, base) -> dict:
    """Intruders in the top 10 of every adapted (or, for full fine-tuning, every) attention and MLP linear layer."""
    counts = {"attention": [0, 0], "mlp": [0, 0]}
    base_weights = {n: m.weight for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    lora = dict(lora_layers(model))
    for name, W in base_weights.items():
        kind = "attention" if ".self_attn." in name else "mlp" if ".mlp." in name else None
        if kind is None:
            continue
        if lora:
            if name not in lora:
                continue
            merged = W + lora[name].get_delta_weight(lora[name].active_adapter)
        else:
            merged = model.get_submodule(name).weight
        counts[kind][0] += len(intruder_dimensions(W.detach(), merged.detach(), top_k=10, threshold_epsilon=0.5)[0])
        counts[kind][1] += 1
    return {"intruders_attention": counts["attention"][0], "layers_attention": counts["attention"][1],
            "intruders_mlp": counts["mlp"][0], "layers_mlp": counts["mlp"][1]}
