"""tokensmith's core: the embedding value, its files, the store, embedding maths and prompt injection."""

from embeddings.canonical import load_canonical, read_header, save_canonical
from embeddings.errors import EmbeddingFormatError, StoreError, TokensmithError
from embeddings.inject import (
    InstallError,
    expand_prompt,
    install,
    installed_tokens,
    token_names,
    uninstall,
    vectors_for_encoders,
    word_vectors,
)
from embeddings.store import Store, StoreEntry, safe_name, validate_name
from embeddings.value import Embedding, family_from_widths, family_title

__all__ = [
    "Embedding",
    "EmbeddingFormatError",
    "InstallError",
    "Store",
    "StoreEntry",
    "StoreError",
    "TokensmithError",
    "expand_prompt",
    "family_from_widths",
    "family_title",
    "install",
    "installed_tokens",
    "load_canonical",
    "read_header",
    "safe_name",
    "save_canonical",
    "token_names",
    "uninstall",
    "validate_name",
    "vectors_for_encoders",
    "word_vectors",
]
