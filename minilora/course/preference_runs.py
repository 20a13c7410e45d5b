"""Chapter 15's runs: SFT on the chosen answers, DPO, and DPO from the SFT adapter.  (Chapter 15)

Every run starts from chapter 07's instruction-tuned SmolLM2 (``chat_runs.instruction_tuned``), trains LoRA (a
``LoRAConfig``) with AdamW for ``steps`` steps (``STEPS``: half a pass) over the preference data's ``train``
split, ``PAIRS`` prompts per step in a seeded order (no prompt twice until every prompt was used):

* ``sft``: the chosen answers as chapter 07's instruction tuning (prompt masked);
* ``dpo``: ``minilora.preference.dpo_loss``; the reference log-probabilities are those of the same model with
  the adapter switched off (``minilora.disable_adapter``), computed once before training (``reference``), since
  the reference never changes. No second model is held;
* ``sft+dpo``: SFT first, its adapter merged into the weights (``merge_and_unload``), then DPO with a fresh
  adapter: switching that adapter off gives the SFT model, which is the reference. (TRL does the same when it
  is handed a model with the SFT adapter merged and a ``peft_config``; with the adapter kept separate it loads
  it twice, ``model_adapter_name`` trained and ``ref_adapter_name`` frozen.)

``scores`` measures a trained model on a split: the win rate of its greedy answers (``preference_data.win_rate``),
the mean reward margin β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)], the drift
log π − log π_ref of its own answers (nats per answer; the reference is the adapter switched off), the drift
from the base model's own text (chapter 14's ``continuation_nll``), and chapter 07's exact match on the split of
the same name: what the preference tuning cost the skills it started with.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from ..inject import inject_lora, lora_layers
from ..instruct import CUT, ChatCollator, generate
from ..merge import disable_adapter, merge_and_unload
from ..preference import dpo_loss, get_batch_logps
from ..train import fit
from ..utils import seed_everything
from .chat_runs import instruction_tuned, task_scores
from .forgetting import continuation_nll
from .preference_data import load_preferences, win_rate

__all__ = ["PAIRS", "STEPS", "BETA", "METHODS", "MAX_NEW_TOKENS", "pair_batches", "pair_logps", "reference", "sft",
           "dpo", "train", "scores"]

PAIRS, STEPS, BETA, MAX_NEW_TOKENS = 8, 20, 0.1, 48  # the longest chosen answer has 38 tokens
METHODS = ("sft", "dpo", "sft+dpo")


def pair_batches(n: int, seed: int, steps: int) -> list[list[int]]:
    """``steps`` batches of ``PAIRS`` indices from seeded shuffles of range(n), one shuffle after another (the
    last batch of each shuffle may be smaller)."""
    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = []
    while len(out) < steps:
        order = torch.randperm(n, generator=g).tolist()
        out += [order[i:i + PAIRS] for i in range(0, n, PAIRS)]
    return out[:steps]


def pair_logps(model, collate: ChatCollator, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(chosen | prompt), log π(rejected | prompt)) per row, from one forward pass over both."""
    batch = collate([{"instruction": r["prompt"], "response": r[k]} for k in ("chosen", "rejected") for r in rows])
    logps = get_batch_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    return logps[:len(rows)], logps[len(rows):]


def _switched_off(model):
    """The adapter switched off, or nothing to switch off: a model without adapters is its own reference."""
    return disable_adapter(model) if next(lora_layers(model), None) else nullcontext()


@torch.no_grad()
def reference(model, tok, split: str = "train", batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of ``split``: (log π_ref(chosen), log π_ref(rejected)), π_ref being ``model`` with its adapter
    switched off (a model without adapters is its own reference)."""
    rows, collate = load_preferences(split), ChatCollator(tok)
    was_training = model.training
    model.eval()
    with _switched_off(model):
        parts = [pair_logps(model, collate, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    model.train(was_training)
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


def sft(model, tok, config, lr: float, seed: int, steps: int = STEPS):
    """Inject ``config`` into ``model`` and train it on the chosen answers; returns the model."""
    rows, collate = load_preferences("train"), ChatCollator(tok)
    inject_lora(model, config)
    examples = [{"instruction": r["prompt"], "response": r["chosen"]} for r in rows]
    loader = DataLoader(examples, batch_sampler=pair_batches(len(rows), seed, steps), collate_fn=collate)
    fit(model, loader, epochs=1, lr=lr, progress=False)
    return model


def dpo(model, tok, config, lr: float, seed: int, steps: int = STEPS, beta: float = BETA,
        ref: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Inject ``config`` into ``model`` and train it with DPO; one ``{loss, margin, accuracy}`` per step.

    ``ref``: ``reference(model, tok)`` computed before (the model without the new adapter), else computed here."""
    rows, collate = load_preferences("train"), ChatCollator(tok)
    if ref is not None and not (len(ref) == 2 and len(ref[0]) == len(ref[1]) == len(rows)):
        raise ValueError(f"ref must be reference(model, tok) before the adapter: a pair of {len(rows)} "
                         "log-probabilities each (chosen, rejected).")
    inject_lora(model, config)
    ref_chosen, ref_rejected = reference(model, tok) if ref is None else ref
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    log = []
    for idx in pair_batches(len(rows), seed, steps):
        chosen, rejected = pair_logps(model, collate, [rows[i] for i in idx])
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen[idx], ref_rejected[idx], beta)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
        log.append({"loss": losses.mean().item(), "margin": (chosen_rewards - rejected_rewards).mean().item(),
                    "accuracy": (chosen_rewards > rejected_rewards).float().mean().item()})
    return log


def train(method: str, config, lr: float, seed: int, steps: int = STEPS, beta: float = BETA,
          sft_lr: float | None = None, ref=None) -> tuple[torch.nn.Module, object, list[dict]]:
    """(model, tokenizer, the DPO steps' {loss, margin, accuracy}) for ``method`` in ``METHODS``.

    ``lr`` is the rate of the method's own training (for ``sft+dpo``, of DPO; the SFT stage uses ``sft_lr``, and
    the DPO stage is seeded again, as a DPO run is). ``ref``: for ``dpo``, ``reference`` of the instruction-tuned
    model, if computed before."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}.")
    if (method == "sft+dpo") != (sft_lr is not None):
        raise ValueError("sft_lr is the SFT stage's rate of method 'sft+dpo'; give it for that method only.")
    if ref is not None and method != "dpo":
        raise ValueError(f"ref is the instruction-tuned model's reference, for method 'dpo' only, not {method!r}.")
    model, tok = instruction_tuned()
    seed_everything(seed)
    if method == "sft":
        return sft(model, tok, config, lr, seed, steps), tok, []
    if method == "sft+dpo":
        merge_and_unload(sft(model, tok, config, sft_lr, seed, steps))
        seed_everything(seed)
    return model, tok, dpo(model, tok, config, lr, seed, steps, beta, ref)


@torch.no_grad()
def scores(model, tok, split: str, beta: float = BETA, ref: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict:
    """Win rate per property and overall (greedy answers; an answer cut by ``MAX_NEW_TOKENS`` loses), the mean
    reward margin and the drift of the model's own answers against the adapter switched off (``ref``: its
    ``reference(model, tok, split)``, if computed before), the drift from the base model's own text, and chapter
    07's exact match on ``split``."""
    rows, collate = load_preferences(split), ChatCollator(tok)
    model.eval()
    answers = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=MAX_NEW_TOKENS, batch_size=50)
    said = [(r["prompt"], a) for r, a in zip(rows, answers) if a and not a.endswith(CUT)]
    drift = float("nan")  # log π − log π_ref of the model's own answers (those that ended, and said something)
    if said:
        logps, ref_logps = [], []
        for i in range(0, len(said), 16):  # 16 at a time: the logits of a whole split would not fit in memory
            own = collate([{"instruction": x, "response": a} for x, a in said[i:i + 16]])
            inputs = {"input_ids": own["input_ids"], "attention_mask": own["attention_mask"]}
            logps.append(get_batch_logps(model(**inputs).logits, own["labels"]))
            with _switched_off(model):
                ref_logps.append(get_batch_logps(model(**inputs).logits, own["labels"]))
        drift = (torch.cat(logps) - torch.cat(ref_logps)).mean().item()
    answers = ["" if a.endswith(CUT) else a for a in answers]
    parts = [pair_logps(model, collate, rows[i:i + 16]) for i in range(0, len(rows), 16)]
    chosen, rejected = torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
    ref_chosen, ref_rejected = reference(model, tok, split) if ref is None else ref
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return {**{f"win_{k}": v for k, v in win_rate(answers, rows).items()}, "margin": margin.mean().item(),
            "drift": drift, "neutral_nll": continuation_nll(model, tok),
            "task_exact": task_scores(model, tok, split)[0], "answers": answers}
