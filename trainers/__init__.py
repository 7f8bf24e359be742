"""Accelerate-based textual-inversion trainers: learn new token embeddings from a few images.

from trainers import TrainConfig, train
emb = train(TrainConfig(images="shots/", name="my-cat", init="cat"))   # -> embeddings.Embedding, stored

Public names load on first use (PEP 562): `trainers.config` is light, `trainers.trainer` pulls in torch and
diffusers, and `tokensmith --help` (which registers the train command's flags) must not pay for that.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "ConfigError": ("trainers.config", "ConfigError"),
    "TrainConfig": ("trainers.config", "TrainConfig"),
    "equivalent_commands": ("trainers.commands", "equivalent_commands"),
    "to_toml": ("trainers.commands", "to_toml"),
    "load_config": ("trainers.configfile", "load"),
    "train": ("trainers.trainer", "train"),
}

__all__ = ["ConfigError", "TrainConfig", "equivalent_commands", "load_config", "to_toml", "train"]

if TYPE_CHECKING:
    from trainers.commands import equivalent_commands, to_toml
    from trainers.config import ConfigError, TrainConfig
    from trainers.configfile import load as load_config
    from trainers.trainer import train


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'trainers' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value
