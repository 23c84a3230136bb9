"""A training rank's resumable state, and checkpoint loading that never runs code from the file.

A checkpoint's ``trainer_state_rank*.json`` holds a rank's data position and RNG states (Python,
numpy, torch, CUDA) as plain JSON (:func:`rank_state_to_json`), so resuming it unpickles nothing.
DeepSpeed's own files (``mp_rank_*_model_states.pt``, ``zero_pp_rank_*_optim_states.pt``) are
pickles; :func:`safe_checkpoint_loading` makes DeepSpeed read them with ``torch.load(weights_only=True)``
and an allow-list (:func:`checkpoint_allow_list`: numpy arrays, three small DeepSpeed records and an
Enum member by its name), so a checkpoint folder someone hands you can hold tensors and numbers, not
code to run. A
``trainer_state_rank*.pt`` of an earlier version is read the same way.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import functools
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _bytes_tensor(data: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(data)), dtype=torch.uint8).clone()


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def rank_state_to_json(state: dict[str, Any]) -> dict[str, Any]:
    """A rank's resumable state (``data``: the data position, JSON already; ``rng``: the states of
    :func:`rng_state`) as plain JSON data: no pickle, so a checkpoint someone hands you cannot run
    code when it is resumed. :func:`rank_state_from_json` is the inverse."""
    rng, out = state["rng"], {}
    if "python" in rng:
        version, keys, gauss = rng["python"]
        out["python"] = [version, list(keys), gauss]
    if "numpy" in rng:
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        out["numpy"] = [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)]
    if "torch" in rng:
        out["torch"] = _b64(rng["torch"])
    if "cuda" in rng:
        out["cuda"] = [_b64(t) for t in rng["cuda"]]
    return {"format": 1, "data": state["data"], "rng": out}


def rank_state_from_json(data: dict[str, Any]) -> dict[str, Any]:
    rng, out = data["rng"], {}
    if "python" in rng:
        version, keys, gauss = rng["python"]
        out["python"] = (version, tuple(keys), gauss)
    if "numpy" in rng:
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        out["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
    if "torch" in rng:
        out["torch"] = _bytes_tensor(rng["torch"])
    if "cuda" in rng:
        out["cuda"] = [_bytes_tensor(t) for t in rng["cuda"]]
    return {"data": data["data"], "rng": out}


#: classes a DeepSpeed checkpoint holds besides tensors, containers and numbers (ZeRO 1-3 optimiser
#: states); with numpy arrays, the only ones the checkpoint loader accepts
DEEPSPEED_RECORDS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.zero.config.ZeroStageEnum",
                     "deepspeed.utils.tensor_fragment.fragment_address")


def checkpoint_allow_list() -> list:
    """What ``torch.load(weights_only=True)`` may build from our checkpoints beyond its defaults; the
    pickle's ``builtins.getattr`` stands for :func:`enum_member` (see there)."""
    import importlib

    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 / 1
    allowed = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), core.multiarray._reconstruct]
    for name in DEEPSPEED_RECORDS:
        module, _, attr = name.rpartition(".")
        try:
            allowed.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):  # another DeepSpeed version: not needed or not there
            pass
    enums = tuple(a for a in allowed if isinstance(a, type) and issubclass(a, enum.Enum))
    return allowed + [(functools.partial(enum_member, enums), "builtins.getattr")]


def enum_member(enums: tuple[type[enum.Enum], ...], cls: Any, name: Any) -> enum.Enum:
    """Some Python releases (3.11.2 among them) pickle an Enum member as ``getattr(EnumClass, name)``
    (later ones as ``EnumClass(value)``): DeepSpeed's ZeRO-2 optimiser state holds a ``ZeroStageEnum``.
    The safe loader reads that ``getattr`` as this function: the member of an allowed Enum class by
    its name, and nothing else."""
    if not (isinstance(cls, type) and cls in enums and isinstance(name, str) and name in cls.__members__):
        raise pickle.UnpicklingError(f"getattr({cls!r}, {name!r}) in a checkpoint: only members of "
                                     f"{[e.__qualname__ for e in enums]} may be looked up by name")
    return cls[name]


def safe_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True`` and :func:`checkpoint_allow_list`: a checkpoint
    someone hands you can hold tensors and those records, never code to run."""
    with torch.serialization.safe_globals(checkpoint_allow_list()):
        return torch.load(path, map_location=map_location, weights_only=True)


@contextlib.contextmanager
def safe_checkpoint_loading(engine):
    """DeepSpeed's checkpoint engine unpickles with ``weights_only=False``; within this block it
    loads through :func:`safe_load` instead."""
    ckpt = engine.checkpoint_engine
    ckpt.load = lambda path, map_location=None: safe_load(path, map_location)
    try:
        yield
    finally:
        del ckpt.load  # the class's own method again


def load_legacy_rank_state(path: Path) -> dict[str, Any]:
    """A ``trainer_state_rank*.pt`` of an earlier version, through :func:`safe_load`."""
    return safe_load(path)
