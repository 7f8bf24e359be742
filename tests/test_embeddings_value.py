"""The Embedding value: validation, family from widths, immutability, metadata as strings."""

import pytest
import torch

from embeddings import Embedding, EmbeddingFormatError, family_from_widths
from embeddings.value import family_title, is_close


def sd1(n=2, name="cat"):
    return Embedding(name, {"emb_params": torch.arange(n * 768, dtype=torch.float32).reshape(n, 768) / 1e4})


def test_family_from_widths_covers_known_and_unusual_models():
    assert family_from_widths({"emb_params": 768}) == "sd1"
    assert family_from_widths({"emb_params": 1024}) == "sd2"
    assert family_from_widths({"clip_l": 768, "clip_g": 1280}) == "sdxl"
    assert family_from_widths({"emb_params": 64}) == "w64"
    assert family_from_widths({"clip_l": 32, "clip_g": 48}) == "sdxl"  # the key layout is SDXL's
    assert family_from_widths({"t5xxl": 48, "clip_l": 32}) == "w32+48"  # encoder order, clip_l first
    assert family_title("sd2") == "SD 2.x" and family_title("w64") == "width 64"


def test_properties_describe_the_vectors():
    emb = Embedding("x", {"clip_l": torch.zeros(3, 768), "clip_g": torch.ones(3, 1280)})
    assert (emb.num_vectors, emb.widths, emb.family) == (3, {"clip_l": 768, "clip_g": 1280}, "sdxl")
    assert Embedding("y", {"emb_params": torch.zeros(1, 64)}, {"family": "demo"}).family == "demo"


def test_value_copies_its_input_so_callers_keep_their_tensors():
    source = torch.ones(2, 768)
    emb = Embedding("cat", {"emb_params": source})
    source.add_(5)
    assert torch.equal(emb.vectors["emb_params"], torch.ones(2, 768))


def test_half_precision_is_widened_exactly_and_integers_are_refused():
    half = torch.randn(2, 768).half()
    assert torch.equal(Embedding("h", {"emb_params": half}).vectors["emb_params"], half.float())
    with pytest.raises(EmbeddingFormatError, match="floating-point"):
        Embedding("i", {"emb_params": torch.zeros(2, 768, dtype=torch.int64)})


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (torch.zeros(768), "1-D"),
        (torch.zeros(1, 2, 768), "3-D"),
        (torch.full((1, 768), float("nan")), "NaN"),
        (torch.full((1, 768), float("inf")), "infinite"),
        (torch.zeros(0, 768), "not an embedding"),
        (torch.zeros(5000, 8), "not an embedding"),
    ],
)
def test_bad_tensors_get_a_clear_error(tensor, message):
    with pytest.raises(EmbeddingFormatError, match=message):
        Embedding("bad", {"emb_params": tensor})


def test_sdxl_vectors_are_in_encoder_order_whatever_order_they_came_in():
    given = {"clip_g": torch.zeros(1, 1280), "clip_l": torch.zeros(1, 768)}  # safetensors' sorted order
    emb = Embedding("xl", given)
    assert list(emb.vectors) == ["clip_l", "clip_g"] and list(emb.widths) == ["clip_l", "clip_g"]
    assert "width clip_l 768, clip_g 1280" in emb.describe()


def test_encoders_must_agree_on_vector_count():
    with pytest.raises(EmbeddingFormatError, match="same n"):
        Embedding("x", {"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(3, 1280)})


def test_operations_return_new_values_and_metadata_stays_strings():
    emb = sd1().with_meta(steps=500, parent={"method": "lerp"}, init="cat")
    assert emb.meta["steps"] == "500" and emb.meta["parent"] == '{"method": "lerp"}'
    renamed = emb.with_name("dog")
    assert (renamed.name, renamed.meta["name"], emb.name) == ("dog", "dog", "cat")
    assert "init" not in emb.with_meta(init=None).meta
    assert emb.parent == {"method": "lerp"}
    with pytest.raises(AttributeError):
        emb.name = "other"


def test_sha256_depends_on_data_not_name():
    assert sd1().sha256 == sd1(name="other").sha256
    moved = sd1().with_vectors({"emb_params": sd1().vectors["emb_params"] + 1e-3})
    assert moved.sha256 != sd1().sha256
    assert is_close(sd1(), moved, tol=1e-2) and not is_close(sd1(), moved)
