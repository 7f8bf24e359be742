"""load_model on an original-layout (LDM / A1111) SD1 single-file checkpoint, offline with a config folder.

The checkpoint is a tiny random SD1 pipeline written in LDM key layout (tests/ldm_layout.py), so diffusers'
from_single_file really converts every UNet, VAE and CLIP key back; the loaded weights and a short
generation must match the original pipeline exactly.
"""

import pytest
import torch
from ldm_layout import to_ldm_state_dict
from safetensors.torch import save_file

from trainers.models import ModelLoadError, load_model
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """The tiny SD1 pipeline, a folder of its configs (no weights), and its LDM-layout state dict."""
    pipe = tiny_pipeline("sd1", seed=3)
    return pipe, configs_only(pipe, tmp_path_factory.mktemp("sd1-configs")), to_ldm_state_dict(pipe)


def configs_only(pipe, folder):
    """`pipe` saved to `folder` minus its weight files, so every loaded weight comes from the checkpoint."""
    pipe.save_pretrained(str(folder))
    for weights in [*folder.rglob("*.safetensors"), *folder.rglob("*.bin")]:
        weights.unlink()
    return folder


def assert_same_weights(loaded, pipe):
    """Every unet, vae and text_encoder tensor of `loaded` equals the original, bit for bit."""
    for name in ("unet", "vae", "text_encoder"):
        want = getattr(pipe, name).state_dict()
        got = getattr(loaded, name).state_dict()
        assert sorted(got) == sorted(want), f"{name} keys differ"
        different = [key for key in want if not torch.equal(got[key], want[key])]
        assert not different, f"{name} weights differ: {different[:5]}"


def short_image(pipe):
    """Two denoising steps at a fixed seed, as a float array: enough to exercise all three models."""
    generator = torch.Generator("cpu").manual_seed(7)
    out = pipe(
        "a photo of a cat", num_inference_steps=2, guidance_scale=3.0, generator=generator, output_type="np"
    )
    return out.images[0]


def test_ldm_layout_uses_the_original_prefixes(original):
    _pipe, _folder, state = original
    prefixes = {key.split(".")[0] for key in state}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    unet = {key.removeprefix("model.diffusion_model.") for key in state if key.startswith("model.")}
    # tiny UNet, 1 layer a level: conv_in, level 0 (resnet + attention), its downsampler, level 1 (resnet)
    assert "input_blocks.1.1.proj_in.weight" in unet and "input_blocks.2.0.op.weight" in unet
    assert not any(key.startswith("input_blocks.3.1.") for key in unet)  # level 1 is DownBlock2D
    assert "output_blocks.1.1.conv.weight" in unet  # up level 0 has no attention: its upsampler sits at .1
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state


def test_safetensors_checkpoint_loads_offline_with_config_folder(original, tmp_path):
    pipe, folder, state = original
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    model = load_model(str(checkpoint), config=str(folder))
    assert model.family == "w32"  # detect_family names SD1 layouts by text width; the tiny one is 32 wide
    assert model.source == str(checkpoint.resolve())
    assert_same_weights(model.pipe, pipe)
    assert type(model.pipe.scheduler).__name__ == type(pipe.scheduler).__name__
    assert (short_image(model.pipe) == short_image(pipe)).all()


def test_ckpt_checkpoint_loads_offline_with_config_folder(original, tmp_path):
    pipe, folder, state = original
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": state}, str(checkpoint))  # the pickled layout .ckpt files use
    try:
        model = load_model(str(checkpoint), config=str(folder))
    except ModelLoadError as exc:  # diffusers may refuse pickles it cannot load with weights_only
        pytest.skip(f"this diffusers does not load .ckpt offline: {exc}")
    assert model.family == "w32"  # detect_family names SD1 layouts by text width; the tiny one is 32 wide
    assert_same_weights(model.pipe, pipe)


def test_deeper_sd_shaped_pipeline_round_trips(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    pipe = tiny_pipeline("sd1", seed=4)
    # closer to SD 1.x than the tiny pipeline: 3 levels of 2 layers, upsamplers after attention (slot .2),
    # and a VAE with mid-block attention, which LDM stores as 1×1 convs
    pipe.unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(16, 32, 32),
        norm_num_groups=8,
        attention_head_dim=4,
        cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).eval()
    pipe.vae = AutoencoderKL(
        block_out_channels=(16, 32),
        layers_per_block=2,
        norm_num_groups=8,
        sample_size=16,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    state = to_ldm_state_dict(pipe)
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in state
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    model = load_model(str(checkpoint), config=str(configs_only(pipe, tmp_path / "configs")))
    assert_same_weights(model.pipe, pipe)
    assert (short_image(model.pipe) == short_image(pipe)).all()


# --- which pipeline a checkpoint is (SD or SDXL), for .safetensors and .ckpt alike ---

SDXL_KEYS = {
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(2),
    "conditioner.embedders.1.model.ln_final.weight": torch.zeros(2),
}


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_an_sdxl_checkpoint_is_told_from_its_key_names(original, tmp_path, suffix):
    from trainers.loaders import looks_sdxl

    _pipe, _folder, sd1_state = original
    for state, expected in ((SDXL_KEYS, True), (sd1_state, False)):
        path = tmp_path / f"model-{expected}{suffix}"
        if suffix == ".safetensors":
            save_file(state, str(path))
        else:
            torch.save({"state_dict": state}, str(path))  # .ckpt files nest their tensors
        assert looks_sdxl(path) is expected, path


def test_a_config_folder_names_the_pipeline_class(original, tmp_path):
    from trainers.loaders import looks_sdxl

    _pipe, folder, sd1_state = original
    checkpoint = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd1_state}, str(checkpoint))
    assert looks_sdxl(checkpoint, str(folder)) is False
    xl = tmp_path / "xl-configs"
    xl.mkdir()
    (xl / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    assert looks_sdxl(checkpoint, str(xl)) is True  # the folder's word wins over the keys


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch ckpt-ran-code",))


def test_a_ckpt_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": _RunsCode()}}, str(checkpoint))
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        load_model(str(checkpoint))
    assert not (tmp_path / "ckpt-ran-code").exists()


def test_tokensmith_train_learns_on_a_single_file_checkpoint_offline(original, tmp_path, monkeypatch, capsys):
    """An A1111-style .safetensors with --model-config, loaded straight in the run's bf16 precision."""
    from tinyrun import square_images

    import trainers.models
    from embeddings import Store
    from studio.cli import main

    _pipe, folder, state = original
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loads = []
    real_load = trainers.models.load_model

    def spy(spec, **kwargs):
        model = real_load(spec, **kwargs)
        loads.append((kwargs, model.pipe.unet.dtype))
        return model

    monkeypatch.setattr(trainers.models, "load_model", spy)
    images = square_images(tmp_path / "images")
    args = ["train", "--images", str(images), "--name", "ckpt-cat", "--model", str(checkpoint)]
    args += ["--model-config", str(folder), "--steps", "2", "--preview-images", "0", "--init", "a"]
    args += ["--mixed-precision", "bf16", "--home", str(tmp_path / "home")]
    assert main(args) == 0
    ((kwargs, loaded_dtype),) = loads
    assert kwargs == {"dtype": torch.bfloat16, "config": str(folder)} and loaded_dtype == torch.bfloat16
    stored = Store.for_home(tmp_path / "home").get("ckpt-cat")
    assert stored.meta["base_model"] == str(checkpoint.resolve())
    assert stored.vectors["emb_params"].dtype == torch.float32
    assert f"--model-config {folder}" in capsys.readouterr().err  # in the equivalent command


def test_the_studio_loads_a_checkpoint_file_with_its_configs(original, tmp_path, monkeypatch):
    """The sidebar's configs field reaches load_model (the studio's cached loader, called directly)."""
    from studio.app.context import _generation_session

    pipe, folder, state = original
    checkpoint = tmp_path / "studio.safetensors"
    save_file(state, str(checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    session = _generation_session(str(checkpoint), str(folder))
    assert session.model.source == str(checkpoint.resolve())
    assert_same_weights(session.model.pipe, pipe)


def test_an_image_of_a_single_file_checkpoint_replays_offline(original, tmp_path, monkeypatch):
    """generate and replay both take --model-config: the recorded model is the checkpoint file, which cannot
    be loaded offline without its configs."""
    import numpy as np
    from PIL import Image

    from studio.cli import main

    _pipe, folder, state = original
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = ["--home", str(tmp_path / "home")]
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    model = ["--model", str(checkpoint), "--model-config", str(folder)]
    assert main(["generate", "a cat", *model, "--steps", "2", "--out", str(first), *home]) == 0
    assert main(["replay", str(first), "--out", str(again), "--model-config", str(folder), *home]) == 0
    with Image.open(first) as a, Image.open(again) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_embedding_commands_that_take_a_model_take_its_configs(original, tmp_path, monkeypatch, capsys):
    """doctor, nearest and blend load --model like generate does: a single-file checkpoint offline needs
    --model-config."""
    from embeddings import Embedding, Store
    from studio.cli import main

    pipe, folder, state = original
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    home = tmp_path / "home"
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    Store.for_home(home).put(Embedding("thing", {"emb_params": torch.randn(1, width)}, {}))
    model = ["--model", str(checkpoint), "--model-config", str(folder), "--home", str(home)]
    assert main(["doctor", "thing", *model]) == 0
    assert main(["nearest", "thing", "-k", "2", *model]) == 0
    assert main(["blend", "0.5*<thing> + 0.5*cat", "--name", "mix", *model]) == 0
    assert "fits" in capsys.readouterr().out


def test_a_single_file_load_prints_no_diffusers_warnings(original, tmp_path):
    """diffusers warns about fp32 modules it then handles; the user sees tokensmith's one loading line."""
    import logging

    _pipe, folder, state = original
    checkpoint = tmp_path / "model.safetensors"
    save_file(state, str(checkpoint))
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    library = logging.getLogger("diffusers")  # its handlers print to stderr; ours only records
    library.addHandler(handler)
    try:
        load_model(str(checkpoint), config=str(folder))
    finally:
        library.removeHandler(handler)
    assert seen == []


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ({"emb_params": torch.zeros(2, 32)}, "is an embedding file, not a model: import it"),
        ({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 64)}, "is an embedding file"),
        ({"<cat-toy>": torch.zeros(32)}, "is an embedding file"),
        (
            {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)},
            r"holds no UNet weights \(model.diffusion_model.\*; it has lora_unet_down",
        ),
    ],
)
def test_a_file_that_is_no_checkpoint_is_named_as_such_before_diffusers_runs(
    tmp_path, monkeypatch, state, says
):
    """An embedding or a LoRA given as --model: said at once, not as a config or network failure later."""
    import diffusers

    def must_not_run(*args, **kwargs):
        raise AssertionError("diffusers was asked to load a file that holds no model")

    monkeypatch.setattr(diffusers.StableDiffusionPipeline, "from_single_file", must_not_run)
    path = tmp_path / "thing.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=says):
        load_model(str(path))


def test_an_a1111_pt_embedding_given_as_model_is_named_an_embedding(tmp_path):
    path = tmp_path / "bad-hands-5.pt"
    torch.save(
        {"string_to_param": {"*": torch.zeros(2, 32)}, "string_to_token": {"*": 265}, "name": "b"}, path
    )
    with pytest.raises(ModelLoadError, match=r"bad-hands-5.pt is an embedding file, not a model"):
        load_model(str(path))
