"""Modules trained whole next to LoRA: a new classifier head, one copy per adapter.  (Chapters 04 and 06)

A classifier head added for a new task starts random, so it must be trained fully; a low-rank update of
a random matrix would make no sense. PEFT calls such a module a *module to save*
(``LoraConfig(modules_to_save=["classifier"])``): ``ModulesToSaveWrapper`` keeps the original module
frozen as ``original_module`` and gives each adapter its own trainable copy in ``modules_to_save[name]``,
so that switching adapters switches heads too, and the copy is saved in the adapter's file.

The wrapper computes ``modules_to_save[active](x)``, or ``original_module(x)`` when no copy is active
or it is switched off (``enable_adapters(False)``, as ``minilora.disable_adapter_layers`` does): then,
as in PEFT, every copy is frozen, and switching on makes the active copy trainable again.
"""
from __future__ import annotations

import copy
from typing import Sequence

from torch import nn

from .utils import check_bool

__all__ = ["ModulesToSaveWrapper"]


class ModulesToSaveWrapper(nn.Module):
    """A fully trainable copy of a module (e.g. a new classifier head), one per adapter, as PEFT.

    The original stays frozen inside as ``original_module``; ``modules_to_save[name]`` is the copy
    that adapter ``name`` trains and saves. With no active copy the original is used."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str):
        if not isinstance(module_to_save, nn.Module):
            raise TypeError(f"module_to_save must be a torch nn.Module, got {type(module_to_save).__name__}.")
        _check_names([adapter_name])
        super().__init__()
        self.original_module = module_to_save.requires_grad_(False)
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.disabled = False
        self._mixed_batch = None  # chapter 13: the rows' adapters while `with minilora.mixed_batch(...)` is open
        self.update(adapter_name)

    def update(self, adapter_name: str) -> None:
        """Make a trainable copy for ``adapter_name`` (active only if no other copy is)."""
        _check_names([adapter_name])
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        if self.active_adapter is None:
            self.active_adapter = adapter_name
        self.modules_to_save[adapter_name].requires_grad_(adapter_name == self.active_adapter)

    def set_adapter(self, adapter_names: str | Sequence[str]) -> None:
        """Make the copy of the one adapter in ``adapter_names`` that has one active (and trainable); names
        without a copy here are allowed (their adapter did not save this module)."""
        names = [adapter_names] if isinstance(adapter_names, str) else _check_names(adapter_names)
        chosen = [n for n in names if n in self.modules_to_save]
        if len(chosen) > 1:
            raise ValueError(f"adapters {chosen} each have their own copy of this module; only one can be "
                             "active at a time, so they cannot be stacked.")
        self.active_adapter = chosen[0] if chosen else None
        for n, m in self.modules_to_save.items():
            m.requires_grad_(n == self.active_adapter)

    def enable_adapters(self, enabled: bool) -> None:
        """Use the active copy (True) or the original module (False); off, every copy is frozen (as PEFT)."""
        self.disabled = not check_bool(enabled, "enabled")
        for n, m in self.modules_to_save.items():
            m.requires_grad_(enabled and n == self.active_adapter)

    def forward(self, *args, **kwargs):
        if self._mixed_batch is not None:  # each row's own copy (minilora.serving, chapter 13)
            return self._mixed_batch.forward_saved(self, *args, **kwargs)
        if self.disabled or self.active_adapter is None:
            return self.original_module(*args, **kwargs)
        return self.modules_to_save[self.active_adapter](*args, **kwargs)


def _check_names(names) -> list[str]:
    """``names`` as a list, if it is a list or tuple of non-empty strings."""
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"adapter names must be strings (one, or a list of them), got {names!r}.")
    if not all(names):
        raise ValueError(f"an adapter name must be a non-empty string, got {names!r}.")
    return list(names)
