"""The doctor's and the installer's sentences: every file format in words, swapped SDXL halves said with or
without a model, the --model to pass for another family's embedding, names an import would change, and the
provenance a stored embedding records."""

import base64
import inspect
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
from clirun import run
from PIL import Image, PngImagePlugin

import embeddings
from embeddings import Embedding, Store, save_canonical
from embeddings.doctor import diagnose, format_title
from embeddings.exporting import export
from embeddings.formats.diffusers import PAIR_NAMES
from embeddings.formats.layouts import layout_of, tensors_to_json
from embeddings.importing import import_file, import_path
from embeddings.inject import InstallError, encoder_width, vectors_for_encoders
from studio.cli import EXIT_ERROR, EXIT_OK


def fake_model(**widths):
    """Encoders with only what the doctor and vectors_for_encoders read: input-embedding widths."""
    return [
        (key, None, SimpleNamespace(get_input_embeddings=lambda w=width: torch.nn.Embedding(4, w)))
        for key, width in widths.items()
    ]


def vec(n, width, seed=0):
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


SDXL = {"clip_l": 768, "clip_g": 1280}
SWAPPED = {"clip_l": 1280, "clip_g": 768}  # SDXL's file with its keys written the wrong way round


# --- every format in words (finding 4) ---
# One dict per layout the importers recognise; the test below checks this covers every layout_of returns.
LAYOUT_SAMPLES = {
    "a1111": {"string_to_param": {"*": vec(2, 8)}, "name": "neg", "step": 3},
    "kohya": {"emb_params": vec(2, 8)},
    "sdxl": {"clip_l": vec(2, 8), "clip_g": vec(2, 12)},
    "diffusers": {"<tok>": vec(2, 8)},
    "diffusers-multi": {"<tok>": vec(1, 8)[0], "<tok>_1": vec(1, 8, seed=1)[0]},
}


def png_with_chunk(data: dict, path: Path) -> Path:
    """A PNG carrying `data` in A1111's sd-ti-embedding chunk, whatever its layout."""
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", base64.b64encode(json.dumps(tensors_to_json(data)).encode()))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def every_source_format(tmp_path) -> set[str]:
    """The source_format of a file of every layout in every container the importers read."""
    files = []
    for layout, data in LAYOUT_SAMPLES.items():
        if all(isinstance(v, torch.Tensor) for v in data.values()):  # safetensors holds flat tensors only
            files.append(tmp_path / f"{layout}.safetensors")
            safetensors.torch.save_file(data, str(files[-1]))
        files.append(tmp_path / f"{layout}.pt")
        torch.save(data, files[-1])
        files.append(png_with_chunk(data, tmp_path / f"{layout}.png"))
    files.append(save_canonical(Embedding("own", {"emb_params": vec(1, 8)}), tmp_path / "own.safetensors"))
    formats = {import_file(path).meta["source_format"] for path in files}
    pair = tmp_path / "pair"
    pair.mkdir()
    for file_name, width in zip(PAIR_NAMES, (8, 12), strict=True):
        safetensors.torch.save_file({"<tok>": vec(1, width)}, str(pair / file_name))
    return formats | {emb.meta["source_format"] for emb in import_path(pair)}


def test_every_source_format_the_importers_give_has_a_title(tmp_path):
    formats = every_source_format(tmp_path)
    assert {"image:sdxl", "image:kohya", "image:diffusers", "diffusers:sdxl-pair"} <= formats
    assert sorted(fmt for fmt in formats if format_title(fmt) == fmt) == []  # no title: the raw id


def test_the_format_test_covers_every_container_and_layout_in_the_code(tmp_path):
    """A new container (a `source_format` prefix in embeddings/) or layout fails here until the test above
    (and doctor.FORMAT_TITLES) covers it."""
    sources = "\n".join(p.read_text() for p in Path(embeddings.__file__).parent.rglob("*.py"))
    containers = set(re.findall(r"""["']?source_format["']?\s*[:=]\s*f?["']([a-z]+)""", sources))
    assert containers == {fmt.split(":")[0] for fmt in every_source_format(tmp_path)}
    layouts = set(re.findall(r'return "(\w+)"', inspect.getsource(layout_of)))
    assert layouts <= {layout_of(data) for data in LAYOUT_SAMPLES.values()}


def test_an_sdxl_embedding_image_tokensmith_writes_is_named_in_words(tmp_path):
    xl = Embedding("xl", {"clip_l": vec(2, 768), "clip_g": vec(2, 1280)})
    (path,) = export(xl, "a1111-png", tmp_path / "xl.png")  # as `tokensmith export xl --format a1111-png`
    report = diagnose(path)
    assert report.lines[0] == "'xl': SDXL clip_l/clip_g embedding image (A1111 PNG)"
    assert "image:sdxl" not in "\n".join(report.lines)


# --- swapped SDXL halves (finding 5) ---
def swapped_file(tmp_path):
    path = tmp_path / "swapped.safetensors"
    safetensors.torch.save_file({k: vec(2, w) for k, w in SWAPPED.items()}, str(path))
    return path


def test_the_doctor_says_swapped_halves_without_a_model(tmp_path):
    report = diagnose(swapped_file(tmp_path))
    assert report.fit == "unknown"
    assert [w for w in report.warnings if "look swapped" in w] == [
        "its clip_l and clip_g look swapped: its clip_l (1280) has the width of SDXL's clip_g and the other "
        "way round; the tool that wrote it mixed up the keys: get a correct copy, or save its clip_l tensor "
        "as clip_g and its clip_g tensor as clip_l (safetensors in Python) and import that file"
    ]
    path = tmp_path / "right.safetensors"
    safetensors.torch.save_file({k: vec(2, w) for k, w in SDXL.items()}, str(path))
    assert not any("swapped" in w for w in diagnose(path).warnings)


def test_the_swapped_hint_is_said_once_with_an_sdxl_model_and_also_with_another_model(tmp_path):
    with_sdxl = diagnose(swapped_file(tmp_path), fake_model(**SDXL), model_family="sdxl")
    both = with_sdxl.lines + with_sdxl.warnings
    assert with_sdxl.fit == "no" and sum("look swapped" in s for s in both) == 1
    with_sd1 = diagnose(swapped_file(tmp_path), fake_model(emb_params=768), model_family="sd1")
    assert any("SDXL's clip_g" in w for w in with_sd1.warnings)


def test_installing_swapped_halves_in_sdxl_says_they_look_swapped_not_sdxl_is_sdxl():
    swapped = Embedding("swapped", {k: vec(2, w) for k, w in SWAPPED.items()})
    with pytest.raises(InstallError) as caught:
        vectors_for_encoders(swapped, fake_model(**SDXL), model_family="sdxl")
    message = str(caught.value)
    assert "this model is SDXL" not in message
    assert message.startswith(
        "embedding 'swapped' has width 1280 but this model's clip_l text encoder has width 768: its clip_l "
        "and clip_g look swapped: its clip_l (1280) has the width of this model's clip_g"
    )
    assert "save its clip_l tensor as clip_g" in message


# --- which --model to pass (finding 7) ---
@pytest.mark.parametrize(
    ("widths", "title"),
    [({"emb_params": 768}, "SD 1.x"), ({"emb_params": 1024}, "SD 2.x"), (SDXL, "SDXL")],
)
def test_an_sd_embedding_on_the_demo_world_names_the_model_to_pass(widths, title):
    emb = Embedding("neg", {k: vec(2, w) for k, w in widths.items()})
    with pytest.raises(InstallError) as caught:
        vectors_for_encoders(emb, fake_model(emb_params=64), model_family="demo")
    assert str(caught.value).endswith(
        f"pass --model with an {title} model (a diffusers folder, a hub id or a .safetensors checkpoint)"
    )


def test_an_sd2_embedding_on_sdxl_and_a_demo_one_on_sdxl_say_what_to_pass():
    sd2 = Embedding("sd2", {"emb_params": vec(1, 1024)})
    with pytest.raises(InstallError, match=r"pass --model with an SD 2\.x model"):
        vectors_for_encoders(sd2, fake_model(**SDXL), model_family="sdxl")
    demo = Embedding("d", {"emb_params": vec(1, 64)}, {"family": "demo"})
    with pytest.raises(InstallError, match=r"use --model demo$"):
        vectors_for_encoders(demo, fake_model(**SDXL), model_family="sdxl")


def test_nearest_with_the_default_demo_model_on_an_sd1_embedding_says_what_to_pass(tokensmith_home, capsys):
    Store.for_home(tokensmith_home).put(Embedding("EasyNegative", {"emb_params": vec(8, 768)}))
    code, _, err = run(capsys, "nearest", "EasyNegative")
    assert code == EXIT_ERROR
    assert "this model is the demo world; pass --model with an SD 1.x model" in err


# --- names an import would change (finding 6) ---
def test_a_downloaded_file_says_what_name_an_import_would_store_it_under(tmp_path):
    path = tmp_path / "EasyNegative (1).safetensors"
    safetensors.torch.save_file({"emb_params": vec(2, 768)}, str(path))
    warnings = diagnose(path).warnings
    expected = "its name 'EasyNegative (1)' would be stored as 'EasyNegative-1' by `tokensmith import`"
    assert f"{expected} (safe characters)" in warnings
    assert not any("is stored as" in w for w in warnings)


def test_a_file_copied_into_the_store_under_a_refused_name_gets_the_rename(tokensmith_home, capsys):
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    path = save_canonical(Embedding("x", {"emb_params": vec(2, 768)}), store.root / "Copy (1).safetensors")
    (warning,) = diagnose(path, store_root=store.root).warnings
    assert warning.startswith(
        "the store cannot use this file under its name: invalid embedding name 'Copy (1)'"
    )
    assert "`tokensmith rename 'Copy (1)' Copy-1` gives it a valid name" in warning
    code, out, _ = run(capsys, "doctor", "Copy (1)")  # found by its stem, as `rename` finds it
    assert code == EXIT_OK and "'Copy-1'" in out and "is stored as" not in out


# --- the provenance a stored embedding records (polish) ---
def test_doctor_on_a_stored_name_keeps_what_it_was_imported_from(tmp_path, tokensmith_home, capsys):
    source = tmp_path / "bad-hands-5.pt"
    export(Embedding("neg", {"emb_params": vec(2, 768)}, {"steps": "1419"}), "a1111-pt", source)
    assert run(capsys, "import", source)[0] == EXIT_OK
    code, out, _ = run(capsys, "doctor", "bad-hands-5", "--json")
    doctored = json.loads(out)["embedding"]
    shown = json.loads(run(capsys, "show", "bad-hands-5", "--json")[1])
    assert code == EXIT_OK and doctored["meta"] == shown["meta"]
    assert (doctored["meta"]["source_format"], doctored["meta"]["source_file"]) == (
        "pickle:a1111",
        source.name,
    )
    assert doctored["format"] == "safetensors:canonical"  # the file at hand
    code, out, _ = run(capsys, "doctor", "bad-hands-5")
    lines = out.splitlines()
    assert lines[0] == "'bad-hands-5': tokensmith canonical file"
    assert "imported from 'bad-hands-5.pt': AUTOMATIC1111 .pt (string_to_param)" in lines


def test_a_tokensmith_file_that_records_no_import_says_none(tmp_path):
    path = save_canonical(Embedding("made", {"emb_params": vec(1, 64)}), tmp_path / "made.safetensors")
    report = diagnose(path)
    assert report.to_json()["embedding"]["format"] == "safetensors:canonical"
    assert "source_format" not in report.embedding.meta
    assert not any(line.startswith("imported from") for line in report.lines)


# --- a store file that the store skips (studio review 6) ---
def test_a_store_file_of_another_layout_says_the_store_skips_it_and_not_to_use_it(tokensmith_home, capsys):
    from trainers.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    encoders = [("emb_params", pipe.tokenizer, pipe.text_encoder)]
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    path = store.root / "learned_embeds.safetensors"
    safetensors.torch.save_file({"<redcirc>": vec(1, encoder_width(pipe.text_encoder))}, str(path))
    report = diagnose(path, encoders, store_root=store.root)
    assert report.fit == "fits" and not any("in prompts" in line for line in report.lines)
    assert "prompts cannot use it until it is imported (see the warning)" in report.lines[-1]
    [skipped] = [w for w in report.warnings if w.startswith("the store skips this file")]
    assert "keys ['<redcirc>'] are not the canonical layout" in skipped
    assert f"`tokensmith import {path}` stores a copy the store reads as <redcirc>" in skipped
    assert skipped.endswith("then `tokensmith rm learned_embeds` moves this file to the trash")
    assert diagnose(path).warnings == []  # outside the store's view, a diffusers file is just that
    code, out, _ = run(capsys, "doctor", "learned_embeds")
    assert code == EXIT_OK and "warning: the store skips this file" in out and "use <" not in out


def test_a_store_file_of_another_layout_under_its_own_name_is_replaced_in_place(tokensmith_home, capsys):
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    path = store.root / "same.safetensors"
    safetensors.torch.save_file({"<same>": vec(1, 8)}, str(path))
    [skipped] = diagnose(path, store_root=store.root).warnings
    assert skipped.endswith(f"`tokensmith import --force {path}` replaces it with a copy the store reads")
    assert run(capsys, "import", "--force", path)[0] == EXIT_OK  # the advice works
    assert store.names() == ["same"] and diagnose(path, store_root=store.root).warnings == []


def test_a_pt_file_in_the_store_folder_is_said_to_be_skipped_not_usable(tokensmith_home):
    """`list` notes a .pt beside the store's files as not read: the doctor never says "use <x> in prompts"."""
    from trainers.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    encoders = [("emb_params", pipe.tokenizer, pipe.text_encoder)]
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    path = store.root / "other.pt"
    torch.save({"emb_params": vec(1, encoder_width(pipe.text_encoder))}, path)
    report = diagnose(path, encoders, store_root=store.root)
    assert report.fit == "fits" and not any("in prompts" in line for line in report.lines)
    [skipped] = [w for w in report.warnings if w.startswith("the store skips this file")]
    assert "(the store reads only .safetensors files)" in skipped
    assert skipped.endswith("as <other>; then move this file out of the store folder")
    assert not any("store skips" in w for w in diagnose(path).warnings)  # without the store's view
