"""Blends (lerp, slerp, keep_norm, padding, per encoder, lineage), words, nearest tokens, norms."""

import json
import math

import pytest
import torch

from embeddings import Embedding, EmbeddingFormatError
from embeddings.maths import blend, nearest_tokens, norm_report, slerp, word_operand
from trainers.models import pipeline_encoders
from trainers.tiny import tiny_pipeline


def e(name, rows, key="emb_params"):
    return Embedding(name, {key: torch.tensor(rows, dtype=torch.float32)})


def test_lerp_is_the_weighted_sum_and_records_lineage():
    cat, dog = e("cat", [[1.0, 0.0]]), e("dog", [[0.0, 2.0]])
    out = blend([(cat, 0.5), (dog, 0.25)], "catdog")
    assert out.vectors["emb_params"].tolist() == [[0.5, 0.5]]
    parent = json.loads(out.meta["parent"])
    assert parent["method"] == "lerp" and [o["name"] for o in parent["operands"]] == ["cat", "dog"]
    assert [o["weight"] for o in parent["operands"]] == [0.5, 0.25]
    assert parent["operands"][0]["sha256"] == cat.sha256


def test_shorter_operands_are_zero_padded_to_the_longest():
    three, one = e("three", [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]), e("one", [[10.0, 0.0]])
    out = blend([(three, 1.0), (one, 1.0)], "mix")
    assert out.vectors["emb_params"].tolist() == [[11.0, 1.0], [2.0, 2.0], [3.0, 3.0]]


def test_slerp_follows_the_arc_between_two_vectors():
    a, b = e("a", [[1.0, 0.0]]), e("b", [[0.0, 1.0]])
    mid = blend([(a, 0.5), (b, 0.5)], "mid", method="slerp").vectors["emb_params"][0]
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]), atol=1e-6)
    assert float(mid.norm()) == pytest.approx(1.0, abs=1e-6)  # lerp would give norm 0.707
    same = slerp(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0]]), 0.5)
    assert same.tolist() == [[1.5, 0.0]]  # aligned vectors fall back to lerp
    with pytest.raises(EmbeddingFormatError, match="exactly two"):
        blend([(a, 0.3), (b, 0.3), (a, 0.4)], "x", method="slerp")


def test_keep_norm_restores_the_operands_mean_norm():
    a, b = e("a", [[3.0, 0.0]]), e("b", [[0.0, 5.0]])
    plain = blend([(a, 0.5), (b, 0.5)], "p").vectors["emb_params"][0]
    kept = blend([(a, 0.5), (b, 0.5)], "k", keep_norm=True).vectors["emb_params"][0]
    assert float(plain.norm()) < 3.0
    assert float(kept.norm()) == pytest.approx(4.0, abs=1e-5)
    assert torch.allclose(kept / kept.norm(), plain / plain.norm())


def test_keep_norm_weighs_a_subtracted_operand_by_the_size_of_its_weight():
    a, b = e("a", [[3.0, 0.0]]), e("b", [[0.0, 5.0]])
    kept = blend([(a, 1.0), (b, -0.3)], "k", keep_norm=True).vectors["emb_params"][0]
    assert float(kept.norm()) == pytest.approx((3.0 + 0.3 * 5.0) / 1.3, abs=1e-5)  # |w|-weighted mean norm
    assert kept[0] > 0 and kept[1] < 0  # still a - 0.3 b in direction


def test_sdxl_blends_act_per_encoder():
    x = Embedding("x", {"clip_l": torch.ones(1, 4), "clip_g": torch.full((1, 6), 2.0)})
    y = Embedding("y", {"clip_l": torch.zeros(1, 4), "clip_g": torch.full((1, 6), 4.0)})
    out = blend([(x, 0.5), (y, 0.5)], "xy")
    assert out.vectors["clip_l"].tolist() == [[0.5] * 4] and out.vectors["clip_g"].tolist() == [[3.0] * 6]


def test_mismatched_models_are_refused_in_words():
    with pytest.raises(EmbeddingFormatError, match=r"SD 1\.x.*SD 2\.x"):
        blend([(e("a", [[0.0] * 768]), 1.0), (e("b", [[0.0] * 1024]), 1.0)], "x")


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline("sd1", seed=0)


def test_words_blend_like_the_keyboard_typewriter_experiment(pipe):
    encoders = pipeline_encoders(pipe)
    keyboard, typewriter = word_operand("keyboard", encoders), word_operand("typewriter", encoders)
    out = blend([(keyboard, 0.6), (typewriter, 0.4)], "keywriter")
    weight = pipe.text_encoder.get_input_embeddings().weight
    ids = [pipe.tokenizer.convert_tokens_to_ids(w + "</w>") for w in ("keyboard", "typewriter")]
    assert torch.allclose(out.vectors["emb_params"][0], 0.6 * weight[ids[0]] + 0.4 * weight[ids[1]])
    assert json.loads(out.meta["parent"])["operands"][0]["kind"] == "word"


def test_nearest_tokens_find_the_word_a_vector_came_from(pipe):
    encoders = pipeline_encoders(pipe)
    cat = word_operand("cat", encoders).vectors["emb_params"]
    (neighbours,) = nearest_tokens(cat, pipe.tokenizer, pipe.text_encoder, k=3)
    assert neighbours[0].token == "cat" and neighbours[0].cosine == pytest.approx(1.0, abs=1e-4)
    assert len(neighbours) == 3 and neighbours[0].cosine >= neighbours[1].cosine >= neighbours[2].cosine


def test_norm_report_compares_with_the_vocabulary(pipe):
    weight = pipe.text_encoder.get_input_embeddings().weight
    report = norm_report(weight[:1] * 3, pipe.tokenizer, pipe.text_encoder)
    assert report["norms"][0] == pytest.approx(3 * float(weight[0].norm()), rel=1e-3)
    assert report["vocab"]["min"] <= report["vocab"]["mean"] <= report["vocab"]["max"]


def test_keep_norm_ignores_zero_padding():
    long, short = e("long", [[3.0, 0.0], [0.0, 4.0]]), e("short", [[0.0, 5.0]])
    kept = blend([(long, 0.5), (short, 0.5)], "k", keep_norm=True).vectors["emb_params"]
    assert float(kept[0].norm()) == pytest.approx(4.0, abs=1e-5)  # mean of 3 and 5
    assert kept[1].tolist() == pytest.approx([0.0, 4.0], abs=1e-5)  # only `long` has a second vector


def test_num_vectors_crops_or_pads_the_result():
    three = e("three", [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert blend([(three, 1.0)], "c", num_vectors=2).vectors["emb_params"].tolist() == [
        [1.0, 1.0],
        [2.0, 2.0],
    ]
    padded = blend([(three, 1.0)], "p", num_vectors=4)
    assert padded.num_vectors == 4 and padded.vectors["emb_params"][3].tolist() == [0.0, 0.0]
    assert json.loads(padded.meta["parent"])["num_vectors"] == 4
    for bad in (5000, 0, -1):  # 0 is not "the default"
        with pytest.raises(EmbeddingFormatError, match=r"1\.\.1024 vectors"):
            blend([(three, 1.0)], "x", num_vectors=bad)


def test_infinite_weights_and_overflowing_blends_are_refused_in_words():
    one = e("one", [[1.0, 1.0]])
    with pytest.raises(EmbeddingFormatError, match="not a finite number"):
        blend([(one, float("inf"))], "x")
    with pytest.raises(EmbeddingFormatError, match="overflows"):
        blend([(e("big", [[3e38, 3e38]]), 1e10)], "x")


def _angle(u, v):
    return math.degrees(math.acos(float(u @ v) / float(u.norm() * v.norm())))


def test_slerp_turns_t_of_the_angle_when_the_norms_differ():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 4.0]])  # 90 degrees apart, norms 1 and 4
    for t in (0.1, 0.3, 0.5):
        out = slerp(a, b, t)[0]
        assert _angle(out, a[0]) == pytest.approx(90 * t, abs=1e-3)
        assert float(out.norm()) == pytest.approx((1 - t) * 1 + t * 4, abs=1e-5)  # norms go linearly


def test_slerp_takes_the_present_vector_times_its_weight_where_the_other_is_padding():
    long, short = e("long", [[1.0, 0.0], [0.0, 2.0]]), e("short", [[0.0, 1.0]])
    out = blend([(long, 0.7), (short, 0.3)], "mix", method="slerp").vectors["emb_params"]
    assert out[1].tolist() == pytest.approx([0.0, 0.7 * 2.0])  # as lerp: short contributes nothing there


def test_slerp_version_1_is_the_first_slerp_for_replays():
    a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 4.0]])
    omega = math.pi / 2
    old = [math.sin(0.7 * omega), 4 * math.sin(0.3 * omega)]  # sin((1-t)Ω)·a + sin(tΩ)·b, raw vectors
    assert slerp(a, b, 0.3, version=1)[0].tolist() == pytest.approx(old)
    pair = [(e("a", a.tolist()), 0.7), (e("b", b.tolist()), 0.3)]
    assert blend(pair, "x", method="slerp", slerp_version=1).vectors["emb_params"][0].tolist() == (
        pytest.approx(old)
    )
