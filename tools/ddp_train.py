"""MiniLM + LoRA trained with DistributedDataParallel over gloo, on CPU: the torchrun worker of chapter 12.

    torchrun --nproc_per_node 2 tools/ddp_train.py --out DIR                  # the course loop under DDP
    torchrun --nproc_per_node 2 tools/ddp_train.py --out DIR --trainer        # PEFT + transformers.Trainer
    torchrun --nproc_per_node 2 tools/ddp_train.py --out DIR --fsdp           # the course loop under FSDP2

Without --trainer, each process builds chapter 05's model (LoRA r=8, alpha 16 on query and value, the
head trained whole) from seed ``--seed + rank``: deliberately different, so that DDP's start-up broadcast
of rank 0's state_dict has something to do (checked). Each takes its shard of every global batch of
``--global-batch`` training reviews (``DistributedSampler``: the union of the shards of step t is
examples t*B .. t*B+B-1 of one seeded permutation) and ``--steps`` AdamW steps at ``--lr``, decaying
linearly to 0, clipped at norm 1. A ``minilora.course.distributed.ByteCounter`` hook counts the bytes
all-reduced at each step. With ``--full-steps K`` it then does K steps of a full fine-tune, to count
its bytes too. Rank 0 saves the adapter with ``minilora.save_adapter`` in ``--out``.

With --fsdp, the same LoRA steps with the model sharded by FSDP (``fully_shard``: one unit per transformer
block, frozen weights and LoRA factors together, and one for the rest) instead of replicated by DDP.
FSDP broadcasts nothing, so every process builds the model from ``--seed``. Rank 0 gathers the full
state dict and saves the adapter with ``minilora.save_adapter``.

With --trainer, the same model is built with ``peft.get_peft_model`` and trained by ``transformers.Trainer``
(``use_cpu=True``, ``ddp_backend="gloo"``) with ``--global-batch / world size`` per process; rank 0
saves the adapter with PEFT's ``save_pretrained`` in ``--out``.

``--report FILE``: rank 0 writes its measurements there as JSON (``minilora.course.distributed.launch`` reads it).
Run without torchrun, or with a world size that does not divide the global batch, it says what to do.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minilora.course.distributed import check_world_size, require_torchrun


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for the adapter (rank 0 writes it)")
    ap.add_argument("--report", help="JSON file for rank 0's measurements")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    ap.add_argument("--global-batch", type=int, default=16, help="examples per step over all processes")
    ap.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (chapter 05's choice for r=8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="dropout probability (default 0: each process would draw its own masks; MiniLM's is 0.1)")
    ap.add_argument("--full-steps", type=int, default=0, help="then this many full fine-tuning steps")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--trainer", action="store_true", help="PEFT + transformers.Trainer instead of the course loop")
    mode.add_argument("--fsdp", action="store_true", help="shard the model with FSDP (fully_shard) instead of DDP")
    return ap.parse_args(argv)


def global_equal(tensors) -> bool:
    """Whether every process holds the same values (compares a checksum of ``tensors`` across ranks)."""
    import torch
    import torch.distributed as dist

    mine = torch.stack([torch.cat([t.detach().double().flatten() for t in tensors]).sum(),
                        torch.cat([t.detach().double().flatten() for t in tensors]).abs().sum()])
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return all(torch.equal(everyone[0], other) for other in everyone[1:])


def ddp_steps(setup, args, rank: int, world: int, steps: int, lr: float, seed: int) -> dict:
    """Build ``setup`` from ``seed``, wrap it in DDP, train ``steps`` steps; what was measured."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from minilora.course.data import load_sentiment
    from minilora.course.distributed import register_byte_counter, set_dropout, text_collator
    from minilora.course.experiments import build_model

    model, tokenizer = build_model(setup, seed=seed)
    set_dropout(model, args.dropout)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    before = global_equal(model.state_dict().values())
    ddp = DistributedDataParallel(model)  # broadcasts rank 0's parameters and buffers
    after = global_equal(model.state_dict().values())
    counter = register_byte_counter(ddp)
    rows = load_sentiment("train")
    sampler = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(rows, batch_size=args.global_batch // world, sampler=sampler, drop_last=True,
                        collate_fn=text_collator(tokenizer))
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    losses, times, batch_iter = [], [], iter(loader)
    for _ in range(steps):
        batch = next(batch_iter)
        t0 = time.perf_counter()
        loss = ddp(**batch).loss
        loss.backward()  # DDP all-reduces the gradients here, bucket by bucket, through the hook
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        times.append(time.perf_counter() - t0)
        mean = loss.detach().clone()
        dist.all_reduce(mean)  # the global batch's loss, for the report (not a gradient: not counted)
        losses.append(float(mean) / world)
    return {"model": model, "trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in
            model.parameters()), "state_dict_bytes": sum(t.numel() * t.element_size() for t in
            model.state_dict().values()), "equal_before_ddp": before, "equal_after_ddp": after,
            "bytes_per_step": counter.steps, "buckets_per_step": counter.buckets, "losses": losses,
            "seconds_per_step": times, "in_sync_at_end": global_equal(params)}


def course_loop(args, rank: int, world: int) -> dict:
    from minilora import save_adapter
    from minilora.course.experiments import SETUPS

    run = ddp_steps(SETUPS["LoRA r=8"], args, rank, world, args.steps, args.lr, args.seed + rank)
    if rank == 0:
        save_adapter(run["model"], args.out)
    report = {"lora": {k: v for k, v in run.items() if k != "model"}}
    if args.full_steps:
        full = ddp_steps("full", args, rank, world, args.full_steps, 5e-5, args.seed + rank)
        report["full"] = {k: v for k, v in full.items() if k != "model"}
    return report


def fsdp_run(args, rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from minilora import save_adapter
    from minilora.course.data import load_sentiment
    from minilora.course.distributed import set_dropout, text_collator
    from minilora.course.experiments import SETUPS, build_model

    model, tokenizer = build_model(SETUPS["LoRA r=8"], seed=args.seed)  # the same on every process
    set_dropout(model, args.dropout)
    model.train()
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    mesh = init_device_mesh("cpu", (world,))
    for block in model.bert.encoder.layer:
        fully_shard(block, mesh=mesh)  # one unit per block: its frozen weights and its LoRA factors
    fully_shard(model, mesh=mesh)  # the rest: embeddings and the head
    local_bytes = sum(p.to_local().numel() * p.element_size() for p in model.parameters())
    params = [p for p in model.parameters() if p.requires_grad]
    rows = load_sentiment("train")
    sampler = DistributedSampler(rows, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    batches = iter(DataLoader(rows, batch_size=args.global_batch // world, sampler=sampler, drop_last=True,
                              collate_fn=text_collator(tokenizer)))
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)
    losses = []
    for _ in range(args.steps):
        loss = model(**next(batches)).loss
        loss.backward()  # FSDP reduce-scatters the gradients: each process keeps the mean of its shard
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(float(mean) / world)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        plain, _ = build_model(SETUPS["LoRA r=8"], seed=args.seed)
        plain.load_state_dict(state)
        save_adapter(plain, args.out)
    return {"fsdp": {"parameter_bytes": full_bytes, "parameter_bytes_per_process": local_bytes,
                     "units": len(model.bert.encoder.layer) + 1, "losses": losses}}


def trainer_run(args, rank: int, world: int) -> dict:
    import peft
    import transformers

    from minilora.course.data import load_sentiment
    from minilora.course.distributed import set_dropout, text_collator
    from minilora.course.experiments import SETUPS
    from minilora.course.models import load_encoder
    from minilora.utils import seed_everything

    transformers.logging.set_verbosity_error()
    seed_everything(args.seed)
    base, tokenizer = load_encoder(num_labels=2)
    base.accepts_loss_kwargs = False  # its loss is a plain mean over the batch: no token counts to rescale by
    model = peft.get_peft_model(base, peft.LoraConfig(**SETUPS["LoRA r=8"].to_dict()))
    set_dropout(model, args.dropout)
    training_args = transformers.TrainingArguments(
        output_dir=str(Path(args.out) / "trainer"), per_device_train_batch_size=args.global_batch // world,
        max_steps=args.steps, learning_rate=args.lr, lr_scheduler_type="linear", max_grad_norm=1.0,
        weight_decay=0.01, seed=args.seed, use_cpu=True, ddp_backend="gloo", ddp_find_unused_parameters=False,
        report_to=[], disable_tqdm=True, logging_strategy="no", save_strategy="no", remove_unused_columns=False,
        dataloader_drop_last=True)
    trainer = transformers.Trainer(model=model, args=training_args, train_dataset=load_sentiment("train"),
                                   data_collator=text_collator(tokenizer))
    out = trainer.train()
    if rank == 0:
        model.save_pretrained(args.out, save_embedding_layers=False)
    return {"trainer": {"world_size": trainer.args.world_size, "per_device_batch": args.global_batch // world,
                        "steps": trainer.state.global_step, "train_loss": out.training_loss,
                        "seconds": out.metrics["train_runtime"], "parallel_mode": str(trainer.args.parallel_mode)}}


def main(argv=None) -> None:
    rank, world = require_torchrun()
    args = parse_args(argv)
    try:
        check_world_size(args.global_batch, world)
    except ValueError as e:
        raise SystemExit(f"tools/ddp_train.py: {e}") from None
    import torch
    import torch.distributed as dist

    from minilora.files import write_atomic

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        run = trainer_run if args.trainer else fsdp_run if args.fsdp else course_loop
        report = run(args, rank, world)
        report.update(world_size=world, global_batch=args.global_batch, steps=args.steps,
                      threads_per_process=torch.get_num_threads())
        if rank == 0 and args.report:
            write_atomic(args.report, json.dumps(report, indent=1))
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
