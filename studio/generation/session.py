"""The one generation engine the CLI and the studio call: a model loaded once, prompts in, images out.

    session = Session("demo")
    [result] = session.generate(GenerateRequest("a <my-cat> on a blue background", seed=3), store=store)
    save_png(result, "cat.png")          # provenance.py: PNG with the JSON chunk and A1111 `parameters`

The sampling loop is our own (not the pipeline's __call__) because loss guidance, prompt editing and traces
all need the predicted clean image at every step; it uses the pipeline's UNet, VAE and a diffusers scheduler.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from PIL import Image

from embeddings import Store
from embeddings.errors import TokensmithError, first_line
from studio.generation.conditioning import Conditioning, PromptEncoder, PromptPlan
from studio.generation.guidance import Guide, guided_x0, parse_guide
from studio.generation.img2img import (
    check_img2img_scheduler,
    check_strength,
    encode_image,
    load_init_image,
    trimmed_timesteps,
)
from studio.generation.prompt import Node, blends, parse, to_text
from studio.generation.requests import GenerateRequest, Result, StepInfo
from studio.generation.schedule import (
    MAX_STEPS,
    check_steps,
    evaluations_per_step,
    make_scheduler,
    step_starts,
)
from studio.generation.swaps import apply_swaps
from studio.generation.trace import Trace, TraceFrame
from trainers.config import MAX_RESOLUTION
from trainers.families import default_guidance
from trainers.memory import is_out_of_memory
from trainers.models import LoadedModel, load_model

# A generated image's seed (image K of a request: seed + K) may be any signed 64-bit number, which
# torch.Generator takes; training holds its seed to 32 bits (trainers.config.MAX_SEED, as diffusers and A1111
# do), so the two limits differ on purpose.
MAX_GENERATION_SEED = 2**63 - 1


class Session:
    """A loaded model plus the embeddings installed into it; reuse it for many generations."""

    def __init__(self, model: LoadedModel | str = "demo") -> None:
        self.model = load_model(model) if isinstance(model, str) else model
        self.encoder = PromptEncoder(self.model)

    # --- public ---

    def generate(
        self,
        req: GenerateRequest,
        *,
        store: Store | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        as_recorded: bool = False,
    ) -> list[Result]:
        """Render `req.num_images` images (seeds seed, seed+1, ...); each Result carries its provenance.

        `as_recorded`: `req` re-makes an image from its provenance (replay), so the refusals added since for
        new images (PNDM from an init image) do not apply: an image made before them still replays."""
        return list(self.each_image(req, store=store, on_step=on_step, as_recorded=as_recorded))

    def each_image(
        self,
        req: GenerateRequest,
        *,
        store: Store | None = None,
        on_step: Callable[[StepInfo], None] | None = None,
        as_recorded: bool = False,
    ) -> Iterator[Result]:
        """`generate`, one image at a time: each is yielded as soon as it is sampled, so a caller can keep it
        before the next one starts (`generate -n 50` stopped at image 49 keeps 48). Everything the request
        needs is checked before the first image samples."""
        if req.init_image is not None and not as_recorded:
            check_img2img_scheduler(req.scheduler)
        req = self._resolved(req, as_recorded=as_recorded)
        nodes = apply_swaps(parse(req.prompt), req.swaps)
        negative = apply_swaps(parse(req.negative), req.swaps)
        used = self.encoder.require(nodes, store) + self.encoder.require(negative, store)
        guides = [parse_guide(spec) for spec in req.guides]
        init = None
        if req.init_image is not None:
            check_strength(req.strength)
            init = load_init_image(req.init_image, (req.width, req.height), reader=req.init_reader)
        for index in range(req.num_images):
            seed = req.seed + index
            try:
                image, trace = self._sample(req, nodes, negative, guides, init, seed, index, on_step)
            except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
                if (advice := self._out_of_memory(exc, req, as_recorded=as_recorded)) is None:
                    raise
                raise advice from exc  # --debug still shows where the memory ran out
            provenance = self._provenance(req, nodes, negative, used, init, guides, seed, index)
            yield Result(image=image, provenance=provenance, trace=trace)

    # --- request checks ---

    def _resolved(self, req: GenerateRequest, *, as_recorded: bool = False) -> GenerateRequest:
        """`req` with the model's defaults filled in, or a TokensmithError naming the setting to change.
        A replay (`as_recorded`) skips the size limit, whose words name --width/--height: replaying.replay
        has held the recorded size to the same MAX_RESOLUTION in its own words."""
        family = self.model.family
        width = self.model.resolution if req.width is None else req.width
        height = self.model.resolution if req.height is None else req.height
        multiple = self._size_multiple()
        for label, value in (("width", width), ("height", height)):
            if value > MAX_RESOLUTION and not as_recorded:  # train's limit: a typo would exhaust memory
                raise TokensmithError(
                    f"--{label} {value} is too large: at most {MAX_RESOLUTION} (this model's native size is "
                    f"{self.model.resolution}; leave --{label} out to use it)"
                )
            if value < multiple or value % multiple:
                raise TokensmithError(
                    f"--{label} {value} does not fit this model: use a multiple of {multiple} "
                    f"({_nearest_multiples(value, multiple)})"
                )
        if req.steps < 1 or req.steps > MAX_STEPS:
            raise TokensmithError(f"--steps must be between 1 and {MAX_STEPS}, not {req.steps}")
        if req.num_images < 1:
            raise TokensmithError(f"--num-images must be 1 or more, not {req.num_images}")
        if not 0 <= req.seed <= MAX_GENERATION_SEED - req.num_images:
            highest = MAX_GENERATION_SEED - req.num_images
            raise TokensmithError(f"--seed must be between 0 and {highest}, not {req.seed}")
        make_scheduler(req.scheduler, self.model.pipe.scheduler.config)  # an unknown name fails here, early
        check_steps(req.scheduler, req.steps)
        guidance = default_guidance(family) if req.guidance is None else float(req.guidance)
        if not math.isfinite(guidance) or guidance < 0:
            raise TokensmithError(f"--guidance must be a finite number, 0 or more, not {guidance}")
        return replace(req, width=width, height=height, guidance=guidance)

    def _out_of_memory(
        self, exc: BaseException, req: GenerateRequest, *, as_recorded: bool = False
    ) -> TokensmithError | None:
        """A one-line error for sampling that ran out of GPU or CPU memory, naming the settings that need
        less (as trainers.memory.out_of_memory_advice does for training); None for any other exception.
        Images are sampled one at a time, so fewer --num-images would not help. A replay (`as_recorded`)
        has no settings to change: the image is made at its recorded size, with its recorded guides."""
        if not is_out_of_memory(exc):
            return None
        text = first_line(exc)
        if as_recorded:
            return TokensmithError(
                f"replaying this {req.width}x{req.height} image ran out of memory ({text[:160]}); a replay "
                "makes it at its recorded size, with its recorded guides: replay it where more memory is free"
            )
        native = self.model.resolution
        if max(req.width, req.height) > native:
            hint = f"use a smaller --width/--height (this model's native size is {native})"
        else:  # already at most the native size: smaller would only be worse images
            hint = (
                f"free memory on the device, or use one with more (this {req.width}x{req.height} image is "
                f"already at most the model's native size, {native})"
            )
        if req.guides:
            hint += ", or fewer loss guides (--guide: they back-propagate through the VAE)"
        return TokensmithError(
            f"generating a {req.width}x{req.height} image ran out of memory ({text[:160]}); {hint}"
        )

    def _size_multiple(self) -> int:
        unet_levels = len(self.model.pipe.unet.config.block_out_channels) - 1
        return int(self.model.pipe.vae_scale_factor) * 2**unet_levels

    def step_count(self, req: GenerateRequest) -> int:
        """The sampling steps one image of `req` runs (img2img runs the last `strength` of them)."""
        req = self._resolved(req)
        if req.init_image is not None:
            check_strength(req.strength)
        scheduler = make_scheduler(req.scheduler, self.model.pipe.scheduler.config)
        return len(self._schedule(scheduler, req, img2img=req.init_image is not None)[1])

    # --- sampling ---

    @staticmethod
    def _schedule(scheduler, req, *, img2img: bool) -> tuple[torch.Tensor, list[int]]:
        """The timesteps of every model evaluation, and the evaluations that begin each sampling step (Heun
        evaluates the model twice per step; see schedule.evaluations_per_step)."""
        check_steps(req.scheduler, req.steps)
        scheduler.set_timesteps(req.steps)
        counts = evaluations_per_step(scheduler, req.steps)
        timesteps = trimmed_timesteps(scheduler, req.steps, req.strength) if img2img else scheduler.timesteps
        return timesteps, step_starts(counts, skip=len(scheduler.timesteps) - len(timesteps))

    def _sample(self, req, nodes, negative, guides, init, seed, index, on_step):
        pipe = self.model.pipe
        scheduler = make_scheduler(req.scheduler, pipe.scheduler.config, clip_sample=req.clip_sample)
        timesteps, starts = self._schedule(scheduler, req, img2img=init is not None)
        steps = len(starts)
        step_of = [bisect.bisect_right(starts, i) - 1 for i in range(len(timesteps))]  # evaluation -> step
        by_evaluation = req.step_clock == "evaluations"
        clock = len(timesteps) if by_evaluation else steps
        plan = self.encoder.plan(nodes, clock)
        negative_plan = self.encoder.plan(negative, clock, what="the negative prompt")
        plan, negative_plan = self.encoder.same_length(plan, negative_plan)
        if not negative and self.model.is_sdxl and pipe.config.get("force_zeros_for_empty_prompt", False):
            negative_plan = _zeros_like(plan)  # SDXL's convention for an empty negative prompt
        generator = torch.Generator("cpu").manual_seed(seed)
        latent_shape = (
            1,
            pipe.unet.config.in_channels,
            req.height // pipe.vae_scale_factor,
            req.width // pipe.vae_scale_factor,
        )
        noise = torch.randn(latent_shape, generator=generator, dtype=torch.float32)  # (1, C, h, w)
        noise = noise.to(device=pipe.unet.device, dtype=pipe.unet.dtype)
        if init:
            latents = scheduler.add_noise(
                encode_image(pipe.vae, init[0]), noise, timesteps[:1]
            )  # (1, C, h, w)
        else:
            latents = noise * scheduler.init_noise_sigma
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        )
        trace = Trace() if req.trace_steps else None
        wanted = set(req.trace_steps)
        for i, t in enumerate(timesteps):
            step = step_of[i]
            traced = trace is not None and step in wanted and i == starts[step]  # a step's first evaluation
            fraction = i / clock if by_evaluation else step / clock
            x_in = scheduler.scale_model_input(latents, t)  # (1, C, h, w), variance-preserving scale
            out = self._predict(x_in, t, plan.at(fraction), negative_plan.at(fraction), req)
            if guides or traced:
                alpha_bar = self._alpha_bar(scheduler, t)
                x0 = _predicted_x0(out, x_in, alpha_bar, self.model.prediction_type)  # (1, C, h, w)
                if guides:
                    at = i if by_evaluation else step
                    latents, out, x0 = self._guide(scheduler, t, latents, out, x0, alpha_bar, guides, at)
                if traced:
                    trace.frames.append(
                        TraceFrame(step, round(float(t)), self._decode(x_in), self._decode(x0))
                    )
            latents = scheduler.step(out, t, latents, **step_kwargs).prev_sample
            step_done = i + 1 == len(timesteps) or step_of[i + 1] != step
            if on_step and step_done:
                started = round(float(timesteps[starts[step]]))
                on_step(StepInfo(index, req.num_images, step + 1, steps, started))
        return self._decode(latents), (trace.strip() if trace and trace.frames else None)

    def _predict(
        self, x_in: torch.Tensor, t: Any, cond: Conditioning, uncond: Conditioning, req
    ) -> torch.Tensor:
        """Classifier-free guided model output for one latent (what the scheduler's prediction_type says)."""
        unet = self.model.pipe.unet
        use_cfg = req.guidance != 1.0
        conds = [uncond, cond] if use_cfg else [cond]
        x = torch.cat([x_in] * len(conds))  # (k, C, h, w)
        hidden = torch.cat([c.embeds for c in conds])  # (k, L, D)
        added = None
        if self.model.is_sdxl:
            time_ids = torch.tensor(
                [[req.height, req.width, 0, 0, req.height, req.width]], dtype=hidden.dtype
            )
            added = {
                "text_embeds": torch.cat([c.pooled for c in conds]),  # (k, D2)
                "time_ids": time_ids.repeat(len(conds), 1).to(hidden.device),  # (k, 6)
            }
        with torch.no_grad():
            out = unet(x, t, encoder_hidden_states=hidden, added_cond_kwargs=added).sample  # (k, C, h, w)
        if not use_cfg:
            return out
        out_uncond, out_cond = out.chunk(2)
        return out_uncond + req.guidance * (out_cond - out_uncond)

    @staticmethod
    def _alpha_bar(scheduler: Any, t: Any) -> torch.Tensor:
        """ᾱ at this step: from σ for k-diffusion schedulers (Euler, Heun), else the table at t."""
        sigmas, index = getattr(scheduler, "sigmas", None), getattr(scheduler, "step_index", None)
        if sigmas is not None and index is not None and getattr(scheduler, "init_noise_sigma", 1.0) != 1.0:
            return 1.0 / (1.0 + sigmas[index].float() ** 2)
        return scheduler.alphas_cumprod[round(float(t))].float()

    def _guide(self, scheduler, t, latents, out, x0, alpha_bar, guides: list[Guide], step: int):
        """Move x̂0 by the guides' gradient; move x_t and the model output to agree (same noise)."""
        new_x0 = guided_x0(x0, guides, step, self._decode_tensor)
        delta = new_x0 - x0  # (1, C, h, w)
        if not delta.any():
            return latents, out, x0
        vp_gain = float(scheduler.scale_model_input(torch.ones(1), t)[0])  # x_in / latents
        latents = latents + alpha_bar.sqrt() * delta / vp_gain
        if self.model.prediction_type == "v_prediction":
            out = out - (1 - alpha_bar).sqrt() * delta
        elif self.model.prediction_type == "sample":
            out = out + delta
        return latents, out, new_x0

    # --- decoding ---

    def _decode_tensor(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, C, h, w) -> image (B, 3, H, W) in [0, 1] (differentiable)."""
        vae = self.model.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        image = vae.decode(latents / vae.config.scaling_factor + shift).sample  # (B, 3, H, W) in [-1, 1]
        return ((image + 1) / 2).clamp(0, 1)

    def _decode(self, latents: torch.Tensor) -> Image.Image:
        with torch.no_grad():
            image = self._decode_tensor(latents)[0]  # (3, H, W)
        pixels = (image.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()  # (H, W, 3)
        return Image.fromarray(pixels, "RGB")

    # --- provenance ---

    def _provenance(
        self, req, nodes: tuple[Node, ...], negative, used, init, guides, seed: int, index: int
    ) -> dict:
        from studio.generation.provenance import provenance_dict

        return provenance_dict(
            req=req,
            guides=guides,
            model=self.model,
            prompt_as_run=to_text(nodes),
            negative_as_run=to_text(negative),
            embeddings=_unique(used),
            blends=[b.expression for b in blends(nodes) + blends(negative)],
            init_sha256=init[1] if init else None,
            seed=seed,
            index=index,
        )


def _predicted_x0(out: torch.Tensor, x_in: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str):
    """x̂0 from the model output at x_t = √ᾱ·x0 + √(1−ᾱ)·ε."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * x_in - s * out  # v = a·ε − s·x0
    if prediction_type == "sample":
        return out
    return (x_in - s * out) / a


def _nearest_multiples(value: int, multiple: int) -> str:
    """'32 or 40' for 36 in multiples of 8; '8' for 3, 0 or -8 (the smallest size)."""
    below = value // multiple * multiple
    return " or ".join(map(str, sorted({max(below, multiple), max(below + multiple, multiple)})))


def _zeros_like(plan: PromptPlan) -> PromptPlan:
    cond = plan.segments[0][1]
    pooled = None if cond.pooled is None else torch.zeros_like(cond.pooled)
    return PromptPlan([(0.0, Conditioning(torch.zeros_like(cond.embeds), pooled))], [(0.0, "")])


def _unique(embeddings: list) -> list:
    seen: dict[str, Any] = {}
    for emb in embeddings:
        seen.setdefault(emb.name, emb)
    return list(seen.values())


__all__ = ["GenerateRequest", "PromptPlan", "Result", "Session", "StepInfo"]
