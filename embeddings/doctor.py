"""The compatibility doctor: what a file is, and whether (and why not) it fits a model, in plain words.

report = diagnose(Path("bad-hands-5.pt"), encoders=model.encoders)
report.fit      # "fits" | "partial" | "no" | "unknown" (no model given) | "unreadable"
report.lines    # sentences for people: "trained for SD 1.x (width 768); this model is SD 2.x (width 1024)"
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.canonical import read_header
from embeddings.doctorstore import store_warnings
from embeddings.errors import EmbeddingFormatError
from embeddings.importing import import_path, import_sources, lone_pair_half
from embeddings.inject import InstallError, encoder_width, swapped_hint, vectors_for_encoders
from embeddings.maths import norm_report
from embeddings.value import ENCODER_KEYS, SINGLE_KEY, Embedding, family_from_widths, family_title

# CLIP's 77 positions minus start and end: what one window of any SD family's text encoder holds. A longer
# prompt is read in windows, but an embedding must fit in one (its vectors are never split across windows).
WINDOW_TOKENS = 75
LOUD_NORM = 4.0  # vectors this many times the vocabulary's mean norm tend to overpower a prompt
SDXL_WIDTHS = {"clip_l": 768, "clip_g": 1280}  # SDXL's own text encoders
CANONICAL = "safetensors:canonical"  # a tokensmith file (store or export): the source_format its reader gives

# Every source_format the importers give (container:layout), in words; a test checks that none is missing.
FORMAT_TITLES = {
    CANONICAL: "tokensmith canonical file",
    "safetensors:kohya": "kohya/ComfyUI emb_params safetensors",
    "safetensors:sdxl": "SDXL clip_l/clip_g safetensors",
    "safetensors:diffusers": "diffusers {token: tensor} safetensors",
    "diffusers:sdxl-pair": "diffusers SDXL pair (learned_embeds + learned_embeds_2)",
    "pickle:a1111": "AUTOMATIC1111 .pt (string_to_param)",
    "pickle:diffusers": "diffusers {token: tensor} pickle (.bin)",
    "pickle:kohya": "kohya emb_params pickle",
    "pickle:sdxl": "SDXL clip_l/clip_g pickle",
    "image:a1111": "AUTOMATIC1111 embedding image",
    "image:sdxl": "SDXL clip_l/clip_g embedding image (A1111 PNG)",
    "image:kohya": "emb_params embedding image (A1111 PNG)",
    "image:diffusers": "diffusers {token: tensor} embedding image (A1111 PNG)",
}


@dataclass
class Diagnosis:
    path: str
    fit: str  # "fits" | "partial" | "no" | "unknown" | "unreadable"
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    embedding: Embedding | None = None
    model_family: str | None = None
    norms: dict | None = None

    def to_json(self) -> dict:
        emb = self.embedding
        return {
            "path": self.path,
            "fit": self.fit,
            "lines": self.lines,
            "warnings": self.warnings,
            "model_family": self.model_family,
            "embedding": None
            if emb is None
            else {
                "name": emb.name,
                "format": file_format(emb),  # this file's; meta's source_format is what it was imported from
                "family": emb.family,
                "widths": emb.widths,
                "num_vectors": emb.num_vectors,
                "meta": emb.meta,
            },
            "norms": self.norms,
        }


def describe(emb: Embedding) -> list[str]:
    """What the embedding is: format, family, widths, vector count, provenance (with the file it was imported
    from, for a tokensmith file that records one)."""
    widths = ", ".join(f"{k} {w}" for k, w in emb.widths.items())
    own = file_format(emb)
    lines = [
        f"'{emb.name}': {format_title(own)}",
        f"family {family_title(emb.family)} ({emb.family}); widths: {widths}; {emb.num_vectors} vector(s)",
    ]
    facts = [f"{k} {emb.meta[k]}" for k in ("base_model", "steps", "init", "created") if emb.meta.get(k)]
    if facts:
        lines.append("provenance: " + "; ".join(facts))
    source = emb.meta.get("source_format", "")
    if source and source != own:  # a tokensmith file that records what it was imported from
        origin = f" {emb.meta['source_file']!r}" if emb.meta.get("source_file") else ""
        lines.append(f"imported from{origin}: {format_title(source)}")
    if emb.meta.get("parent"):
        lines.append(f"lineage: {emb.meta['parent']}")
    return lines


def format_title(source: str) -> str:
    """A file format in words: 'pickle:a1111' -> 'AUTOMATIC1111 .pt (string_to_param)'."""
    return FORMAT_TITLES.get(source, source or "unknown format")


def file_format(emb: Embedding) -> str:
    """The format of the file `emb` was read from: a tokensmith file (it carries `tokensmith.version`) is
    canonical whatever its `source_format` records (the file it was imported from)."""
    return CANONICAL if "tokensmith.version" in emb.meta else emb.meta.get("source_format", "")


def widths_text(widths: dict[str, int]) -> str:
    """'width 768' for one encoder; 'clip_l 768, clip_g 1280' (clip_l first) for several."""
    if len(widths) == 1:
        return f"width {next(iter(widths.values()))}"
    order = sorted(widths, key=lambda k: ENCODER_KEYS.index(k) if k in ENCODER_KEYS else len(ENCODER_KEYS))
    return ", ".join(f"{k} {widths[k]}" for k in order)


def fit_to_model(
    emb: Embedding,
    encoders: Sequence[tuple[str, Any, Any]],
    *,
    model_family: str | None = None,
    stored: bool = True,
) -> tuple[str, list[str]]:
    """('fits' | 'partial' | 'no', sentences) for installing `emb` into the model of these encoders.

    `model_family` (e.g. LoadedModel.family, "demo") names the model; by default it follows from the widths.
    `stored=False` (a file in the store folder that the store skips): a fit says prompts reach it only once
    imported, not "use <name> in prompts", which would fail.
    """
    widths = {key: encoder_width(te) for key, _tok, te in encoders}
    model = family_with_widths(model_family or family_from_widths(widths), widths)
    try:
        vectors_for_encoders(emb, encoders, model_family=model_family)
        if not stored:
            return "fits", [
                f"fits this model, {model}, but prompts cannot use it until it is imported (see the warning)"
            ]
        return "fits", [f"fits this model, {model}: use <{emb.name}> in prompts"]
    except InstallError:
        pass
    why = f"trained for {family_with_widths(emb.family, emb.widths)}; this model is {model}"
    try:
        vectors_for_encoders(emb, encoders, partial=True, model_family=model_family)
    except InstallError:
        swapped = swapped_hint(emb.widths, widths)
        return "no", [f"does not fit: {why}", *([swapped] if swapped else [])]
    if SINGLE_KEY in emb.vectors:
        how = "use --partial to put it in SDXL's clip_l encoder only (clip_g gets zero vectors)"
    else:
        how = "use --partial to use its clip_l half alone in this model"
    return "partial", [f"does not fully fit: {why}", f"partial option: {how}; expect a weaker effect"]


def family_with_widths(family: str, widths: dict[str, int]) -> str:
    """'SD 1.x (width 768)', 'SDXL (clip_l 32, clip_g 48)'; 'width 32' alone where the family is its width."""
    title, detail = family_title(family), widths_text(widths)
    return title if title == detail else f"{title} ({detail})"


def diagnose(
    path: Path,
    encoders: Sequence[tuple[str, Any, Any]] | None = None,
    *,
    model_family: str | None = None,
    store_root: Path | None = None,
) -> Diagnosis:
    """Read `path` and explain it; with `encoders` (a model's triples) also say whether and how it fits.

    `model_family` (LoadedModel.family) names the model in the sentences; by default its widths do. For a
    folder of several embeddings this reports the first (`diagnose_each` reports them all). `store_root`
    (the store's folder) lets a file copied there by hand under a name the store refuses get the rename that
    fixes it.
    """
    path = Path(path)
    try:
        (emb, *more) = import_path(path)
    except (EmbeddingFormatError, OSError) as exc:
        return Diagnosis(str(path), "unreadable", [f"not a usable embedding: {exc}"])
    report = _diagnose_embedding(emb, path, encoders, model_family, store_root)
    if more:
        report.warnings.append(
            f"the folder holds {len(more) + 1} embeddings; this report covers '{emb.name}'"
        )
    return report


def diagnose_each(
    path: Path,
    encoders: Sequence[tuple[str, Any, Any]] | None = None,
    *,
    model_family: str | None = None,
    store_root: Path | None = None,
) -> list[Diagnosis]:
    """One Diagnosis per embedding at `path`: for a folder, each file in it and its subfolders (files that
    do not read as embeddings too, as "unreadable"); for a file, its own. The keywords are `diagnose`'s."""
    path = Path(path)
    skipped: list[tuple[Path, str]] = []
    try:
        found = import_sources(path, skipped=skipped if path.is_dir() else None)
    except (EmbeddingFormatError, OSError) as exc:
        return [Diagnosis(str(path), "unreadable", [f"not a usable embedding: {exc}"])]
    reports = [_diagnose_embedding(emb, source, encoders, model_family, store_root) for source, emb in found]
    unreadable = [Diagnosis(str(p), "unreadable", [f"not a usable embedding: {why}"]) for p, why in skipped]
    return sorted(reports + unreadable, key=lambda report: report.path)


def _diagnose_embedding(
    emb: Embedding,
    path: Path,
    encoders: Sequence[tuple[str, Any, Any]] | None,
    model_family: str | None,
    store_root: Path | None = None,
) -> Diagnosis:
    """The report on `emb`, read from `path`."""
    emb = _with_recorded_source(emb, path)
    report = Diagnosis(str(path), "unknown", describe(emb), embedding=emb)
    if note := lone_pair_half(path):
        report.warnings.append(note)
    report.warnings.extend(_zero_warnings(emb))
    report.warnings.extend(_swapped_warning(emb, encoders))
    tokens = WINDOW_TOKENS if encoders is None else window_tokens(encoders)
    if emb.num_vectors > tokens:
        too_many = f"{emb.num_vectors} vectors exceed the {tokens} tokens of a prompt window " + (
            "in any model" if encoders is None else "of this model"
        )
    else:
        too_many = None
        if emb.num_vectors > 16:
            room = tokens - emb.num_vectors
            report.warnings.append(
                f"{emb.num_vectors} vectors take {emb.num_vectors} of the {tokens} tokens of their prompt "
                + (
                    f"window: {room} are left for the words around the token there"
                    if room
                    else "window: no words fit beside the token in its window"
                )
            )
    warnings, skipped = store_warnings(emb, path, store_root)
    report.warnings.extend(warnings)
    if encoders is None:
        if too_many:  # no model's prompt holds it: no need to name one (the verdict says it, not a warning)
            report.fit = "no"
            report.lines.append(
                f"does not fit any model: its {emb.num_vectors} vectors exceed the {tokens} tokens one "
                "prompt window of SD 1.x, SD 2.x or SDXL holds (an embedding must fit in one)"
            )
        else:
            report.lines.append("give --model to check whether it fits a model")
        return report
    report.model_family = model_family or family_from_widths(
        {key: encoder_width(te) for key, _tok, te in encoders}
    )
    report.fit, lines = fit_to_model(emb, encoders, model_family=model_family, stored=skipped is None)
    report.lines.extend(lines)
    if report.fit != "no" and too_many:  # its widths fit, but no prompt holds the token: the verdict says so
        report.fit = "no"
        report.lines = [
            *report.lines[: -len(lines)],
            f"does not fit: its {emb.num_vectors} vectors exceed the {tokens} tokens one prompt window of "
            f"this model holds ({family_title(report.model_family)}; an embedding must fit in one)",
        ]
    elif too_many:  # it does not fit for its widths; the length is a second reason
        report.warnings.append(too_many)
    if report.fit == "fits":
        report.norms = _norms(emb, encoders, report)
    return report


def _with_recorded_source(emb: Embedding, path: Path) -> Embedding:
    """`emb` read from a tokensmith file, with the source_format and source_file its header records (what it
    was imported from, as `show` has them) instead of the ones reading it gave (the file itself, which
    `file_format` tells anyway); other embeddings as they are."""
    if emb.meta.get("source_format") != CANONICAL or not path.is_file():
        return emb
    try:
        recorded = read_header(path).get("__metadata__", {})
    except (EmbeddingFormatError, OSError):
        return emb
    return emb.with_meta(
        **{key: recorded.get(key) or None for key in ("source_format", "source_file")}  # None: not recorded
    )


def _swapped_warning(emb: Embedding, encoders: Sequence[tuple[str, Any, Any]] | None) -> list[str]:
    """The swapped-keys sentence against SDXL's own widths (clip_l 1280, clip_g 768 is SDXL's file written
    the wrong way round), unless the verdict already says it against the model's."""
    if encoders is not None and swapped_hint(
        emb.widths, {key: encoder_width(te) for key, _tok, te in encoders}
    ):
        return []
    hint = swapped_hint(emb.widths, SDXL_WIDTHS, model="SDXL's")
    return [hint] if hint else []


def _zero_warnings(emb: Embedding) -> list[str]:
    """A warning when vectors are all zero: such a vector has no direction and adds nothing to a prompt."""
    zero = [i for i in range(emb.num_vectors) if not any(t[i].any() for t in emb.vectors.values())]
    if not zero:
        return []
    if len(zero) == emb.num_vectors:
        return ["every vector is zero: it does nothing in a prompt (an untrained or damaged file?)"]
    which = _ranges([i + 1 for i in zero])  # counted from 1, as people count vectors
    if len(zero) == 1:
        return [f"vector {which} of {emb.num_vectors} is zero and adds nothing to a prompt (blend padding?)"]
    return [f"vectors {which} of {emb.num_vectors} are zero and add nothing to a prompt (blend padding?)"]


def _ranges(numbers: list[int]) -> str:
    """[2, 3, 4, 7] -> '2-4, 7'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def window_tokens(encoders: Sequence[tuple[str, Any, Any]]) -> int:
    """How many tokens one prompt window of this model holds: its tokenizers' length less start and end (the
    demo world's 32 -> 30; CLIP's 77 -> 75), WINDOW_TOKENS for tokenizers without a length of their own."""
    lengths = [getattr(tok, "model_max_length", None) for _key, tok, _te in encoders]
    known = [int(n) - 2 for n in lengths if isinstance(n, int) and 2 < n <= 100_000]
    return min(known, default=WINDOW_TOKENS)


def _norms(emb: Embedding, encoders: Sequence[tuple[str, Any, Any]], report: Diagnosis) -> dict:
    out = {}
    for (key, tok, te), vectors in zip(encoders, vectors_for_encoders(emb, encoders), strict=True):
        stats = norm_report(vectors, tok, te)
        out[key] = stats
        loudest = max(r for r in stats["ratio_to_vocab_mean"] if r is not None)
        if loudest >= LOUD_NORM:
            report.warnings.append(
                f"{key}: a vector is {loudest:g}x the vocabulary's mean norm; it may overpower the rest of a "
                "prompt (try a lower weight or a blend with --keep-norm)"
            )
    return out
