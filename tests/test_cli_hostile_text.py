"""Hostile text and files at the command line, after the security review: `demo --out` replaces only a run
the demo made; `show`, `doctor` and `list` print a file's control characters as escapes (and `list`'s
advice stays one pasteable line); a config error shows a value cut short, and a YAML alias is refused before
it expands; `export --format a1111-png` goes on with a plain card past a preview that cannot be read."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from clirun import run
from PIL import Image

import studio.generation
import trainers.models
from embeddings import Embedding, Store
from embeddings.canonical import save_canonical
from embeddings.importing import import_path
from embeddings.text import printable, shell_quote
from studio.cli import EXIT_ERROR, EXIT_OK
from trainers import trainer as trainer_module
from trainers.config import ConfigError, TrainConfig
from trainers.configfile import load, read_file
from trainers.trainer import train  # the real one: fake_demo replaces the module's

ESC = "\x1b"
HOSTILE = "\x1b]0;PWNED-TITLE\x07\x1b[2J\x1b[31mall files deleted\x1b[0m\r\nfake: line"


def vectors(width: int = 32) -> dict:
    return {"emb_params": torch.randn(1, width, generator=torch.Generator().manual_seed(5))}


# --- printable and shell_quote ---


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\x1b[2Jb\nc", "a\\x1b[2Jb\\nc"),
        ("bell\x07 cr\r del\x7f c1\x9b nul\x00", "bell\\x07 cr\\r del\\x7f c1\\x9b nul\\x00"),
        ("tab\tstays", "tab\tstays"),
        ("café 日本 — ok", "café 日本 — ok"),
        ("byte\udcff", "byte\\xff"),  # a file name's undecodable byte, as os.fsdecode gives it
        ("", ""),
    ],
)
def test_printable_escapes_control_characters_only(text, shown):
    assert printable(text) == shown


def test_shell_quote_is_shlex_for_plain_text_and_one_line_for_controls():
    assert shell_quote("EasyNegative (1)") == "'EasyNegative (1)'"
    assert shell_quote("cat") == "cat"
    assert shell_quote("x\x1b[2Jy\nfake line") == "$'x\\x1b[2Jy\\nfake line'"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize("name", ["x\x1b[2Jy\nfake line", "it's \\ a\x85b\tc", "byte\udcffs", "café \x07"])
def test_shell_quote_gives_bash_the_names_own_bytes(name):
    quoted = shell_quote(name)
    assert "\n" not in quoted and "\t" not in quoted and not re.search(r"[\x00-\x1f\x7f-\x9f]", quoted)
    said = subprocess.run(["bash", "-c", f"printf %s {quoted}"], capture_output=True, check=True).stdout
    assert said == name.encode("utf-8", "surrogateescape")


# --- show, doctor, list: a file's text shows its controls as escapes ---


def test_show_prints_metadata_controls_as_escapes_one_line_each(tokensmith_home, capsys):
    meta = {"description": HOSTILE, f"ss_x{ESC}[1mbold": "v", "family": f"sd1{ESC}[2J"}
    Store.for_home(tokensmith_home).put(Embedding("evil", vectors(), meta=meta))
    code, out, _ = run(capsys, "show", "evil")
    assert code == EXIT_OK and ESC not in out and "\r" not in out and "\x07" not in out
    lines = out.splitlines()
    assert "description:        " + printable(HOSTILE) in lines
    assert not any(line.startswith("fake: line") for line in lines)  # no forged line
    assert "ss_x\\x1b[1mbold:    v" in lines  # padded as it prints
    assert lines[0].startswith("evil: sd1\\x1b[2J,")


def test_show_json_keeps_the_metadata_exact_and_the_output_free_of_controls(tokensmith_home, capsys):
    Store.for_home(tokensmith_home).put(Embedding("evil", vectors(), meta={"description": HOSTILE}))
    code, out, _ = run(capsys, "show", "evil", "--json")
    assert code == EXIT_OK and ESC not in out and "\\u001b" in out
    assert json.loads(out)["meta"]["description"] == HOSTILE


def test_doctor_prints_a_files_metadata_as_escapes(tmp_path, capsys):
    path = save_canonical(
        Embedding("evilname", vectors(), meta={"steps": f"{ESC}[2J", "init": "a\nb"}),
        tmp_path / "evilname.safetensors",
    )
    code, out, _ = run(capsys, "doctor", path)
    assert code == EXIT_OK and ESC not in out
    assert out.splitlines()[2].startswith("provenance: steps \\x1b[2J; init a\\nb; created ")
    code, out, _ = run(capsys, "doctor", path, "--json")
    assert ESC not in out and json.loads(out)["embedding"]["meta"]["steps"] == f"{ESC}[2J"


def test_doctor_of_a_folder_names_each_file_printably(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    save_canonical(Embedding("ok", vectors()), folder / "ok.safetensors")
    (folder / f"bad{ESC}[2J.pt").write_bytes(b"not a pickle")
    code, out, _ = run(capsys, "doctor", folder)
    assert code == EXIT_ERROR and ESC not in out
    assert f"== {folder}/bad\\x1b[2J.pt" in out.splitlines()


def test_list_warning_for_a_stray_name_is_one_line_whose_rename_pastes(tokensmith_home, capsys):
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("good", vectors(), meta={"family": f"sd1{ESC}[2J", "created": f"{ESC}[31m2026"}))
    stray = "x\x1b[2Jy\nfake line"
    shutil.copy(store.path("good"), store.root / f"{stray}.safetensors")
    code, out, err = run(capsys, "list")
    assert code == EXIT_OK and ESC not in out + err
    warning, *rest = err.splitlines()
    assert rest == []  # one line: no forged 'fake line...'
    assert warning.startswith("tokensmith list: warning: skipped x\\x1b[2Jy\\nfake line.safetensors: ")
    command = re.search(r"`tokensmith rename (\$'.*?') (\S+)`", warning)
    assert command.groups() == ("$'x\\x1b[2Jy\\nfake line'", "x-2Jy-fake-line")
    assert "`tokensmith rm $'x\\x1b[2Jy\\nfake line'`" in warning
    assert out.split() == ["good", "sd1\\x1b[2J", "1v", "width", "32", "\\x1b[31m2026"]
    # the name the pasted command hands tokensmith (bash's reading of $'...') renames the file
    assert run(capsys, "rename", stray, "x-2Jy-fake-line")[0] == EXIT_OK
    assert store.names() == ["good", "x-2Jy-fake-line"]


def test_list_json_escapes_controls_and_reads_back(tokensmith_home, capsys):
    Store.for_home(tokensmith_home).put(Embedding("evil", vectors(), meta={"description": HOSTILE}))
    code, out, _ = run(capsys, "list", "--json")
    assert code == EXIT_OK and ESC not in out
    assert json.loads(out)[0]["meta"]["description"] == HOSTILE


def test_rm_of_a_stray_name_says_how_to_restore_it_on_one_line(tokensmith_home, capsys):
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("good", vectors()))
    stray = "x\x1b[2Jy\nz"
    shutil.copy(store.path("good"), store.root / f"{stray}.safetensors")
    code, _, err = run(capsys, "rm", stray)
    assert code == EXIT_OK and err == (
        "moved 'x\\x1b[2Jy\\nz' to the trash; `tokensmith restore $'x\\x1b[2Jy\\nz'` brings it back\n"
    )


# --- config files: short values, no YAML aliases ---

LAUGHS = (
    "name: [&a ["
    + ",".join(['"lol"'] * 9)
    + "]"
    + "".join(f", &{b} [" + ",".join([f"*{a}"] * 9) + "]" for a, b in zip("abcdefg", "bcdefgh", strict=True))
    + "]\n"
)


def test_a_billion_laughs_yaml_config_fails_fast_with_a_short_message(tmp_path, capsys):
    config = tmp_path / "laughs6.yaml"
    config.write_text(LAUGHS)
    assert len(LAUGHS.encode()) == 298  # the review's file: 9**8 = 43 million 'lol's once expanded
    started = time.monotonic()
    code, out, err = run(capsys, "train", "--config", config, "--images", tmp_path)
    assert time.monotonic() - started < 5 and code == EXIT_ERROR and out == ""
    assert err == (
        f"tokensmith train: error: config file {config} uses the YAML anchor &a (line 1); a training config "
        "takes plain values: write each value out where it is used\n"
    )


def test_a_yaml_alias_is_refused_even_a_small_one(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("steps: 3\ninit: *word\n")
    with pytest.raises(ConfigError, match=r"uses the YAML alias \*word \(line 2\)"):
        read_file(config)
    config.write_text("name: [&a [lol, lol, lol], &b [*a, *a, *a], [*b, *b, *b]]\n")
    with pytest.raises(ConfigError, match="uses the YAML anchor &a") as caught:
        load(config)
    assert len(str(caught.value)) < 300


def test_a_long_refused_value_is_cut_to_about_80_characters(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'steps = "{"9x" * 5000}"\nflip = [{", ".join(["1"] * 1000)}]\n')
    with pytest.raises(ConfigError) as caught:
        load(config)
    message = str(caught.value)
    assert len(message) < 200 and "..." in message  # reprlib keeps its two ends
    assert message.startswith(f"config file {config}: steps must be a whole number, got '9x9x9x")


def test_a_nested_value_shows_a_few_items(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("flip: [[1, 2, 3, 4, 5, 6], 2, 3, 4, 5, 6, 7]\n")
    with pytest.raises(
        ConfigError, match=r"flip must be true or false, got \[\[1, 2, 3, 4, \.\.\.\], 2, 3, 4"
    ):
        load(config)


def test_a_huge_hex_number_is_named_not_printed(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f"flip = 0x{'f' * 5000}\n")  # 6000 decimal digits: more than repr shows
    with pytest.raises(
        ConfigError, match=r"flip must be true or false, got a whole number too long to show$"
    ):
        load(config)


def test_a_yaml_number_key_is_an_unknown_key_not_a_crash(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"1: 2\n{'k' * 500}: 3\n")
    with pytest.raises(ConfigError, match=r"unknown training config key\(s\) 1, kkkk") as caught:
        load(config)
    assert "k" * 78 not in str(caught.value)


def test_unknown_keys_past_ten_are_counted_not_listed():
    from trainers.configfile import from_mapping

    with pytest.raises(ConfigError, match=r"key\(s\) k00, k01, .*, k09 and 90 more; valid keys") as caught:
        from_mapping({f"k{i:02d}": 1 for i in range(100)})
    assert "k10" not in str(caught.value)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_a_config_nested_a_thousand_deep_is_a_config_error(tmp_path, suffix):
    config = tmp_path / f"deep{suffix}"
    depth = 700 if suffix == ".yaml" else 3000  # PyYAML's scanner is quadratic in the depth: 3000 takes 7 s
    config.write_text(("name: " if suffix == ".yaml" else "name = ") + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nests lists or tables hundreds deep"):
        read_file(config)


# --- export --format a1111-png past a preview that cannot be read ---


@pytest.mark.parametrize("broken", [b"not really a png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_export_a1111_png_with_an_unreadable_preview_warns_and_writes_a_plain_card(
    tokensmith_home, tmp_path, capsys, broken
):
    store = Store.for_home(tokensmith_home)
    emb = Embedding("cat", vectors())
    store.put(emb, preview=Image.new("RGB", (16, 16), "red"))
    preview = store.preview_path("cat")
    preview.write_bytes(broken)
    out_path = tmp_path / "cat.png"
    code, out, err = run(capsys, "export", "cat", "--format", "a1111-png", "--out", out_path)
    assert code == EXIT_OK and out == f"{out_path}\n"
    (warning,) = err.splitlines()
    assert warning.startswith(f"tokensmith export: warning: the preview {preview} cannot be read (")
    assert warning.endswith(
        "; the PNG carries a plain card instead (replace that file with an image, or delete it)"
    )
    (back,) = import_path(out_path)
    assert torch.equal(back.vectors["emb_params"], emb.vectors["emb_params"])


def test_export_a1111_png_still_uses_a_readable_preview(tokensmith_home, tmp_path, capsys):
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("cat", vectors()), preview=Image.new("RGB", (40, 24), (10, 200, 30)))
    code, _, err = run(capsys, "export", "cat", "--format", "a1111-png", "--out", tmp_path / "cat.png")
    assert code == EXIT_OK and err == ""
    with Image.open(tmp_path / "cat.png") as image:
        assert image.size == (40, 24)


# --- demo --out: only a run the demo made is replaced ---


@pytest.fixture(scope="module")
def demo_model():
    from trainers.models import load_model

    return load_model("demo")


def quick_run(home: Path, images: Path, run_dir: Path, name: str, model) -> Path:
    """A real run folder, made by train() in a step (config.toml, progress.jsonl, a checkpoint)."""
    import random

    from demo.world import parse_concept, render

    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(2):
        render(parse_concept("purple triangle"), rng).save(images / f"{i}.png")
    cfg = TrainConfig(
        images=str(images),
        name=name,
        run_dir=str(run_dir),
        steps=1,
        batch_size=1,
        validate_every=0,
        preview_images=0,
        refine_latents=0,
        init="a",
    )
    train(cfg, home=home, model=model, echo=lambda text: None)
    assert (run_dir / "config.toml").is_file() and (run_dir / "progress.jsonl").is_file()
    return run_dir


@pytest.fixture
def fake_demo(monkeypatch):
    """The demo with its model, sampling and training faked: the training makes no run folder."""

    class FakeSession:
        def __init__(self, model):
            pass

        def generate(self, request, *, store):
            return [SimpleNamespace(image=Image.new("RGB", (32, 32), "purple"))] * request.num_images

    def trained(cfg, *, home, **kwargs):
        meta = {"steps": "1", "trainer": json.dumps({"trained_steps": 1})}
        token = Embedding(cfg.name, {"emb_params": torch.randn(2, 64) * 0.01}, meta=meta)
        Store.for_home(home).put(token, overwrite=True)
        return token

    monkeypatch.setattr(studio.generation, "Session", FakeSession)
    monkeypatch.setattr(trainers.models, "load_model", lambda name: SimpleNamespace(family="demo"))
    monkeypatch.setattr(trainer_module, "train", trained)


def test_demo_refuses_a_users_run_at_out_run_before_writing_anything(
    tmp_path, tokensmith_home, capsys, demo_model, fake_demo
):
    run_dir = quick_run(tokensmith_home, tmp_path / "shots", tmp_path / "proj" / "run", "mine", demo_model)
    (run_dir / "NOTES.txt").write_text("my notes")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    code, out, err = run(capsys, "demo", "--out", tmp_path / "proj", "--steps", "1")
    assert (code, out) == (EXIT_ERROR, "")
    assert err == f"tokensmith demo: error: {run_dir} is a training run of 'mine'; choose another --out\n"
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before
    assert (run_dir / "NOTES.txt").read_text() == "my notes"
    assert sorted(p.name for p in (tmp_path / "proj").iterdir()) == ["run"]  # no images rendered


def test_demo_replaces_the_run_an_earlier_demo_made(tmp_path, tokensmith_home, capsys, demo_model, fake_demo):
    out = tmp_path / "demo-out"
    run_dir = quick_run(tokensmith_home, out / "images", out / "run", "demo-purple-triangle", demo_model)
    code, _, err = run(capsys, "demo", "--out", out, "--steps", "1")
    assert code == EXIT_OK, err
    assert not run_dir.exists()  # removed; the (faked) training made no new one
    assert (out / "contact-sheet.png").is_file()


def test_demo_never_deletes_an_earlier_demos_run_while_it_trains(
    tmp_path, tokensmith_home, capsys, demo_model, fake_demo
):
    out = tmp_path / "demo-out"
    run_dir = quick_run(tokensmith_home, out / "images", out / "run", "demo-purple-triangle", demo_model)
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != "pid")
    holds = (
        "import sys; from pathlib import Path; from trainers.runfolder import RunFolder; "
        "RunFolder(Path(sys.argv[1])).claim(); print(1, flush=True); sys.stdin.read()"
    )
    trainer = subprocess.Popen(  # another demo's trainer, still training in OUT/run
        [sys.executable, "-c", holds, str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert trainer.stdout.readline().strip() == "1"
        code, _, err = run(capsys, "demo", "--out", out, "--steps", "1")
    finally:
        trainer.stdin.close()
        trainer.wait(timeout=30)
    assert code == EXIT_ERROR
    assert err == (
        f"tokensmith demo: error: a demo is training in {run_dir} (process {trainer.pid}); wait for it to "
        "finish or stop it, or pass another --out\n"
    )
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != "pid") == before


def test_demo_refuses_a_run_whose_config_cannot_be_read(tmp_path, capsys, fake_demo):
    run_dir = tmp_path / "proj" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / "progress.jsonl").write_text('{"event": "start"}\n')
    (run_dir / "config.toml").write_text("name = [unclosed\n")
    code, _, err = run(capsys, "demo", "--out", tmp_path / "proj")
    assert code == EXIT_ERROR and err == (
        f"tokensmith demo: error: {run_dir} is a training run (its config.toml is missing or unreadable); "
        "choose another --out\n"
    )
    assert run_dir.is_dir() and not (tmp_path / "proj" / "images").exists()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (
            "steps: 10\nrate: [1, 2\n",
            "expected ',' or ']', but got '<stream end>' at line 3, column 1 (while parsing a flow sequence "
            "from line 2, column 7)",
        ),
        ("steps: 10\n  rate: 3\n", "mapping values are not allowed here at line 2, column 7"),
    ],
)
def test_a_yaml_syntax_error_is_one_readable_line_with_where(tmp_path, capsys, text, said):
    """PyYAML's own message spans lines (source and caret): printed as one line it read '\\n  in ...'."""
    (tmp_path / "bad.yaml").write_text(text)
    config = ["--config", tmp_path / "bad.yaml"]
    code, _out, err = run(capsys, "train", *config, "--images", tmp_path, "--name", "x")
    assert code == EXIT_ERROR and "\\n" not in err and len(err.strip().splitlines()) == 1
    assert err.strip().endswith(f"is not valid YAML: {said}")
