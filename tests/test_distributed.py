"""minilora.course.distributed and tools/ddp_train.py: real gloo process groups, real MiniLM, real torchrun.

The two-process test launches the chapter's worker with torchrun (two processes of one thread) and
checks that its adapter equals the same steps taken in this process on the global batch."""
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from minilora.config import LoRAConfig
from minilora.counting import get_nb_trainable_parameters
from minilora.course import distributed
from minilora.course.data import load_sentiment
from minilora.course.experiments import SETUPS, build_model
from minilora.inject import inject_lora
from minilora.io import get_peft_model_state_dict
from minilora.memory import MemoryBreakdown

SCRIPT = distributed.script_path()
TOLERANCE = 2e-4  # as chapter 12 asserts


# --- the worker script, launched for real ------------------------------------------------------------
def test_the_script_refuses_to_run_without_torchrun(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_ENV}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert "torchrun --nproc_per_node 2 tools/ddp_train.py" in proc.stderr and "WORLD_SIZE" in proc.stderr
    assert not any(tmp_path.iterdir())


def test_the_script_refuses_a_world_size_that_does_not_divide_the_global_batch(tmp_path):
    with pytest.raises(distributed.LaunchError, match="a world size of 2 does not divide the global batch of 15"):
        distributed.launch(SCRIPT, ["--out", tmp_path, "--global-batch", 15, "--steps", 1], nproc=2, timeout=300)


def test_launch_raises_with_the_end_of_the_workers_stderr(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text("import sys\nsys.exit('worker says: something is wrong')\n")
    with pytest.raises(distributed.LaunchError, match="worker says: something is wrong"):
        distributed.launch(script, [], nproc=1, timeout=120)


def one_process(steps, lr=5e-3, global_batch=16, seed=0):
    """The same steps as the worker's course loop, in this process, on the global batch."""
    model, tokenizer = build_model(SETUPS["LoRA r=8"], seed=seed)
    distributed.set_dropout(model, 0.0)
    model.train()
    rows = load_sentiment("train")
    sampler = DistributedSampler(rows, num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
    loader = iter(DataLoader(rows, batch_size=global_batch, sampler=sampler,
                             collate_fn=distributed.text_collator(tokenizer)))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    for _ in range(steps):
        model(**next(loader)).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model


def test_two_gloo_processes_train_the_adapter_one_process_trains(tmp_path):
    steps = 3
    report, stderr = distributed.launch(SCRIPT, ["--out", tmp_path, "--steps", steps], nproc=2, timeout=300)
    run = report["lora"]
    assert report["world_size"] == 2 and report["threads_per_process"] == 1
    assert not run["equal_before_ddp"] and run["equal_after_ddp"] and run["in_sync_at_end"]  # the broadcast
    reference = one_process(steps)
    single, multi = get_peft_model_state_dict(reference), load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(single) == sorted(multi)
    for key in single:
        torch.testing.assert_close(multi[key], single[key], atol=TOLERANCE, rtol=0)
    moved = max(t.abs().max().item() for k, t in single.items() if "lora_B" in k)  # B starts at zero
    diff = max((multi[k] - single[k]).abs().max().item() for k in single)
    assert diff < moved / 100  # the steps moved the adapter far more than DDP and one process differ
    trainable = get_nb_trainable_parameters(reference)[0]
    assert run["trainable"] == trainable and run["bytes_per_step"] == [4 * trainable] * steps


def test_fsdp_shards_the_model_and_trains_the_adapter_one_process_trains(tmp_path):
    steps = 3
    report, _ = distributed.launch(SCRIPT, ["--out", tmp_path, "--steps", steps, "--fsdp"], nproc=2, timeout=300)
    run = report["fsdp"]
    assert 2 * run["parameter_bytes_per_process"] == run["parameter_bytes"]  # each process holds half
    single = get_peft_model_state_dict(one_process(steps))
    sharded = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(single) == sorted(sharded)
    for key in single:
        torch.testing.assert_close(sharded[key], single[key], atol=TOLERANCE, rtol=0)


def test_the_script_takes_one_mode(tmp_path):
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "29999"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--fsdp", "--trainer"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


# --- the byte counter, on a process group of one ----------------------------------------------------
@pytest.fixture
def world_of_one():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_byte_counter_counts_every_bucket_of_the_trainable_gradients(world_of_one, tiny, lora):
    model = tiny.bert()
    if lora:
        inject_lora(model, LoRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                      modules_to_save=["classifier"]))
    trainable = get_nb_trainable_parameters(model)[0]
    reference = {n: p.detach().clone() for n, p in model.named_parameters()}
    labels = torch.tensor([0, 2])
    distributed.set_dropout(model, 0.0)  # the same forward pass twice
    model.train()
    model(input_ids=tiny.IDS, labels=labels).loss.backward()  # the gradients without DDP
    plain = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.001)  # small buckets: several per step
    counter = distributed.register_byte_counter(ddp)
    for _ in range(2):
        ddp(input_ids=tiny.IDS, labels=labels).loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        for n, g in grads.items():  # the hook all-reduces like DDP's default (a world of one: unchanged)
            torch.testing.assert_close(g, plain[n])
        model.zero_grad(set_to_none=True)
    assert counter.steps == [4 * trainable] * 2
    assert counter.buckets[-1] > 1  # (DDP rebuilds its buckets after the first step)
    assert all(torch.equal(p, reference[n]) for n, p in model.named_parameters())  # no step taken


def test_register_byte_counter_wants_a_ddp_model(tiny):
    with pytest.raises(TypeError, match="wrap it first"):
        distributed.register_byte_counter(tiny.bert())


# --- the formulas and the checks ---------------------------------------------------------------------
def test_check_world_size():
    assert distributed.check_world_size(16, 2) == 8
    with pytest.raises(ValueError, match=r"does not divide the global batch of 16.*\[1, 2, 4, 8, 16\]"):
        distributed.check_world_size(16, 3)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="^world_size must be an integer >= 1"):
            distributed.check_world_size(16, bad)
    for bad in (2.0, True):
        with pytest.raises(TypeError, match="^world_size must be an integer >= 1"):
            distributed.check_world_size(16, bad)
    with pytest.raises(TypeError, match="^nproc must be an integer"):
        distributed.launch(SCRIPT, [], nproc=2.0)  # refused before torchrun starts


def test_require_torchrun(monkeypatch):
    for key in distributed.TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit, match="torchrun --nproc_per_node 2"):
        distributed.require_torchrun()
    for key, value in zip(distributed.TORCHRUN_ENV, ("1", "1", "2", "127.0.0.1", "29500")):
        monkeypatch.setenv(key, value)
    assert distributed.require_torchrun() == (1, 2)


def test_effective_batch_and_ring_bytes():
    assert distributed.effective_batch_size(8, 4, 2) == 64
    with pytest.raises(ValueError, match="grad_accum_steps"):
        distributed.effective_batch_size(8, 0, 2)
    assert distributed.ring_allreduce_bytes(1000, 8) == 1750
    assert distributed.ring_allreduce_bytes(1000, 1) == 0
    with pytest.raises(ValueError, match="payload"):
        distributed.ring_allreduce_bytes(-1, 2)
    with pytest.raises(TypeError, match="^per_device must be an integer"):
        distributed.effective_batch_size(True, 1, 2)


def test_sharded_bytes_follow_the_zero_paper():
    n, w = 1_000_000, 8
    full = MemoryBreakdown("full", n, n, weights=2 * n, gradients=2 * n, optimizer=8 * n, master=4 * n)
    want = {"DDP": 16 * n, "ZeRO-1": 4 * n + 12 * n / w, "ZeRO-2": 2 * n + 14 * n / w, "ZeRO-3 / FSDP": 16 * n / w}
    for stage, total in want.items():
        assert distributed.sharded_bytes(full, w, stage)["total"] == pytest.approx(total)
    with_act = MemoryBreakdown("a", n, n, 2 * n, 2 * n, 8 * n, 4 * n, activations=5)
    assert distributed.sharded_bytes(with_act, w, "ZeRO-3 / FSDP")["activations"] == 5  # never sharded
    with pytest.raises(ValueError, match="stage must be one of"):
        distributed.sharded_bytes(full, w, "ZeRO-4")


def test_set_dropout_and_the_collator(tiny):
    model = tiny.bert()
    assert distributed.set_dropout(model, 0.0) > 0
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        distributed.set_dropout(model, 1.0)
    with pytest.raises(TypeError, match=r"\[0, 1\)"):
        distributed.set_dropout(model, "0.1")
    model, tokenizer = build_model(SETUPS["LoRA r=8"], seed=0)
    rows = load_sentiment("validation")[:3]
    batch = distributed.text_collator(tokenizer)(rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 3
    assert batch["labels"].tolist() == [{"negative": 0, "positive": 1}[r["label"]] for r in rows]
