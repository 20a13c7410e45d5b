r"""Data parallelism: what crosses the wire, what each GPU holds, and launching with torchrun.  (Chapter 12)

**Data parallelism** (``torch.nn.parallel.DistributedDataParallel``, DDP): :math:`W` processes each
hold the whole model and take a shard of :math:`b = B / W` examples of every global batch of
:math:`B`. The loss is a mean, so the full-batch gradient is the mean of the shards' gradients,

.. math::  \nabla_\theta \frac{1}{B}\sum_{i=1}^{B} \ell_i = \frac{1}{W}\sum_{w=1}^{W}
           \nabla_\theta \frac{1}{b}\sum_{i \in \mathrm{shard}_w} \ell_i ,

which DDP computes with one **all-reduce** (a sum, then :math:`/W`) of every gradient during the
backward pass. Every process then takes the same optimizer step from the same weights, so they stay
equal, and :math:`N` steps of DDP equal :math:`N` steps of one process on the global batch (up to the
order of floating-point sums). Dropout is the exception: each process draws its masks from its own
random generator, so an exact comparison needs it off (``set_dropout(model, 0.0)``).

**What crosses the wire.** DDP puts into its buckets only the parameters with ``requires_grad``, so
per step it all-reduces :math:`P_{train} \cdot s` bytes (:math:`s` = bytes per gradient, 4 in fp32):
LoRA's :math:`r(d_{in} + d_{out})` per adapted matrix instead of the whole model. A ring all-reduce
makes each GPU send (and receive) :math:`2\frac{W-1}{W}` times that payload. Once, at start-up, DDP
broadcasts rank 0's whole ``state_dict`` (frozen weights and buffers included) so that all start equal.
``ByteCounter`` is a DDP communication hook that measures the payload: it adds up the bytes of every
bucket handed to it, then all-reduces the bucket exactly as DDP's default hook does.

**Sharding** (ZeRO, Rajbhandari et al. 2020; PyTorch's FSDP): per parameter, mixed-precision Adam holds
2 (16-bit weight) + 2 (gradient) + 12 (fp32 master weight and two moments) bytes. ZeRO stage 1 shards
the 12 over the :math:`W` GPUs, stage 2 the gradients too, stage 3 (FSDP's ``FULL_SHARD``) the
weights too: ``sharded_bytes`` divides each row of a ``memory.MemoryBreakdown`` accordingly.

``launch`` starts a script under ``torchrun`` from Python (a notebook cannot spawn workers it
defines itself), one thread per process, and returns what the script reports.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from ..memory import MemoryBreakdown
from ..utils import check_int, check_number
from .data import label_ids

__all__ = ["TORCHRUN_ENV", "require_torchrun", "check_world_size", "effective_batch_size", "set_dropout",
           "text_collator", "ByteCounter", "register_byte_counter", "ring_allreduce_bytes", "STAGES", "sharded_bytes",
           "script_path", "launch", "LaunchError"]

#: The variables torchrun sets in each worker; a script started without torchrun has none of them.
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def require_torchrun(script: str = "tools/ddp_train.py") -> tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment, or a ``SystemExit`` that says how to launch."""
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing:
        raise SystemExit(f"{script} is a torchrun worker: it needs the variables torchrun sets for each process "
                         f"({', '.join(missing)} are missing). Launch it with\n"
                         f"    torchrun --nproc_per_node 2 {script} --out DIR\n"
                         f"(or python -m torch.distributed.run ...), or from Python with "
                         "minilora.course.distributed.launch(...).")
    return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def check_world_size(global_batch: int, world_size: int) -> int:
    """The per-process batch ``global_batch // world_size``, or a ValueError if it does not divide."""
    check_int(global_batch, "global_batch")
    check_int(world_size, "world_size")
    if global_batch % world_size:
        fits = [w for w in range(1, global_batch + 1) if global_batch % w == 0]
        raise ValueError(f"a world size of {world_size} does not divide the global batch of {global_batch}: the "
                         f"processes would get unequal shards and the mean of their gradients would not be the "
                         f"gradient of the global batch. Use --nproc_per_node in {fits}, or a global batch that is a "
                         f"multiple of {world_size}.")
    return global_batch // world_size


def effective_batch_size(per_device: int, grad_accum_steps: int = 1, world_size: int = 1) -> int:
    """Examples behind one optimizer step: ``per_device * grad_accum_steps * world_size``."""
    return (check_int(per_device, "per_device") * check_int(grad_accum_steps, "grad_accum_steps")
            * check_int(world_size, "world_size"))


def set_dropout(model: nn.Module, p: float) -> int:
    """Set the probability of every ``nn.Dropout`` in ``model`` to ``p``; returns how many there are."""
    check_number(p, "the dropout probability p", low=0, high=1, high_open=True)
    layers = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in layers:
        m.p = p
    return len(layers)


def text_collator(tokenizer, max_length: int = 64) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """A collate function for rows ``{"text", "label", ...}`` of the sentiment data (``data.load_sentiment``):
    the texts tokenized and padded to the batch's longest, the labels as ``labels``. It serves a
    ``DataLoader`` and the ``Trainer`` (its ``data_collator``) alike."""
    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        enc = tokenizer([r["text"] for r in rows], padding="longest", truncation=True, max_length=max_length,
                        return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "labels": torch.tensor([label_ids[r["label"]] for r in rows])}

    return collate


@dataclass
class ByteCounter:
    """The state of a counting DDP communication hook: bytes and buckets all-reduced, per step."""

    process_group: object = None
    steps: list[int] = field(default_factory=list)  # bytes of each backward pass
    buckets: list[int] = field(default_factory=list)  # buckets of each backward pass
    _bytes: int = 0
    _buckets: int = 0

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP checks them, and this module's are strings
        """Count the bucket (a ``dist.GradBucket``), then all-reduce it as ``default_hooks.allreduce_hook``
        does (divide by W, sum); returns its ``torch.futures.Future``."""
        buffer = bucket.buffer()
        state._bytes += buffer.numel() * buffer.element_size()
        state._buckets += 1
        if bucket.is_last():
            state.steps.append(state._bytes)
            state.buckets.append(state._buckets)
            state._bytes = state._buckets = 0
        return allreduce_hook(state.process_group, bucket)


def register_byte_counter(ddp_model: nn.parallel.DistributedDataParallel, process_group=None) -> ByteCounter:
    """Register a ``ByteCounter`` as ``ddp_model``'s communication hook (before its first backward pass)."""
    if not isinstance(ddp_model, nn.parallel.DistributedDataParallel):
        raise TypeError(f"register_byte_counter takes a DistributedDataParallel model, got {type(ddp_model).__name__}; "
                        "wrap it first: DistributedDataParallel(model).")
    counter = ByteCounter(process_group)
    ddp_model.register_comm_hook(counter, counter.hook)
    return counter


def ring_allreduce_bytes(payload: int | float, world_size: int) -> float:
    """Bytes each process sends (and receives) in a ring all-reduce of ``payload`` bytes: 2 (W-1)/W x payload."""
    check_int(world_size, "world_size")
    check_number(payload, "payload (bytes)", low=0)
    return 2 * (world_size - 1) / world_size * payload


#: What each sharding stage divides by the world size (the rest every GPU holds whole).
STAGES = {
    "DDP": (),
    "ZeRO-1": ("optimizer", "master"),
    "ZeRO-2": ("optimizer", "master", "gradients"),
    "ZeRO-3 / FSDP": ("optimizer", "master", "gradients", "weights"),
}


def sharded_bytes(breakdown: MemoryBreakdown, world_size: int, stage: str) -> dict[str, float]:
    """Bytes per GPU of ``breakdown`` (``memory.training_memory``) under a ``STAGES`` sharding: each part,
    and ``total``; activations are per GPU and never sharded. FSDP and ZeRO-3 also gather one unit's
    full weights at a time during forward and backward, which this leaves out."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}, got {stage!r}.")
    check_int(world_size, "world_size")
    parts = {name: float(getattr(breakdown, name)) / (world_size if name in STAGES[stage] else 1)
             for name in ("weights", "gradients", "optimizer", "master", "activations")}
    return {**parts, "total": sum(parts.values())}


class LaunchError(RuntimeError):
    """A torchrun launch that failed; the message ends with the workers' stderr."""


def script_path(name: str = "ddp_train.py") -> Path:
    """A script in the course's ``tools/`` folder (next to the ``minilora`` package)."""
    path = Path(__file__).resolve().parents[2] / "tools" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: minilora must be installed from a checkout of the course "
                                "(pip install -e .), so that tools/ sits next to the minilora/ package.")
    return path


def launch(script: str | os.PathLike, args: list[str], nproc: int = 2, timeout: float = 600) -> tuple[dict, str]:
    """Run ``python -m torch.distributed.run --standalone --nproc_per_node nproc script *args --report FILE``.

    Each worker gets ``OMP_NUM_THREADS=1`` and no network (the course's offline variables). The script
    writes its results as JSON to the file after ``--report``; returns ``(that dict, the captured stderr)``.
    A failed or timed-out launch raises ``LaunchError`` with the last lines of stderr."""
    check_int(nproc, "nproc")
    check_number(timeout, "timeout (seconds)", low=0, low_open=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="minilora-launch-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               str(script), *map(str, args), "--report", str(report)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            tail = (e.stderr or b"")[-3000:]
            raise LaunchError(f"torchrun did not finish within {timeout} s.\n--- stderr (end) ---\n"
                              f"{tail.decode(errors='replace') if isinstance(tail, bytes) else tail}") from None
        if proc.returncode != 0 or not report.exists():
            raise LaunchError(f"torchrun exited with code {proc.returncode}.\n--- stderr (end) ---\n"
                              f"{proc.stderr[-3000:]}")
        return json.loads(report.read_text()), proc.stderr
