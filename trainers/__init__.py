"""Accelerate-based textual-inversion trainers: learn new token embeddings from a few images."""
