"""Behaviour that a mutation review found unpinned: min-SNR in the step, the rate the optimizer uses, the
caption paired with each flipped sample, every vector of a multi-vector token trains, accumulation equals a
bigger batch, SDXL generation's size conditioning, Heun img2img's start, the swapped-halves warning, the
canonical (n, dim) shape, and a multi-vector name's vectors in prompt order."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model
from torch.optim.optimizer import register_optimizer_step_pre_hook

from embeddings import Embedding, Store
from embeddings.canonical import read_header
from embeddings.doctor import SDXL_WIDTHS, diagnose
from embeddings.exporting import export
from embeddings.inject import swapped_hint
from studio.generation import GenerateRequest, Session
from studio.generation.img2img import trimmed_timesteps
from studio.generation.schedule import make_scheduler
from trainers import steps as steps_module
from trainers import train
from trainers.loop import Batch, DiffusionMath, step_loss
from trainers.models import LoadedModel
from trainers.schedules import schedule_for
from trainers.tiny import tiny_pipeline


def _quiet(images, folder, **changes):
    """No validation, previews or snapshots: only the steps."""
    values = dict(validate_every=0, save_every=0, preview_images=0, early_stopping=False)
    return quick_config(images, folder, **{**values, **changes})


@contextmanager
def _optimizer_steps(record):
    """Within it, `record(optimizer)` runs before every optimizer step."""
    hook = register_optimizer_step_pre_hook(lambda optimizer, args, kwargs: record(optimizer))
    try:
        yield
    finally:
        hook.remove()


def _step_records(records: list[dict]) -> list[dict]:
    """The progress records of the steps taken (step 0's, the init's, has no loss)."""
    return [r for r in records if r.get("step", 0) >= 1 and r.get("loss") is not None]


# --- training: the loss ---
def test_min_snr_gamma_weights_each_sample_s_loss_in_the_step():
    torch.manual_seed(0)
    unet_out = torch.randn(2, 4, 4, 4)

    class FixedUnet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, noisy, t, encoder_hidden_states, added_cond_kwargs=None):
            return SimpleNamespace(sample=unet_out + 0 * encoder_hidden_states.sum())

    class FixedConditioner:
        def encode(self, prompts, device):
            return torch.zeros(len(prompts), 2, 3), None

    maths = DiffusionMath(torch.linspace(0.99, 0.01, 10), "epsilon")
    noise = torch.randn(2, 4, 4, 4)
    t = torch.tensor([0, 9])  # SNR 99 (weight 5/99) and SNR 0.0101 (weight 1)
    batch = Batch(torch.randn(2, 4, 4, 4), noise, t, ["x", "x"], [(4, 4)] * 2, None)
    per_sample = (unet_out - noise).pow(2).mean((1, 2, 3))  # (2,): ε-prediction targets the noise
    weights = maths.min_snr_weights(t, 5.0)
    assert float(weights[0]) == pytest.approx(5 / 99, rel=1e-4) and float(weights[1]) == pytest.approx(1.0)

    plain = step_loss(FixedUnet(), FixedConditioner(), maths, batch)
    weighted = step_loss(FixedUnet(), FixedConditioner(), maths, batch, min_snr_gamma=5.0)
    assert float(plain) == pytest.approx(float(per_sample.mean()), rel=1e-6)
    assert float(weighted) == pytest.approx(float((per_sample * weights).mean()), rel=1e-6)
    assert abs(float(weighted) - float(plain)) > 0.1 * float(plain)


def test_a_min_snr_run_gives_every_step_its_gamma(tmp_path, monkeypatch):
    gammas = []

    def spy(unet, conditioner, maths, batch, **kwargs):
        gammas.append(kwargs.get("min_snr_gamma", 0.0))
        return step_loss(unet, conditioner, maths, batch, **kwargs)

    monkeypatch.setattr(steps_module, "step_loss", spy)
    images = square_images(tmp_path / "images", count=2)
    cfg = _quiet(images, tmp_path / "run", steps=2, min_snr_gamma=5.0)
    train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    assert gammas == [5.0, 5.0]


# --- training: the optimizer ---
def test_the_optimizer_steps_at_the_scheduled_rate_that_the_log_records(tmp_path):
    images = square_images(tmp_path / "images", count=4)
    cfg = _quiet(images, tmp_path / "run", steps=4, lr_schedule="warmup", warmup_steps=4)
    used, records = [], []
    with _optimizer_steps(lambda optimizer: used.append(optimizer.param_groups[0]["lr"])):
        train(cfg, home=tmp_path / "h", model=tiny_model("sd1"), on_progress=records.append)
    schedule = schedule_for("warmup", cfg.learning_rate, total_steps=4, warmup_steps=4)
    expected = [schedule(step) for step in range(4)]  # a warm-up: every step's rate differs from the next
    assert len(set(expected)) == 4
    assert used == pytest.approx(expected, rel=1e-12)
    logged = _step_records(records)
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert [r["lr"] for r in logged] == pytest.approx(used, rel=1e-12)


def test_two_accumulated_micro_batches_train_as_one_batch_of_both(tmp_path, monkeypatch):
    """grad_accum 2 at batch 1 is batch 2 at grad_accum 1: the same loss, gradient and rows. Both runs see
    the same draws: the batch-2 run is handed the two micro-batches the accumulating run drew."""
    images = square_images(tmp_path / "images", count=4)
    real_draw = steps_module.draw_batch

    def run(folder, draw, **changes):
        monkeypatch.setattr(steps_module, "draw_batch", draw)
        grads, records = [], []
        cfg = _quiet(images, tmp_path / folder / "run", steps=1, weight_decay=0.0, **changes)
        home = tmp_path / folder / "home"
        with _optimizer_steps(lambda opt: grads.append(opt.param_groups[0]["params"][0].grad.clone())):
            emb = train(cfg, home=home, model=tiny_model("sd1"), on_progress=records.append)
        [record] = _step_records(records)
        return emb.vectors["emb_params"], grads, record["loss"]

    micro = []

    def recording(*args):
        micro.append(real_draw(*args))
        return micro[-1]

    rows_a, grads_a, loss_a = run("accumulated", recording, batch_size=1, grad_accum=2)
    assert len(micro) == 2 and not torch.equal(micro[0].latents, micro[1].latents)
    first, second = micro
    both = Batch(
        torch.cat([first.latents, second.latents]),
        torch.cat([first.noise, second.noise]),
        torch.cat([first.timesteps, second.timesteps]),
        first.prompts + second.prompts,
        first.time_ids + second.time_ids,
        None,
    )
    rows_b, grads_b, loss_b = run("batched", lambda *args: both, batch_size=2, grad_accum=1)
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert len(grads_a) == len(grads_b) == 1
    torch.testing.assert_close(grads_a[0], grads_b[0], rtol=1e-5, atol=1e-9)
    assert float((rows_a - rows_b).abs().max()) <= 1e-6


# --- training: what each step trains on ---
def test_each_flipped_or_plain_sample_is_prompted_with_its_own_image_s_caption(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    captions = {"a": ((200, 30, 30), "on grass"), "b": ((30, 30, 200), "on sand")}
    for name, (colour, caption) in captions.items():
        Image.new("RGB", (16, 16), colour).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(caption)
    samples, drawn = [], []
    real_build, real_draw = steps_module.build_samples, steps_module.draw_batch

    def build(*args, **kwargs):
        samples.extend(real_build(*args, **kwargs))
        return samples

    def draw(cache, indices, prompts, maths, generator):
        drawn.extend(zip(indices, prompts, strict=True))
        return real_draw(cache, indices, prompts, maths, generator)

    monkeypatch.setattr(steps_module, "build_samples", build)
    monkeypatch.setattr(steps_module, "draw_batch", draw)
    cfg = _quiet(folder, tmp_path / "run", steps=4, templates="captions", flip=True)
    train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    assert len(samples) == 4 and sum(s.flipped for s in samples) == 2
    assert {i for i, _ in drawn} == {0, 1, 2, 3}, "every sample, flipped or not, should be drawn"
    for index, prompt in drawn:
        red, _, blue = samples[index].pixels.mean((1, 2)).tolist()  # which image the pixels are of
        own = "on grass" if red > blue else "on sand"
        other = "on sand" if red > blue else "on grass"
        assert own in prompt and other not in prompt, (index, samples[index].flipped, prompt)


def test_every_vector_of_a_multi_vector_token_trains(tmp_path):
    images = square_images(tmp_path / "images", count=4)
    cfg = _quiet(images, tmp_path / "run", steps=3, vectors=2, weight_decay=0.0)
    before, grads = [], []

    def record(optimizer):
        rows = optimizer.param_groups[0]["params"][0]  # (2, 32)
        if not before:
            before.append(rows.detach().clone())
        grads.append(rows.grad.norm(dim=1))  # (2,)

    with _optimizer_steps(record):
        emb = train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    assert len(grads) == 3
    for step, norms in enumerate(grads, start=1):
        assert bool((norms > 0).all()), f"step {step}: vectors without a gradient: {norms.tolist()}"
    moved = (emb.vectors["emb_params"] - before[0]).norm(dim=1)  # (2,)
    assert bool((moved > 1e-3).all()), moved.tolist()


# --- generation ---
def test_sdxl_generation_tells_the_unet_height_then_width_for_a_non_square_image():
    session = Session(LoadedModel(tiny_pipeline("sdxl"), "sdxl", "tiny-xl"))
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone())

    hook = session.model.pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        [result] = session.generate(GenerateRequest("a red circle", seed=1, steps=2, width=32, height=16))
    finally:
        hook.remove()
    assert result.image.size == (32, 16)
    assert seen and all(ids.tolist() == [[16, 32, 0, 0, 16, 32]] * ids.shape[0] for ids in seen)


def test_heun_img2img_starts_where_diffusers_does_and_runs_the_strength_s_steps(tiny_session):
    steps, strength = 10, 0.5
    config = tiny_session.model.pipe.scheduler.config

    def reference(name):
        """diffusers' own img2img rule (StableDiffusionImg2ImgPipeline.get_timesteps)."""
        scheduler = make_scheduler(name, config)
        scheduler.set_timesteps(steps)
        return StableDiffusionImg2ImgPipeline.get_timesteps(
            SimpleNamespace(scheduler=scheduler), steps, strength, "cpu"
        )

    heun, heun_steps = reference("heun")
    euler, euler_steps = reference("euler")
    assert heun_steps == euler_steps == 5
    assert round(float(heun[0])) == round(float(euler[0]))  # the same start as a first-order scheduler

    scheduler = make_scheduler("heun", config)
    scheduler.set_timesteps(steps)
    assert scheduler.order == 2 and torch.equal(trimmed_timesteps(scheduler, steps, strength), heun)

    side = tiny_session.model.resolution
    init = Image.new("RGB", (side, side), (200, 40, 40))
    req = GenerateRequest("a red circle", steps=steps, scheduler="heun", init_image=init, strength=strength)
    assert tiny_session.step_count(req) == 5
    seen, infos = [], []
    hook = tiny_session.model.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(float(args[1])), with_kwargs=True
    )
    try:
        tiny_session.generate(req, on_step=infos.append)
    finally:
        hook.remove()
    assert seen == pytest.approx([float(t) for t in heun])
    assert [info.step for info in infos] == [1, 2, 3, 4, 5]


def test_a_multi_vector_name_goes_into_the_prompt_with_its_vectors_in_order(tiny_session, tokensmith_home):
    vectors = torch.randn(3, 32, generator=torch.Generator().manual_seed(11))
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("trio", {"emb_params": vectors}))
    text_encoder = tiny_session.model.pipe.text_encoder
    table = text_encoder.get_input_embeddings()
    ids = []
    hook = table.register_forward_hook(lambda module, args, out: ids.append(args[0].flatten().tolist()))
    try:
        tiny_session.generate(GenerateRequest("a <trio> on a mat", steps=2), store=store)
    finally:
        hook.remove()
    # which of trio's vectors sits at each position of each prompt the text encoder read, in prompt order
    found = [[k for row in table.weight[p] for k in range(3) if torch.equal(row, vectors[k])] for p in ids]
    assert [0, 1, 2] in found and all(f in ([], [0, 1, 2]) for f in found), found  # the negative has none


# --- embedding files ---
def test_the_doctor_warns_of_swapped_halves_only_for_halves_that_are_swapped(tmp_path):
    model = tiny_model("sdxl")  # clip_l 32, clip_g 48: not SDXL's own widths, and not swapped
    own = {"clip_l": 32, "clip_g": 48}
    assert {key: te.get_input_embeddings().weight.shape[1] for key, _, te in model.encoders} == own
    assert swapped_hint(own, SDXL_WIDTHS, model="SDXL's") == ""
    assert swapped_hint(own, own) == ""
    right = tmp_path / "right.safetensors"
    safetensors.torch.save_file({k: torch.randn(1, w) for k, w in own.items()}, str(right))
    for report in (diagnose(right), diagnose(right, model.encoders, model_family="sdxl")):
        said = report.lines + report.warnings
        assert not any("swapped" in line for line in said), said
    swapped = tmp_path / "swapped.safetensors"
    safetensors.torch.save_file({"clip_l": torch.randn(1, 48), "clip_g": torch.randn(1, 32)}, str(swapped))
    report = diagnose(swapped, model.encoders, model_family="sdxl")
    assert sum("look swapped" in line for line in report.lines + report.warnings) == 1


def test_a_one_vector_canonical_file_holds_a_one_by_width_tensor(tmp_path):
    one = Embedding("one", {"emb_params": torch.randn(1, 768)})
    three = Embedding("three", {"emb_params": torch.randn(3, 768)})
    xl = Embedding("xl", {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)})
    store = Store(tmp_path / "store")
    for emb in (one, three, xl):
        [exported] = export(emb, "canonical", tmp_path / f"{emb.name}.safetensors")
        for path in (exported, store.put(emb)):
            header = read_header(path)
            shapes = {key: header[key]["shape"] for key in emb.vectors}
            assert shapes == {key: list(v.shape) for key, v in emb.vectors.items()}, path
