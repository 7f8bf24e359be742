"""The CLIP validation metric (--clip-model DIR): image-image and image-text similarity, tiny random CLIP."""

import json
import math

import pytest
from PIL import Image
from tinyrun import quick_config

from trainers.tiny import tiny_pipeline, tiny_tokenizer
from trainers.trainer import train
from trainers.validation import ClipImageMetric


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    tokenizer = tiny_tokenizer()
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    text = CLIPTextConfig(
        **small,
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(**small, image_size=32, patch_size=8)
    config = CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder = tmp_path_factory.mktemp("clip") / "clip"
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "model"
    tiny_pipeline("sd1").save_pretrained(folder)
    return folder


def _shots(count=3):
    shots = []
    for i in range(count):
        image = Image.new("RGB", (16, 16), (40, 40, 40))
        image.paste((220, 60 * i, 30), (4, 4, 12, 12))
        shots.append(image)
    return shots


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(_shots()):
        image.save(folder / f"{i}.png")
    return folder


def test_scores_are_bounded_similarities_and_an_image_matches_itself(tiny_clip):
    shots = _shots()
    metric = ClipImageMetric.load(str(tiny_clip), shots, "a cat")
    scores = metric.score(shots[1:])
    assert set(scores) == {"metric", "clip_text"}
    assert all(math.isfinite(v) and -1.0 - 1e-5 <= v <= 1.0 + 1e-5 for v in scores.values())
    same = ClipImageMetric.load(str(tiny_clip), shots[:1], "a cat")
    assert same.score(shots[:1])["metric"] == pytest.approx(1.0, abs=1e-5)
    other = ClipImageMetric.load(str(tiny_clip), shots[:1], "a red square")
    assert other.score(shots[:1])["clip_text"] != pytest.approx(same.score(shots[:1])["clip_text"])


def test_a_folder_without_a_clip_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--clip-model"):
        ClipImageMetric.load(str(tmp_path), _shots(1), "a cat")


def test_training_logs_both_clip_scores_at_each_preview(
    images, tiny_model, tiny_clip, tmp_path, tokensmith_home
):
    cfg = quick_config(
        images,
        tmp_path / "run",
        name="clipcat",
        model=str(tiny_model),
        steps=2,
        batch_size=1,
        save_every=2,
        validate_every=1,
        clip_model=str(tiny_clip),
    )
    train(cfg, home=tmp_path / "home")
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    scored = {r["step"]: r for r in records if "metric" in r}
    for step in (0, 2):
        assert math.isfinite(scored[step]["metric"]) and math.isfinite(scored[step]["clip_text"])
