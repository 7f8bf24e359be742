"""Prompts to tensors: install the embeddings a prompt needs, build inline blends, encode with compel.

Compel does the weighting (`(text)1.2`); it reads the tokenizer as it is, so injected `<name>` tokens and
weights compose (the failure elsewhere is pre-encoding prompts before the tokens exist). Prompt editing
is a list of encodings, one per stretch of steps (`PromptPlan`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

import torch

from embeddings import Embedding, Store, expand_prompt, install, needs_partial
from embeddings.errors import TokensmithError
from studio.generation.prompt import Blend, Node, PromptError, blends, embedding_names, schedule
from trainers.models import LoadedModel

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
    texts: list[tuple[float, str]] = field(default_factory=list)  # the compel text of each segment

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
    """

    def __init__(self, model: LoadedModel, *, partial: bool = False) -> None:
        from compel import Compel, ReturnedEmbeddingsType

        self.model = model
        self.partial = partial
        self.installed: dict[str, Embedding] = {}  # name -> what is in the tokenizer now (marked if partly)
        self._cache: dict[str, Conditioning] = {}
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
                truncate_long_prompts=True,
            )
            for i, (_key, tok, te) in enumerate(model.encoders)
        ]

    # --- embeddings ---

    def require(self, nodes: tuple[Node, ...], store: Store | None) -> list[Embedding]:
        """Install every stored embedding and inline blend the prompt uses; returns them (for provenance)."""
        used: list[Embedding] = []
        for name in embedding_names(nodes):
            used.append(self._ensure(load_stored(name, store)))
        for blend in blends(nodes):
            self._ensure(self.materialize(blend))
        return used

    def materialize(self, blend: Blend) -> Embedding:
        """The temporary embedding an inline blend stands for (operands: installed embeddings or words)."""
        from embeddings.maths import blend as blend_embeddings
        from embeddings.maths import word_operand

        parts = []
        for weight, operand in blend.parts:
            if operand.kind == "embedding":
                parts.append((self.installed[operand.text], weight))
            else:
                parts.append((word_operand(operand.text, self.model.encoders), weight))  # (n_tokens, width)
        try:
            return blend_embeddings(parts, blend.name, method=blend.method)
        except (ValueError, TokensmithError) as exc:
            raise PromptError(f"cannot blend {blend.expression}: {exc}") from exc

    def _ensure(self, emb: Embedding) -> Embedding:
        """Install `emb` unless it is in already; returns it as installed (marked when it went in partly)."""
        current = self.installed.get(emb.name)
        # a partial install left by an earlier --partial request is redone (and refused) without the flag
        stale = current is None or current.sha256 != emb.sha256
        if stale or (installed_partly(current) and not self.partial):
            encoders = self.model.encoders
            partly = self.partial and needs_partial(emb, encoders)
            install(emb, encoders, partial=self.partial, model_family=self.model.family)
            current = emb.with_meta(**{INSTALL_META: PARTIAL}) if partly else emb
            self.installed[emb.name] = current
            self._cache.clear()
        return current

    # --- encoding ---

    def plan(self, nodes: tuple[Node, ...], steps: int) -> PromptPlan:
        """Encode each stretch of a (parsed, swapped, installed) prompt for a run of `steps` steps."""
        texts = schedule(nodes, steps) or [(0.0, "")]
        return PromptPlan([(start, self.encode(text)) for start, text in texts], texts)

    def encode(self, text: str) -> Conditioning:
        """Compel text with `<name>` triggers -> Conditioning (multi-vector triggers expanded first)."""
        text = expand_prompt(text, self.installed.values())
        if text not in self._cache:
            self._check_length(text)
            parts, pooled = [], None
            with torch.no_grad():
                for compel in self._compels:
                    out = compel(text)
                    if isinstance(out, tuple):
                        out, pooled = out  # (1, L, D_k), (1, D2)
                    parts.append(out)
            embeds = torch.cat(parts, dim=-1)  # (1, L, sum of D_k)
            self._cache[text] = Conditioning(embeds=embeds, pooled=pooled)
        return self._cache[text]

    def _check_length(self, text: str) -> None:
        """Truncating silently drops words (and the embeddings in them): refuse prompts that do not fit."""
        tokenizer = self.model.encoders[0][1]
        limit = tokenizer.model_max_length - 2  # start and end tokens
        plain = re.sub(r"\)[-+]?[\d.]+", " ", text).replace("(", " ").replace("\\", "")  # weights off
        count = len(tokenizer(plain, add_special_tokens=False).input_ids)
        if count > limit:
            raise PromptError(
                f"the prompt is {count} tokens but this model reads at most {limit}: shorten it "
                f"({_short(plain)!r})"
            )


def installed_partly(emb: Embedding) -> bool:
    """Whether the PromptEncoder put `emb` in with the clip_l-only (partial) install."""
    return emb.meta.get(INSTALL_META) == PARTIAL


def load_stored(name: str, store: Store | None) -> Embedding:
    """An embedding from the store, or PromptError naming the closest stored names."""
    names = store.names() if store is not None else []
    if store is None or name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(f'<{c}>' for c in close)}?" if close else ""
        where = f" in {store.root}" if store is not None else ""
        raise PromptError(
            f"unknown embedding <{name}>: no such name{where}{hint} "
            "(`tokensmith list` shows the stored names)"
        )
    return store.get(name)


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
