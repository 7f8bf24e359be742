"""Latents cached once: the cache holds the VAE's own distribution; draws are mean + std·ε, seeded."""

import copy
import dataclasses

import torch

from trainers.latents import encode_samples
from trainers.samples import Sample
from trainers.tiny import tiny_pipeline


def _samples():
    generator = torch.Generator().manual_seed(0)
    weight = torch.zeros(1, 16, 16)
    weight[:, :, :8] = 1.0
    ids = (16, 24, 0, 4, 16, 16)  # a 24x16 source, centre-cropped to 16 px
    return [
        Sample(0, torch.rand(3, 16, 16, generator=generator) * 2 - 1, weight, False, (16, 16), ids),
        Sample(0, torch.rand(3, 16, 16, generator=generator) * 2 - 1, weight, True, (16, 16), ids),
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
    assert cache.time_ids == [(16, 24, 0, 4, 16, 16)] * 2


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


def _decoding_error(vae, cache, samples) -> torch.Tensor:
    """Each sample's mean squared error between its cached mean's decoding and its pixels: (N,)."""
    with torch.no_grad():
        decoded = vae.decode(torch.stack(cache.means) / vae.config.scaling_factor).sample
    return ((decoded - torch.stack([s.pixels for s in samples])) ** 2).mean(dim=(1, 2, 3))


def test_refined_latents_decode_nearer_their_images_and_the_vae_is_untouched():
    vae = tiny_pipeline("sd1").vae.requires_grad_(True)  # even trainable weights get no gradient
    before = copy.deepcopy(vae.state_dict())
    samples = [dataclasses.replace(s, weight=None) for s in _samples()]
    plain = encode_samples(vae, samples)
    refined = encode_samples(vae, samples, refine_steps=30)
    assert (_decoding_error(vae, refined, samples) < 0.7 * _decoding_error(vae, plain, samples)).all()
    assert all(torch.equal(a, b) for a, b in zip(refined.stds, plain.stds, strict=True))  # only means move
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(before[k], v) for k, v in vae.state_dict().items())
    again = encode_samples(vae, samples, refine_steps=30)
    assert all(torch.equal(a, b) for a, b in zip(refined.means, again.means, strict=True))  # deterministic


def test_refinement_fits_what_the_alpha_weight_keeps_and_runs_a_half_vae_in_float32():
    vae = tiny_pipeline("sd1").vae
    samples = _samples()  # weight 1 on the left half, 0 on the right
    unweighted = [dataclasses.replace(s, weight=None) for s in samples]

    def half_errors(cache) -> tuple[float, float]:
        with torch.no_grad():
            decoded = vae.decode(torch.stack(cache.means) / vae.config.scaling_factor).sample
        errors = (decoded - torch.stack([s.pixels for s in samples])) ** 2  # (N, 3, H, W)
        return float(errors[..., :8].mean()), float(errors[..., 8:].mean())

    kept, dropped = half_errors(encode_samples(vae, samples, refine_steps=30))
    kept_all, dropped_all = half_errors(encode_samples(vae, unweighted, refine_steps=30))
    assert kept < kept_all, "the weighted fit spends itself on the kept half"
    assert dropped > 1.5 * dropped_all, "... and leaves the transparent half alone"

    half = copy.deepcopy(vae).to(torch.bfloat16)
    reference = copy.deepcopy(half).float()  # the same bf16-rounded weights, run in float32
    cache = encode_samples(half, samples, refine_steps=5)
    assert next(half.parameters()).dtype == torch.bfloat16, "the VAE goes back to its own precision"
    expected = encode_samples(reference, samples, refine_steps=5)
    assert all(torch.equal(a, b) for a, b in zip(cache.means, expected.means, strict=True))


def test_the_run_cache_is_made_once_and_a_resume_reads_the_file_it_began_with(tmp_path):
    from accelerate import PartialState

    from trainers.latents import load_cache, run_cache, save_cache

    vae, samples = tiny_pipeline("sd1").vae, _samples()
    path, calls = tmp_path / "latents.safetensors", []
    made_for = {"images": "shots", "resolution": 16}

    def encode():
        calls.append(1)
        return encode_samples(vae, samples)

    state = PartialState(cpu=True)
    first = run_cache(path, encode, made_for=made_for, accelerator=state, reuse=False)
    assert path.is_file() and len(calls) == 1
    assert first.time_ids == [(16, 24, 0, 4, 16, 16)] * 2 and first.weights[0].shape == (1, 8, 8)

    marked = load_cache(path)
    marked.means[0].fill_(7.0)
    save_cache(marked, path, made_for=made_for)
    resumed = run_cache(path, encode, made_for=made_for, accelerator=state, reuse=True)
    assert len(calls) == 1 and float(resumed.means[0].mean()) == 7.0  # the file, not a new encode
    other = run_cache(path, encode, made_for={**made_for, "resolution": 32}, accelerator=state, reuse=True)
    assert len(calls) == 2 and torch.equal(other.means[0], first.means[0])  # made for other settings: anew
    path.write_bytes(b"not a cache")
    again = run_cache(path, encode, made_for=made_for, accelerator=state, reuse=True)  # unreadable: anew
    assert len(calls) == 3 and torch.equal(again.means[1], first.means[1])
