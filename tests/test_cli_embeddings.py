"""The embeddings commands driven as a user would: files in, store listed, formats out, hostile input."""

import json
import shutil
from pathlib import Path

import pytest
import safetensors.torch
import torch

from embeddings import Embedding, Store, import_path, save_canonical
from studio.cli import EXIT_ERROR, EXIT_OK, EXIT_USAGE, main
from trainers.tiny import tiny_pipeline

REALWORLD = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "realworld"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, name, n=2, width=768, seed=0):
    vectors = {"emb_params": torch.randn(n, width, generator=torch.Generator().manual_seed(seed))}
    return save_canonical(Embedding(name, vectors), tmp_path / f"{name}.safetensors")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-sd1"
    tiny_pipeline("sd1", seed=0).save_pretrained(folder)
    return folder


def test_import_list_show_round(tmp_path, capsys, tokensmith_home):
    code, out, _ = run(capsys, "import", write(tmp_path, "cat"), write(tmp_path, "dog", n=3, seed=1))
    assert (code, out.split()) == (EXIT_OK, ["cat", "dog"])
    code, out, _ = run(capsys, "list", "--json")
    listed = {e["name"]: e for e in json.loads(out)}
    assert listed["dog"]["num_vectors"] == 3 and listed["dog"]["family"] == "sd1"
    code, out, _ = run(capsys, "list")
    assert "cat" in out and "3v" in out
    code, out, _ = run(capsys, "show", "dog", "--json")
    shown = json.loads(out)
    assert shown["tokens"] == ["<dog>", "<dog>_1", "<dog>_2"] and len(shown["norms"]["emb_params"]) == 3
    assert (tokensmith_home / "embeddings" / "dog.safetensors").is_file()


def test_import_refuses_existing_names_for_all_files_before_writing_any(tmp_path, capsys, tokensmith_home):
    run(capsys, "import", write(tmp_path, "cat"))
    code, _, err = run(capsys, "import", write(tmp_path, "fresh"), write(tmp_path, "cat", seed=9))
    assert code == EXIT_ERROR and "'cat' already exists" in err and "--force" in err
    assert Store.for_home(tokensmith_home).names() == ["cat"]  # "fresh" was not stored either
    code, out, _ = run(capsys, "import", write(tmp_path, "cat", seed=9), "--force")
    assert code == EXIT_OK and out.strip() == "cat"


def test_import_with_name_and_hostile_names(tmp_path, capsys, tokensmith_home):
    path = write(tmp_path, "x")
    assert run(capsys, "import", path, "--name", "my-cat")[1].strip() == "my-cat"
    for bad in ("../evil", "a/b", "..", ".hidden", "x y", ""):
        code, _, err = run(capsys, "import", path, "--name", bad)
        assert code == EXIT_ERROR and "invalid embedding name" in err
    assert not list(tmp_path.parent.glob("evil*")) and not (tokensmith_home / "evil.safetensors").exists()
    code, _, err = run(capsys, "import", write(tmp_path, "y"), write(tmp_path, "z"), "--name", "one")
    assert code == EXIT_ERROR and "--name applies to one embedding" in err


def test_import_refuses_names_differing_only_in_case_before_writing_any(tmp_path, capsys, tokensmith_home):
    store = Store.for_home(tokensmith_home)
    folder = tmp_path / "twins"
    folder.mkdir()
    for file, token in (("a", "<Cat>"), ("b", "<cat>")):  # diffusers files: the name is the token
        safetensors.torch.save_file({token: torch.randn(1, 768)}, str(folder / f"{file}.safetensors"))
    code, _, err = run(capsys, "import", folder)
    assert code == EXIT_ERROR and "letter case" in err and store.names() == []
    run(capsys, "import", write(tmp_path, "cat"))
    code, _, err = run(capsys, "import", write(tmp_path, "fresh"), write(tmp_path, "CAT"), "--force")
    assert code == EXIT_ERROR and "only in letter case" in err and store.names() == ["cat"]


def test_import_folder_reports_skipped_files(tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write(folder, "good")
    (folder / "bad.pt").write_bytes(b"\x80\x02not a pickle")
    code, out, err = run(capsys, "import", folder)
    assert code == EXIT_OK and out.strip() == "good" and "skipped" in err and "bad.pt" in err


def test_hostile_pickle_is_refused_by_the_cli(tmp_path, capsys):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}, "name": Payload()}, tmp_path / "evil.pt")
    code, _, err = run(capsys, "import", tmp_path / "evil.pt")
    assert code == EXIT_ERROR and "refused" in err and not marker.exists()
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(("fmt", "out"), [("canonical", "o.safetensors"), ("diffusers", "o.bin"),
                                          ("a1111-pt", "o.pt"), ("a1111-png", "o.png")])  # fmt: skip
def test_export_every_format_and_reimport_bit_identically(tmp_path, capsys, fmt, out):
    run(capsys, "import", write(tmp_path, "cat", n=3))
    code, printed, _ = run(capsys, "export", "cat", "--format", fmt, "--out", tmp_path / out)
    assert code == EXIT_OK and printed.strip() == str(tmp_path / out)
    (back,) = import_path(tmp_path / out)
    original = import_path(tmp_path / "cat.safetensors")[0]
    assert torch.equal(back.vectors["emb_params"], original.vectors["emb_params"])
    code, _, err = run(capsys, "export", "cat", "--format", fmt, "--out", tmp_path / out)
    assert code == EXIT_ERROR and "already exists" in err
    assert run(capsys, "export", "cat", "--format", fmt, "--out", tmp_path / out, "--force")[0] == EXIT_OK


def test_sdxl_diffusers_export_writes_the_pair_into_a_folder(tmp_path, capsys, tokensmith_home):
    xl = Embedding("xl", {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)})
    save_canonical(xl, tmp_path / "xl.safetensors")
    run(capsys, "import", tmp_path / "xl.safetensors")
    code, out, _ = run(capsys, "export", "xl", "--format", "diffusers", "--out", tmp_path / "pair")
    assert code == EXIT_OK and [Path(p).name for p in out.split()] == [
        "learned_embeds.safetensors",
        "learned_embeds_2.safetensors",
    ]
    code, out, _ = run(capsys, "import", tmp_path / "pair", "--name", "xl-again")
    again = Store.for_home(tokensmith_home).get("xl-again")
    assert again.family == "sdxl" and torch.equal(again.vectors["clip_g"], xl.vectors["clip_g"])


def test_rename_rm_restore(tmp_path, capsys):
    run(capsys, "import", write(tmp_path, "cat"), write(tmp_path, "dog"))
    assert run(capsys, "rename", "cat", "kitty")[0] == EXIT_OK
    code, _, err = run(capsys, "rename", "kitty", "dog")
    assert code == EXIT_ERROR and "already exists" in err
    assert run(capsys, "rm", "kitty")[0] == EXIT_OK
    code, _, err = run(capsys, "show", "kitty")
    assert code == EXIT_ERROR and "no embedding named 'kitty'" in err
    assert run(capsys, "restore", "kitty")[0] == EXIT_OK
    assert json.loads(run(capsys, "show", "kitty", "--json")[1])["name"] == "kitty"
    code, _, err = run(capsys, "restore", "never")
    assert code == EXIT_ERROR and "not in the trash" in err


def store_of(shown: dict) -> Store:
    return Store(Path(shown["path"]).parent)


def test_blend_of_stored_embeddings_records_lineage(tmp_path, capsys):
    run(capsys, "import", write(tmp_path, "cat", n=1, seed=1), write(tmp_path, "dog", n=1, seed=2))
    code, out, _ = run(capsys, "blend", "0.5*<cat> + 0.5*<dog>", "--name", "catdog")
    assert (code, out.strip()) == (EXIT_OK, "catdog")
    shown = json.loads(run(capsys, "show", "catdog", "--json")[1])
    parent = json.loads(shown["meta"]["parent"])
    assert [o["name"] for o in parent["operands"]] == ["cat", "dog"] and parent["method"] == "lerp"
    store = store_of(shown)
    expected = 0.5 * store.get("cat").vectors["emb_params"] + 0.5 * store.get("dog").vectors["emb_params"]
    assert torch.allclose(store.get("catdog").vectors["emb_params"], expected)
    assert run(capsys, "blend", "slerp(<cat>, <dog>, 0.3)", "--name", "s", "--keep-norm")[0] == EXIT_OK
    assert run(capsys, "blend", "<cat> + <dog>", "--name", "wide", "--vectors", "3")[0] == EXIT_OK
    assert store_of(shown).get("wide").num_vectors == 3
    code, _, err = run(capsys, "blend", "0.5*<cat> +", "--name", "bad")
    assert code == EXIT_ERROR and "ends with an operator" in err
    code, _, err = run(capsys, "blend", "<cat> + <ghost>", "--name", "x")
    assert code == EXIT_ERROR and "no embedding named 'ghost'" in err
    assert run(capsys, "blend", "<cat>", "--name", "catdog")[0] == EXIT_ERROR  # exists, no --force


def test_blend_of_words_nearest_and_doctor_with_a_model(tmp_path, capsys, tiny_model):
    code, _, err = run(
        capsys, "blend", "0.6*keyboard + 0.4*typewriter", "--name", "keywriter", "--model", tiny_model
    )
    assert code == EXIT_OK, err
    code, out, _ = run(capsys, "nearest", "keywriter", "--model", tiny_model, "-k", "3", "--json")
    found = json.loads(out)["emb_params"]
    neighbours = [n["token"] for n in found["neighbours"][0]]
    assert found["norms"]["vocab"]["mean"] > 0 and len(found["norms"]["norms"]) == 1
    assert code == EXIT_OK and set(neighbours[:2]) == {"keyboard", "typewriter"}
    code, out, _ = run(capsys, "nearest", "keywriter", "--model", tiny_model, "-k", "2")
    assert "<keywriter> (norm" in out and "keyboard" in out
    stored = Path(json.loads(run(capsys, "show", "keywriter", "--json")[1])["path"])
    code, out, _ = run(capsys, "doctor", stored, "--model", tiny_model)
    assert code == EXIT_OK and "fits this model" in out
    code, out, _ = run(capsys, "doctor", write(tmp_path, "wide"), "--model", tiny_model)
    assert code == EXIT_ERROR and "trained for SD 1.x (width 768)" in out


def test_nearest_needs_k_of_at_least_one_and_skips_zero_padding(tmp_path, capsys, tiny_model):
    for bad in ("0", "-2"):  # -k -2 was a RuntimeError traceback from topk, -k 0 printed empty rows
        with pytest.raises(SystemExit) as info:
            main(["nearest", "x", "--model", str(tiny_model), "-k", bad])
        assert info.value.code == EXIT_USAGE
        assert "argument -k: must be at least 1" in capsys.readouterr().err
    run(capsys, "blend", "keyboard", "--name", "padded", "--model", tiny_model, "--vectors", "2")
    code, out, _ = run(capsys, "nearest", "padded", "--model", tiny_model, "-k", "2")
    assert code == EXIT_OK and "keyboard" in out.splitlines()[1]
    assert out.splitlines()[2].endswith("(norm 0): (a zero vector: no direction)")


def test_export_into_the_store_is_refused(tmp_path, capsys, tokensmith_home):
    run(capsys, "import", write(tmp_path, "cat"))
    stored = tokensmith_home / "embeddings" / "cat.safetensors"
    before = stored.read_bytes()
    code, _, err = run(capsys, "export", "cat", "--format", "a1111-pt", "--out", stored, "--force")
    assert code == EXIT_ERROR and "is inside the store" in err
    assert stored.read_bytes() == before and run(capsys, "show", "cat")[0] == EXIT_OK


def test_doctor_without_a_model_and_on_bad_files(tmp_path, capsys):
    code, out, _ = run(capsys, "doctor", write(tmp_path, "cat"))
    assert code == EXIT_OK and "SD 1.x" in out and "--model" in out
    (tmp_path / "junk.pt").write_bytes(b"junk")
    code, out, _ = run(capsys, "doctor", tmp_path / "junk.pt", "--json")
    assert code == EXIT_ERROR and json.loads(out)["fit"] == "unreadable"
    run(capsys, "import", write(tmp_path, "stored"))
    assert "'stored'" in run(capsys, "doctor", "stored")[1]  # a stored name works too


def test_usage_errors_and_debug(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "cat", "--out", "x"])
    assert info.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        main(["export", "cat", "--format", "ckpt", "--out", "x"])
    assert info.value.code == EXIT_USAGE
    assert main(["show", "ghost", "--debug"]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and "no embedding named 'ghost'" in err


def test_home_flag_overrides_the_environment(tmp_path, capsys):
    home = tmp_path / "elsewhere"
    run(capsys, "import", write(tmp_path, "cat"), "--home", home)
    assert (home / "embeddings" / "cat.safetensors").is_file()
    assert run(capsys, "list", "--json")[1].strip() == "[]"


def test_real_files_from_other_tools(capsys, tmp_path):
    files = [REALWORLD / "bad-hands-5.pt", REALWORLD / "EasyNegative.safetensors"]
    if not all(f.is_file() for f in files):
        pytest.skip("the real-world fixtures are not present")
    copies = [shutil.copy(f, tmp_path / f.name) for f in files]
    code, out, _ = run(capsys, "import", *copies)
    assert (code, out.split()) == (EXIT_OK, ["bad-hands-5", "EasyNegative"])
    shown = json.loads(run(capsys, "show", "bad-hands-5", "--json")[1])
    assert shown["meta"]["steps"] == "1419" and shown["widths"] == {"emb_params": 768}
    assert (
        run(capsys, "export", "EasyNegative", "--format", "a1111-pt", "--out", tmp_path / "en.pt")[0]
        == EXIT_OK
    )
    data = torch.load(tmp_path / "en.pt", weights_only=True)
    original = safetensors.torch.load_file(str(files[1]))["emb_params"].float()
    assert torch.equal(data["string_to_param"]["*"], original)


# --- an import that stops halfway, and running it again ---
def many(tmp_path, count=4):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(count):
        write(folder, f"e{i}", seed=i)
    return folder


def fail_on_storing(monkeypatch, name, error):
    """Make storing `name` raise `error` (once), as a full disk or a Ctrl-C would halfway through."""
    import embeddings.storewrites as store_module  # where put writes the file

    real = store_module.atomic_write_bytes

    def write_or_fail(path, data, *, overwrite=True):
        if path.name == f"{name}.safetensors":
            monkeypatch.setattr(store_module, "atomic_write_bytes", real)
            raise error
        return real(path, data, overwrite=overwrite)

    monkeypatch.setattr(store_module, "atomic_write_bytes", write_or_fail)


def test_a_full_disk_halfway_says_what_was_stored_and_a_rerun_finishes(tmp_path, capsys, monkeypatch):
    folder = many(tmp_path)
    fail_on_storing(monkeypatch, "e2", OSError(28, "No space left on device"))
    code, out, err = run(capsys, "import", folder)
    assert code == EXIT_ERROR and out.split() == ["e0", "e1"]  # what was stored is printed
    assert f"could not store {folder / 'e2.safetensors'}" in err and "the disk is full" in err
    assert "2 of 4 were stored (e0, e1)" in err and "run the same command again to finish" in err
    store = Store.for_home(tmp_path / "tokensmith-home")
    assert store.names() == ["e0", "e1"] and not [p for p in store.root.iterdir() if p.suffix == ".tmp"]
    code, out, err = run(capsys, "import", folder)  # the same command again (the disk has room now)
    assert code == EXIT_OK and out.split() == ["e0", "e1", "e2", "e3"]
    assert "already stored (identical): e0, e1" in err and store.names() == ["e0", "e1", "e2", "e3"]


def test_ctrl_c_halfway_says_what_was_stored_and_a_rerun_finishes(tmp_path, capsys, monkeypatch):
    folder = many(tmp_path)
    fail_on_storing(monkeypatch, "e1", KeyboardInterrupt())
    code, out, err = run(capsys, "import", folder, "--json")
    assert code == 130 and [e["name"] for e in json.loads(out)] == ["e0"]
    assert f"interrupted while storing {folder / 'e1.safetensors'}" in err
    assert "1 of 4 were stored (e0)" in err and "run the same command again" in err
    code, out, _ = run(capsys, "import", folder, "--json")
    imported = json.loads(out)
    assert code == EXIT_OK and [(e["name"], e["already_stored"]) for e in imported] == [
        ("e0", True),
        ("e1", False),
        ("e2", False),
        ("e3", False),
    ]


def test_importing_the_same_file_twice_is_not_an_error(tmp_path, capsys, tokensmith_home):
    path = write(tmp_path, "cat")
    assert run(capsys, "import", path)[0] == EXIT_OK
    store = Store.for_home(tokensmith_home)
    from PIL import Image

    store.set_preview("cat", Image.new("RGB", (4, 4)))
    code, out, err = run(capsys, "import", path)  # identical vectors: nothing is replaced, the preview stays
    assert (code, out.strip()) == (EXIT_OK, "cat") and "already stored (identical): cat" in err
    assert store.preview_path("cat").is_file()
    (tmp_path / "other").mkdir()
    code, _, err = run(capsys, "import", write(tmp_path / "other", "cat", seed=5))
    assert code == EXIT_ERROR and "'cat' already exists in the store with different vectors" in err


def test_a_file_where_the_store_folder_should_be_is_named(tmp_path, capsys, tokensmith_home):
    path = write(tmp_path, "cat")
    tokensmith_home.mkdir()
    (tokensmith_home / "embeddings").write_text("not a folder")
    for argv in (["import", path], ["list"], ["show", "cat"]):
        code, _, err = run(capsys, *argv)
        assert code == EXIT_ERROR and "store folder" in err and "is a file, not a folder" in err
        assert "Errno" not in err and "no embeddings" not in err
    home_file = tmp_path / "home-file"
    home_file.write_text("")
    code, _, err = run(capsys, "import", path, "--home", home_file)
    assert code == EXIT_ERROR and f"{home_file} is a file, not a folder" in err and "--home" in err


def test_force_replaces_an_identical_embedding_whose_header_is_wrong(tmp_path, capsys, tokensmith_home):
    """--force is how a stored file's header is corrected (a wrong family label stored by an older import):
    identical vectors are skipped only without it."""
    path = write(tmp_path, "cat")
    assert run(capsys, "import", path)[0] == EXIT_OK
    store = Store.for_home(tokensmith_home)
    wrong = store.get("cat").with_meta(family="sdxl", note="stale")
    store.put(wrong, overwrite=True)
    code, out, err = run(capsys, "import", path, "--force")
    assert (code, out.strip()) == (EXIT_OK, "cat") and "already stored" not in err
    assert "note" not in store.get("cat").meta


def test_blend_prints_word_tokens_and_refuses_a_bare_word_split_into_pieces(tmp_path, capsys, tiny_model):
    """The tiny vocabulary knows 'keyboard' but not 'zebra', which it splits into letters: a bare 'zebra'
    would blend letter fragments, so it is refused; quoted, it is blended on purpose."""
    code, _out, err = run(capsys, "blend", "0.5*keyboard + 0.5*zebra", "--name", "kz", "--model", tiny_model)
    assert code == EXIT_ERROR
    assert "'keyboard' -> keyboard (1 token)" in err and "'zebra' -> z, e, b, r, a (5 tokens)" in err
    assert "'zebra' is not a word of this model's vocabulary: it splits into 5 pieces" in err
    assert "quote it ('zebra') to blend its pieces on purpose" in err
    assert not Store.for_home(tokensmith_home_of(tmp_path)).exists("kz")
    code, out, err = run(capsys, "blend", "0.5*keyboard + 0.5*'zebra'", "--name", "kz", "--model", tiny_model)
    assert (code, out.strip()) == (EXIT_OK, "kz") and "'zebra' -> z, e, b, r, a (5 tokens)" in err


def tokensmith_home_of(tmp_path: Path) -> Path:
    return tmp_path / "tokensmith-home"  # conftest's per-test home


def test_blend_help_examples_blend_whole_words_of_the_demo_world(capsys):
    """`blend --help` offers examples on --model demo: each bare word must be one token of its vocabulary."""
    import re
    import shlex

    from transformers import CLIPTokenizer

    from embeddings.blend_expr import parse_blend
    from embeddings.blendparts import word_texts, word_tokens
    from trainers.models import demo_model_dir

    with pytest.raises(SystemExit):
        main(["blend", "--help"])
    help_text = capsys.readouterr().out
    examples = [shlex.split(quoted)[0] for quoted in re.findall(r'tokensmith blend ("[^"]+")', help_text)]
    assert len(examples) == 3
    assert any(parse_blend(e).needs_model for e in examples)
    tokenizer = CLIPTokenizer.from_pretrained(demo_model_dir() / "tokenizer")
    for expr in examples:  # every word of the examples is bare: each must be one token
        assert all(word_tokens(word, tokenizer).whole for word in word_texts(parse_blend(expr))), expr


def test_import_says_which_file_became_which_name_and_json_carries_the_file(tmp_path, capsys):
    odd = tmp_path / "日本.safetensors"
    write(tmp_path, "plain").rename(odd)
    same = write(tmp_path, "cat", seed=1)
    code, out, err = run(capsys, "import", odd, same)
    stored = out.split()
    assert code == EXIT_OK and stored[0].startswith("emb-") and stored[1] == "cat"
    assert f"tokensmith import: {odd} -> {stored[0]}" in err and " -> cat" not in err
    code, out, _err = run(capsys, "import", odd, same, "--json")
    sources = {entry["name"]: entry["source"] for entry in json.loads(out)}
    assert sources == {stored[0]: str(odd), "cat": str(same)}


def test_nearest_and_doctor_refuse_a_missing_model_config(tmp_path, capsys):
    run(capsys, "import", write(tmp_path, "cat"))
    commands = (["nearest", "cat"], ["doctor", "cat", "--model", "demo"], ["blend", "<cat>", "--name", "c2"])
    for argv in commands:
        code, _out, err = run(capsys, *argv, "--model-config", "/no/such/dir")
        assert code == EXIT_ERROR and "--model-config /no/such/dir does not exist" in err
        assert "loading model" not in err


def test_show_says_what_safetensors_format_pt_means(tmp_path, capsys, tokensmith_home):
    import safetensors.torch

    path = tmp_path / "neg.safetensors"  # A1111-style: one key, safetensors' own 'format: pt' tag
    safetensors.torch.save_file({"emb_params": torch.randn(2, 768)}, str(path), metadata={"format": "pt"})
    assert run(capsys, "import", path)[0] == EXIT_OK
    code, out, _ = run(capsys, "show", "neg")
    [line] = [line for line in out.splitlines() if line.startswith("format:")]
    assert code == EXIT_OK
    assert " ".join(line.split()[1:]) == "pt (safetensors' tag for torch tensors, not a .pt file)"


def test_list_json_of_an_empty_store_still_says_where_it_looked(tmp_path, capsys):
    code, out, err = run(capsys, "--home", tmp_path / "typo", "list", "--json")
    assert (code, json.loads(out)) == (EXIT_OK, [])
    assert (
        f"no embeddings in {tmp_path / 'typo' / 'embeddings'} yet" in err
    )  # on stderr: the JSON stays clean
