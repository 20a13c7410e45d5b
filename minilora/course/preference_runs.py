"""Chapter 15's runs: SFT on the chosen answers, DPO from the base model, DPO from the SFT adapter.  (Chapter 15)

Every run trains SmolLM2-135M-Instruct with LoRA (a ``LoRAConfig``) and AdamW for ``epochs`` passes over the
preference data's ``train`` split, ``PAIRS`` prompts per step in a seeded order:

* ``sft``: the chosen answers as chapter 07's instruction tuning (prompt masked);
* ``dpo``: ``minilora.preference.dpo_loss`` from the base model; the reference log-probabilities are those of
  the same model with the adapter switched off (``minilora.disable_adapter``), computed once before training,
  since the reference never changes. No second model is held;
* ``sft+dpo``: SFT first, its adapter merged into the weights (``merge_and_unload``), then DPO with a fresh
  adapter: switching that adapter off gives the SFT model, which is the reference. (TRL does the same when it
  is handed a model with the SFT adapter merged and a ``peft_config``; with the adapter kept separate it loads
  it twice, ``model_adapter_name`` trained and ``ref_adapter_name`` frozen.)

``scores`` measures a trained model: the win rate of its greedy answers (``preference_data.win_rate``), the mean
reward margin β·[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)] with the adapter switched off as
reference, and the drift from the base model (chapter 14's ``continuation_nll``).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from ..inject import inject_lora
from ..instruct import CUT, ChatCollator, generate
from ..merge import disable_adapter, merge_and_unload
from ..preference import dpo_loss, get_batch_logps
from ..train import fit
from ..utils import seed_everything
from .forgetting import continuation_nll
from .models import load_chat_model
from .preference_data import load_preferences, win_rate

__all__ = ["PAIRS", "BETA", "METHODS", "MAX_NEW_TOKENS", "pair_batches", "pair_logps", "train", "scores"]

PAIRS, BETA, MAX_NEW_TOKENS = 8, 0.1, 64
METHODS = ("sft", "dpo", "sft+dpo")


def pair_batches(n: int, seed: int, epochs: int) -> list[list[int]]:
    """``epochs`` seeded shuffles of range(n), cut into batches of ``PAIRS`` (the last one of each may be smaller)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).tolist()
        out += [order[i:i + PAIRS] for i in range(0, n, PAIRS)]
    return out


def pair_logps(model, collate: ChatCollator, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """(log π(chosen | prompt), log π(rejected | prompt)) per row, from one forward pass over both."""
    batch = collate([{"instruction": r["prompt"], "response": r[k]} for k in ("chosen", "rejected") for r in rows])
    logps = get_batch_logps(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
    return logps[:len(rows)], logps[len(rows):]


@torch.no_grad()
def _reference(model, collate, rows, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row's pair of log-probabilities with the adapter switched off."""
    was_training = model.training
    model.eval()
    with disable_adapter(model):
        parts = [pair_logps(model, collate, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    model.train(was_training)
    return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])


def _sft(model, collate, rows, config, lr, seed, epochs):
    inject_lora(model, config)
    examples = [{"instruction": r["prompt"], "response": r["chosen"]} for r in rows]
    loader = DataLoader(examples, batch_sampler=pair_batches(len(rows), seed, epochs), collate_fn=collate)
    fit(model, loader, epochs=1, lr=lr, progress=False)
    return model


def _dpo(model, collate, rows, config, lr, seed, epochs, beta) -> list[dict]:
    inject_lora(model, config)
    ref_chosen, ref_rejected = _reference(model, collate, rows)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    log = []
    for idx in pair_batches(len(rows), seed, epochs):
        chosen, rejected = pair_logps(model, collate, [rows[i] for i in idx])
        losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, ref_chosen[idx], ref_rejected[idx], beta)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()
        log.append({"loss": losses.mean().item(), "margin": (chosen_rewards - rejected_rewards).mean().item(),
                    "accuracy": (chosen_rewards > rejected_rewards).float().mean().item()})
    return log


def train(method: str, config, lr: float, seed: int, epochs: int = 1, beta: float = BETA,
          sft_lr: float | None = None) -> tuple[torch.nn.Module, object, list[dict]]:
    """(model, tokenizer, the DPO steps' {loss, margin, accuracy}) for ``method`` in ``METHODS``.

    ``lr`` is the rate of the method's own training (for ``sft+dpo``, of DPO; the SFT stage uses ``sft_lr``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, METHODS))}.")
    if (method == "sft+dpo") != (sft_lr is not None):
        raise ValueError("sft_lr is the SFT stage's rate of method 'sft+dpo'; give it for that method only.")
    model, tok = load_chat_model()
    seed_everything(seed)
    rows, collate = load_preferences("train"), ChatCollator(tok)
    if method == "sft":
        return _sft(model, collate, rows, config, lr, seed, epochs), tok, []
    if method == "sft+dpo":
        merge_and_unload(_sft(model, collate, rows, config, sft_lr, seed, epochs))
    return model, tok, _dpo(model, collate, rows, config, lr, seed, epochs, beta)


@torch.no_grad()
def scores(model, tok, split: str, beta: float = BETA) -> dict:
    """Win rate per property and overall (greedy answers; an answer cut by ``MAX_NEW_TOKENS`` loses), the mean
    reward margin against the adapter switched off, and the drift from the base model's own text."""
    rows, collate = load_preferences(split), ChatCollator(tok)
    model.eval()
    answers = generate(model, tok, [r["prompt"] for r in rows], max_new_tokens=MAX_NEW_TOKENS, batch_size=50)
    answers = ["" if a.endswith(CUT) else a for a in answers]
    parts = [pair_logps(model, collate, rows[i:i + 16]) for i in range(0, len(rows), 16)]
    chosen, rejected = torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
    ref_chosen, ref_rejected = _reference(model, collate, rows)
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return {**{f"win_{k}": v for k, v in win_rate(answers, rows).items()}, "margin": margin.mean().item(),
            "neutral_nll": continuation_nll(model, tok), "answers": answers}
