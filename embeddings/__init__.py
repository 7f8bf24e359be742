"""tokensmith's core: the embedding value, its files, the store, embedding maths and prompt injection.

Public names are loaded on first use (PEP 562), so `import embeddings.errors` (which every CLI module does)
does not import torch; `tokensmith --help` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from embeddings.errors import EmbeddingFormatError, StoreError, TokensmithError

_LAZY = {
    "Embedding": "embeddings.value",
    "family_from_widths": "embeddings.value",
    "family_title": "embeddings.value",
    "load_canonical": "embeddings.canonical",
    "package_version": "embeddings.canonical",
    "read_header": "embeddings.canonical",
    "save_canonical": "embeddings.canonical",
    "Store": "embeddings.store",
    "StoreEntry": "embeddings.listing",
    "safe_name": "embeddings.names",
    "validate_name": "embeddings.names",
    "InstallError": "embeddings.inject",
    "expand_prompt": "embeddings.inject",
    "install": "embeddings.inject",
    "installed_tokens": "embeddings.inject",
    "needs_partial": "embeddings.inject",
    "token_names": "embeddings.inject",
    "uninstall": "embeddings.inject",
    "vectors_for_encoders": "embeddings.inject",
    "word_vectors": "embeddings.inject",
    "import_path": "embeddings.importing",
    "import_file": "embeddings.importing",
    "export": "embeddings.exporting",
    "EXPORT_FORMATS": "embeddings.exporting",
    "blend": "embeddings.maths",
    "word_operand": "embeddings.maths",
    "nearest_tokens": "embeddings.maths",
    "norm_report": "embeddings.maths",
    "parse_blend": "embeddings.blend_expr",
    "BlendSpec": "embeddings.blend_expr",
    "diagnose": "embeddings.doctor",
    "diagnose_each": "embeddings.doctor",
    "Diagnosis": "embeddings.doctor",
}
_RENAMED = {"EXPORT_FORMATS": "FORMATS"}

__all__ = [
    "EXPORT_FORMATS",
    "BlendSpec",
    "Diagnosis",
    "Embedding",
    "EmbeddingFormatError",
    "InstallError",
    "Store",
    "StoreEntry",
    "StoreError",
    "TokensmithError",
    "blend",
    "diagnose",
    "diagnose_each",
    "expand_prompt",
    "export",
    "family_from_widths",
    "family_title",
    "import_file",
    "import_path",
    "install",
    "installed_tokens",
    "load_canonical",
    "nearest_tokens",
    "needs_partial",
    "norm_report",
    "package_version",
    "parse_blend",
    "read_header",
    "safe_name",
    "save_canonical",
    "token_names",
    "uninstall",
    "validate_name",
    "vectors_for_encoders",
    "word_operand",
    "word_vectors",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'embeddings' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from embeddings.blend_expr import BlendSpec, parse_blend
    from embeddings.canonical import load_canonical, package_version, read_header, save_canonical
    from embeddings.doctor import Diagnosis, diagnose, diagnose_each
    from embeddings.exporting import FORMATS as EXPORT_FORMATS
    from embeddings.exporting import export
    from embeddings.importing import import_file, import_path
    from embeddings.inject import (
        InstallError,
        expand_prompt,
        install,
        installed_tokens,
        needs_partial,
        token_names,
        uninstall,
        vectors_for_encoders,
        word_vectors,
    )
    from embeddings.listing import StoreEntry
    from embeddings.maths import blend, nearest_tokens, norm_report, word_operand
    from embeddings.names import safe_name, validate_name
    from embeddings.store import Store
    from embeddings.value import Embedding, family_from_widths, family_title
