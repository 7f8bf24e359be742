"""Knowing when a concept has been learned: a deterministic validation loss and DVAR-style early stopping.

Training loss jumps with the random timestep of each step and says little (DVAR, Voronov et al. 2023). The
validation loss is computed on a fixed set of (image, noise, timestep, prompt) tuples, so its changes are the
embedding's alone; when its recent variance is a small fraction of its whole-run variance, learning has
flattened.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ValidationSet:
    """Fixed inputs of the validation loss: K latents, noises, timesteps (spread out), prompts."""

    latents: torch.Tensor  # (K, C, h, w)
    noise: torch.Tensor  # (K, C, h, w)
    timesteps: torch.Tensor  # (K,)
    templates: list[str]  # K templates, filled with the token text when used
    captions: list[str]
    time_ids: list[tuple[int, ...]]
    weights: torch.Tensor | None  # (K, 1, h, w) or None


def build_validation_set(cache, samples, templates, captions, *, size: int, num_timesteps: int, seed: int):
    """K fixed tuples: samples in turn, means of their latents, seeded noise, stratified timesteps."""
    generator = torch.Generator().manual_seed(seed + 7919)
    shapes = {tuple(m.shape) for m in cache.means}
    shape = max(shapes, key=lambda s: sum(tuple(m.shape) == s for m in cache.means))
    usable = [i for i, m in enumerate(cache.means) if tuple(m.shape) == shape]  # one bucket: stackable
    picks = [usable[i % len(usable)] for i in range(size)]
    latents = torch.stack([cache.means[i] for i in picks])  # (K, C, h, w)
    noise = torch.randn(latents.shape, generator=generator)  # (K, C, h, w)
    timesteps = ((torch.arange(size) + 0.5) / size * num_timesteps).long().clamp(0, num_timesteps - 1)  # (K,)
    weights = None
    if cache.weights[picks[0]] is not None:
        weights = torch.stack([cache.weights[i] for i in picks])  # (K, 1, h, w)
    return ValidationSet(
        latents=latents,
        noise=noise,
        timesteps=timesteps,
        templates=[templates[i % len(templates)] for i in range(size)],
        captions=[captions[samples[i].image_index] for i in picks],
        time_ids=[cache.time_ids[i] for i in picks],
        weights=weights,
    )


@dataclass
class EarlyStopper:
    """DVAR-style stopping: stop when var(last `window` values) < threshold · var(all values)."""

    window: int
    threshold: float
    min_steps: int
    history: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def update(self, step: int, value: float) -> bool:
        """Record the validation loss at `step`; True when training should stop."""
        self.history.append(value)
        self.steps.append(step)
        return self.stopped_at(step)

    def stopped_at(self, step: int) -> bool:
        """True when the losses recorded up to `step` (the last one recorded) say stop there. A resumed run
        asks this of its checkpoint's losses: a run killed after it stopped early ends where it ended."""
        if not self.steps or self.steps[-1] != step:
            return False
        # the window's variance means something against a history at least twice its length (with fewer,
        # the window is most of it), so the earliest stop is the later of min_steps and the step of the
        # 2·window-th validation loss: step 120 with the defaults (validate every 10, window 6, min 60)
        if step < self.min_steps or len(self.history) < 2 * self.window:
            return False
        overall = statistics.pvariance(self.history)
        recent = statistics.pvariance(self.history[-self.window :])
        return overall > 0 and recent < self.threshold * overall

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the lowest validation loss so far."""
        if not self.history:
            return None
        index = min(range(len(self.history)), key=self.history.__getitem__)
        return self.steps[index], self.history[index]

    def state(self) -> dict:
        return {"history": list(self.history), "steps": list(self.steps)}

    def load(self, state: dict) -> None:
        self.history = [float(v) for v in state.get("history", [])]
        self.steps = [int(v) for v in state.get("steps", [])]


# --- fixed-seed samples and what they show ---

MAX_RGB_DISTANCE = 441.7  # |(255, 255, 255)|: the score of an empty sample
SHAPE_MISS_COST = 100.0  # RGB distance a wrong shape in every sample adds when snapshots are ranked
LEARNED_DISTANCE = 40.0  # the README's bar: a colour under this many RGB units off counts as learned
LEARNED_SHAPES = 0.5  # ... and at least this share of samples with the training images' shape
MANY_VECTORS = 8  # from this many on, "more vectors" names no count: the captions are the likelier remedy


def more_vectors(vectors: int) -> str:
    """What to try when the previews doubt the concept, for a run of `vectors` vectors: a count above it
    (twice it; the trainer refuses one its prompts have no room for), none once the run used many.

    more_vectors(2) -> '...more vectors hold more attributes (--vectors 4), and so may captions ...'"""
    count = f" (--vectors {2 * vectors})" if vectors < MANY_VECTORS else ""
    return (
        f"the token may not hold the concept: more vectors hold more attributes{count}, and so may "
        "captions naming what varies (on a blue background) or other training images"
    )


def sample_images(pipe, prompt: str, *, count: int, seed: int, steps: int, guidance: float) -> list:
    """`count` images of `prompt`, image i from seed + i (the same images at every preview step)."""
    generators = [torch.Generator().manual_seed(seed + i) for i in range(count)]
    with torch.no_grad():
        out = pipe(
            prompt,
            num_inference_steps=steps,
            guidance_scale=guidance,
            num_images_per_prompt=count,
            generator=generators,
        )
    return list(out.images)


def grid(images: list):
    """Images side by side in one row (a preview strip)."""
    from PIL import Image

    width, height = images[0].size
    sheet = Image.new("RGB", (width * len(images), height), "white")
    for i, image in enumerate(images):
        sheet.paste(image.convert("RGB"), (i * width, 0))
    return sheet


def _voted_shape(verdicts) -> str | None:
    """The shape the judge reads in most training images. A tie goes to the shape read more surely (the
    higher mean shape score), then to the first name: never to set order, which changes with each process's
    string-hash seed, so a run and its resume rank snapshots against the same shape."""
    votes: dict[str, list[float]] = {}
    for verdict in verdicts:
        if verdict.shape:
            votes.setdefault(verdict.shape, []).append(verdict.shape_score)
    if not votes:
        return None
    return min(votes, key=lambda shape: (-len(votes[shape]), -statistics.fmean(votes[shape]), shape))


@dataclass(frozen=True)
class DemoJudgeMetric:
    """Demo world: mean RGB distance from the samples' foreground colour to the training images' (lower is
    better), and the fraction of samples whose judged shape matches the training images' shape."""

    target_rgb: tuple[float, float, float]
    target_shape: str | None
    vectors: int = 2  # the run's vectors (the demo family's default), which the doubt's advice goes above
    name: str = "judge_colour_distance"

    @classmethod
    def from_training_images(cls, images, *, vectors: int = 2) -> DemoJudgeMetric:
        """The target from the training images as the model trains on them: each one's centre crop at the
        demo model's own size, the size its previews are sampled at (worldcaptions.as_trained)."""
        from demo.judge import judge
        from trainers.worldcaptions import as_trained

        verdicts = [judge(as_trained(image)) for image in images]
        colours = [v.colour_rgb for v in verdicts if v.colour_rgb is not None]
        if not colours:
            raise ValueError(
                "the demo judge sees no foreground in the training images; are they demo-world images?"
            )
        target = tuple(float(statistics.median(c[i] for c in colours)) for i in range(3))
        return cls(target_rgb=target, target_shape=_voted_shape(verdicts), vectors=vectors)

    def score(self, images) -> dict[str, float]:
        from demo.judge import judge

        distances, shape_hits = [], 0
        for image in images:
            verdict = judge(image)
            if verdict.colour_rgb is None:
                distances.append(MAX_RGB_DISTANCE)
                continue
            diff = [a - b for a, b in zip(verdict.colour_rgb, self.target_rgb, strict=True)]
            distances.append(sum(d * d for d in diff) ** 0.5)
            shape_hits += verdict.shape == self.target_shape
        return {"metric": statistics.fmean(distances), "shape_match": shape_hits / len(images)}

    def rank(self, scores: dict[str, float]) -> float:
        """Lower is better: the colour distance, plus SHAPE_MISS_COST times the share of wrong shapes."""
        missed = 1.0 - scores.get("shape_match", 1.0) if self.target_shape else 0.0
        return scores["metric"] + SHAPE_MISS_COST * missed

    def doubt(self, scores: dict[str, float]) -> str:
        """Why the stored step's previews say the concept was not learned, or '' when they say it was."""
        if not scores:
            return ""
        if self.target_shape and scores.get("shape_match", 1.0) < LEARNED_SHAPES:
            share = scores["shape_match"]
            return (
                f"only {share:.0%} of the stored step's previews have the training images' shape "
                f"({self.target_shape}); {more_vectors(self.vectors)}"
            )
        if scores["metric"] >= LEARNED_DISTANCE:
            return (
                f"the stored step's previews are {scores['metric']:.0f} RGB units off the training images' "
                f"colour (under {LEARNED_DISTANCE:.0f} counts as learned); {more_vectors(self.vectors)}"
            )
        return ""


@dataclass(frozen=True)
class ClipImageMetric:
    """Real models, from a local CLIP model folder (transformers' CLIPModel): `metric` is the mean CLIP
    image-image cosine similarity of samples to the training images (higher is better); `clip_text` is the
    mean image-text cosine similarity of samples to a description (the preview prompt with the init word in
    place of the token), so samples that drift away from the concept's class score lower."""

    model: object
    processor: object
    target: torch.Tensor  # (N, E) normalised training-image embeddings
    text: torch.Tensor  # (1, E) normalised description embedding
    name: str = "clip_image_similarity"

    @classmethod
    def load(cls, folder: str, images, text: str) -> ClipImageMetric:
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
            processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"cannot load a CLIP model from {folder!r} ({exc}); point --clip-model at a "
                "local folder such as a downloaded openai/clip-vit-base-patch32"
            ) from None
        metric = cls(model=model, processor=processor, target=torch.empty(0), text=torch.empty(0))
        return cls(
            model=model, processor=processor, target=metric.embed(images), text=metric.embed_text([text])
        )

    @torch.no_grad()
    def embed(self, images) -> torch.Tensor:
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        features = self.model.get_image_features(**inputs)  # (N, E)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)  # (N, E)

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        features = self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
        )  # (T, E)
        features = getattr(features, "pooler_output", features)
        return F.normalize(features.float(), dim=-1)  # (T, E)

    def score(self, images) -> dict[str, float]:
        samples = self.embed(images)  # (M, E)
        return {
            "metric": float((samples @ self.target.T).mean()),  # (M, N)
            "clip_text": float((samples @ self.text.T).mean()),  # (M, 1)
        }

    def rank(self, scores: dict[str, float]) -> float:
        """Lower is better: the negated image-image similarity."""
        return -scores["metric"]

    def doubt(self, scores: dict[str, float]) -> str:
        """'': CLIP similarity has no threshold that means "learned" for every concept and model."""
        return ""


def preview_metric(cfg, spec, family: str, images):
    """What scores the previews: CLIP with `--clip-model`, the judge on the demo world, else None."""
    from trainers.data import fill_template

    if cfg.clip_model:
        text = fill_template(cfg.preview_prompt, cfg.init or spec.default_init, "")
        return ClipImageMetric.load(cfg.clip_model, [image.image for image in images], text)
    if family == "demo":  # cfg.vectors is resolved by now (0, the default, became the run's count)
        return DemoJudgeMetric.from_training_images([image.image for image in images], vectors=cfg.vectors)
    return None
