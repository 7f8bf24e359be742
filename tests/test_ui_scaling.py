"""The studio's pages with a large library or a long run: what each rerun draws and reads does not grow with
the whole store or the whole progress log (Library pages, Inspect's header filter and vector cache, the
incremental progress reader)."""

import re

import pytest
import torch
from apppage import open_page

from embeddings import Embedding, Store
from studio.app.views import library

# --- Library: a page of cards at a time ---


def card_names(at) -> list[str]:
    return [
        md.value.removeprefix("**&lt;").removesuffix("&gt;**")
        for md in at.markdown
        if md.value.startswith("**&lt;")
    ]


@pytest.fixture
def many(tokensmith_home) -> Store:
    """A store of 40 tiny embeddings, emb-00 … emb-39: two gallery pages."""
    store = Store.for_home(tokensmith_home)
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        store.put(
            Embedding(f"emb-{i:02d}", {"emb_params": torch.randn(1, 8, generator=g)}, {"family": "demo"})
        )
    return store


def test_the_library_draws_one_page_of_cards_and_the_page_field_moves_through_them(many):
    at = open_page("views/library.py")
    assert card_names(at) == [f"emb-{i:02d}" for i in range(library.PAGE_SIZE)]
    assert sum(1 for b in at.button if b.key and b.key.startswith("open_")) == library.PAGE_SIZE
    assert any(f"40 of 40 embeddings (cards 1–{library.PAGE_SIZE})" in c.value for c in at.caption)
    at.number_input(key="lib_page").set_value(2).run()
    assert card_names(at) == [f"emb-{i:02d}" for i in range(library.PAGE_SIZE, 40)]
    assert at.number_input(key="lib_page").value == 2
    at.run()  # the page is kept across reruns
    assert card_names(at)[0] == f"emb-{library.PAGE_SIZE:02d}"


def test_a_new_search_starts_at_the_first_page(many):
    at = open_page("views/library.py")
    at.number_input(key="lib_page").set_value(2).run()
    at.text_input(key="lib_query").set_value("emb-3").run()
    assert card_names(at) == [f"emb-{i}" for i in range(30, 40)]
    assert any("10 of 40 embeddings" in c.value for c in at.caption)
    assert not [n for n in at.number_input if n.key == "lib_page"]  # one page: no page field
    at.text_input(key="lib_query").set_value("").run()
    assert card_names(at)[0] == "emb-00"


def test_an_embedding_opened_by_the_url_on_another_page_shows_its_details_and_its_page(many):
    at = open_page("views/library.py", emb="emb-35")
    assert any(h.value == "<emb-35>" for h in at.subheader)
    assert "emb-35" in card_names(at) and at.number_input(key="lib_page").value == 2
    at.number_input(key="lib_page").set_value(1).run()
    assert "emb-35" not in card_names(at)
    assert any(h.value == "<emb-35>" for h in at.subheader)  # the open one stays open on any page


# --- Inspect: headers filter, loaded vectors cached by file ---


@pytest.fixture
def model(tiny_session, monkeypatch):
    from studio.app import context

    monkeypatch.setattr(context, "loaded_model", lambda spec: tiny_session.model)
    return tiny_session.model


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The names Store.get reads (a whole file and its sha256 each), in order."""
    seen: list[str] = []
    get = Store.get
    monkeypatch.setattr(Store, "get", lambda self, name: seen.append(name) or get(self, name))
    return seen


def mixed_store(home, width: int) -> Store:
    """cat, dog (this model's), three SDXL and two SD 2.x embeddings (other models')."""
    store = Store.for_home(home)
    for seed, name in enumerate(["cat", "dog"]):
        vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(seed))
        store.put(Embedding(name, {"emb_params": vectors}, {}))
    for name in ("xl1", "xl2", "xl3"):
        store.put(Embedding(name, {"clip_l": torch.ones(1, 768), "clip_g": torch.ones(1, 1280)}, {}))
    for name in ("v2a", "v2b"):
        store.put(Embedding(name, {"emb_params": torch.ones(1, 1024)}, {}))
    return store


def map_notes(at) -> list[str]:
    """The map's 'not on the map' captions as a reader sees them (backslash escapes read)."""
    return [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption if c.value.startswith("not on the map")]


def test_inspect_sums_up_embeddings_for_other_models_in_one_line_and_never_reads_them(
    model, reads, tokensmith_home
):
    mixed_store(tokensmith_home, model.widths["emb_params"])
    at = open_page("views/inspect.py")
    assert not at.error, [e.value for e in at.error]
    [note] = map_notes(at)
    assert note.startswith("not on the map: 5 embeddings made for other models than this one (SD 1")
    assert "SDXL 3, SD 2" in note and note.endswith("set the sidebar's Model to one of theirs to map them")
    assert not {"xl1", "xl2", "xl3", "v2a", "v2b"} & set(reads)


def test_inspect_names_a_file_that_should_fit_but_does_not_load(model, tokensmith_home):
    store = mixed_store(tokensmith_home, model.widths["emb_params"])
    data = bytearray(store.path("dog").read_bytes())
    data[-1] ^= 0xFF  # a vector's last byte: the header still fits, the sha256 no longer does
    store.path("dog").write_bytes(bytes(data))
    at = open_page("views/inspect.py")
    assert [w.value for w in at.warning if "dog.safetensors" in w.value], [w.value for w in at.warning]
    assert len(map_notes(at)) == 1  # the others still share one line


def test_inspect_reads_each_file_once_until_it_changes(model, reads, tokensmith_home):
    store = mixed_store(tokensmith_home, model.widths["emb_params"])
    at = open_page("views/inspect.py")
    neighbours = at.dataframe[0].value.copy()
    reads.clear()
    at.slider(key="insp_k").set_value(8).run()
    at.run()
    assert reads == []  # nothing changed: nothing read
    width = model.widths["emb_params"]
    store.put(Embedding("cat", {"emb_params": -torch.ones(2, width)}, {}), overwrite=True)
    at.run()
    assert reads == ["cat"]  # the overwritten file alone, read again (once: the panel and the map share it)
    assert not at.dataframe[0].value.equals(neighbours)
    store.delete("dog")
    at.run()
    assert not at.exception and not at.warning and not at.error


# --- progress.jsonl: each poll reads what was written since ---


class CountingFile:
    """A file opened by studio.progressfile, counting the bytes read from it."""

    def __init__(self, handle, counts):
        self._handle, self._counts = handle, counts

    def read(self, *size):
        data = self._handle.read(*size)
        self._counts.bytes += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


@pytest.fixture
def counts(monkeypatch):
    """Bytes progressfile reads from progress.jsonl files, and its json.loads calls (a parsed line each)."""
    import builtins
    import json
    from types import SimpleNamespace

    from studio import progressfile

    counted = SimpleNamespace(bytes=0, loads=0)
    real_open, real_loads = builtins.open, json.loads

    def counting_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        return CountingFile(handle, counted) if str(path).endswith("progress.jsonl") else handle

    def counting_loads(*args, **kwargs):
        counted.loads += 1
        return real_loads(*args, **kwargs)

    monkeypatch.setattr(progressfile, "open", counting_open, raising=False)
    monkeypatch.setattr(progressfile.json, "loads", counting_loads)
    return counted


def progress_lines(steps, *, loss: float = 0.5, total: int = 1000) -> str:
    import json

    rows = ({"step": s, "total": total, "loss": loss, "val_loss": 0.25, "metric": 10.0 + s} for s in steps)
    return "".join(json.dumps(row) + "\n" for row in rows)


def reset(counts) -> None:
    counts.bytes = counts.loads = 0


def test_a_poll_reads_and_parses_only_the_lines_written_since_the_last(tmp_path, counts):
    from studio.progressfile import read_progress

    path = tmp_path / "progress.jsonl"
    path.write_text(progress_lines(range(1000)))
    rows, final = read_progress(path)
    assert len(rows) == 1000 and final is None and counts.loads == 1000
    reset(counts)
    assert len(read_progress(path)[0]) == 1000
    assert counts.loads == 0 and counts.bytes < 200  # unchanged: the last line is checked, nothing parsed
    new = progress_lines(range(1000, 1010))
    with open(path, "a") as log:
        log.write(new + '{"step": 1010, "lo')  # the trainer is writing the next line
    reset(counts)
    rows, _final = read_progress(path)
    assert [row["step"] for row in rows[-2:]] == [1008, 1009]
    assert counts.loads == 11  # ten new rows and the unfinished line (tried, not kept)
    assert counts.bytes < len(new) + 200
    with open(path, "a") as log:
        log.write('ss": 0.5}\n{"event": "done", "message": "stored x", "kept": 1005}\n')
    reset(counts)
    rows, final = read_progress(path)
    assert rows[-1]["step"] == 1010 and final["event"] == "done" and counts.loads == 2


def test_a_resume_that_rewrites_the_log_shorter_or_in_place_is_read_again(tmp_path, counts):
    from studio.progressfile import read_progress
    from studio.runview import read_run
    from trainers.runfolder import RunFolder

    path = tmp_path / "progress.jsonl"
    path.write_text(progress_lines(range(100)) + '{"event": "stopped", "message": "stopped at step 99"}\n')
    assert read_progress(path)[1]["event"] == "stopped"
    RunFolder(tmp_path).truncate_progress_after(50)  # what a resume from step 50 does: a new, shorter file
    rows, final = read_progress(path)
    assert [row["step"] for row in rows] == list(range(51)) and final is None
    path.write_text(progress_lines(range(30)))  # shorter, in place
    assert [row["step"] for row in read_progress(path)[0]] == list(range(30))
    path.write_text(progress_lines(range(40), loss=0.125))  # longer, in place: the read part changed too
    rows, _final = read_progress(path)
    assert len(rows) == 40 and {row["loss"] for row in rows} == {0.125}
    assert read_run(tmp_path, alive=True).step == 39
    path.unlink()
    assert read_progress(path) == ([], None)


def test_a_damaged_step_written_after_a_poll_still_makes_the_run_unreadable(tmp_path):
    from studio.runview import read_run

    path = tmp_path / "progress.jsonl"
    path.write_text(progress_lines(range(5)))
    assert read_run(tmp_path, alive=True).status == "running"
    with open(path, "a") as log:
        log.write('{"step": "five"}\n' + progress_lines([6]))
    state = read_run(tmp_path, alive=True)
    assert state.status == "unreadable" and '"five"' in state.message


def test_the_train_page_reads_the_run_folder_once_per_run(tmp_path, monkeypatch):
    from studio.jobs import JobRunner

    run = tmp_path / "tokensmith-home" / "runs" / "cat-20260101-000000-0000"
    run.mkdir(parents=True)
    (run / "config.toml").write_text('name = "cat"\nsteps = 1000\n')
    (run / "progress.jsonl").write_text(progress_lines(range(20)))
    calls = []
    state = JobRunner.state
    monkeypatch.setattr(JobRunner, "state", lambda self, job: calls.append(job) or state(self, job))
    at = open_page("views/train.py")
    assert any("**" in m.value and "ended" in m.value for m in at.markdown)  # the run is shown
    calls.clear()
    at.run()
    assert len(calls) == 1, calls
