"""The two training phases of `python -m demo.build`: the VAE on image crops, then UNet and text encoder
together on cached latents (v-prediction, min-SNR-γ weights, EMA), each fitted to a step count or a time
budget.
"""

from __future__ import annotations

import copy
import math
import random
import time
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from demo import world
from demo.architecture import make_noise_scheduler
from trainers.families import tokenize

if TYPE_CHECKING:
    from demo.build import BuildConfig, Log


# --- VAE ---
def train_vae(vae, images: torch.Tensor, cfg: BuildConfig, log: Log) -> None:
    """MSE + 0.5·L1 + 1e-4·KL per latent dimension on random crops; lr halves for the last 40% of the run."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    n_val = min(256, len(images) // 5)  # held-out images for the PSNR in the log
    train, val = images[n_val:], images[:n_val]
    side, crop = images.shape[-1], cfg.vae_crop
    budget = cfg.vae_minutes * 60 or float("inf")
    start, halved = time.monotonic(), False
    vae.train()
    for step in range(1, cfg.vae_steps + 1):
        spent = time.monotonic() - start
        if spent > budget:
            log(f"vae: time budget of {cfg.vae_minutes} min reached after {step - 1} steps")
            break
        if not halved and (spent > 0.6 * budget or step > 0.6 * cfg.vae_steps):
            for group in opt.param_groups:
                group["lr"] = cfg.vae_lr / 2
            halved = True
        x = train[torch.randint(len(train), (cfg.vae_batch,), generator=gen)]  # (B, 3, R, R)
        oy, ox = torch.randint(0, side - crop + 1, (2,), generator=gen).tolist()
        x = x[:, :, oy : oy + crop, ox : ox + crop]  # (B, 3, crop, crop)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)  # (B, 4, crop/2, crop/2)
        rec = vae.decode(z).sample
        kl = posterior.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            log(f"vae step {step} loss {loss.item():.4f} psnr(val) {vae_psnr(vae, val):.1f} dB")
    log(f"vae done: psnr(val) {vae_psnr(vae, val):.1f} dB on full {side}px images")
    vae.eval()


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor) -> float:
    was_training = vae.training
    vae.eval()
    rec = vae.decode(vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
    vae.train(was_training)
    mse = F.mse_loss((rec + 1) / 2, (images + 1) / 2).item()
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior means of the whole dataset, (N, 4, R/2, R/2), unscaled."""
    return torch.cat([vae.encode(images[i : i + 512]).latent_dist.mode() for i in range(0, len(images), 512)])


# --- UNet + text encoder ---
def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-timestep weights of the v-prediction loss for min-SNR-γ: min(SNR, γ) / (SNR + 1); ones when γ is 0.

    The v-loss weighs a timestep's x0 error by SNR + 1, so near-clean steps dominate it; min-SNR caps that
    weight at γ and moves the training signal to the noisy steps where a shape's outline is decided.
    """
    if not gamma:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(max=gamma) / (snr + 1)


class StepPlan:
    """How many UNet steps to run: exactly `cap`, or as many as fit in `minutes` (re-planned every 250)."""

    def __init__(self, cap: int, minutes: float, log: Log):
        self.total, self.cap, self.budget, self.log = cap, cap, minutes * 60, log
        self.start = time.monotonic()

    def replan(self, step: int) -> None:
        if not self.budget:
            return
        spent = time.monotonic() - self.start
        fits = int(step + (self.budget - spent) / (spent / step))
        total = max(step, min(self.cap, fits))  # `step` itself when the budget is spent: stop now
        if total != self.total:
            self.log(f"unet plan: {total} steps fit in {self.budget / 60:.0f} min (was {self.total})")
        self.total = total


def train_unet(
    parts: dict, latents: torch.Tensor, concepts: list, cfg: BuildConfig, log: Log, on_interim
) -> dict:
    """Train UNet and text encoder together on v-prediction; returns their EMA copies and the step count."""
    unet, text_encoder, tokenizer = parts["unet"], parts["text_encoder"], parts["tokenizer"]
    noise_scheduler = make_noise_scheduler(cfg.arch)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    rng = random.Random(cfg.seed + 3)
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    plan = StepPlan(cfg.unet_steps, cfg.unet_minutes, log)
    weights = min_snr_weights(noise_scheduler.alphas_cumprod, cfg.snr_gamma)
    ema = {"unet": copy.deepcopy(unet).requires_grad_(False), "text_encoder": copy.deepcopy(text_encoder)}
    ema["text_encoder"].requires_grad_(False)
    unet.train(), text_encoder.train()
    running, tick, step, interim_done = 0.0, time.monotonic(), 0, not cfg.interim_fraction
    while step < plan.total:
        step += 1
        for group in opt.param_groups:
            group["lr"] = cfg.unet_lr * lr_factor(step, plan.total, cfg.warmup_steps)
        idx = torch.randint(len(latents), (cfg.unet_batch,), generator=gen)
        texts = ["" if rng.random() < cfg.caption_dropout else world.caption(concepts[i], rng) for i in idx]
        z0 = latents[idx]  # (B, 4, h, w), already scaled
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(z0),), generator=gen)
        zt = noise_scheduler.add_noise(z0, noise, t)
        target = noise_scheduler.get_velocity(z0, noise, t)  # v = √ᾱ·ε − √(1−ᾱ)·x0
        cond = text_encoder(tokenize(tokenizer, texts))[0]  # (B, L, 64)
        errors = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, target, reduction="none")
        loss = (errors.mean(dim=(1, 2, 3)) * weights[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for key, live in (("unet", unet), ("text_encoder", text_encoder)):
                for e, p in zip(ema[key].parameters(), live.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        running += loss.item()
        if step % 250 == 0 or step == plan.total:
            done = step % 250 or 250
            rate = done / (time.monotonic() - tick)
            log(
                f"unet step {step}/{plan.total} loss(v) {running / done:.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate:.2f} it/s eta {(plan.total - step) / rate / 60:.1f} min"
            )
            running, tick = 0.0, time.monotonic()
            if step < plan.total:  # never at the last step: a re-plan there could only add steps
                plan.replan(step)
        if not interim_done and step >= cfg.interim_fraction * plan.total:
            on_interim(ema, step)
            interim_done = True
    return {**ema, "steps": step}
