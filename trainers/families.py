"""What differs between model families: text conditioning (SD 1.x/2.x/demo: one encoder; SDXL: two encoders,
pooled embeds and time ids), the default init word and prompt templates, and the init vectors themselves.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

from demo.world import PREFIXES
from embeddings.errors import TokensmithError
from trainers.rows import EncoderRows

# the demo world's own caption prefixes ("a ", "a photo of a ", ...) before the token
DEMO_TEMPLATES = tuple(prefix + "[name]" for prefix in PREFIXES)


@dataclass(frozen=True)
class FamilySpec:
    """Per-family defaults: embedding keys, init word, object templates (None: the ImageNet set), vectors."""

    name: str
    keys: tuple[str, ...]
    default_init: str
    object_templates: tuple[str, ...] | None = None
    default_vectors: int = 1
    refine_latents: int = 0  # decoder-fit steps per cached latent (trainers/latents.py)
    preview_images: int = 4  # samples per preview, scored to pick the stored step
    guidance: float = 7.5  # classifier-free guidance for previews and generation: the SD 1.x/2.x habit


FAMILIES = {
    "sd1": FamilySpec("sd1", ("emb_params",), "object"),
    "sd2": FamilySpec("sd2", ("emb_params",), "object"),
    "sdxl": FamilySpec("sdxl", ("clip_l", "clip_g"), "object", guidance=5.0),
    # A demo-world concept is two words ("purple triangle"): one vector per word, started at a colour and a
    # shape, learns both (measured: shape right by step 25; one vector from "circle" needed ~100 steps).
    # Its small VAE's encoder misses colours by 26-58 RGB units that fitted latents reach within 8-18. Its
    # previews are cheap, and 8 scored samples pick the stored step less by chance than 4 (measured: fresh
    # samples' shapes 9/12 -> 12/12 on one concept, no concept worse).
    "demo": FamilySpec(
        "demo",
        ("emb_params",),
        "red circle",
        DEMO_TEMPLATES,
        default_vectors=2,
        refine_latents=50,
        preview_images=8,
        guidance=4.0,
    ),
}


def default_guidance(family: str) -> float:
    """The guidance a family samples with unless told: the demo world 4, SDXL 5, any other model 7.5."""
    spec = FAMILIES.get(family)
    return spec.guidance if spec is not None else FamilySpec.guidance


def planned_defaults(model: str) -> FamilySpec:
    """The per-family defaults a run of `model` (a --model value) will get, known before it loads: the demo
    world's, else SD's (SD 1.x, 2.x and SDXL share them). For messages; the run resolves them from the
    loaded model."""
    from trainers.models import on_demo_world

    return FAMILIES["demo"] if on_demo_world(model) else FAMILIES["sd1"]


def spec_for(family: str) -> FamilySpec:
    """The spec of a family; other single-encoder models ('w<width>', e.g. tiny test pipes) train like SD."""
    if family.startswith("w") and family[1:].isdigit():
        return FamilySpec(family, ("emb_params",), "object")
    if family not in FAMILIES:
        raise TokensmithError(f"cannot train for model family {family!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[family]


# --- init vectors ---


def phrase_vectors(text: str, tokenizer, text_encoder) -> torch.Tensor:
    """Input token embeddings of a word or phrase, without start/end tokens: (k, D)."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise TokensmithError(f"init text {text!r} has no tokens; use a word such as 'object' or 'dog'")
    table = text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids)].detach().float().clone()  # (k, D)


def spread(vectors: torch.Tensor, num_vectors: int) -> torch.Tensor:
    """k vectors over n slots: n == k as is; n > k repeats them in order; n < k averages contiguous groups."""
    k = vectors.shape[0]
    if k == num_vectors:
        return vectors.clone()
    if k < num_vectors:
        return vectors[torch.arange(num_vectors) * k // num_vectors].clone()  # (n, D)
    bounds = [round(i * k / num_vectors) for i in range(num_vectors + 1)]
    return torch.stack([vectors[a:b].mean(0) for a, b in itertools.pairwise(bounds)])  # (n, D)


# --- conditioning ---


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids padded to the tokenizer's max length: (B, L)."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids  # (B, L)


@dataclass
class Conditioner:
    """Turns prompts into the UNet's conditioning through the encoders whose new rows are being trained."""

    family: str
    rows: list[EncoderRows]
    _ids: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)  # (key, prompt) -> (L,)

    def token_ids(self, encoder: EncoderRows, prompts: list[str], device) -> torch.Tensor:
        """Ids of `prompts` for one encoder: (B, L); templates × captions is a small set, tokenised once."""
        missing = [p for p in dict.fromkeys(prompts) if (encoder.key, p) not in self._ids]
        if missing:
            for prompt, ids in zip(missing, tokenize(encoder.tokenizer, missing), strict=True):
                self._ids[encoder.key, prompt] = ids
        return torch.stack([self._ids[encoder.key, p] for p in prompts]).to(device)  # (B, L)

    def token_text(self) -> str:
        """The prompt text standing for the concept: '<cat> <cat>_1' for two vectors."""
        return " ".join(self.rows[0].tokens)

    def encode(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, dict | None]:
        """(encoder_hidden_states (B, L, D), added_cond_kwargs or None) for a batch of prompts.

        Each distinct prompt goes through the text encoders once (a batch often repeats a template); the
        rows of the result are gathered back, which gives the same values and gradients.
        """
        unique = list(dict.fromkeys(prompts))
        gather = torch.tensor([unique.index(p) for p in prompts], device=device)  # (B,)
        if self.family != "sdxl":
            encoder = self.rows[0]
            ids = self.token_ids(encoder, unique, device)  # (U, L)
            return encoder.text_encoder(ids)[0][gather], None  # (B, L, D)
        hidden, pooled = [], None
        for encoder in self.rows:
            ids = self.token_ids(encoder, unique, device)  # (U, L)
            out = encoder.text_encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])  # (U, L, D_i): SDXL conditions on the penultimate layer
            pooled = out[0]  # (U, D_2): the last encoder's projected pooled output
        states = torch.cat(hidden, dim=-1)[gather]  # (B, L, D_l + D_g)
        return states, {"text_embeds": pooled[gather]}


def check_family_keys(family: str, encoders: list[tuple[str, object, object]]) -> None:
    """The model's encoders must be the ones the family trains (one for SD, clip_l + clip_g for SDXL)."""
    keys = tuple(key for key, _, _ in encoders)
    if keys != spec_for(family).keys:
        raise TokensmithError(
            f"a {family} model should have encoders {spec_for(family).keys}, this one has {keys}"
        )
