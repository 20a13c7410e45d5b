r"""Where the memory of fine-tuning goes: weights, gradients, optimizer state, activations.  (Chapter 08)

Per parameter, in bytes (1 GB = 10^9 bytes here; a "80 GB" GPU holds 80 GiB = 85.9 GB):

* **Full fine-tune, mixed-precision Adam** (ZeRO, Rajbhandari et al. 2020): 2 (bf16/fp16 weight)
  + 2 (16-bit gradient) + 4 (fp32 master copy of the weight) + 4 + 4 (Adam's two fp32 moments)
  = **16 bytes**. In plain fp32 it is 4 + 4 + 8 = 16 bytes too, without a master copy.
* **A frozen base** costs its weights only: no gradients, no optimizer state. bf16: **2 bytes**.
* **NF4** (chapter 08, ``minilora.quant``): 4 bits of code + one fp32 absmax per 64 weights
  (32/64 = 0.5 bits) = **4.5 bits**; with double quantization the constants are int8 per 64 plus
  fp32 per 256 blocks: 8/64 + 32/(64*256) = 0.127 bits, so **4.127 bits**. Only the linear layers
  of the blocks are quantized (as bitsandbytes); embeddings, norms and the LM head stay 16-bit.
* **LoRA trainables** are kept in fp32: weight 4 + gradient 4 + Adam moments 8 = **16 bytes**
  each, and they are few: :math:`r(d_{in}+d_{out})` per adapted layer.

The parameter counts come from the model itself, or from a transformers config built on the
*meta* device (shapes, no data), so Llama-2-70B can be counted exactly on a laptop.

Activations depend on batch and sequence length, not on the parameter count;
``activation_memory_estimate`` gives an *estimate* (see its docstring), and ``measure_peak_rss``
measures what a block of code really used on this machine.
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .quant import nf4_nbytes

GB = 1e9
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adam": 8, "sgd-momentum": 4, "sgd": 0}
"""fp32 optimizer state per trainable parameter: Adam keeps two moments, momentum SGD one."""
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
QUANT = ("nf4", "nf4-dq")
LLAMA2 = {  # published hyper-parameters (Touvron et al. 2023); untied embeddings, vocab 32000
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                num_key_value_heads=40),
    "70b": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8),
}
Model = Union[nn.Module, "transformers.PretrainedConfig"]  # noqa: F821


def llama2_config(size: str = "7b"):
    """A ``LlamaConfig`` with Llama-2's published sizes: "7b", "13b" or "70b"."""
    from transformers import LlamaConfig

    if size.lower() not in LLAMA2:
        raise ValueError(f"size must be one of {list(LLAMA2)}, got {size!r}.")
    return LlamaConfig(vocab_size=32000, tie_word_embeddings=False, **LLAMA2[size.lower()])


def _as_model(model_or_config: Model) -> nn.Module:
    """A model as is; a config built on the meta device, as ``config.architectures[0]`` when it
    names one (e.g. "BertModel"), else as ``AutoModelForCausalLM``."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        import transformers

        from .counting import meta_model
        arch = (getattr(model_or_config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        if cls is None:  # no architecture named: the causal LM (Llama, GPT-2, ...), with its LM head
            return meta_model(model_or_config)
        with torch.device("meta"):  # the named class, e.g. BertModel for an encoder's config
            return cls(model_or_config)
    raise TypeError(f"expected an nn.Module or a transformers config, got {type(model_or_config).__name__}.")


def _is_adapter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))


def _weights(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, int]]:
    """(module name, module, parameter name, numel) of every base weight, once each; LoRA
    matrices excluded. An NF4 layer's weight is reported as its ("weight", in*out)."""
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        if getattr(mod, "is_quantized", False):
            yield mname, mod, "weight", mod.in_features * mod.out_features
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) not in seen and not _is_adapter(f"{mname}.{pname}"):
                seen.add(id(p))
                yield mname, mod, pname, p.numel()


def parameter_count(model_or_config: Model) -> int:
    """Exact number of base parameters (NF4 weights counted as the numbers they stand for;
    tied weights once; LoRA matrices not included: see ``lora_trainable_count``)."""
    return sum(n for *_, n in _weights(_as_model(model_or_config)))


def model_nbytes(model: nn.Module) -> int:
    """Bytes really held by the model's tensors: every parameter and buffer, once each."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def lora_trainable_count(model_or_config: Model, r: int, targets: Union[Sequence[str], str]) -> int:
    """Parameters LoRA of rank ``r`` trains: ``r * (in + out)`` summed over the layers that
    ``targets`` selects, exactly as ``LoRAConfig.target_modules`` does (a list of names, a regular
    expression, or ``"all-linear"``). Plain, NF4 and already LoRA-wrapped layers all count."""
    from .config import LoRAConfig
    from .inject import resolve_targets
    from .layers import LoRAEmbedding

    model = _as_model(model_or_config)
    total = 0
    config = LoRAConfig(r=r, target_modules=targets if isinstance(targets, str) else list(targets))
    for name in resolve_targets(model, config):
        mod = model.get_submodule(name)
        if isinstance(mod, (nn.Embedding, LoRAEmbedding)):
            total += r * (mod.num_embeddings + mod.embedding_dim)
        elif hasattr(mod, "in_features"):
            total += r * (mod.in_features + mod.out_features)
        else:  # transformers' Conv1D stores its weight as (in, out)
            total += r * sum(mod.weight.shape)
    return total


def _parse_dtype(dtype) -> tuple[Optional[int], Optional[str]]:
    if isinstance(dtype, str) and dtype.lower() in QUANT:
        return None, dtype.lower()
    dtype = DTYPES.get(dtype.lower(), dtype) if isinstance(dtype, str) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a float torch.dtype, one of {list(DTYPES)}, or one of {QUANT}; got {dtype!r}.")
    return dtype.itemsize, None


def weight_bytes(model_or_config: Model, weight_dtype=torch.bfloat16, other_dtype=torch.bfloat16,
                 skip: Sequence[str] = ("lm_head",), blocksize: int = 64) -> int:
    """Bytes to store the base weights in ``weight_dtype`` (a float dtype, "nf4" or "nf4-dq").
    With NF4, linear layers not in ``skip`` are quantized exactly as ``quant.quantize_model_nf4``
    does (biases kept fp32); every other parameter is stored in ``other_dtype``."""
    size, quant = _parse_dtype(weight_dtype)
    other, _ = _parse_dtype(other_dtype if quant else weight_dtype)
    total = 0
    for mname, mod, pname, n in _weights(_as_model(model_or_config)):
        qlayer = getattr(mod, "is_quantized", False) or (
            type(mod) is nn.Linear and mname not in skip and not any(s in mname.split(".") for s in skip))
        if quant and qlayer:
            total += nf4_nbytes(n, blocksize, quant == "nf4-dq") if pname == "weight" else 4 * n
        else:
            total += n * other
    return total


@dataclass
class MemoryBreakdown:
    """Bytes of each part of training memory; ``total`` is their sum. Print it for a table in GB."""

    label: str
    n_params: int
    n_trainable: int
    weights: int
    gradients: int
    optimizer: int
    master: int
    activations: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.master + self.activations

    def rows(self, activations: Optional[bool] = None) -> list[tuple[str, int]]:
        """(name, bytes) of each part and the total; the activations row only if non-zero
        (or if ``activations`` says so)."""
        show = bool(self.activations) if activations is None else activations
        return [(f.name.replace("optimizer", "optimizer state").replace("master", "master weights"),
                 getattr(self, f.name)) for f in fields(self)[3:] if show or f.name != "activations"
                ] + [("total", self.total)]

    def __str__(self) -> str:
        head = (f"{self.label or 'training memory'}: {self.n_trainable:,} trainable of {self.n_params:,} "
                f"parameters ({100 * self.n_trainable / self.n_params:.3g}%)")
        body = [f"  {name:<16}{b / GB:>9.2f} GB" for name, b in self.rows()]
        note = "(1 GB = 10^9 bytes" + ("; activations not included)" if not self.activations else ")")
        return "\n".join([head] + body + [note])


def memory_table(breakdowns: Sequence[MemoryBreakdown]) -> str:
    """Several breakdowns side by side, one column each, in GB (10^9 bytes)."""
    width = max([12] + [len(b.label) + 2 for b in breakdowns])
    show = any(b.activations for b in breakdowns)
    lines = [" " * 16 + "".join(f"{b.label:>{width}}" for b in breakdowns)]
    for i, (name, _) in enumerate(breakdowns[0].rows(show)):
        lines.append(f"{name:<16}" + "".join(f"{b.rows(show)[i][1] / GB:>{width - 3}.2f} GB" for b in breakdowns))
    return "\n".join(lines) + ("" if show else "\n(1 GB = 10^9 bytes; activations not included)")


def training_memory(model_or_config: Model, trainable: Union[str, int, "LoRAConfig"] = "all",  # noqa: F821
                    weight_dtype=torch.bfloat16, optimizer: str = "adamw",
                    master_weights: Optional[bool] = None, adapter_dtype=torch.float32,
                    activations: Union[int, "ActivationEstimate", None] = None, label: str = "",
                    other_dtype=torch.bfloat16, skip: Sequence[str] = ("lm_head",),
                    blocksize: int = 64) -> MemoryBreakdown:
    """Training memory of a model (or config), broken down as in the module docstring.

    ``trainable="all"``: a full fine-tune of every base parameter, stored in ``weight_dtype``,
    with gradients in that dtype, fp32 optimizer state and, by default when ``weight_dtype`` is
    16-bit, an fp32 master copy. ``trainable=n`` (e.g. ``lora_trainable_count(cfg, r=8, targets=...)``):
    a frozen base in ``weight_dtype`` (a float dtype, "nf4" or "nf4-dq") plus ``n`` adapter
    parameters in ``adapter_dtype`` with gradients and optimizer state (16 bytes each in fp32).
    ``trainable=LoRAConfig(...)``: ``n`` is what ``inject_lora`` would make trainable (LoRA
    matrices, biases, modules_to_save), counted on a meta copy of the base model.
    ``activations``: bytes, or an ``activation_memory_estimate``, to add a row. ``other_dtype``,
    ``skip``, ``blocksize``: how an NF4 base is stored, as in ``weight_bytes``."""
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"optimizer must be one of {list(OPTIMIZER_STATE_BYTES)}, got {optimizer!r}.")
    from .config import LoRAConfig

    model = _as_model(model_or_config)
    if isinstance(trainable, LoRAConfig):
        if any(getattr(m, "is_quantized", False) for m in model.modules()):
            raise ValueError("this model already has NF4 layers, which inject_lora does not count; pass "
                             "trainable=lora_trainable_count(model, r, targets) instead.")
        from .counting import lora_count

        trainable = lora_count(model, trainable)[0]
    n_params, state = parameter_count(model), OPTIMIZER_STATE_BYTES[optimizer]
    weights = weight_bytes(model, weight_dtype, other_dtype, skip, blocksize)
    if trainable == "all":
        size, quant = _parse_dtype(weight_dtype)
        if quant:
            raise ValueError("a quantized base cannot be fine-tuned in full; train an adapter instead: "
                             "trainable=lora_trainable_count(model, r=..., targets=[...]).")
        n, grad_size = n_params, size
    elif isinstance(trainable, int) and not isinstance(trainable, bool) and trainable >= 0:
        n, grad_size = trainable, _parse_dtype(adapter_dtype)[0]
        weights += n * grad_size
    else:
        raise ValueError(f"trainable must be 'all', a number of adapter parameters or a LoRAConfig, "
                         f"got {trainable!r}.")
    if master_weights is None:
        master_weights = grad_size < 4
    act = getattr(activations, "total", activations) or 0
    return MemoryBreakdown(label, n_params, n, weights, n * grad_size, n * state,
                           4 * n if master_weights else 0, act)


@dataclass
class ActivationEstimate:
    """An *estimate* of activation memory; see ``activation_memory_estimate``."""

    per_layer: int
    layers: int
    stored: int
    logits: int
    checkpointing: bool
    flash_attention: bool = False

    @property
    def total(self) -> int:
        return self.stored + self.logits

    def __str__(self) -> str:
        how = "with activation checkpointing" if self.checkpointing else "without recomputation"
        how += ", flash attention" if self.flash_attention else ""
        return (f"activations ~ {self.total / GB:.2f} GB ({how}; an estimate from Korthikanti et al. 2022, "
                f"not a measurement): {self.layers} layers, logits {self.logits / GB:.2f} GB")


def activation_memory_estimate(config, batch: int, seq_len: int, dtype=torch.bfloat16,
                               checkpointing: bool = False, flash_attention: bool = False) -> ActivationEstimate:
    r"""An ESTIMATE of the activations kept for the backward pass of one batch.

    Per transformer layer, 16-bit, no recomputation (Korthikanti et al. 2022, eq. 2, a GPT layer
    with a 4h MLP and dropout masks): :math:`sbh(34 + 5as/h)` bytes for sequence length s, batch
    b, hidden size h and a heads. The :math:`5as^2b` term is the attention matrix, which fused
    ("flash") attention never stores: ``flash_attention=True`` drops it. Llama's gated MLP, grouped KV heads and missing dropout shift this by
    tens of percent: read it as an order of magnitude. With full checkpointing each layer keeps
    only its 16-bit input, :math:`2sbh`, and one layer's activations are rebuilt at a time. Other
    dtypes scale by itemsize/2. Plus the fp32 logits the loss reads: :math:`4 b s V`."""
    cfg = getattr(config, "config", config)
    try:
        h, a, L, V = cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.vocab_size
    except AttributeError as e:
        raise ValueError(f"need a transformers config (or model) with hidden_size, num_attention_heads, "
                         f"num_hidden_layers, vocab_size: {e}") from None
    if min(batch, seq_len) < 1:
        raise ValueError(f"batch and seq_len must be positive, got {batch}, {seq_len}.")
    size, quant = _parse_dtype(dtype)
    if quant:
        raise ValueError("activations are computed in a float dtype (bf16, fp16, fp32), not in NF4.")
    s, b = seq_len, batch
    per_layer = (34 * s * b * h + (0 if flash_attention else 5 * a * s * s * b)) * size // 2
    stored = L * 2 * s * b * h * size // 2 + per_layer if checkpointing else L * per_layer
    return ActivationEstimate(per_layer, L, stored, 4 * b * s * V, checkpointing, flash_attention)


def _rss_reader():
    """(a function giving this process's resident memory in bytes now, a function to call when
    done, the method's name); (None, None, "ru_maxrss") where neither /proc nor psutil exists."""
    if os.path.exists("/proc/self/statm"):
        page, fd = os.sysconf("SC_PAGE_SIZE"), os.open("/proc/self/statm", os.O_RDONLY)
        return (lambda: int(os.pread(fd, 256, 0).split()[1]) * page), (lambda: os.close(fd)), "/proc/self/statm"
    try:
        import psutil
    except ImportError:
        return None, None, "ru_maxrss"
    proc = psutil.Process()
    return (lambda: proc.memory_info().rss), (lambda: None), "psutil"


@dataclass
class PeakRSS:
    """Result of ``measure_peak_rss``: resident memory before (``baseline``), the highest seen
    (``peak``), and ``delta = peak - baseline``, in bytes."""

    baseline: int = 0
    peak: int = 0
    samples: int = 0
    method: str = ""
    note: str = ""

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.baseline)

    def __str__(self) -> str:
        return (f"peak RSS +{self.delta / 1e6:,.1f} MB above {self.baseline / 1e6:,.1f} MB "
                f"({self.samples} samples via {self.method}){' - ' + self.note if self.note else ''}")


@contextmanager
def measure_peak_rss(interval: float = 0.002) -> Iterator[PeakRSS]:
    """Measure the peak resident memory (RSS) of the code in a ``with`` block, minus what was
    resident when it began. A background thread samples the RSS every ``interval`` seconds
    (Linux: /proc/self/statm; elsewhere psutil if installed), so spikes shorter than that can be
    missed. RSS counts pages touched, for every thread of the process. Garbage is collected and
    (glibc) freed heap returned to the system on entry, so blocks run one after the other compare
    fairly. Without /proc or psutil it falls back to ``ru_maxrss``, a lifetime maximum: the delta
    is then only the amount by which the block raised it (a lower bound), as ``note`` says."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim
        pass
    read, close, method = _rss_reader()
    res = PeakRSS(method=method)
    if read is None:
        try:
            import resource
        except ImportError:  # Windows without psutil
            res.method, res.note = "none", "cannot read memory use here; pip install psutil"
            yield res
            return
        unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        res.baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit
        res.note = "lifetime-maximum RSS only: a lower bound, 0 when the block stayed below an earlier peak"
        try:
            yield res
        finally:
            res.peak, res.samples = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit, 1
        return
    res.baseline = res.peak = read()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            res.peak, res.samples = max(res.peak, read()), res.samples + 1
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield res
    finally:
        stop.set()
        thread.join()
        res.peak, res.samples = max(res.peak, read()), res.samples + 1
        close()
