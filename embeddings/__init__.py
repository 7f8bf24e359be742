"""tokensmith's core: the embedding value, its files, the store, embedding maths and prompt injection."""

from embeddings.errors import EmbeddingFormatError, StoreError, TokensmithError

__all__ = ["EmbeddingFormatError", "StoreError", "TokensmithError"]
