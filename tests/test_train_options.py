"""Training options change what they say in a real run on a tiny pipeline: gradient checkpointing (same
result, UNet put back), gradient clipping, alpha-weighted loss, aspect-ratio buckets, early stopping."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model
from torch.optim.optimizer import register_optimizer_step_pre_hook

from embeddings import Store
from trainers import TrainConfig, train
from trainers import steps as steps_module
from trainers.configfile import load as load_config
from trainers.loop import Batch, DiffusionMath, step_loss
from trainers.runfolder import RunFolder
from trainers.session import RunRecord
from trainers.storing import summary


@pytest.fixture
def images(tmp_path):
    return square_images(tmp_path / "images", count=4)


def _quiet(images, folder, **changes):
    """No validation, previews or snapshots unless asked: only the steps."""
    values = dict(validate_every=0, save_every=0, preview_images=0, early_stopping=False)
    return quick_config(images, folder, **{**values, **changes})


def _gradient_norms(cfg, home, model=None) -> list[float]:
    """The new rows' gradient norm as each optimizer step sees it (after any clipping)."""
    norms = []

    def record(optimizer, args, kwargs):
        norms.append(float(optimizer.param_groups[0]["params"][0].grad.norm()))

    hook = register_optimizer_step_pre_hook(record)
    try:
        train(cfg, home=home, model=model or tiny_model("sd1"))
    finally:
        hook.remove()
    return norms


def test_gradient_checkpointing_is_on_during_the_run_gives_the_same_result_and_is_undone(images, tmp_path):
    plain = train(_quiet(images, tmp_path / "plain"), home=tmp_path / "a", model=tiny_model("sd1"))
    model, seen = tiny_model("sd1"), []
    cfg = _quiet(images, tmp_path / "ckpt", gradient_checkpointing=True)
    checkpointed = train(
        cfg,
        home=tmp_path / "b",
        model=model,
        on_progress=lambda record: seen.append(model.pipe.unet.is_gradient_checkpointing),
    )
    assert seen and all(seen), "the UNet should checkpoint activations while training"
    assert not model.pipe.unet.is_gradient_checkpointing, "the caller's UNet is put back as it was"
    difference = (checkpointed.vectors["emb_params"] - plain.vectors["emb_params"]).abs().max()
    assert float(difference) <= 1e-6


def test_max_grad_norm_clips_the_rows_gradient(images, tmp_path):
    free = _gradient_norms(_quiet(images, tmp_path / "free"), tmp_path / "a")
    assert min(free) > 1e-3, "the unclipped gradients should be larger than the clip below"
    clipped = _gradient_norms(_quiet(images, tmp_path / "clip", max_grad_norm=1e-3), tmp_path / "b")
    assert len(clipped) == 6 and max(clipped) == pytest.approx(1e-3, rel=1e-4)


def test_alpha_weights_leave_transparent_pixels_out_of_the_loss():
    torch.manual_seed(0)
    unet_out = torch.randn(1, 4, 4, 4)

    class FixedUnet(torch.nn.Module):
        dtype = torch.float32

        def forward(self, noisy, t, encoder_hidden_states, added_cond_kwargs=None):
            return type("Out", (), {"sample": unet_out + 0 * encoder_hidden_states.sum()})

    class FixedConditioner:
        def encode(self, prompts, device):
            return torch.zeros(len(prompts), 2, 3), None

    maths = DiffusionMath(torch.linspace(0.99, 0.01, 10), "epsilon")
    noise = torch.randn(1, 4, 4, 4)
    left = torch.zeros(1, 1, 4, 4)
    left[..., :2] = 1.0  # the left half is opaque, the right half transparent
    batch = Batch(torch.randn(1, 4, 4, 4), noise, torch.tensor([3]), ["x"], [(4, 4)], left)
    loss = step_loss(FixedUnet(), FixedConditioner(), maths, batch)
    expected = (unet_out - noise)[..., :2].pow(2).mean()  # ε-prediction: the target is the noise
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    unweighted = step_loss(FixedUnet(), FixedConditioner(), maths, replace(batch, weights=None))
    assert float(unweighted) == pytest.approx(float((unet_out - noise).pow(2).mean()), rel=1e-6)


def _spy_batches(monkeypatch) -> list[Batch]:
    """Record every batch the training loop's step_loss is given."""
    seen = []

    def spy(unet, conditioner, maths, batch, **kwargs):
        seen.append(batch)
        return step_loss(unet, conditioner, maths, batch, **kwargs)

    monkeypatch.setattr(steps_module, "step_loss", spy)
    return seen


def test_an_alpha_weighted_run_gives_every_batch_its_weights(tmp_path, monkeypatch):
    folder = tmp_path / "rgba"
    folder.mkdir()
    for i in range(3):
        image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
        image.paste((220, 40 * i, 30, 255), (4, 4, 12, 12))
        image.save(folder / f"{i}.png")
    seen = _spy_batches(monkeypatch)
    cfg = _quiet(folder, tmp_path / "run", alpha_weight=True)
    train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    assert len(seen) == 6
    for batch in seen:
        assert batch.weights is not None and batch.weights.shape[-2:] == batch.latents.shape[-2:]
        assert 0 < float(batch.weights.mean()) < 1  # the square is opaque, the border transparent


def test_bucketed_images_of_two_shapes_train_in_their_own_shapes(tmp_path, monkeypatch):
    folder = tmp_path / "shapes"
    folder.mkdir()
    for i, size in enumerate([(32, 16), (32, 16), (16, 16), (16, 16)]):
        image = Image.new("RGB", size, (40, 40, 40))
        image.paste((220, 60 * i, 30), (2, 2, size[0] - 2, size[1] - 2))
        image.save(folder / f"{i}.png")
    seen = _spy_batches(monkeypatch)
    cfg = _quiet(folder, tmp_path / "run", crop="bucket", batch_size=2, steps=8)
    emb = train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    assert emb.meta["steps"] == "8" and len(seen) == 8
    shapes = {tuple(batch.latents.shape[-2:]) for batch in seen}
    assert len(shapes) == 2, f"both buckets should be trained, saw latent shapes {shapes}"
    wide = max(shapes, key=lambda hw: hw[1] / hw[0])
    assert wide[1] > wide[0], "the wide images keep a wide shape"


def test_early_stopping_ends_the_run_and_says_so(images, tmp_path):
    # a threshold no loss curve stays under: stop at the first check that may stop (min_steps, 2 windows)
    cfg = quick_config(
        images,
        tmp_path / "run",
        steps=30,
        validate_every=2,
        save_every=0,
        preview_images=0,
        dvar_window=2,
        dvar_threshold=1e9,
        min_steps=4,
    )
    emb = train(cfg, home=tmp_path / "h", model=tiny_model("sd1"))
    info = summary(emb)
    # the stopper sees the validations of steps 2, 4, 6, 8 (step 0's is the baseline of the log only)
    assert info["end"] == "early_stopped" and info["trained_steps"] == 8
    done = json.loads((tmp_path / "run" / "progress.jsonl").read_text().splitlines()[-1])
    assert done["event"] == "done" and "early stopped" in done["message"] and done["steps"] == 8
    assert Store.for_home(tmp_path / "h").get("thing").meta["steps"] == "8"


def test_trackers_get_the_moving_numbers_of_each_record(tmp_path):
    """What Accelerate's trackers (TensorBoard, W&B) get: every number but the step axis and bookkeeping."""
    logged = []

    class Accelerator:
        is_main_process = True

        def log(self, values, step):
            logged.append((step, values))

    folder = RunFolder(tmp_path / "run")
    folder.create(resume=False)
    cfg = TrainConfig(images="x", name="t", steps=10, trackers=["tensorboard"])
    state = RunRecord(cfg=cfg, folder=folder, accelerator=Accelerator())
    state.start_clock(0)
    state.log(3, loss=0.5, val_loss=0.25, lr=1e-3, metric=42.0, shape_match=1.0, text_attention="eager")
    ((step, values),) = logged
    assert step == 3
    assert set(values) == {"loss", "val_loss", "lr", "metric", "shape_match", "elapsed"}


def test_a_model_passed_in_is_the_one_the_run_files_and_command_name(images, tmp_path):
    lines = []
    train(_quiet(images, tmp_path / "run"), home=tmp_path / "h", model=tiny_model("sd1"), echo=lines.append)
    written = load_config(tmp_path / "run" / "config.toml")
    assert written.model == "tiny-sd1"
    assert any(line.startswith("equivalent command: ") and "--model tiny-sd1" in line for line in lines)
