"""bench/real_architecture.py builds what it says: on the meta device (shapes only, no memory), its SD 1.5,
SD 2.x and SDXL pipelines have the published parameter counts, the family the loader would detect, and each
family's prediction type."""

import pytest
import torch

from tests.benchload import load_bench
from trainers.models import detect_family


@pytest.fixture(scope="module")
def bench():
    return load_bench("real_architecture")


def millions(module) -> int:
    return round(sum(p.numel() for p in module.parameters()) / 1e6)


# UNet, text encoder(s), VAE in millions of parameters: SD 1.5 and SD 2.x UNets 860 M / 866 M, CLIP ViT-L
# 123 M, OpenCLIP ViT-H without its last layer 340 M, SDXL's UNet 2,567 M and OpenCLIP ViT-bigG 695 M.
PUBLISHED = {
    "sd15": ("sd1", 860, [123], 84, "epsilon"),
    "sd2": ("sd2", 866, [340], 84, "v_prediction"),
    "sdxl": ("sdxl", 2567, [123, 695], 84, "epsilon"),
}


@pytest.mark.parametrize("family", sorted(PUBLISHED))
def test_the_pipelines_are_the_published_architectures(bench, family):
    detected, unet, encoders, vae, prediction = PUBLISHED[family]
    with torch.device("meta"):
        pipe = bench.real_pipeline(family, 64)
    text_encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    assert detect_family(pipe) == detected
    assert millions(pipe.unet) == unet
    assert [millions(te) for te in text_encoders] == encoders
    assert millions(pipe.vae) == vae
    assert pipe.scheduler.config.prediction_type == prediction
    assert pipe.unet.config.sample_size == 8  # 64 px / 8


def test_step_seconds_is_the_median_gap_after_the_first_step(bench, tmp_path):
    log = tmp_path / "progress.jsonl"
    lines = [{"step": 0, "elapsed": 0.0}, {"step": 1, "elapsed": 9.0}, {"step": 2, "elapsed": 11.0}]
    lines += [{"step": 3, "elapsed": 14.0}, {"step": 4, "elapsed": 16.5}, {"event": "done"}]
    log.write_text("\n".join(map(str, lines)).replace("'", '"'))
    assert bench.step_seconds(tmp_path) == 2.5  # gaps 2.0, 3.0, 2.5 after the warm-up step


def test_a_step_that_also_rendered_previews_is_not_counted_as_step_time(bench, tmp_path):
    """--previews N renders samples at the last step: 14 s of previews is not a 14 s step."""
    log = tmp_path / "progress.jsonl"
    lines = [{"step": 0, "elapsed": 0.0}, {"step": 1, "elapsed": 9.0}, {"step": 2, "elapsed": 12.0}]
    lines += [{"step": 3, "elapsed": 26.0, "metric": 0.5}, {"event": "done"}]
    log.write_text("\n".join(map(str, lines)).replace("'", '"'))
    assert bench.step_seconds(tmp_path) == 3.0
