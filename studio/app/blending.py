"""What the Blend page needs besides widgets: operands as plain values, the blend itself (the core's maths),
the weight rows of a preview grid, and a store view that holds the unsaved blend for the generation engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLEND_MARK = "*"  # in the preview prompt, stands for the blend's trigger
SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Operand:
    """One input of a blend: a stored embedding or an ordinary word/phrase, with its weight."""

    kind: str  # "embedding" | "word"
    value: str
    weight: float

    @property
    def label(self) -> str:
        return f"<{self.value}>" if self.kind == "embedding" else f'"{self.value}"'


def resolve(
    operands: list[Operand], store: Any, encoders: list | None, widths: dict[str, int] | None = None
) -> list[tuple[Any, float]]:
    """(Embedding, weight) parts for the core's blend; words become their token embeddings. With the model's
    `widths`, a stored embedding made for another model is refused by its own name."""
    from embeddings.doctor import widths_text
    from embeddings.maths import word_operand

    parts = []
    for i, op in enumerate(operands):
        if not op.value.strip():
            raise ValueError("every operand needs a value: pick an embedding or type a word")
        if op.kind == "embedding":
            emb = _stored_operand(store, op, i)
            if widths is not None and emb.widths != widths:
                raise ValueError(
                    f"cannot blend operand #{i + 1} {op.label}: it has {widths_text(emb.widths)} but this "
                    f"model's text encoder has {widths_text(widths)} (it was made for another model); pick "
                    "one made for this model, or a word"
                )
            parts.append((emb, op.weight))
        else:
            if encoders is None:
                raise ValueError("word operands need the model's tokenizer: the model could not be loaded")
            parts.append((word_operand(op.value.strip(), encoders), op.weight))
    return parts


def _stored_operand(store: Any, op: Operand, i: int) -> Any:
    """The stored embedding of operand #i+1; one that does not load is refused naming the operand, as a
    misfit is (the store's message names only its file)."""
    from embeddings.errors import TokensmithError

    try:
        return store.get(op.value)
    except (TokensmithError, KeyError, ValueError, OSError) as exc:
        reason = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        path = str(store.path(op.value))
        reason = reason.removeprefix(f"{path}: ").replace(path, Path(path).name)
        raise ValueError(f"cannot blend operand #{i + 1} {op.label}: {reason}") from exc


def make_blend(
    parts: list[tuple[Any, float]], name: str, *, method: str, keep_norm: bool, model: Any = None
) -> Any:
    """The core's blend (lerp or slerp, optional norm keeping), with its lineage in the metadata.

    A blend with a word operand is labelled with the `model` (a LoadedModel) whose vocabulary gave the word
    its vectors, as `tokensmith blend` labels it (the core's `labelled_with_vocabulary`)."""
    from embeddings.maths import blend, labelled_with_vocabulary

    result = blend(parts, name, method=method, keep_norm=keep_norm)
    if model is None:
        return result
    return labelled_with_vocabulary(result, parts, base_model=model.source, family=model.family)


def weight_rows(weights: list[float], sweep: bool) -> list[list[float]]:
    """The weights of each grid row: the sliders' setting, or a sweep of the first two operands' mix
    (t from 0 to 1: (1-t)·first + t·second, the others as set)."""
    if not sweep or len(weights) < 2:
        return [list(weights)]
    return [[1 - t, t, *weights[2:]] for t in SWEEP]


def row_label(
    operands: list[Operand], weights: list[float], method: str = "lerp", *, t_first: bool = False
) -> str:
    """'0.75 <cat> + 0.25 "dog"'; slerp: 'slerp(<cat>, "dog", t=0.25)' (t = w₂/(w₁+w₂), as the core does).

    `t_first` ('t=0.25: slerp(<cat>, "dog")') for a sweep's row labels: the rows differ only in t, so it is
    read first (a grid wraps a long label onto lines, and cuts it only past what its row has room for)."""
    if method == "slerp" and len(operands) == 2:
        total = weights[0] + weights[1]
        t = f"{weights[1] / total:.3g}" if total else "?"
        if t_first:
            return f"t={t}: slerp({operands[0].label}, {operands[1].label})"
        return f"slerp({operands[0].label}, {operands[1].label}, t={t})"
    return " + ".join(f"{w:g} {op.label}" for op, w in zip(operands, weights, strict=True))


def made_for(entries: list[Any], widths: dict[str, int]) -> tuple[list[Any], list[Any]]:
    """Listed entries split by their header widths: (those made for a model of these `widths`, the others).

    A stored file is canonical (emb_params, or clip_l + clip_g), so its widths equal the model's exactly when
    it goes into the model as it is (and blends with the others that do)."""
    return [e for e in entries if e.widths == widths], [e for e in entries if e.widths != widths]


def fitting_first(entries: list[Any], widths: dict[str, int]) -> list[str]:
    """Library names, those made for a model of these `widths` first (the page's default operands)."""
    fits, others = made_for(entries, widths)
    return [e.name for e in fits + others]


def preview_prompt(template: str, name: str) -> str:
    """'a * on blue' -> 'a <name> on blue' (no mark: the trigger is appended)."""
    trigger = f"<{name}>"
    return (
        template.replace(BLEND_MARK, trigger) if BLEND_MARK in template else f"{template} {trigger}".strip()
    )


def stored_versions(prompt: str, store: Any, *, exclude: str) -> tuple[tuple[str, str], ...]:
    """(name, sha256 of the stored file) of each stored embedding `prompt` names besides the blend `exclude`,
    or (name, "missing") for a name the engine would refuse: part of a preview's cache key, so a retrained or
    deleted <cat> in 'a * next to <cat>' is drawn anew (or refused).

    Each name is resolved by the engine's own rule (`stored_name`: letter case aside), so '<CAT>' is keyed
    on the file of a stored 'cat'."""
    import hashlib

    from studio.generation.conditioning import stored_name
    from studio.generation.prompt import PromptError, embedding_names, parse

    found = []
    for name in embedding_names(parse(prompt)):
        if name.lower() == exclude.lower():  # the blend itself: keyed by its vectors
            continue
        try:
            path = store.stored_file(stored_name(name, store))
        except PromptError:  # unknown, or two names that differ only in case: the engine says which
            path = None
        found.append((name, hashlib.sha256(path.read_bytes()).hexdigest() if path else "missing"))
    return tuple(found)


class PreviewStore:
    """The library plus one unsaved embedding, read-only: what the engine sees while a blend is previewed."""

    def __init__(self, store: Any, extra: Any) -> None:
        self.store = store
        self.extra = extra

    @property
    def root(self) -> Path:
        return self.store.root

    def names(self) -> list[str]:
        return sorted(set(self.store.names()) | {self.extra.name})

    def exists(self, name: str) -> bool:
        return name == self.extra.name or self.store.exists(name)

    def path(self, name: str) -> Path:
        """The stored file of `name`; for the unsaved embedding, a path where no file is (a hidden name the
        store never writes), so the engine, which keeps what it read by the file's inode, mtime and size,
        takes it from here at every request rather than under the stat of a stored file of that name."""
        return self.root / f".{name}.unsaved" if name == self.extra.name else self.store.path(name)

    def get(self, name: str) -> Any:
        return self.extra if name == self.extra.name else self.store.get(name)
