"""The library's error vocabulary, in one leaf module.  (Chapters 04 and 06; the table: docs/errors.md)

minilora refuses bad input at the call, before it changes anything, with one of four kinds of error:

* ``TypeError``: an argument of the wrong type (a string where a list is expected, a bool for an int);
* ``ValueError``: an argument of the right type and the wrong value (``r=0``, a module name that
  matches nothing, an action the model's state forbids, such as switching adapters while merged);
* ``UnknownAdapterError``: an adapter name the model does not hold. It subclasses both ``KeyError``
  (a name looked up in a dict of adapters) and ``ValueError`` (a bad argument), so either ``except``
  catches it. An unknown name is always refused, never skipped;
* ``AdapterFileError`` (a ``ValueError``): any problem with an adapter folder: missing, unreadable,
  damaged, or written for another model.

Every message says what to do instead. This module imports nothing from minilora.
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["UnknownAdapterError", "AdapterFileError"]


class UnknownAdapterError(KeyError, ValueError):
    """An adapter name that the model (or layer) does not hold. The message lists the names it does hold."""

    def __init__(self, name, known: Iterable[str] = (), where: str = "the model"):
        known = list(known)
        self.name, self.known = name, known
        if known:
            msg = (f"no adapter named {name!r} in {where}; it has {known}. Check the spelling, or list them with "
                   "minilora.list_adapters(model).")
        else:
            msg = (f"no adapter named {name!r}: {where} has no adapters. Add one with minilora.inject_lora(model, "
                   "config, adapter_name) or minilora.load_adapter(model, directory, adapter_name).")
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class AdapterFileError(ValueError):
    """An adapter folder that cannot be loaded into this model (the message says why and what to do)."""
