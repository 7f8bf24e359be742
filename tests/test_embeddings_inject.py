"""Injection: token naming, prompt expansion, install/re-install/uninstall, parity with diffusers' loader."""

import pytest
import torch

from embeddings import (
    Embedding,
    InstallError,
    expand_prompt,
    install,
    installed_tokens,
    token_names,
    uninstall,
    word_vectors,
)
from trainers.models import pipeline_encoders
from trainers.tiny import tiny_pipeline


def rand(name, n, width=32, seed=0, keys=("emb_params",), widths=None):
    gen = torch.Generator().manual_seed(seed)
    widths = widths or {k: width for k in keys}
    return Embedding(name, {k: torch.randn(n, w, generator=gen) for k, w in widths.items()})


@pytest.fixture(scope="module")
def sd1_pipe():
    return tiny_pipeline("sd1", seed=0)


def fresh_sd1():
    return tiny_pipeline("sd1", seed=0)


def encode(pipe, prompt, which=1):
    tokenizer = pipe.tokenizer if which == 1 else pipe.tokenizer_2
    encoder = pipe.text_encoder if which == 1 else pipe.text_encoder_2
    ids = tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state  # (1, T, width)


def test_token_names_and_prompt_expansion_read_as_data():
    cat3 = rand("cat", 3)
    assert token_names(cat3) == ["<cat>", "<cat>_1", "<cat>_2"]
    assert expand_prompt("a <cat> on a mat", [cat3]) == "a <cat> <cat>_1 <cat>_2 on a mat"
    assert (
        expand_prompt("a <cat> <cat>_1 <cat>_2, <cat>", [cat3])
        == "a <cat> <cat>_1 <cat>_2, <cat> <cat>_1 <cat>_2"
    )
    assert expand_prompt("a <cats> <dog>", [cat3]) == "a <cats> <dog>"
    assert expand_prompt("<a.b>", [rand("a.b", 2)]) == "<a.b> <a.b>_1"


def test_install_writes_vectors_into_the_input_embedding_rows():
    pipe = fresh_sd1()
    cat = rand("cat", 3)
    tokens = install(cat, pipeline_encoders(pipe))
    ids = pipe.tokenizer.convert_tokens_to_ids(tokens)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], cat.vectors["emb_params"])
    assert pipe.tokenizer(expand_prompt("a <cat>", [cat]), add_special_tokens=False).input_ids[1:] == ids


def test_reinstall_replaces_vectors_and_adjusts_the_token_count():
    pipe = fresh_sd1()
    encoders = pipeline_encoders(pipe)
    install(rand("cat", 3, seed=1), encoders)
    install(rand("dog", 2, seed=2), encoders)
    swapped = rand("cat", 1, seed=3)
    install(swapped, encoders)
    assert installed_tokens("cat", pipe.tokenizer) == ["<cat>"]
    weight = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(weight[pipe.tokenizer.convert_tokens_to_ids(["<cat>"])], swapped.vectors["emb_params"])
    dog_ids = pipe.tokenizer.convert_tokens_to_ids(token_names(rand("dog", 2)))
    assert torch.equal(weight[dog_ids], rand("dog", 2, seed=2).vectors["emb_params"])
    assert weight.shape[0] == len(pipe.tokenizer)


def test_uninstall_removes_tokens_rows_and_allows_reinstall():
    pipe = fresh_sd1()
    encoders = pipeline_encoders(pipe)
    base_rows = pipe.text_encoder.get_input_embeddings().weight.shape[0]
    before = encode(pipe, "a cat")
    install(rand("cat", 2), encoders)
    dog = rand("dog", 2, seed=5)
    install(dog, encoders)
    assert uninstall("cat", encoders) == ["<cat>", "<cat>_1"]
    assert installed_tokens("cat", pipe.tokenizer) == []
    assert pipe.text_encoder.get_input_embeddings().weight.shape[0] == base_rows + 2
    dog_ids = pipe.tokenizer.convert_tokens_to_ids(token_names(dog))
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[dog_ids], dog.vectors["emb_params"])
    assert torch.equal(encode(pipe, "a cat"), before)
    install(
        rand("cat", 2), encoders
    )  # the reload-after-unload failure of diffusers #7856 does not happen here
    with pytest.raises(InstallError, match="not installed"):
        uninstall("nothing", encoders)


def test_width_mismatch_is_explained_in_words(sd1_pipe):
    with pytest.raises(InstallError, match=r"width 768 .* trained for SD 1.x; this model is width 32$"):
        install(Embedding("x", {"emb_params": torch.zeros(1, 768)}), pipeline_encoders(sd1_pipe))
    with pytest.raises(InstallError) as caught:  # the file's key is not called an encoder; the demo is named
        install(
            Embedding("d", {"emb_params": torch.zeros(1, 64)}, {"family": "demo"}),
            pipeline_encoders(sd1_pipe),
        )
    assert "but this model's text encoder has width 32" in str(caught.value)
    assert str(caught.value).endswith("trained for the demo world; this model is width 32; use --model demo")


def test_word_clash_is_refused():
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1, "<cat>": 2}, merges=[])
    encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=3, hidden_size=32, intermediate_size=32, num_hidden_layers=1)
    )
    with pytest.raises(InstallError, match="ordinary word"):
        install(rand("cat", 1), [("emb_params", tokenizer, encoder)])


def test_word_vectors_are_the_input_rows(sd1_pipe):
    ids = sd1_pipe.tokenizer("keyboard", add_special_tokens=False).input_ids
    vectors = word_vectors("keyboard", sd1_pipe.tokenizer, sd1_pipe.text_encoder)
    assert vectors.shape == (1, 32)
    assert torch.equal(vectors, sd1_pipe.text_encoder.get_input_embeddings().weight[ids])


# --- parity with diffusers' own loader ---
def test_sd1_injection_matches_diffusers_load_textual_inversion():
    cat = rand("cat", 3, seed=7)
    ours, theirs = fresh_sd1(), fresh_sd1()
    install(cat, pipeline_encoders(ours))
    theirs.load_textual_inversion(cat.vectors["emb_params"], token="<cat>")
    prompt = "a photo of <cat>"
    assert theirs.maybe_convert_prompt(prompt, theirs.tokenizer) == expand_prompt(prompt, [cat])
    assert torch.equal(
        encode(ours, expand_prompt(prompt, [cat])), encode(theirs, expand_prompt(prompt, [cat]))
    )


def test_sdxl_injection_matches_diffusers_loaded_into_both_encoders():
    xl = rand("xl", 2, seed=8, widths={"clip_l": 32, "clip_g": 48})
    ours, theirs = tiny_pipeline("sdxl", seed=0), tiny_pipeline("sdxl", seed=0)
    install(xl, pipeline_encoders(ours))
    theirs.load_textual_inversion(
        xl.vectors["clip_l"], token="<xl>", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer
    )
    theirs.load_textual_inversion(
        xl.vectors["clip_g"], token="<xl>", text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2
    )
    prompt = expand_prompt("a <xl> cat", [xl])
    for which in (1, 2):
        assert torch.equal(encode(ours, prompt, which), encode(theirs, prompt, which))


def test_sd1_embedding_into_sdxl_needs_the_partial_option():
    pipe = tiny_pipeline("sdxl", seed=0)
    sd1_like = rand("old", 2, width=32)
    with pytest.raises(InstallError, match="partial"):
        install(sd1_like, pipeline_encoders(pipe))
    install(sd1_like, pipeline_encoders(pipe), partial=True)
    ids_l = pipe.tokenizer.convert_tokens_to_ids(token_names(sd1_like))
    ids_g = pipe.tokenizer_2.convert_tokens_to_ids(token_names(sd1_like))
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids_l], sd1_like.vectors["emb_params"])
    assert not pipe.text_encoder_2.get_input_embeddings().weight[ids_g].any()


def test_the_partial_hint_is_only_given_when_the_partial_install_would_fit():
    from types import SimpleNamespace

    from embeddings import vectors_for_encoders

    def model(**widths):
        return [
            (k, None, SimpleNamespace(get_input_embeddings=lambda w=w: torch.nn.Embedding(4, w)))
            for k, w in widths.items()
        ]

    xl = rand("xl", 1, widths={"clip_l": 768, "clip_g": 1280})
    with pytest.raises(InstallError, match="partial"):
        vectors_for_encoders(xl, model(emb_params=768))
    for emb, encoders in ((xl, model(emb_params=64)), (rand("sd", 1, 1024), model(clip_l=768, clip_g=1280))):
        with pytest.raises(InstallError) as caught:
            vectors_for_encoders(emb, encoders)
        assert "partial" not in str(caught.value)
    with pytest.raises(InstallError, match=r"trained for SD 1\.x; this model is the demo world"):
        vectors_for_encoders(rand("sd", 1, 768), model(emb_params=64), model_family="demo")


def test_uninstall_and_a_shrinking_reinstall_keep_decode_working():
    pipe = fresh_sd1()
    encoders = pipeline_encoders(pipe)
    ids = pipe.tokenizer("a red circle", add_special_tokens=False).input_ids
    assert pipe.tokenizer.decode(ids) == "a red circle"
    install(rand("cat", 3), encoders)
    install(rand("cat", 1), encoders)  # drops <cat>_1, <cat>_2 through the same backend swap
    assert pipe.tokenizer.decode(ids) == "a red circle"
    uninstall("cat", encoders)
    assert pipe.tokenizer.decode(ids) == "a red circle"  # not 'a</w>red</w>circle</w>'


def test_install_under_another_token_name_keeps_the_name_in_errors():
    pipe = fresh_sd1()
    encoders = pipeline_encoders(pipe)
    cat = rand("my--cat", 2)
    assert install(cat, encoders, token_name="ts0") == ["<ts0>", "<ts0>_1"]
    assert installed_tokens("my--cat", pipe.tokenizer) == []
    with pytest.raises(InstallError, match="embedding 'my--cat' has width 48"):
        install(rand("my--cat", 1, width=48), encoders, token_name="ts0")
