"""Latents cached once: the cache holds the VAE's own distribution; draws are mean + std·ε, seeded."""

import copy

import torch

from trainers.data import Sample
from trainers.latents import encode_samples
from trainers.tiny import tiny_pipeline


def _samples():
    generator = torch.Generator().manual_seed(0)
    weight = torch.zeros(1, 16, 16)
    weight[:, :, :8] = 1.0
    return [
        Sample(0, torch.rand(3, 16, 16, generator=generator) * 2 - 1, weight, False, (16, 16)),
        Sample(0, torch.rand(3, 16, 16, generator=generator) * 2 - 1, weight, True, (16, 16)),
    ]


def test_cache_holds_the_vae_distribution_times_its_scaling_factor():
    vae = tiny_pipeline("sd1").vae
    samples = _samples()
    cache = encode_samples(vae, samples)
    with torch.no_grad():
        dist = vae.encode(torch.stack([s.pixels for s in samples])).latent_dist
    scale = vae.config.scaling_factor
    assert torch.allclose(torch.stack(cache.means), dist.mean * scale, atol=1e-6)
    assert torch.allclose(torch.stack(cache.stds), dist.std * scale, atol=1e-6)
    assert cache.weights[0].shape == (1, 8, 8) and cache.weights[0][0, 0].tolist() == [1.0] * 4 + [0.0] * 4
    assert cache.sizes == [(16, 16), (16, 16)]


def test_draws_are_mean_plus_std_noise_from_the_generator():
    cache = encode_samples(tiny_pipeline("sd1").vae, _samples())
    first, weights = cache.draw([1, 0], torch.Generator().manual_seed(3))
    again, _ = cache.draw([1, 0], torch.Generator().manual_seed(3))
    eps = torch.randn(first.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)
    assert torch.allclose(
        first,
        torch.stack([cache.means[1], cache.means[0]]) + torch.stack([cache.stds[1], cache.stds[0]]) * eps,
    )
    assert weights.shape == (2, 1, 8, 8)


def test_a_float16_vae_that_asks_for_upcasting_encodes_in_float32_and_is_put_back():
    """SDXL's VAE overflows float16 (NaN latents); its config says force_upcast, as the tiny one's does."""
    vae = tiny_pipeline("sdxl").vae.to(torch.float16)
    assert vae.config.force_upcast
    reference = copy.deepcopy(vae).float()  # the same float16-rounded weights, run in float32
    samples = _samples()
    cache = encode_samples(vae, samples)
    assert next(vae.parameters()).dtype == torch.float16, "the VAE goes back to float16 for the previews"
    expected = encode_samples(reference, samples)
    for ours, theirs in zip(cache.means + cache.stds, expected.means + expected.stds, strict=True):
        assert torch.equal(ours, theirs)
