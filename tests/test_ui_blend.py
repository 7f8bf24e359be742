"""The Blend page (AppTest, tiny random pipeline) and its helpers (studio/app/blending.py)."""

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from embeddings.blend_expr import Operand
from studio.app import blending

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


@pytest.fixture
def store(tokensmith_home, tiny_session) -> Store:
    width = tiny_session.model.widths["emb_params"]
    s = Store.for_home(tokensmith_home)
    for seed, name in enumerate(["cat", "dog"]):
        vectors = torch.randn(1, width, generator=torch.Generator().manual_seed(seed))
        s.put(Embedding(name, {"emb_params": vectors}, {"family": "sd1"}))
    return s


def open_blend() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/blend.py").run()
    assert not at.exception, at.exception
    return at


def test_two_library_operands_preview_and_save_with_lineage(page_session, store):
    at = open_blend()
    assert not at.error, [e.value for e in at.error]
    assert at.selectbox(key="bl_emb_0").value == "cat" and at.selectbox(key="bl_emb_1").value == "dog"
    at.slider(key="bl_w_0").set_value(0.3)
    at.slider(key="bl_w_1").set_value(0.7)
    at.text_input(key="bl_name").set_value("catdog").run()
    assert at.image[0].proto.imgs[0].caption == "<catdog> = 0.3 <cat> + 0.7 <dog>"
    at.button(key="bl_save").click().run()
    assert "Saved <catdog>" in at.success[0].value
    saved = store.get("catdog")
    expected = 0.3 * store.get("cat").vectors["emb_params"] + 0.7 * store.get("dog").vectors["emb_params"]
    assert torch.allclose(saved.vectors["emb_params"], expected, atol=1e-6)
    parent = json.loads(saved.meta["parent"])
    assert [(o["name"], o["weight"]) for o in parent["operands"]] == [("cat", 0.3), ("dog", 0.7)]
    assert store.preview_path("catdog").exists()


def test_a_word_operand_slerp_and_a_sweep_render(page_session, store):
    at = open_blend()
    at.radio(key="bl_kind_1").set_value("word").run()
    at.text_input(key="bl_word_1").set_value("photo")
    at.radio(key="bl_method").set_value("slerp")
    at.toggle(key="bl_sweep").set_value(True).run()
    assert not at.error, [e.value for e in at.error]
    assert at.image, "no preview grid"
    at.button(key="bl_save").click().run()
    parent = json.loads(store.get("blend").meta["parent"])
    assert parent["method"] == "slerp"
    assert [o["kind"] for o in parent["operands"]] == ["embedding", "word"]


def test_saving_over_an_existing_name_needs_replace(page_session, store):
    at = open_blend()
    at.text_input(key="bl_name").set_value("cat").run()
    at.button(key="bl_save").click().run()
    assert "already exists" in at.error[0].value
    assert "turn on “Replace a stored embedding of the same name”" in at.error[0].value
    assert "--force" not in at.error[0].value
    at.toggle(key="bl_overwrite").set_value(True).run()
    at.button(key="bl_save").click().run()
    assert "parent" in store.get("cat").meta


def test_mismatched_widths_and_bad_names_are_explained(page_session, store):
    store.put(Embedding("wide", {"emb_params": torch.zeros(1, 1024)}, {}))
    at = open_blend()
    at.selectbox(key="bl_emb_1").set_value("wide").run()
    assert "cannot blend" in at.error[0].value
    assert "it has width 1024 but this model's text encoder has width 32" in at.error[0].value  # no repr
    at.text_input(key="bl_name").set_value("../evil").run()
    assert "invalid embedding name" in at.error[0].value


def test_an_operand_that_does_not_load_is_named(page_session, store):
    data = bytearray(store.path("dog").read_bytes())
    data[-1] ^= 0xFF  # the sha256 no longer matches
    store.path("dog").write_bytes(bytes(data))
    at = open_blend()
    [error] = at.error
    assert error.value.startswith("cannot blend operand #2 <dog>: the tensor data does not match the sha256")
    assert str(store.root) not in error.value


def test_a_blend_of_words_is_labelled_with_the_model_as_the_cli_labels_it(page_session, store):
    """`tokensmith blend "0.6*red + 0.4*yellow"` stores the model's family and base_model; the page too."""
    at = open_blend()
    for i, word in enumerate(["red", "photo"]):
        at.radio(key=f"bl_kind_{i}").set_value("word").run()
        at.text_input(key=f"bl_word_{i}").set_value(word).run()
    at.text_input(key="bl_name").set_value("reddish").run()
    at.button(key="bl_save").click().run()
    assert not at.error, [e.value for e in at.error]
    saved = store.entry("reddish")
    assert (saved.family, saved.meta.get("base_model")) == ("sd1", "tiny-sd1")  # not 'w32' from its width


def test_make_blend_labels_with_the_model_only_when_words_are_mixed(page_session, store):
    model = page_session.model
    parts = [(store.get("cat"), 0.5), (store.get("dog"), 0.5)]
    blended = blending.make_blend(parts, "catdog", method="lerp", keep_norm=False, model=model)
    assert "base_model" not in blended.meta  # the operands' own provenance, as the CLI keeps it
    worded = blending.resolve(
        [(Operand("embedding", "cat"), 0.5), (Operand("word", "red"), 0.5)], store, model
    )
    blended = blending.make_blend(worded, "catred", method="lerp", keep_norm=False, model=model)
    assert (blended.meta["family"], blended.meta["base_model"]) == ("sd1", "tiny-sd1")


def test_a_new_operand_count_starts_every_weight_at_an_equal_share(page_session, store):
    at = open_blend()
    assert [at.slider(key=f"bl_w_{i}").value for i in range(2)] == [0.5, 0.5]
    at.number_input(key="bl_count").set_value(3).run()
    assert [at.slider(key=f"bl_w_{i}").value for i in range(3)] == [0.33, 0.33, 0.33]
    at.slider(key="bl_w_0").set_value(0.8).run()
    assert at.slider(key="bl_w_0").value == 0.8  # a moved slider keeps its value until the count changes
    at.number_input(key="bl_count").set_value(2).run()
    assert [at.slider(key=f"bl_w_{i}").value for i in range(2)] == [0.5, 0.5]
    assert not at.exception and not at.warning


def test_an_empty_name_asks_for_one_and_the_preview_stays(page_session, store):
    at = open_blend()
    at.text_input(key="bl_name").set_value("").run()
    assert not at.error and any("Give the blend a name to save it" in i.value for i in at.info)
    assert at.text_input(key="bl_seeds").value == "0,1" and at.toggle(key="bl_sweep") is not None
    assert at.image[0].proto.imgs[0].caption.startswith("<blend> = ")  # the preview draws
    assert not [b for b in at.button if b.key == "bl_save"]  # Save waits for a name


def preview_of(prompt: str):
    """The page previewing <cat> blended with the word 'photo' (2 steps) in `prompt`, drawn with no error."""
    at = open_blend()
    at.radio(key="bl_kind_1").set_value("word").run()
    at.text_input(key="bl_word_1").set_value("photo")
    at.number_input(key="bl_steps").set_value(2)
    at.text_input(key="bl_prompt").set_value(prompt).run()
    assert not at.error, [e.value for e in at.error]
    return at


def test_the_preview_draws_again_when_an_embedding_its_prompt_names_is_retrained(
    page_session, store, monkeypatch
):
    calls = []
    generate = page_session.generate
    monkeypatch.setattr(
        page_session, "generate", lambda *args, **kw: calls.append(1) or generate(*args, **kw)
    )
    at = preview_of("* <dog>")
    assert calls, "no preview drawn"
    calls.clear()
    at.run()
    assert not calls  # the same blend, prompt and files: from the cache
    width = page_session.model.widths["emb_params"]
    store.put(Embedding("dog", {"emb_params": torch.ones(1, width)}, {"family": "sd1"}), overwrite=True)
    at.run()
    assert calls, "the preview still shows the old <dog>"


def test_a_name_in_another_letter_case_draws_anew_when_retrained_and_is_refused_when_deleted(
    page_session, store
):
    # prompts match <DOG> to a stored 'dog': the preview's cache key must follow the same file
    at = preview_of("* <DOG>")
    before = at.image[0].proto.imgs[0].url
    width = page_session.model.widths["emb_params"]
    store.put(Embedding("dog", {"emb_params": torch.ones(1, width) * 5}, {"family": "sd1"}), overwrite=True)
    at.run()
    assert not at.error, [e.value for e in at.error]
    assert at.image[0].proto.imgs[0].url != before, "the preview still shows the old <dog>"
    store.delete("dog")
    at.run()
    assert [e.value for e in at.error if "unknown embedding <DOG>" in e.value], [e.value for e in at.error]
    assert not at.image


def test_stored_versions_key_names_as_prompts_resolve_them(store):
    [(name, sha)] = blending.stored_versions("* <DOG>", store, exclude="mix")
    assert name == "DOG" and blending.stored_versions("* <dog>", store, exclude="mix") == (("dog", sha),)
    assert blending.stored_versions("* <owl> <MIX>", store, exclude="mix") == (("owl", "missing"),)


def test_a_blend_named_like_a_stored_embedding_is_drawn_anew_as_its_weights_move(page_session, store):
    # the engine keeps stored embeddings by their file's stat: an unsaved blend must never be kept under
    # the stat of the stored <cat> it would replace (each preview would show the first blend)
    import numpy as np

    from studio.generation import GenerateRequest

    width = page_session.model.widths["emb_params"]
    request = GenerateRequest(prompt="a <cat>", seed=0, steps=2)
    images = []
    for seed in (7, 8):  # two settings of the sliders: two blends named cat
        vectors = 3 * torch.randn(1, width, generator=torch.Generator().manual_seed(seed))
        blend = Embedding("cat", {"emb_params": vectors}, {})
        [result] = page_session.generate(request, store=blending.PreviewStore(store, blend))
        images.append(np.asarray(result.image))
    assert not np.array_equal(*images)


def test_the_unsaved_blend_has_no_file_even_when_its_name_is_stored(store):
    view = blending.PreviewStore(store, Embedding("cat", {"emb_params": torch.ones(1, 4)}, {}))
    assert store.path("cat").is_file() and not view.path("cat").exists()
    assert view.path("dog") == store.path("dog")


def test_empty_word_asks_for_every_operand(page_session, store):
    at = open_blend()
    at.radio(key="bl_kind_0").set_value("word").run()
    assert "Choose every operand" in at.info[0].value


def test_weight_rows_sweep_the_first_two_operands():
    assert blending.weight_rows([0.2, 0.8], sweep=False) == [[0.2, 0.8]]
    rows = blending.weight_rows([0.2, 0.8, 0.5], sweep=True)
    assert rows[0] == [1.0, 0.0, 0.5] and rows[-1] == [0.0, 1.0, 0.5] and len(rows) == len(blending.SWEEP)


def test_preview_prompt_and_labels():
    assert blending.preview_prompt("a * on blue", "mix") == "a <mix> on blue"
    assert blending.preview_prompt("a photo of", "mix") == "a photo of <mix>"
    ops = [Operand("embedding", "cat"), Operand("word", "dog")]
    assert blending.row_label(ops, [0.25, 0.75]) == '0.25 <cat> + 0.75 "dog"'
    assert blending.row_label(ops, [0.25, 0.75], "slerp") == 'slerp(<cat>, "dog", t=0.75)'
    # a sweep's rows differ only in t, and the grid cuts labels at its label column: t comes first there
    assert blending.row_label(ops, [0.25, 0.75], "slerp", t_first=True) == 't=0.75: slerp(<cat>, "dog")'


def test_preview_store_shows_the_unsaved_blend_first(store):
    unsaved = Embedding("cat", {"emb_params": torch.ones(1, 4)}, {})
    view = blending.PreviewStore(store, unsaved)
    assert view.get("cat") is unsaved and view.get("dog").name == "dog"
    assert view.names() == ["cat", "dog"] and view.root == store.root


def test_embeddings_for_another_model_are_named_and_fitting_ones_come_first(page_session, tokensmith_home):
    s = Store.for_home(tokensmith_home)
    for name in ("a-sd1", "b-sd1"):
        s.put(Embedding(name, {"emb_params": torch.zeros(1, 768)}, {"family": "sd1"}))
    at = open_blend()
    assert "cannot blend operand #1 <a-sd1>" in at.error[0].value and "'blend'" not in at.error[0].value
    width = page_session.model.widths["emb_params"]
    s.put(Embedding("z-fits", {"emb_params": torch.ones(1, width)}, {"family": "sd1"}))
    at = open_blend()
    assert at.selectbox(key="bl_emb_0").value == "z-fits"


def test_a_slerp_caption_reads_as_slerp(page_session, store):
    at = open_blend()
    at.radio(key="bl_method").set_value("slerp").run()
    assert not at.error, [e.value for e in at.error]
    assert "slerp(<cat>, <dog>, t=0.5)" in at.image[0].proto.imgs[0].caption
