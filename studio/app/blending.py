"""What the Blend page needs besides widgets: its operands resolved by the CLI's rule, the blend itself,
the weight rows of a preview grid, and a store view that holds the unsaved blend for the generation engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from embeddings.blend_expr import BlendSpec, Operand

BLEND_MARK = "*"  # in the preview prompt, stands for the blend's trigger
SWEEP = (0.0, 0.25, 0.5, 0.75, 1.0)
# A word field's text in quotes, as a blend expression quotes a phrase: its tokens are blended on purpose
QUOTED = re.compile(r"""(?P<q>['"])(?P<text>.*\S.*)(?P=q)""")
# How the refusal of a word split into pieces says to quote it, on this page (the CLI says "quote it")
PAGE_QUOTE = "type it in its field in quotes"


def typed_word(text: str) -> tuple[str, bool]:
    """A word field's text as the CLI's blend language reads it: (the word or phrase, whether it is bare).

    Unquoted, each of its words must be one token of the model's vocabulary (as a bare word in `tokensmith
    blend`); in quotes it is all its tokens on purpose: "'keyboard'" -> ('keyboard', False)."""
    text = text.strip()
    quoted = QUOTED.fullmatch(text)
    return (quoted["text"], False) if quoted else (text, True)


def label(operand: Operand) -> str:
    """'<cat>' for a stored embedding; a word as typed, in double quotes unless the user quoted it."""
    from embeddings.blendparts import operand_label

    if operand.kind == "word" and QUOTED.fullmatch(operand.text.strip()):
        return operand.text.strip()
    return operand_label(operand)


def resolve(rows: list[tuple[Operand, float]], store: Any, model: Any) -> list[tuple[Any, float]]:
    """(Embedding, weight) parts for the core's blend, by the rule `tokensmith blend` follows
    (embeddings.blendparts): `<cat>` finds a stored 'Cat'; a bare word that the `model` (a LoadedModel)
    splits into pieces is refused; an embedding made for another model is refused by its own name. The
    refusals are worded for this page: its field, and the file's name rather than the store's path."""
    from embeddings.blendparts import BlendOperandError, SplitWordError, resolve_operands, split_word_text

    if any(not operand.text.strip() for operand, _ in rows):
        raise ValueError("every operand needs a value: pick an embedding or type a word")
    parts, bare = [], set()
    for operand, weight in rows:
        if operand.kind == "word":
            text, is_bare = typed_word(operand.text)
            operand = Operand("word", text)
            bare |= {text} if is_bare else set()
        parts.append((operand, weight))
    spec = BlendSpec("lerp", tuple(parts))  # the method is make_blend's: this resolves the operands only
    try:
        return resolve_operands(spec, store, model.encoders, model_family=model.family, bare=bare)
    except SplitWordError as exc:
        raise ValueError(split_word_text(exc.word, exc.operand, quote=PAGE_QUOTE)) from exc
    except BlendOperandError as exc:
        operand = spec.parts[exc.index - 1][0]
        path = str(store.path(store.resolve(operand.text))) if operand.kind == "embedding" else ""
        reason = exc.reason.removeprefix(f"{path}: ").replace(path, Path(path).name) if path else exc.reason
        raise ValueError(
            f"cannot blend operand #{exc.index} {label(rows[exc.index - 1][0])}: {reason}"
        ) from exc


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
        first, second = label(operands[0]), label(operands[1])
        return f"t={t}: slerp({first}, {second})" if t_first else f"slerp({first}, {second}, t={t})"
    return " + ".join(f"{w:g} {label(op)}" for op, w in zip(operands, weights, strict=True))


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
