"""trainers/models.py: loading every kind of --model, family detection, clear errors, tiny pipelines."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from trainers import loaders, models, network
from trainers.models import DEMO_MARKER, ModelLoadError, demo_model_dir, detect_family, load_model
from trainers.tiny import tiny_pipeline, tiny_tokenizer


@pytest.fixture(scope="module")
def sd1_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd1")
    tiny_pipeline("sd1").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sdxl")
    tiny_pipeline("sdxl").save_pretrained(folder)
    return folder


def _image(pipe, prompt="a red circle"):
    generator = torch.Generator().manual_seed(0)
    out = pipe(prompt, num_inference_steps=2, generator=generator, height=16, width=16, output_type="np")
    return out.images[0]


def test_tiny_tokenizer_keeps_its_words_whole_and_spells_unknown_words():
    tokenizer = tiny_tokenizer()
    assert tokenizer.tokenize("a photo of a purple triangle") == [
        "a</w>",
        "photo</w>",
        "of</w>",
        "a</w>",
        "purple</w>",
        "triangle</w>",
    ]
    assert "".join(tokenizer.tokenize("zebra")).replace("</w>", "") == "zebra"


def test_tiny_pipelines_are_deterministic_for_a_seed():
    first, again, other = (tiny_pipeline("sd1", seed=s).unet.conv_in.weight for s in (3, 3, 4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_tiny_pipeline_rejects_unknown_family():
    with pytest.raises(ValueError, match="'sd1' or 'sdxl'"):
        tiny_pipeline("sd3")


def test_detect_family_by_encoders_and_width():
    assert detect_family(tiny_pipeline("sdxl")) == "sdxl"
    assert detect_family(tiny_pipeline("sd1")) == "w32"


def test_detect_family_reads_width_768_as_sd1_and_1024_as_sd2():
    pipe = tiny_pipeline("sd1")
    for width, family in ((768, "sd1"), (1024, "sd2")):
        pipe.text_encoder.set_input_embeddings(torch.nn.Embedding(len(pipe.tokenizer), width))
        assert detect_family(pipe) == family


def test_load_folder_round_trips_the_pipeline(sd1_folder):
    model = load_model(str(sd1_folder))
    assert model.family == "w32"
    assert model.source == str(sd1_folder)
    assert model.prediction_type == "epsilon"
    assert model.resolution == 16
    assert model.widths == {"emb_params": 32}
    [(key, tokenizer, text_encoder)] = model.encoders
    assert (
        key == "emb_params" and tokenizer is model.pipe.tokenizer and text_encoder is model.pipe.text_encoder
    )
    assert (_image(model.pipe) == _image(tiny_pipeline("sd1"))).all()


def test_load_sdxl_folder_gives_two_encoders(sdxl_folder):
    model = load_model(str(sdxl_folder))
    assert model.family == "sdxl" and model.is_sdxl
    assert [key for key, _t, _e in model.encoders] == ["clip_l", "clip_g"]
    assert model.widths == {"clip_l": 32, "clip_g": 48}
    assert type(model.pipe).__name__ == "StableDiffusionXLPipeline"


def test_folder_with_demo_marker_is_the_demo_family(sd1_folder, tmp_path):
    copy = tmp_path / "demo-copy"
    shutil.copytree(sd1_folder, copy)
    (copy / DEMO_MARKER).write_text(json.dumps({"world": "tokensmith demo"}))
    assert load_model(str(copy)).family == "demo"


def test_copy_of_the_demo_folder_is_the_demo_family(sd1_folder, tmp_path):
    copy = tmp_path / "demo-world-copy"
    shutil.copytree(sd1_folder, copy)
    (copy / "world.json").write_text(json.dumps({"name": "tokensmith demo world"}))
    assert load_model(str(copy)).family == "demo"
    (copy / "world.json").write_text(json.dumps({"name": "another world"}))
    assert load_model(str(copy)).family == "w32"


def test_missing_path_gives_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not 'demo', an existing folder or file, or a hub id"):
        load_model(str(tmp_path / "nowhere"))


def test_folder_without_model_index_gives_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers model folder"):
        load_model(str(tmp_path))


def test_broken_folder_gives_clear_error(sd1_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd1_folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ModelLoadError, match="could not load the diffusers model"):
        load_model(str(broken))


def test_truncated_weights_give_clear_error(sd1_folder, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(sd1_folder, broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="could not load"):
        load_model(str(broken))


def test_hub_id_offline_and_not_cached_gives_clear_error():
    with pytest.raises(ModelLoadError, match="not in the local cache and HF_HUB_OFFLINE=1"):
        load_model("nobody-here/not-a-cached-model")


def test_hub_id_without_a_network_says_the_hub_is_unreachable(monkeypatch):
    import diffusers

    class ConnectError(Exception):  # httpx's: not an OSError
        pass

    def unreachable(*args, **kwargs):
        try:
            raise ConnectError("[Errno -2] Name or service not known")
        except ConnectError:
            raise OSError(
                "nobody-here/not-cached does not appear to have a file named model_index.json"
            ) from None

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(loaders, "hub_unreachable", lambda: None)  # the name resolves; connecting fails
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", unreachable)
    with pytest.raises(
        ModelLoadError, match=r"cannot reach the Hugging Face hub .*ConnectError: \[Errno -2\]"
    ):
        load_model("nobody-here/not-cached")


def test_a_hub_id_whose_host_does_not_resolve_is_looked_up_in_the_cache_only(monkeypatch):
    """No 23 s of huggingface_hub's retries: one DNS lookup, then the cache (as huggingface_hub ends up)."""
    import socket

    import diffusers

    asked = []

    def cache_only(repo_id, local_files_only=False, **kwargs):
        asked.append(local_files_only)
        raise OSError(f"{repo_id} is not in the cache")

    def no_dns(host, port, *args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    for name in network.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "load_config", cache_only)
    with pytest.raises(ModelLoadError, match=r"cannot resolve huggingface.co: \[Errno -2\] Name or service"):
        load_model("nobody-here/not-cached")
    assert asked == [True]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # the proxy resolves names: not asked
    assert network.hub_unreachable() is None


def test_single_file_without_configs_offline_says_what_to_do(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, str(checkpoint))
    with pytest.raises(ModelLoadError, match="single-file loading needs the model's configs"):
        load_model(str(checkpoint))


def test_other_files_are_not_models(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="is not a model"):
        load_model(str(text))


def test_empty_spec_is_an_error():
    with pytest.raises(ModelLoadError, match="empty --model"):
        load_model("  ")


@pytest.mark.skipif(
    not (demo_model_dir() / "model_index.json").is_file(),
    reason="demo/model is not built yet (python -m demo.build)",
)
def test_demo_loads_as_demo_family():
    model = load_model("demo")
    assert model.family == "demo" and model.source == "demo"
    assert type(model.pipe).__name__ == "StableDiffusionPipeline"
    assert model.prediction_type == "v_prediction"


def test_demo_missing_gives_build_hint(monkeypatch, tmp_path):
    import demo

    monkeypatch.setattr(demo, "DEMO_MODEL_DIR", tmp_path / "no-model", raising=False)
    with pytest.raises(ModelLoadError, match=r"python -m demo\.build"):
        load_model("demo")


def test_relative_folder_is_recorded_as_an_absolute_source(sd1_folder, monkeypatch):
    monkeypatch.chdir(sd1_folder.parent)
    model = load_model(sd1_folder.name)
    assert model.source == str(sd1_folder.resolve())


def test_loading_says_nothing_about_torchvision_in_a_fresh_process():
    """transformers warns once per image processor diffusers imports when torchvision is missing; the
    loader looks them up quietly first, so a user's terminal shows no such line."""
    code = "from trainers.models import load_model; load_model('demo')"
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    assert "torchvision" not in done.stderr + done.stdout


def test_planned_encoder_keys_are_read_without_loading(sd1_folder, sdxl_folder, tmp_path):
    assert models.planned_encoder_keys("demo") == ("emb_params",)
    assert models.planned_encoder_keys(str(sd1_folder)) == ("emb_params",)
    assert models.planned_encoder_keys(str(sdxl_folder)) == ("clip_l", "clip_g")
    checkpoint = tmp_path / "xl.safetensors"  # key names say SDXL: a second text encoder
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)}, str(checkpoint))
    assert models.planned_encoder_keys(str(checkpoint)) == ("clip_l", "clip_g")
    assert models.planned_encoder_keys("owner/some-model") is None  # only loading can tell
    assert models.planned_encoder_keys(str(tmp_path / "missing")) is None
