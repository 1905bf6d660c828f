"""What the kit's Lightning checkpoints hold besides Lightning's own state: adapter-only weights and every RNG.

A LightningModule's ``on_save_checkpoint`` / ``on_load_checkpoint`` call these, so a checkpoint never carries
the frozen base (only what trains) and a resumed run draws the same random numbers it would have drawn.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from reprokit.policy import load_trainable_state_dict, trainable_state_dict

__all__ = ["adapter_state_dict", "load_adapter_state_dict", "restore_rng_state", "rng_state"]


def adapter_state_dict(model) -> dict[str, torch.Tensor]:
    """The trainable tensors only, keyed as Lightning keys a module's ``model`` attribute (``model.<name>``)."""
    return {f"model.{k}": v for k, v in trainable_state_dict(model).items()}


def load_adapter_state_dict(model, checkpoint: dict) -> None:
    """Load ``checkpoint["state_dict"]`` (from :func:`adapter_state_dict`) into ``model``'s trainable tensors."""
    adapter = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    load_trainable_state_dict(model, adapter)
    # Lightning loads state_dict itself afterwards (non-strict); keep only keys the module really has.
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in adapter.items()}


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states, as plain tensors and numbers: Lightning loads
    checkpoints with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": random.getstate(),
    }


def restore_rng_state(rng: dict | None) -> None:
    """Set every RNG from :func:`rng_state`'s dict; None (an older checkpoint without it) changes nothing."""
    if not rng:
        return
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = rng["numpy"]
    np.random.set_state((state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["cached"]))
    random.setstate(rng["python"])
