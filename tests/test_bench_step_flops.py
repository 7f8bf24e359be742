"""bench/step_flops.py counts what it says: the text encoder's FLOPs match the matmuls of its layers, and at
SD 1.5's size the encoder is under 2% of the floor (the claim the README's performance section makes)."""

import pytest
from transformers import CLIPTextConfig, CLIPTextModel

from tests.benchload import load_bench


@pytest.fixture(scope="module")
def step_flops():
    return load_bench("step_flops")


def test_encoder_flops_are_its_layers_matmuls_forward_and_backward(step_flops):
    layers, width, tokens = 2, 256, 77
    config = CLIPTextConfig(
        vocab_size=1000,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tokens,
    )
    linear = (
        layers * tokens * 12 * width * width * 2
    )  # q, k, v, out (4·D²) and the MLP (2·D·4D), 2 FLOP a MAC
    attention = layers * 2 * tokens * tokens * width * 2  # Q·Kᵀ and A·V
    # backward to the inputs only (frozen weights): the linears once more, attention's two products twice
    expected = 2 * linear + 3 * attention
    assert step_flops.encoder_flops(CLIPTextModel(config)) == pytest.approx(expected, rel=0.01)


def test_at_sd15_size_the_text_encoder_is_under_two_percent_of_the_floor(step_flops):
    unet, encoder = step_flops.real_size("sd15")  # on the meta device: shapes only
    assert unet == pytest.approx(1.67e12, rel=0.02)
    assert 0.01 < encoder / unet < 0.02
