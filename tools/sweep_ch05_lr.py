"""The learning-rate sweep behind chapter 05's table: validation accuracy only, never the test split.

    .venv/bin/python tools/sweep_ch05_lr.py            # every configuration (about 5 minutes on 2 cores)
    .venv/bin/python tools/sweep_ch05_lr.py probe full # some of them

Same protocol as the notebook's `run`: a fresh MiniLM (seed 0), STEPS AdamW steps on the same batches,
linear decay to zero, gradient norm clipped at 1. LoRA r=8 on query and value stands in for all ranks.
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

import minilora
from minilora import LoRAConfig, inject_lora
from minilora.data import load_sentiment, make_loader
from minilora.models import load_encoder
from minilora.train import evaluate, fit

STEPS = int(os.environ.get("STEPS", 100))  # the notebook uses 100: one epoch of batches of 16


def probe(model):
    model.requires_grad_(False)
    model.classifier.requires_grad_(True)
    return model


def lora(targets):
    return lambda model: inject_lora(model, LoRAConfig(r=8, lora_alpha=16, target_modules=targets,
                                                       modules_to_save=["classifier"]))


GRID = {
    "probe": (probe, [3e-3, 1e-2, 3e-2, 1e-1]),
    "lora": (lora(["query", "value"]), [3e-3, 5e-3, 1e-2, 2e-2]),
    "all-linear": (lora("all-linear"), [1e-3, 2e-3, 3e-3, 5e-3]),
    "full": (lambda model: model, [1e-4, 2e-4, 5e-4]),
}


def main() -> None:
    _, tokenizer = load_encoder()
    train_rows = load_sentiment("train")
    val_loader = make_loader(load_sentiment("validation"), tokenizer, batch_size=100, group_by_length=True)
    for name in sys.argv[1:] or list(GRID):
        prepare, rates = GRID[name]
        cells, t0 = [], time.perf_counter()
        for lr in rates:
            minilora.seed_everything(0)
            train_loader = make_loader(train_rows, tokenizer, batch_size=16, shuffle=True, seed=0,
                                       group_by_length=True)  # the same batches for every run
            model = prepare(load_encoder(num_labels=2)[0])
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / STEPS)
            fit(model, train_loader, optimizer=optimizer, scheduler=schedule, max_grad_norm=1.0,
                epochs=math.ceil(STEPS / len(train_loader)), max_steps=STEPS, progress=False)
            cells.append(f"{lr:g}: {evaluate(model, val_loader)['accuracy']:.1%}")
        print(f"{name:<11} " + " · ".join(cells) + f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
