"""What every adapter file shares: its two file names, atomic writes, and reading safetensors.  (Chapter 06)

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors``, as PEFT writes them.
``write_atomic`` writes a file through a temporary file in the same folder and a rename, so an
interrupted save never leaves half a file. ``read_tensors`` reads safetensors only: nothing is ever
unpickled. ``minilora.io`` (LoRA) and ``minilora.prompting_io`` (prompt and prefix tuning) build on
this module, which imports nothing from minilora but the error vocabulary.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import AdapterFileError

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "write_atomic", "read_tensors", "check_adapter_folder"]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through a temporary file in the same folder and a
    rename, so that an interrupted write never leaves half a file; the folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private (0600); ours is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def check_adapter_folder(directory: str | os.PathLike) -> Path:
    """``directory`` as a ``Path`` if it is an existing folder, else an ``AdapterFileError`` saying so."""
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"an adapter folder is a path (str or pathlib.Path), got {type(directory).__name__}.")
    directory = Path(directory)
    if not directory.exists():
        raise AdapterFileError(f"no adapter folder {str(directory)!r}: it does not exist. Check the path, or save the "
                               "adapter there first with minilora.save_adapter(model, folder).")
    if not directory.is_dir():
        raise AdapterFileError(f"{str(directory)!r} is a file, not an adapter folder; pass the folder that holds "
                               f"{CONFIG_NAME} and {WEIGHTS_NAME}.")
    return directory


def read_tensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's ``adapter_model.safetensors``, refusing a pickle or a damaged file."""
    directory = Path(directory)
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        hint = (" It holds adapter_model.bin, a pickle, which minilora never loads; re-save it with PEFT's "
                "save_pretrained(safe_serialization=True).") if (directory / "adapter_model.bin").exists() else \
            " Save the adapter again with minilora.save_adapter or PEFT's save_pretrained."
        raise AdapterFileError(f"no {WEIGHTS_NAME} in {directory}.{hint}")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types; report them plainly
        raise AdapterFileError(f"{path} ({path.stat().st_size:,d} bytes) is not a readable safetensors file: it is "
                               f"truncated or corrupt ({type(e).__name__}: {e}). Save the adapter again.") from None
