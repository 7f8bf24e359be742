"""The build script, run tiny: it writes a loadable diffusers folder atomically, reproducibly per seed."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from demo.architecture import Architecture
from demo.build import METADATA_FILE, BuildConfig, build, export, make_pipeline
from demo.training import StepPlan, lr_factor, min_snr_weights


def tiny(tmp_path, name: str, **overrides) -> BuildConfig:
    base = BuildConfig(
        arch=Architecture(unet_channels=(16, 32, 32), vae_channels=(16, 16)),
        num_images=120,
        vae_steps=3,
        vae_minutes=0,
        unet_steps=4,
        unet_minutes=0,
        warmup_steps=2,
        interim_fraction=0.5,
        out=tmp_path / name / "model",
        log=tmp_path / name / "build.log",
        samples=None,
        evaluate=False,
        threads=1,  # the test process keeps its one thread
    )
    return BuildConfig(**{**base.__dict__, **overrides})


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("build")
    return build(tiny(tmp, "a")), build(tiny(tmp, "b")), tmp


def test_build_writes_a_folder_stable_diffusion_loads(built):
    from diffusers import StableDiffusionPipeline

    folder = built[0]
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.safety_checker is None
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)


def test_build_metadata_lists_the_held_out_concepts(built):
    meta = json.loads((built[0] / METADATA_FILE).read_text())
    assert "purple triangle" in meta["held_out"]["combinations"] and meta["held_out"]["colours"] == ["pink"]
    assert meta["build"]["stage"] == "final" and meta["build"]["unet_step"] == 4
    assert "pink" not in meta["caption_words"]


def test_build_is_reproducible_for_a_seed(built):
    a, b, _ = built
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"):
        wa, wb = load_file(a / part), load_file(b / part)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), part


def test_build_log_records_every_phase(built):
    log = (built[2] / "a" / "build.log").read_text()
    for phrase in ("rendered 120 images", "vae done", "scaling_factor", "exported interim", "exported final"):
        assert phrase in log


def test_export_replaces_a_model_atomically(built, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(built[0])
    out = tmp_path / "model"
    export(pipe, out, {"stage": "one"})
    export(pipe, out, {"stage": "two"})
    assert json.loads((out / METADATA_FILE).read_text()) == {"stage": "two"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left behind


def test_make_pipeline_has_no_safety_checker(built):
    from diffusers import StableDiffusionPipeline

    src = StableDiffusionPipeline.from_pretrained(built[0])
    parts = {"vae": src.vae, "text_encoder": src.text_encoder, "tokenizer": src.tokenizer, "unet": src.unet}
    assert make_pipeline(parts, Architecture()).safety_checker is None


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    assert lr_factor(0, 1000, 100) == pytest.approx(0.01)
    assert lr_factor(100, 1000, 100) == pytest.approx(1.0)
    assert lr_factor(1000, 1000, 100) == pytest.approx(0.1)


def test_min_snr_weights_cap_the_near_clean_steps_and_keep_the_noisy_ones():
    from demo.architecture import make_noise_scheduler

    alphas = make_noise_scheduler(Architecture()).alphas_cumprod
    weights = min_snr_weights(alphas, 5.0)
    snr = alphas / (1 - alphas)
    assert weights.shape == alphas.shape and bool((weights > 0).all()) and bool((weights <= 1).all())
    assert weights[0] < 1e-3  # t=0: SNR ≈ 1e4, its v-loss weight SNR+1 capped to γ
    noisy = snr < 5.0
    assert torch.allclose(weights[noisy], (snr / (snr + 1))[noisy])  # below γ: the plain x0 weight, SNR
    assert bool((min_snr_weights(alphas, 0.0) == 1).all())  # γ = 0: plain v-loss


def test_step_plan_without_a_budget_runs_exactly_the_cap():
    plan = StepPlan(500, 0, print)
    plan.replan(250)
    assert plan.total == 500


def test_step_plan_stops_when_the_budget_is_spent():
    plan = StepPlan(8000, 1 / 60, print)  # a one-second budget...
    plan.start -= 5.0  # ...already spent five seconds ago
    plan.replan(250)
    assert plan.total == 250


def test_an_out_folder_holding_other_files_is_refused_before_anything_builds(tmp_path):
    """The export replaces the whole folder: a folder of notes given as --out would be deleted."""
    from demo.build import check_out

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"holds files that are not a model \(todo.txt\)"):
        build(tiny(tmp_path, "x", out=tmp_path / "notes"))
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    assert not (tmp_path / "x").exists()  # refused before the log was opened
    with pytest.raises(SystemExit, match="is inside --out"):
        check_out(tiny(tmp_path, "y", log=tmp_path / "y" / "model" / "build.log"))


def test_a_rebuild_over_a_finished_model_puts_its_interim_beside_it(built, tmp_path, monkeypatch):
    """A rebuild stopped after its interim export must not leave the finished model 30% trained."""
    import shutil

    import demo.build as build_module

    first, _, _ = built
    out = tmp_path / "model"
    shutil.copytree(first, out)
    real_export, seen = build_module.export, []

    def watch(pipe, target, meta):
        seen.append((target, meta["build"]["stage"]))
        real_export(pipe, target, meta)

    monkeypatch.setattr(build_module, "export", watch)
    build(tiny(tmp_path, "again", out=out))
    assert seen == [(out.with_name("model.interim"), "interim"), (out, "final")]
    assert not out.with_name("model.interim").exists()  # the final export removed it


def test_a_build_elsewhere_logs_beside_its_model_not_over_the_shipped_log(tmp_path, monkeypatch):
    import demo.build as build_module

    made = []
    monkeypatch.setattr(build_module, "build", made.append)
    build_module.main(["--out", str(tmp_path / "m")])
    (cfg,) = made
    assert cfg.log == tmp_path / "m.build.log" and cfg.samples == tmp_path / "m.samples.png"


def test_build_metadata_records_paths_inside_the_repo_relative_to_it():
    from demo.build import DEMO_DIR, portable_path

    assert portable_path(DEMO_DIR / "model") == "demo/model"
    assert portable_path(Path("/elsewhere/model")) == "/elsewhere/model"
    assert portable_path(3) == "3"


def test_the_shipped_metadata_names_no_absolute_path():
    from demo import DEMO_MODEL_DIR

    config = json.loads((DEMO_MODEL_DIR / METADATA_FILE).read_text())["build"]["config"]
    paths = (config["out"], config["log"], config["samples"])
    assert paths == ("demo/model", "demo/build.log", "demo/samples.png")
