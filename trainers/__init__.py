"""Accelerate-based textual-inversion trainers: learn new token embeddings from a few images.

from trainers import TrainConfig, train
emb = train(TrainConfig(images="shots/", name="my-cat", init="cat"))   # -> embeddings.Embedding, stored
"""

from trainers.config import ConfigError, TrainConfig, equivalent_commands, to_toml
from trainers.config import load as load_config
from trainers.trainer import train

__all__ = ["ConfigError", "TrainConfig", "equivalent_commands", "load_config", "to_toml", "train"]
