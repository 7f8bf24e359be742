"""Prompts to tensors: install the embeddings a prompt needs, build inline blends, encode with compel.

Compel does the weighting of the (text, weight) runs flatten.fragments makes (compel never parses our text);
it reads the tokenizer as it is, so injected tokens and weights compose (the failure elsewhere is
pre-encoding prompts before the tokens exist). A prompt longer than the text encoder's window is encoded in
windows (each its own BOS ... EOS, split at a sentence or phrase end where one is near), joined along the
tokens, as A1111 and compel do. Embeddings go in under aliases (`<ts0>`, `<ts0>_1`): the
tokenizer never holds a real `<name>`, so text that merely looks like one (`\\<cat\\>`) stays text. Prompt
editing is a list of encodings, one per stretch of steps (`PromptPlan`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from embeddings import Embedding, Store, install, needs_partial, token_names
from embeddings.errors import TokensmithError
from embeddings.files import file_version
from embeddings.maths import SLERP_VERSION
from embeddings.names import is_valid_name
from studio.generation.flatten import fragments, render, schedule
from studio.generation.prompt import (
    ALIAS_PREFIX,
    Blend,
    Node,
    PromptError,
    blends,
    embedding_names,
    to_text,
)
from trainers.models import LoadedModel

# A later vector's alias token ('<ts0>_3'): a window that begins with one has cut its embedding apart.
ALIAS_PART = re.compile(rf"<(?P<alias>{ALIAS_PREFIX}\d+)>_\d+")
# The metadata key that marks an embedding installed with the clip_l-only (partial) install; provenance
# records those names so that `replay` installs them the same way.
INSTALL_META, PARTIAL = "install", "partial"


@dataclass
class Conditioning:
    embeds: torch.Tensor  # (1, L, D) text-encoder hidden states the UNet attends to
    pooled: torch.Tensor | None = None  # (1, D2) SDXL's pooled text embedding; None for single-encoder models


@dataclass
class PromptPlan:
    """The conditioning for each stretch of steps: [(start_fraction, Conditioning), ...] (prompt editing)."""

    segments: list[tuple[float, Conditioning]]
    texts: list[tuple[float, str]] = field(default_factory=list)  # render()'s text of each segment

    def at(self, fraction: float) -> Conditioning:
        """The conditioning in force at a fraction of the steps."""
        chosen = self.segments[0][1]
        for start, cond in self.segments:
            if fraction >= start:
                chosen = cond
        return chosen


class PromptEncoder:
    """Compel over a model's text encoder(s), plus the embeddings installed into them.

    `partial` (the CLI's --partial) lets in an embedding that fits only partly: an SD 1.x one into SDXL's
    clip_l (clip_g gets zero vectors), an SDXL one's clip_l half into SD 1.x; without it such an embedding
    is refused with that advice. It is opt-in because only half of the text conditioning carries the
    concept: a weaker effect.

    `slerp_version` is how inline slerp blends are computed (maths.SLERP_VERSION); `replay` sets 1 for
    images made with the first slerp.
    """

    def __init__(self, model: LoadedModel, *, partial: bool = False) -> None:
        from compel import Compel, ReturnedEmbeddingsType

        self.model = model
        self.partial = partial
        self.slerp_version = SLERP_VERSION
        self.installed: dict[str, Embedding] = {}  # name -> what is in the tokenizer now (marked if partly)
        self._aliases: dict[str, str] = {}  # name -> the token name it is installed under ("ts0")
        self._written: dict[str, str] = {}  # a name as a prompt wrote it -> the stored name (case may differ)
        self._loaded: dict[Path, tuple[tuple, Embedding]] = {}  # a stored file -> (its stat, what it held)
        self._cache: dict[tuple, Conditioning] = {}
        self._blend_text: dict[str, str] = {}  # an inline blend's internal name -> its expression
        # One Compel per encoder (compel's own multi-encoder mode is deprecated); SDXL concatenates the
        # penultimate hidden states of both and takes the pooled embedding from the second, as diffusers does.
        kind = (
            ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED
            if model.is_sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED
        )
        self._compels = [
            Compel(
                tokenizer=tok,
                text_encoder=te,
                returned_embeddings_type=kind,
                requires_pooled=model.is_sdxl and i == len(model.encoders) - 1,
                truncate_long_prompts=False,  # a long prompt is encoded in windows, never cut
            )
            for i, (_key, tok, te) in enumerate(model.encoders)
        ]

    # --- embeddings ---

    def require(self, nodes: tuple[Node, ...], store: Store | None) -> list[Embedding]:
        """Install every stored embedding and inline blend the prompt uses; returns them (for provenance)."""
        used: list[Embedding] = []
        for name in embedding_names(nodes):
            emb = self._ensure(self._load(stored_name(name, store), store))
            self._written[name] = emb.name
            used.append(emb)
        for blend in blends(nodes):
            self._ensure(self.materialize(blend))
            self._blend_text[blend.name] = blend.expression  # how errors name it: as the prompt wrote it
        return used

    def _load(self, name: str, store: Store) -> Embedding:
        """The stored embedding `name`, read again only when its file changed since this encoder read it (a
        grid asks for the same embeddings in every cell; embeddings.files.file_version tells)."""
        path = store.path(name)
        key = file_version(path)
        if key is None:  # gone since it was found: the store's own error says so
            return store.get(name)
        cached = self._loaded.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        emb = store.get(name)
        self._loaded[path] = (key, emb)
        return emb

    def materialize(self, blend: Blend) -> Embedding:
        """The temporary embedding an inline blend stands for (operands: installed embeddings or words)."""
        from embeddings.maths import blend as blend_embeddings
        from embeddings.maths import word_operand

        parts = []
        for weight, operand in blend.parts:
            if operand.kind == "embedding":
                parts.append((self.installed[self._written.get(operand.text, operand.text)], weight))
            else:
                parts.append((word_operand(operand.text, self.model.encoders), weight))  # (n_tokens, width)
        try:
            return blend_embeddings(parts, blend.name, method=blend.method, slerp_version=self.slerp_version)
        except (ValueError, TokensmithError) as exc:
            raise PromptError(f"cannot blend {blend.expression}: {exc}") from exc

    def _ensure(self, emb: Embedding) -> Embedding:
        """Install `emb` unless it is in already; returns it as installed (marked when it went in partly)."""
        current = self.installed.get(emb.name)
        # a partial install left by an earlier --partial request is redone (and refused) without the flag
        stale = current is None or (current is not emb and current.sha256 != emb.sha256)
        if stale or (installed_partly(current) and not self.partial):
            encoders = self.model.encoders
            partly = self.partial and needs_partial(emb, encoders)
            alias = self._aliases.setdefault(emb.name, f"{ALIAS_PREFIX}{len(self._aliases)}")
            install(emb, encoders, partial=self.partial, model_family=self.model.family, token_name=alias)
            current = emb.with_meta(**{INSTALL_META: PARTIAL}) if partly else emb
            self.installed[emb.name] = current
            self._cache.clear()
        return current

    # --- encoding ---

    def plan(self, nodes: tuple[Node, ...], steps: int, *, what: str = "the prompt") -> PromptPlan:
        """Encode each stretch of a (parsed, swapped, installed) prompt for a run of `steps` steps; `what`
        names the prompt in errors ("the negative prompt")."""
        texts = schedule(nodes, steps, self.spell)
        return PromptPlan([(start, self.encode(nodes, start, steps, what=what)) for start, _ in texts], texts)

    def encode(
        self, nodes: tuple[Node, ...], at: float = 0.0, steps: int = 1, *, what: str = "the prompt"
    ) -> Conditioning:
        """The Conditioning of installed `nodes` at step fraction `at`: compel weights flatten.fragments."""
        runs = fragments(nodes, at, steps, self.spell)
        pooled_text = render(nodes, at, steps, self.spell)
        key = (tuple(runs), pooled_text)
        if key not in self._cache:
            self._check_whole(runs, what)
            texts, weights = [t for t, _w in runs], [w for _t, w in runs]
            parts, pooled = [], None
            with torch.no_grad():
                for compel in self._compels:
                    provider = compel.conditioning_provider
                    parts.append(
                        provider.get_embeddings_for_weighted_prompt_fragments(
                            text_batch=[texts], fragment_weights_batch=[weights], device=compel.device
                        )
                    )  # (1, L, D_k)
                    if compel.requires_pooled:  # as compel computes it: from the whole text, unweighted
                        pooled = provider.get_pooled_embeddings([pooled_text], device=compel.device)
                        # pooled: (1, D2)
            self._check_windows(parts, nodes, what)
            embeds = torch.cat(parts, dim=-1)  # (1, L, sum of D_k); L: (window + 2) x windows
            self._cache[key] = Conditioning(embeds=embeds, pooled=pooled)
        return self._cache[key]

    def spell(self, name: str) -> str:
        """The alias tokens an installed name (as written, or a blend's) stands for: '<ts0> <ts0>_1'."""
        stored = self._written.get(name, name)
        if stored not in self._aliases:
            raise PromptError(f"<{name}> is not installed: PromptEncoder.require the prompt before encoding")
        return " ".join(token_names(self._aliases[stored], self.installed[stored].num_vectors))

    def window(self) -> int:
        """How many tokens one window of the text encoder holds (75 for CLIP: 77 less BOS and EOS)."""
        provider = self._compels[0].conditioning_provider
        return provider.max_token_count - len(provider.bos_sequence) - len(provider.eos_sequence)

    def _check_whole(self, runs: list[tuple[str, float]], what: str) -> None:
        """Refuse a prompt whose windows would cut an embedding apart: its later vectors would be read in
        another BOS ... EOS context, without the first ones. Compel splits a long prompt at a sentence,
        phrase or word end, which keeps an embedding whole when one comes before it in the window; an
        embedding with more vectors than a window, or one run into another, has none."""
        provider = self._compels[0].conditioning_provider
        ids, _weights, _mask = provider.get_token_ids_and_expand_weights(
            [text for text, _w in runs], [w for _t, w in runs], device="cpu"
        )
        tokens = provider.tokenizer.convert_ids_to_tokens(ids.tolist())
        names = {alias: name for name, alias in self._aliases.items()}
        size, first = provider.max_token_count, len(provider.bos_sequence)
        for start in range(size, len(tokens), size):  # the first token of each later window
            cut = ALIAS_PART.fullmatch(tokens[start + first])
            if cut is None:
                continue
            name = names.get(cut["alias"], cut["alias"])
            count = self.installed[name].num_vectors if name in self.installed else 0
            how = (
                f"its {count} vectors are more than one window of this model's text encoder holds "
                f"({self.window()}), so it cannot be read whole: use an embedding with fewer vectors"
                if count > self.window()
                else "nothing before it in the window is a word end to split at: put a word or a comma "
                "between it and what it follows, or shorten the prompt"
            )
            shown = self._blend_text.get(name, f"<{name}>")
            raise PromptError(f"{what} would cut {shown} across two windows: {how}")

    def _check_windows(self, parts: list[torch.Tensor], nodes: tuple[Node, ...], what: str) -> None:
        """SDXL's two encoders must split a long prompt into the same windows (their hidden states are
        joined token by token); a pair of tokenizers that disagree is said, not cropped to fit."""
        lengths = {part.shape[1] for part in parts}
        if len(lengths) > 1:
            raise PromptError(
                f"{what} splits into windows of different lengths in this model's two text encoders "
                f"({', '.join(str(n) for n in sorted(lengths))} tokens): shorten it to one window of "
                f"{self.window()} tokens ({_short(to_text(nodes))!r})"
            )

    def same_length(self, *plans: PromptPlan) -> list[PromptPlan]:
        """`plans` with every segment as long as the longest: a long prompt is several windows, and the
        prompt and the negative prompt go through the UNet side by side, so the shorter ones get windows of
        the empty prompt appended (what A1111 and compel do)."""
        longest = max(cond.embeds.shape[1] for plan in plans for _start, cond in plan.segments)
        return [
            PromptPlan([(start, self._padded(cond, longest)) for start, cond in plan.segments], plan.texts)
            for plan in plans
        ]

    def _padded(self, cond: Conditioning, length: int) -> Conditioning:
        missing = length - cond.embeds.shape[1]
        if missing <= 0:
            return cond
        with torch.no_grad():
            empty = torch.cat(
                [c.conditioning_provider.empty_z for c in self._compels], dim=-1
            )  # (1, window + 2, D)
        windows = empty.to(cond.embeds).repeat(1, missing // empty.shape[1], 1)
        return Conditioning(embeds=torch.cat([cond.embeds, windows], dim=1), pooled=cond.pooled)


def installed_partly(emb: Embedding) -> bool:
    """Whether the PromptEncoder put `emb` in with the clip_l-only (partial) install."""
    return emb.meta.get(INSTALL_META) == PARTIAL


def load_stored(name: str, store: Store | None) -> Embedding:
    """An embedding from the store, or PromptError naming the closest stored names (see `stored_name`)."""
    return store.get(stored_name(name, store))


def stored_name(name: str, store: Store | None) -> str:
    """The stored name `<name>` in a prompt stands for, or PromptError naming the closest stored names.

    Names match case-insensitively: <mycat> finds a stored MyCat when no other name differs from it only in
    case (then the prompt must write the exact one). A name stored as written costs one stat; only another
    spelling lists the store (milliseconds in a store of thousands, paid per name in every grid cell).
    """
    if store is not None and is_valid_name(name) and store.exists(name):
        return name
    names = store.names() if store is not None else []
    folded = [n for n in names if n.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    if folded:
        raise PromptError(
            f"<{name}> matches {' and '.join(f'<{n}>' for n in folded)}, which differ only in case: "
            "write the name in its exact case"
        )
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(f'<{c}>' for c in close)}?" if close else ""
    where = f" in {store.root}" if store is not None else ""
    raise PromptError(
        f"unknown embedding <{name}>: no such name{where}{hint} (`tokensmith list` shows the stored names)"
    )


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
