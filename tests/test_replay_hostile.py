"""Replaying a PNG someone handed you (studio/generation/replaying.py, provenance.py, guidance.py,
guide_modules.py): the image names no code that runs unless the user asked for it, asks for no size past
generate's limit, and cannot learn from the error which files exist on the studio's machine. Every image
here is crafted."""

import hashlib
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from clirun import pixels, run
from PIL import Image, PngImagePlugin
from streamlit.testing.v1 import AppTest

from embeddings.errors import TokensmithError
from studio.app import context
from studio.generation import GenerateRequest, ReplayError, read_provenance, replay, save_png
from studio.generation.guide_modules import module_source
from studio.generation.provenance import CHUNK
from trainers.config import MAX_RESOLUTION

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")
LOSS = "def f(image):\n    return (image[:, 2] - 0.9).abs().mean()\n"


@pytest.fixture(autouse=True)
def import_state(monkeypatch):
    """sys.path as it was after each test (guide modules put the current folder on it), and the tattling
    modules a test imported forgotten, so the next test sees an import happen afresh."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("tattle"):
            del sys.modules[name]


def _tattler(folder: Path, name: str) -> Path:
    """`name`.py in `folder`: a loss function; importing it writes RAN-`name` next to it."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{name}.py"
    source.write_text(
        f"from pathlib import Path\nPath(__file__).with_name('RAN-{name}').write_text('ran')\n{LOSS}"
    )
    importlib.invalidate_caches()
    return source


def _tattling_package(folder: Path, package: str) -> Path:
    """`package`/losses.py (a plain loss) in a package whose __init__.py writes RAN-`package` at import."""
    (folder / package).mkdir(parents=True)
    init = f"from pathlib import Path\nPath(__file__).parent.with_name('RAN-{package}').write_text('ran')\n"
    (folder / package / "__init__.py").write_text(init)
    (folder / package / "losses.py").write_text(LOSS)
    importlib.invalidate_caches()
    return folder / package / "losses.py"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _record(spec: str, path: Path, sha256: str | None = None) -> dict:
    """A module guide's guide_files entry, as Guide.record writes it."""
    return {"guide": spec, "kind": "module", "path": str(path), "sha256": sha256 or _sha256(path)}


def _crafted(path: Path, prov: dict) -> Path:
    """A PNG carrying `prov` as its tokensmith chunk, as someone could write by hand."""
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps(prov))
    Image.new("RGB", (16, 16)).save(path, pnginfo=info)
    return path


@pytest.fixture
def plain_prov(tiny_session):
    """The provenance of a real 16x16 image of the tiny model (no guides), to change by hand."""
    [made] = tiny_session.generate(GenerateRequest("a circle", steps=2))
    return json.loads(json.dumps(made.provenance))


def _no_sampling(session, monkeypatch):
    """A refusal must come before sampling: make sampling itself a failure."""

    def sample(*args, **kwargs):
        raise AssertionError("the replay sampled")

    monkeypatch.setattr(session, "_sample", sample)


# --- module guides: nothing is imported unless asked for ---


def test_a_module_guide_without_its_record_is_refused_and_imports_nothing(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    _tattler(tmp_path, "tattle_plain")
    monkeypatch.chdir(tmp_path)  # where the module imports from by name
    path = _crafted(
        tmp_path / "cool.png", plain_prov | {"guides": ["module=tattle_plain:f"], "guide_files": []}
    )
    for allowed in (False, True):
        with pytest.raises(ReplayError) as caught:
            replay(path, session=tiny_session, allow_guide_modules=allowed)
        assert str(caught.value) == (
            f"{path}: the provenance chunk has the guide \"module=tattle_plain:f\" without its 'guide_files' "
            "record; it was changed after tokensmith wrote it"
        )
    assert not (tmp_path / "RAN-tattle_plain").exists() and "tattle_plain" not in sys.modules


def test_a_guide_spelt_otherwise_is_still_a_module_guide(tiny_session, plain_prov, tmp_path, monkeypatch):
    _tattler(tmp_path, "tattle_case")
    monkeypatch.chdir(tmp_path)
    path = _crafted(
        tmp_path / "cool.png", plain_prov | {"guides": [" Module = tattle_case:f"], "guide_files": []}
    )
    with pytest.raises(ReplayError, match="without its 'guide_files' record"):
        replay(path, session=tiny_session, allow_guide_modules=True)
    assert not (tmp_path / "RAN-tattle_case").exists()


def test_a_dotted_module_is_found_without_importing_its_parent_package(tmp_path, monkeypatch):
    losses = _tattling_package(tmp_path, "tattle_pkg")
    monkeypatch.chdir(tmp_path)
    assert module_source("tattle_pkg.losses") == losses.resolve()
    assert module_source("tattle_pkg.nothing") is None
    assert module_source("tattle_pkg..losses") is None and module_source("../tattle_pkg") is None
    assert not (tmp_path / "RAN-tattle_pkg").exists() and "tattle_pkg" not in sys.modules


def test_a_changed_dotted_module_is_refused_before_its_parent_package_runs(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    losses = _tattling_package(tmp_path, "tattle_pkg2")
    monkeypatch.chdir(tmp_path)
    spec = "module=tattle_pkg2.losses:f"
    prov = plain_prov | {"guides": [spec], "guide_files": [_record(spec, losses, "0" * 64)]}
    path = _crafted(tmp_path / "cool.png", prov)
    _no_sampling(tiny_session, monkeypatch)
    with pytest.raises(
        ReplayError, match=r"guide module tattle_pkg2\.losses \(.*losses\.py\) has changed since"
    ):
        replay(path, session=tiny_session, allow_guide_modules=True, precise=True)
    with pytest.raises(
        ReplayError, match=r"tattle_pkg2\.losses \(.*\) is missing, unreadable or changed since"
    ):
        replay(path, session=tiny_session, allow_guide_modules=True)
    assert not (tmp_path / "RAN-tattle_pkg2").exists() and "tattle_pkg2" not in sys.modules


def test_a_record_for_a_guide_the_image_does_not_use_imports_nothing(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    _tattling_package(tmp_path, "tattle_pkg3")
    monkeypatch.chdir(tmp_path)
    stray = _record("module=tattle_pkg3.x:f", tmp_path / "nonexistent" / "x.py", "0" * 64)
    path = _crafted(tmp_path / "cool.png", plain_prov | {"guides": [], "guide_files": [stray]})
    replay(path, session=tiny_session, allow_guide_modules=True)  # the image's own guides: none
    assert not (tmp_path / "RAN-tattle_pkg3").exists() and "tattle_pkg3" not in sys.modules


def _module_image(session, folder: Path, name: str, monkeypatch):
    """An image made with the guide module `name` in `folder`; then the module forgotten and the current
    folder elsewhere, as when someone else's image arrives."""
    source = _tattler(folder, name)
    monkeypatch.chdir(folder)
    [made] = session.generate(GenerateRequest("a circle", steps=2, guides=(f"module={name}:f",)))
    path = save_png(made, folder.parent / f"{name}.png")
    (folder / f"RAN-{name}").unlink()
    del sys.modules[name]
    monkeypatch.chdir(folder.parent)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(folder), "")])
    return made, path, source


def test_replay_names_the_module_and_its_file_and_runs_it_only_when_allowed(
    tiny_session, tmp_path, monkeypatch
):
    made, path, source = _module_image(tiny_session, tmp_path / "w", "tattle_made", monkeypatch)
    with pytest.raises(ReplayError) as caught:
        replay(path, session=tiny_session)
    message = str(caught.value)
    assert f"the guide module 'tattle_made' from '{source.resolve()}'" in message
    assert "read that file first" in message and "`tokensmith replay --allow-guide-modules`" in message
    assert not (tmp_path / "w" / "RAN-tattle_made").exists() and "tattle_made" not in sys.modules
    again = replay(path, session=tiny_session, allow_guide_modules=True)  # from its recorded folder
    assert (tmp_path / "w" / "RAN-tattle_made").exists()
    assert np.array_equal(np.asarray(again.image), np.asarray(made.image))


def test_the_cli_refuses_a_guide_module_until_the_flag_is_given(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    folder = tmp_path / "w"
    source = _tattler(folder, "tattle_cli")
    monkeypatch.chdir(folder)
    made = tmp_path / "made.png"
    argv = ["generate", "a circle", "--model", tiny_model_dir, "--steps", "2", "--out", made]
    assert run(capsys, *argv, "--guide-module", "tattle_cli:f")[0] == 0
    (folder / "RAN-tattle_cli").unlink()
    del sys.modules["tattle_cli"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in (str(folder), "")])
    code, out, err = run(capsys, "replay", made, "--out", tmp_path / "again.png")
    assert code == 1 and out == "" and "Traceback" not in err
    assert f"'tattle_cli' from '{source.resolve()}'" in err and "--allow-guide-modules" in err
    assert not (folder / "RAN-tattle_cli").exists() and not (tmp_path / "again.png").exists()
    code, out, _err = run(capsys, "replay", made, "--out", tmp_path / "again.png", "--allow-guide-modules")
    assert code == 0 and "pixel-identical" in out
    assert (folder / "RAN-tattle_cli").exists() and np.array_equal(
        pixels(made), pixels(tmp_path / "again.png")
    )


def test_a_module_edited_after_the_image_is_refused_with_the_flag_too(tiny_session, tmp_path, monkeypatch):
    _made, path, source = _module_image(tiny_session, tmp_path / "w", "tattle_edit", monkeypatch)
    source.write_text(source.read_text() + "# edited\n")
    with pytest.raises(
        ReplayError, match=r"guide module tattle_edit \(.*tattle_edit\.py\) has changed since"
    ):
        replay(path, session=tiny_session, allow_guide_modules=True, precise=True)
    assert not (tmp_path / "w" / "RAN-tattle_edit").exists() and "tattle_edit" not in sys.modules


# --- the size read from the file ---


def test_replay_refuses_a_size_past_the_limit_before_sampling(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    _no_sampling(tiny_session, monkeypatch)
    big = MAX_RESOLUTION * 4
    path = _crafted(tmp_path / "huge.png", plain_prov | {"width": big, "height": big})
    with pytest.raises(ReplayError) as caught:
        replay(path, session=tiny_session)
    assert str(caught.value) == (
        f"cannot replay {path}: it asks for an image of {big}x{big}, past the {MAX_RESOLUTION} pixels a side "
        "that generate makes too (an image that large would exhaust this machine's memory)"
    )


def test_out_of_memory_in_a_replay_names_no_flag_replay_lacks(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    path = _crafted(tmp_path / "made.png", plain_prov)

    def sample(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(tiny_session, "_sample", sample)
    with pytest.raises(TokensmithError) as caught:
        replay(path, session=tiny_session)
    message = str(caught.value)
    assert message.startswith("replaying this 16x16 image ran out of memory (")
    assert "--width" not in message and "--height" not in message and "--guide" not in message
    assert "replay it where more memory is free" in message


# --- guides and guide_files changed by hand ---


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ({"guide_files": ["hello"]}, "has a bad 'guide_files' list"),
        ({"guide_files": [{"kind": "module"}]}, "has a bad 'guide_files' list"),
        ({"guide_files": {"kind": "module"}}, "has a bad 'guide_files' list"),
        (
            {"guide_files": [{"kind": "module", "guide": "x", "path": 3, "sha256": "0"}]},
            "has a bad 'guide_files' list",
        ),
        ({"guides": "color=red"}, "has a bad 'guides' list"),
        ({"guides": [["color=red"]]}, "has a bad 'guides' list"),
        (
            {"guides": ["match=/etc/passwd"]},
            "has the guide \"match=/etc/passwd\" without its 'guide_files' record",
        ),
        ({"init_image": {"path": 5, "sha256": "0"}}, "has a bad 'init_image'"),
    ],
)
def test_bad_guide_records_are_named_not_a_traceback(plain_prov, tmp_path, change, said):
    path = _crafted(tmp_path / "edited.png", plain_prov | change)
    with pytest.raises(ReplayError) as caught:
        read_provenance(path)
    assert (
        str(caught.value) == f"{path}: the provenance chunk {said}; it was changed after tokensmith wrote it"
    )


# --- recorded files: the studio's words do not tell which paths exist ---


def _probes(plain_prov, tmp_path, key: str) -> dict[str, Path]:
    """Crafted images whose recorded init image (`key` 'init') or match image ('match') is missing, is not
    an image, or is an image other than the recorded one."""
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "other.png")
    images = {}
    for case, target in (("missing", "gone.png"), ("not an image", "notes.txt"), ("changed", "other.png")):
        target = str(tmp_path / target)
        if key == "init":
            change = {"init_image": {"path": target, "sha256": "0" * 64, "reader": 3}, "strength": 0.5}
        else:
            record = {"guide": f"match={target}", "kind": "match", "path": target, "sha256": "0" * 64}
            change = {"guides": [f"match={target}"], "guide_files": [record | {"reader": 2}]}
        images[case] = _crafted(tmp_path / f"{key}-{case.replace(' ', '-')}.png", plain_prov | change)
    return images


@pytest.mark.parametrize(("key", "what"), [("init", "init image"), ("match", "match image")])
def test_a_recorded_file_gets_one_wording_unless_precise(tiny_session, plain_prov, tmp_path, key, what):
    said = {}
    for case, path in _probes(plain_prov, tmp_path, key).items():
        with pytest.raises(ReplayError) as caught:
            replay(path, session=tiny_session)
        said[case] = str(caught.value).replace(str(path), "IMAGE").replace(str(tmp_path), "DIR")
    assert said["missing"] == (
        f"cannot replay IMAGE: {what} DIR/gone.png is missing, unreadable or changed since: a replay needs "
        "the very file it was made with"
    )
    assert said["not an image"] == said["missing"].replace("gone.png", "notes.txt")
    assert said["changed"] == said["missing"].replace("gone.png", "other.png")


@pytest.mark.parametrize(
    ("key", "words"),
    [
        (
            "init",
            {
                "missing": "is not available",
                "not an image": "can no longer be read",
                "changed": "has changed",
            },
        ),
        (
            "match",
            {"missing": "is missing", "not an image": "has changed since", "changed": "has changed since"},
        ),
    ],
)
def test_the_cli_keeps_saying_which_trouble_a_file_has(tiny_session, plain_prov, tmp_path, key, words):
    for case, path in _probes(plain_prov, tmp_path, key).items():
        with pytest.raises(ReplayError, match=words[case]):
            replay(path, session=tiny_session, precise=True)


# --- the studio ---


def _upload_and_replay(png: bytes, name: str = "cool.png") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    at.switch_page("views/generate.py").run()
    at.file_uploader(key="gen_replay_file").set_value([(name, png, "image/png")])
    at.run()
    at.button(key="gen_replay").click().run()
    assert not at.exception, at.exception
    return at


def test_the_studio_never_runs_an_uploaded_images_guide_module(tiny_session, tmp_path, monkeypatch):
    monkeypatch.setattr(context, "generation_session", lambda spec: tiny_session)
    _made, path, source = _module_image(tiny_session, tmp_path / "w", "tattle_studio", monkeypatch)
    monkeypatch.chdir(tmp_path / "w")  # even where the module imports by name, hash and all
    at = _upload_and_replay(path.read_bytes())
    [error] = [e.value for e in at.error]
    assert "'tattle_studio' from" in error and str(source.resolve()) in error
    assert "`tokensmith replay --allow-guide-modules`" in error and "studio never runs" in error
    assert not (tmp_path / "w" / "RAN-tattle_studio").exists() and "tattle_studio" not in sys.modules


def test_the_studio_says_the_same_of_a_missing_and_a_non_image_init_file(
    tiny_session, plain_prov, tmp_path, monkeypatch
):
    monkeypatch.setattr(context, "generation_session", lambda spec: tiny_session)
    probes = _probes(plain_prov, tmp_path, "init")
    said = []
    for case, name in (("missing", "gone.png"), ("not an image", "notes.txt"), ("changed", "other.png")):
        at = _upload_and_replay(probes[case].read_bytes())
        said.append(at.error[0].value.replace(name, "FILE"))
    assert said[0] == said[1] == said[2] and "is missing, unreadable or changed since" in said[0]
