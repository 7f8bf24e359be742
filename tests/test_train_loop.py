"""The training step against diffusers: the same noising and targets, and the same gradient for the new row
as diffusers' whole-table step (the rows-only table is a speed-up, not a different update)."""

import torch

from trainers.families import Conditioner
from trainers.loop import (
    Batch,
    DiffusionMath,
    pick_text_attention,
    set_text_attention,
    step_loss,
    tune_malloc,
)
from trainers.rows import attach, detach_rows
from trainers.tiny import tiny_pipeline


def test_noising_and_targets_match_diffusers_scheduler():
    from diffusers import DDPMScheduler

    for kind in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(prediction_type=kind, beta_schedule="scaled_linear")
        maths = DiffusionMath.from_scheduler(scheduler)
        x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
        t = torch.tensor([0, 500, 999])
        noisy, target = maths.noisy_and_target(x0, noise, t)
        assert torch.allclose(noisy, scheduler.add_noise(x0, noise, t), atol=1e-6)
        expected = noise if kind == "epsilon" else scheduler.get_velocity(x0, noise, t)
        assert torch.allclose(target, expected, atol=1e-6)


def test_min_snr_weights():
    from diffusers import DDPMScheduler

    maths = DiffusionMath.from_scheduler(DDPMScheduler(prediction_type="epsilon"))
    t = torch.tensor([0, 999])
    snr = maths.alphas_cumprod[t] / (1 - maths.alphas_cumprod[t])
    assert torch.allclose(maths.min_snr_weights(t, 5.0), torch.minimum(snr, torch.tensor(5.0)) / snr)


def test_rows_only_gradient_equals_the_whole_table_gradient_of_the_new_row():
    pipe = tiny_pipeline("sd1")
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    maths = DiffusionMath.from_scheduler(pipe.scheduler)
    init = pipe.text_encoder.get_input_embeddings().weight[5:6].detach().clone()
    rows = attach("emb_params", pipe.tokenizer, pipe.text_encoder, "cat", init)
    conditioner = Conditioner("single", [rows])
    generator = torch.Generator().manual_seed(0)
    batch = Batch(
        torch.randn(3, 4, 8, 8, generator=generator),
        torch.randn(3, 4, 8, 8, generator=generator),
        torch.tensor([100, 700, 400]),
        ["a <cat>", "a photo of <cat>", "a <cat>"],  # a repeated prompt is encoded once
        [(16, 16)] * 3,
        None,
    )
    step_loss(pipe.unet, conditioner, maths, batch).backward()
    ours = rows.rows.grad.clone()  # (1, D)
    # diffusers' layout: the new token is row `new_id` of a whole trainable table
    detach_rows(rows)
    new_id = rows.module.first_id
    table = pipe.text_encoder.get_input_embeddings()
    full = torch.nn.Embedding(new_id + 1, table.embedding_dim)
    with torch.no_grad():
        full.weight[: table.num_embeddings] = table.weight
        full.weight[new_id] = init[0]
    pipe.text_encoder.set_input_embeddings(full)
    ids = rows.tokenizer(
        batch.prompts,
        padding="max_length",
        max_length=rows.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    hidden = pipe.text_encoder(ids)[0]
    noisy, target = maths.noisy_and_target(batch.latents, batch.noise, batch.timesteps)
    pred = pipe.unet(noisy, batch.timesteps, encoder_hidden_states=hidden).sample
    torch.nn.functional.mse_loss(pred, target).backward()
    theirs = full.weight.grad[new_id]
    # float rounding differs between the two graphs: elementwise within 1e-6 of the gradient's scale
    assert torch.allclose(ours[0], theirs, rtol=1e-5, atol=1e-6 * float(theirs.abs().max()))
    assert float((ours[0] - theirs).norm() / theirs.norm()) < 6e-6
    others = torch.ones(new_id + 1, dtype=torch.bool)
    others[new_id] = False
    assert full.weight.grad[others].abs().sum() > 0  # diffusers' step also updates (then restores) other rows


def test_text_attention_choice_changes_speed_not_values():
    pipe = tiny_pipeline("sd1")
    pipe.text_encoder.requires_grad_(False)
    init = pipe.text_encoder.get_input_embeddings().weight[5:6].detach().clone()
    rows = attach("emb_params", pipe.tokenizer, pipe.text_encoder, "att", init)
    conditioner = Conditioner("single", [rows])
    prompts = ["a photo of a <att>", "a <att>"]
    outputs = {}
    for name in ("sdpa", "eager"):
        set_text_attention(conditioner, name)
        assert pipe.text_encoder.config._attn_implementation == name  # really switched
        hidden, _ = conditioner.encode(prompts, "cpu")
        hidden.square().mean().backward()
        outputs[name] = (hidden.detach(), rows.rows.grad.clone())
        rows.rows.grad = None
    assert torch.allclose(outputs["sdpa"][0], outputs["eager"][0], atol=1e-5)
    assert torch.allclose(outputs["sdpa"][1], outputs["eager"][1], rtol=1e-4, atol=1e-7)
    set_text_attention(conditioner, "sdpa")
    assert pick_text_attention(conditioner, "cpu") == "eager"
    assert pipe.text_encoder.config._attn_implementation == "eager"
    detach_rows(rows)


def test_tune_malloc_applies_on_linux():
    import sys

    assert tune_malloc() is sys.platform.startswith("linux")
