"""Generation review fixes: DDIM/DDPM on latents, PNDM img2img refused, --out under a file, guide modules
replayed from another folder, provenance of grids, variations and traces, and the smaller checks."""

import json
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from clirun import pixels, run
from PIL import Image

from demo import DEMO_MODEL_DIR
from embeddings.errors import TokensmithError
from studio.generation import GenerateRequest, InitImageError, ReplayError, read_provenance, replay, save_png

needs_demo = pytest.mark.skipif(
    not (DEMO_MODEL_DIR / "model_index.json").is_file(),
    reason="demo/model is not built yet (python -m demo.build)",
)
MISSING_MODEL = "/nonexistent/model"  # a check that runs before the model loads is the error said


@pytest.fixture(scope="module")
def demo_session():
    from studio.generation import Session

    return Session("demo")


@pytest.fixture
def init_png(tmp_path):
    path = tmp_path / "init.png"
    Image.new("RGB", (16, 16), "red").save(path)
    return path


# --- DDIM and DDPM do not clip the latent ---


@needs_demo
@pytest.mark.parametrize(("name", "cls"), [("ddim", "DDIMScheduler"), ("ddpm", "DDPMScheduler")])
def test_ddim_and_ddpm_give_diffusers_pipeline_pixels_on_the_demo_world(demo_session, name, cls):
    import diffusers
    from diffusers import StableDiffusionPipeline

    from demo.judge import judge

    pipe = demo_session.model.pipe
    [result] = demo_session.generate(GenerateRequest("a red circle", seed=5, scheduler=name, steps=8))
    scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)
    reference = StableDiffusionPipeline(**{**pipe.components, "scheduler": scheduler})
    reference.set_progress_bar_config(disable=True)
    assert reference.scheduler.config.clip_sample is False  # the pipeline turns the class default off
    made = reference(
        "a red circle", num_inference_steps=8, guidance_scale=4.0, output_type="np",
        generator=torch.Generator("cpu").manual_seed(5),
    ).images[0]  # fmt: skip
    assert np.array_equal(np.asarray(result.image), (made * 255).round().astype(np.uint8))
    assert judge(result.image).colour == "red"  # it was a faint purple blob with x̂0 clipped
    assert result.provenance["clip_sample"] is False


@needs_demo
def test_a_ddim_image_made_with_clipping_replays_with_it(demo_session, tmp_path):
    request = GenerateRequest("a red circle", seed=1, scheduler="ddim", steps=6)
    [old] = demo_session.generate(replace(request, clip_sample=None))  # as tokensmith sampled DDIM before
    [new] = demo_session.generate(request)
    assert not np.array_equal(np.asarray(old.image), np.asarray(new.image))
    prov = {k: v for k, v in old.provenance.items() if k != "clip_sample"}  # made before it was recorded
    again = replay(save_png(replace(old, provenance=prov), tmp_path / "old.png"), session=demo_session)
    assert np.array_equal(np.asarray(again.image), np.asarray(old.image))


# --- PNDM cannot start from an init image ---


@pytest.mark.parametrize(
    "argv",
    [
        ("generate", "a blue star", "--scheduler", "pndm", "--init-image", "{init}", "--out", "{tmp}/p.png"),
        ("grid", "a star", "--sweep", "scheduler=dpm,pndm", "--init-image", "{init}", "--out", "{tmp}/g.png"),
        ("grid", "a star", "--scheduler", "pndm", "--sweep", "strength=0.3,0.6", "--init-image", "{init}",
         "--out", "{tmp}/s.png"),
        ("variations", "--prompts", "a star", "--scheduler", "pndm", "--init-image", "{init}", "--out",
         "{tmp}/v.png"),
    ],
)  # fmt: skip
def test_pndm_with_an_init_image_is_refused_before_the_model_loads(argv, init_png, tmp_path, capsys):
    argv = [a.format(init=init_png, tmp=tmp_path) for a in argv]
    code, _out, err = run(capsys, *argv, "--model", MISSING_MODEL)
    assert code == 1
    assert "scheduler pndm cannot start from an init image" in err and "dpm, ddim, euler" in err, err
    assert "pndm" not in err.split("honours strength:")[1]


def test_the_python_api_refuses_pndm_img2img_but_replays_an_image_made_so(tiny_session, init_png, tmp_path):
    request = GenerateRequest("a circle", scheduler="pndm", steps=10, init_image=init_png, strength=0.3)
    with pytest.raises(InitImageError, match="honours strength: dpm"):
        tiny_session.generate(request)
    [made] = tiny_session.generate(request, as_recorded=True)  # as images made before the refusal were
    again = replay(save_png(made, tmp_path / "made.png"), session=tiny_session)
    assert np.array_equal(np.asarray(again.image), np.asarray(made.image))


# --- --out under a file ---


@pytest.mark.parametrize(
    ("command", "out", "force"),
    [
        ("generate", "notes", False),
        ("generate", "notes", True),
        ("generate", "notes/x.png", True),
        ("generate", "notes/deeper/", False),
        ("grid", "notes/g.png", False),
        ("variations", "notes/v.png", False),
        ("schedule", "notes/s.png", False),
    ],
)
def test_out_under_a_file_is_refused_before_the_model_loads(command, out, force, tmp_path, init_png, capsys):
    (tmp_path / "notes").write_text("keep")
    argv = {
        "generate": ["generate", "a red circle"],
        "grid": ["grid", "a red circle", "--sweep", "guidance=1,4"],
        "variations": ["variations", "--prompts", "a star", "--init-image", init_png],
        "schedule": ["schedule"],
    }[command]
    code, _out, err = run(capsys, *argv, "--out", f"{tmp_path}/{out}", "--model", MISSING_MODEL,
                          *(["--force"] if force else []))  # fmt: skip
    assert code == 1
    assert f"{tmp_path}/notes is a file, not a folder: choose another --out" in err, err
    assert (tmp_path / "notes").read_text() == "keep"


def test_a_folder_that_became_a_file_is_not_reported_as_a_taken_name(tiny_session, tmp_path):
    [result] = tiny_session.generate(GenerateRequest("a circle", steps=2))
    (tmp_path / "notes").write_text("keep")
    with pytest.raises(NotADirectoryError, match="notes is a file, not a folder"):
        save_png(result, tmp_path / "notes" / "x.png", overwrite=False)  # was FileExistsError: "--force"


# --- guide modules replay from another folder ---


def _guided_image(session, folder, monkeypatch, name):
    """An image made with the guide module `name` from `folder`, then the folder off the import path."""
    folder.mkdir()
    (folder / f"{name}.py").write_text("def more_blue(image):\n    return (image[:, 2] - 0.9).abs().mean()\n")
    monkeypatch.chdir(folder)
    request = GenerateRequest("a circle", steps=2, guides=(f"module={name}:more_blue,scale=0.8",))
    [made] = session.generate(request)
    path = save_png(made, folder / "bluer.png")
    monkeypatch.chdir(folder.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(folder), "")])
    monkeypatch.delitem(sys.modules, name)
    return made, path


def test_a_guide_module_image_replays_from_another_folder(tiny_session, tmp_path, monkeypatch):
    made, path = _guided_image(tiny_session, tmp_path / "w", monkeypatch, "review_losses_a")
    again = replay(path, session=tiny_session, allow_guide_modules=True)  # was: "... cannot be found"
    assert np.array_equal(np.asarray(again.image), np.asarray(made.image))
    assert str(tmp_path / "w") not in sys.path  # the recorded folder was on the path for the replay only


def test_a_guide_module_that_is_gone_says_where_to_replay_from(tiny_session, tmp_path, monkeypatch):
    _made, path = _guided_image(tiny_session, tmp_path / "w", monkeypatch, "review_losses_b")
    (tmp_path / "w" / "review_losses_b.py").rename(tmp_path / "elsewhere.py")
    with pytest.raises(ReplayError, match=r"run replay from the folder that holds review_losses_b\.py, or"):
        replay(path, session=tiny_session, allow_guide_modules=True, precise=True)


# --- grids, variations and traces record their images ---


def test_a_grid_records_its_cells_and_replays_one(tiny_model_dir, tmp_path, capsys):
    grid = tmp_path / "cfg.png"
    argv = ["grid", "a red circle", "--model", tiny_model_dir, "--steps", "2", "--seeds", "0-1"]
    assert run(capsys, *argv, "--sweep", "guidance=1,4", "--out", grid)[0] == 0
    code, _out, err = run(capsys, "replay", grid, "--out", tmp_path / "r.png")
    assert code == 1 and "is a grid of 4 images, not one image: replay one of them with --cell K" in err, err
    code, out, err = run(capsys, "replay", grid, "--cell", "3", "--out", tmp_path / "c3.png")
    assert code == 0, err
    assert "pixel-identical to the original's cell 3" in out
    prov = read_provenance(tmp_path / "c3.png")
    assert (prov["guidance"], prov["seed"]) == (4.0, 0)  # row 2, column 1
    assert run(capsys, "replay", grid, "--cell", "5", "--out", tmp_path / "c5.png")[2].count("has no cell 5")


def test_variations_and_a_trace_record_their_images(tiny_model_dir, init_png, tmp_path, capsys):
    sheet = tmp_path / "var.png"
    argv = ["variations", "--prompts", "a red square|a blue star", "--init-image", init_png, "--steps", "4"]
    assert run(capsys, *argv, "--model", tiny_model_dir, "--out", sheet)[0] == 0
    chunk = json.loads(Image.open(sheet).text["tokensmith"])
    assert chunk["sheet"] == "variations" and len(chunk["cells"]) == 2  # the init image column is not a cell
    code, out, err = run(capsys, "replay", sheet, "--cell", "2", "--out", tmp_path / "v2.png")
    assert code == 0 and "pixel-identical" in out, err
    assert read_provenance(tmp_path / "v2.png")["prompt"] == "a blue star"
    trace = tmp_path / "tr"
    argv = ["generate", "a circle", "--model", tiny_model_dir, "--steps", "3", "--trace", trace]
    assert run(capsys, *argv, "--out", tmp_path / "t.png")[0] == 0
    strip = trace / "t-trace.png"
    with pytest.raises(ReplayError, match="is a trace strip, not an image: replay the image it traces with"):
        read_provenance(strip)
    code, out, _err = run(capsys, "replay", strip, "--cell", "1", "--out", tmp_path / "t2.png")
    assert code == 0 and "re-made the image the trace strip traces" in out
    assert np.array_equal(pixels(tmp_path / "t2.png"), pixels(tmp_path / "t.png"))


# --- smaller checks ---


def test_trace_steps_without_trace_is_a_usage_error(tmp_path, capsys):
    code, _out, err = run(capsys, "generate", "a circle", "--trace-steps", "0,5", "--out", tmp_path / "y.png")
    assert code == 2 and "--trace-steps needs --trace DIR" in err


def test_schedule_table_reports_the_schedulers_own_sigma_and_timestep():
    from studio.generation import make_scheduler, schedule_curves
    from trainers.tiny import tiny_pipeline

    config = dict(tiny_pipeline("sd1").scheduler.config, timestep_spacing="linspace")
    scheduler = make_scheduler("euler", config)
    table = schedule_curves(scheduler, 30).table()
    sigmas = [float(s) for s in scheduler.sigmas[:-1]]
    assert [row["k_sigma"] for row in table] == sigmas
    assert [row["timestep"] for row in table] == [float(t) for t in scheduler.timesteps]
    assert any(isinstance(row["timestep"], float) for row in table)  # 964.55..., not rounded to 965


def test_a_transparent_init_image_is_read_on_gray(tmp_path):
    from studio.generation.img2img import load_init_image

    logo = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent black, with an opaque red centre
    logo[4:12, 4:12] = (255, 0, 0, 255)
    Image.fromarray(logo, "RGBA").save(tmp_path / "logo.png")
    image, _sha = load_init_image(tmp_path / "logo.png", (16, 16))
    assert image.getpixel((0, 0)) == (128, 128, 128) and image.getpixel((8, 8)) == (255, 0, 0)
    assert load_init_image(tmp_path / "logo.png", (16, 16), reader=2)[0].getpixel((0, 0)) == (0, 0, 0)


@pytest.mark.parametrize(
    ("guide", "says"),
    [("--guide", "color=chartreuse"), ("--guide", "match=nothere.png"), ("--guide-module", "no_such_mod:f")],
)
def test_guides_are_checked_before_the_model_loads(guide, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _out, err = run(capsys, "generate", "a circle", guide, says, "--model", MISSING_MODEL)
    assert code == 1 and MISSING_MODEL not in err and says.split("=")[-1].split(":")[0] in err, err


def test_size_steps_and_guidance_errors_say_what_to_give(tiny_session, tmp_path, capsys):
    multiple = tiny_session._size_multiple()
    odd = multiple + multiple // 2  # between two sizes the model takes
    with pytest.raises(TokensmithError, match=rf"--width {odd} .* \({multiple} or {2 * multiple}\)"):
        tiny_session.generate(GenerateRequest("a circle", steps=1, width=odd))
    with pytest.raises(TokensmithError, match="--guidance must be a finite number"):
        tiny_session.generate(GenerateRequest("a circle", steps=1, guidance=float("inf")))
    code, _out, err = run(capsys, "grid", "a circle", "--sweep", "steps=0,2", "--out", tmp_path / "g.png",
                          "--model", MISSING_MODEL)  # fmt: skip
    assert code == 1 and "--sweep steps: '0' is not a valid steps: use 1 to 1000" in err, err
