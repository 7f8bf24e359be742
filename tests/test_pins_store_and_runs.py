"""Pins found by mutation testing (round 3) of the store, its batches and trash, training checkpoints and
resume checks, and the studio's job runner: each test holds one behaviour that a small change to the code
broke while every other test still passed."""

import pytest
import torch

from embeddings import Embedding, Store, StoreError, save_canonical


def emb(name, seed=0, n=1, width=32):
    vectors = torch.randn(n, width, generator=torch.Generator().manual_seed(seed))  # (n, width)
    return Embedding(name, {"emb_params": vectors})


@pytest.fixture
def store(tokensmith_home):
    return Store.for_home(tokensmith_home)


# --- the store ---


def test_resolve_leaves_a_name_alone_when_two_stored_names_fold_to_it(store):
    """`resolve` maps 'cat' to the one stored name equal to it but for letter case; two such files (copied
    in by hand, where the case rule never ran) make it ambiguous, and neither may be picked silently."""
    store.root.mkdir(parents=True)
    save_canonical(emb("Cat", seed=1), store.root / "Cat.safetensors")
    assert store.resolve("cat") == "Cat"
    save_canonical(emb("CAT", seed=2), store.root / "CAT.safetensors")
    assert store.resolve("cat") == "cat"


def test_a_batch_refuses_case_twins_it_stores_itself(store):
    """An import of 'dog' and 'Dog' in one batch stores the first and refuses the second: the batch's scan
    learns each name it stores, so the case rule holds inside one run of puts too."""
    with store.batch() as batch:
        batch.put(emb("dog", seed=1))
        with pytest.raises(StoreError, match="only in letter case"):
            batch.put(emb("Dog", seed=2))
    assert store.names() == ["dog"]


def test_a_delete_that_cannot_move_the_embedding_puts_its_thumbnail_back(store, monkeypatch):
    """`delete` moves the thumbnail first; when the embedding then cannot move, the thumbnail goes back
    beside it and the empty trash folder is removed: the store is as it was, nothing is in the trash."""
    import os

    from PIL import Image

    from embeddings import trash

    store.put(emb("cat"), preview=Image.new("RGB", (8, 8), "red"))
    preview = store.preview_path("cat")
    real_replace = os.replace

    def replace(src, dst):
        if str(src).endswith("cat.safetensors"):
            raise PermissionError(13, "Permission denied", str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(trash.os, "replace", replace)
    with pytest.raises(OSError, match="move to the trash"):
        store.delete("cat")
    assert preview.is_file() and store.exists("cat")
    assert store.trashed() == []
    assert not any((store.root / ".trash").iterdir())


def test_bringing_back_a_trashed_file_never_replaces_one_in_the_store(tmp_path):
    """A restore gives the trashed file its name again only if that name is free at that moment (a hard
    link, which needs no space on a full disk): an embedding stored there meanwhile is never replaced."""
    from embeddings.trash import _bring_back

    trashed, path = tmp_path / "old.safetensors", tmp_path / "cat.safetensors"
    trashed.write_bytes(b"trashed")
    path.write_bytes(b"stored meanwhile")
    with pytest.raises(FileExistsError):
        _bring_back(trashed, path)
    assert path.read_bytes() == b"stored meanwhile" and trashed.read_bytes() == b"trashed"
    path.unlink()
    _bring_back(trashed, path)
    assert path.read_bytes() == b"trashed" and trashed.read_bytes() == b"trashed"


# --- training checkpoints and resume checks ---


def _accelerator_and_rows():
    """A CPU Accelerator with a prepared AdamW (what `save_state` writes), and the rows a checkpoint keeps."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    param = torch.nn.Parameter(torch.zeros(1, 4))
    accelerator.prepare(torch.optim.AdamW([param], lr=0.02))
    return accelerator, {"0": param.detach()}


def test_a_checkpoint_saved_again_at_the_same_step_replaces_the_old_one(tmp_path):
    """A run that saves a step whose checkpoint folder exists (a run started over in its folder, a resume
    that reaches a step again) replaces it whole, rather than failing to rename onto a full folder."""
    from trainers import checkpoint

    accelerator, rows = _accelerator_and_rows()
    folder = tmp_path / "step-000005"
    checkpoint.save(folder, checkpoint.Checkpoint(5, rows, {}, {"seed": 1}), accelerator)
    (folder / "left-over.txt").write_text("from the earlier save")
    checkpoint.save(folder, checkpoint.Checkpoint(5, rows, {"best": 1.0}, {"seed": 2}), accelerator)
    assert checkpoint.read_meta(folder)["config"] == {"seed": 2}
    assert not (folder / "left-over.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["step-000005"]  # no temp folder left beside it


def test_every_checkpoint_file_is_flushed_to_disk_before_the_folder_takes_its_name(tmp_path, monkeypatch):
    """The checkpoint folder gets its name only once each of its files is on disk (fsync): a power cut
    after the rename must not leave a named checkpoint of empty files for a resume to read."""
    import os

    from trainers import checkpoint

    accelerator, rows = _accelerator_and_rows()
    synced, real_fsync, real_replace = set(), os.fsync, os.replace

    def fsync(fd):
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        return real_fsync(fd)

    def replace(src, dst):
        if str(dst).endswith("step-000003"):
            files = {str(p) for p in tmp_path.joinpath(".step-000003.tmp").iterdir()}
            assert files and files <= synced, f"not flushed before the rename: {sorted(files - synced)}"
        return real_replace(src, dst)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("reads the fsynced file's name from /proc")
    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    checkpoint.save(tmp_path / "step-000003", checkpoint.Checkpoint(3, rows, {}, {}), accelerator)
    assert (tmp_path / "step-000003" / "state.json").is_file()


def test_a_resume_needs_steps_at_least_its_checkpoints_step(tmp_path):
    """Resuming a checkpoint of step 40 with --steps 39 is refused (the run is past its end); --steps 40
    is allowed (the run ends at once, storing what it has)."""
    from trainers.config import TrainConfig
    from trainers.resume import ResumeRefused, computed_values, refuse_changes
    from trainers.runfolder import RunFolder

    folder, latest = RunFolder(tmp_path), tmp_path / "checkpoints" / "step-000040"
    saved = computed_values(TrainConfig(steps=40))
    refuse_changes(latest, folder, saved, 40, TrainConfig(steps=40))
    with pytest.raises(ResumeRefused, match="at step 40, past --steps 39; pass --steps 40 or more"):
        refuse_changes(latest, folder, saved, 40, TrainConfig(steps=39))


def test_a_finished_run_trains_further_only_past_the_steps_it_took(tmp_path):
    """A finished run of 30 steps resumes to train further with --steps 31, but not with --steps 30 (even
    with other ending rules): that resume would take no step and only store its result again."""
    from embeddings.errors import TokensmithError
    from trainers.commands import to_toml
    from trainers.config import TrainConfig
    from trainers.resume import check_train_further
    from trainers.runfolder import RunFolder

    folder = RunFolder(tmp_path)
    folder.config_path.write_text(to_toml(TrainConfig(steps=30)), encoding="utf-8")
    done = {"event": "done", "steps": 30, "reason": "steps", "message": "trained 30 steps"}
    check_train_further(TrainConfig(steps=31), folder, done)
    with pytest.raises(TokensmithError, match=r"already finished.*--steps above 30"):
        check_train_further(TrainConfig(steps=30, early_stopping=False), folder, done)


def test_a_resume_may_turn_gradient_checkpointing_on():
    """Gradient checkpointing recomputes the same activations to save memory: a resume that adds it (the
    studio's 'resume with less memory') computes what the run would have, and is not refused."""
    from trainers.config import TrainConfig
    from trainers.resume import computed_values, config_changes

    saved = computed_values(TrainConfig())
    assert "gradient_checkpointing" not in saved
    assert config_changes(saved, TrainConfig(gradient_checkpointing=True)) == []


# --- the studio's job runner ---


@pytest.fixture
def jobs(tokensmith_home, monkeypatch):
    """A JobRunner whose jobs' states are set by the test (`jobs.states[id]`) and whose launches are
    recorded in `jobs.launched` instead of run: what a resume or training further would start."""
    from studio.jobs import JobRunner
    from studio.runview import RunState

    runner = JobRunner(tokensmith_home, trainer_command=("python", "-m", "studio", "train"))
    runner.states, runner.launched = {}, []
    monkeypatch.setattr(runner, "_launch", lambda job: runner.launched.append(job) or job)
    monkeypatch.setattr(
        runner, "state", lambda job, **kw: runner.states.get(job.id, RunState(status="stopped"))
    )
    monkeypatch.setattr(runner, "stored_now", lambda job, state: "held")
    return runner


def _job(runner, job_id, command, **fields):
    """A job folder under the runner's runs/ whose job.json records `command`."""
    from studio.jobs import Job

    run_dir = runner.runs_dir / job_id
    run_dir.mkdir(parents=True)
    job = Job(id=job_id, run_dir=run_dir, name="cat", command=tuple(command), created=1.0, **fields)
    (run_dir / "job.json").write_text(job.to_json(), encoding="utf-8")
    return job


def _stopped(step=2, **fields):
    from studio.runview import RunState

    return RunState(status="stopped", step=step, checkpoint_step=step, **fields)


def test_resuming_a_resumed_job_passes_resume_once(jobs):
    """A job stopped again after a resume is resumed with its command as it was: one --resume."""
    base = ["python", "-m", "studio", "train", "--name", "cat"]
    _job(jobs, "cat-1", [*base, "--resume"])
    jobs.states["cat-1"] = _stopped()
    jobs.resume("cat-1")
    assert jobs.launched[-1].command.count("--resume") == 1


def test_resuming_with_less_memory_twice_passes_gradient_checkpointing_once(jobs):
    from studio.jobs import GRADIENT_CHECKPOINTING

    _job(jobs, "cat-1", ["python", "-m", "studio", "train", "--resume", GRADIENT_CHECKPOINTING])
    jobs.states["cat-1"] = _stopped()
    jobs.resume("cat-1", gradient_checkpointing=True)
    assert jobs.launched[-1].command.count(GRADIENT_CHECKPOINTING) == 1


def test_a_resume_points_home_and_run_dir_given_with_equals_at_where_the_job_is_now(jobs):
    """A job whose command says --home=DIR (a CLI run, a home moved since) resumes in this studio's home
    and its folder now, never in the home it was first started in."""
    job = _job(jobs, "cat-1", ["python", "-m", "studio", "train", "--home=/old/home", "--run-dir=/old/run"])
    jobs.states["cat-1"] = _stopped()
    jobs.resume("cat-1")
    command = jobs.launched[-1].command
    assert f"--home={jobs.home}" in command and f"--run-dir={job.run_dir}" in command
    assert not any("/old/" in word for word in command)


def test_training_further_turns_early_stopping_off_even_when_the_run_asked_for_it(jobs):
    """A finished run trains further with --no-early-stopping only: an --early-stopping from its first
    command would otherwise stand beside it."""
    from studio.runview import RunState

    _job(jobs, "cat-1", ["python", "-m", "studio", "train", "--early-stopping", "--steps", "30"])
    jobs.states["cat-1"] = RunState(status="done", step=30, embedding_name="cat")
    jobs.train_further("cat-1", 20)
    command = jobs.launched[-1].command
    assert "--early-stopping" not in command and command.count("--no-early-stopping") == 1
    assert command[command.index("--steps") + 1] == "50" and command.count("--steps") == 1


@pytest.mark.parametrize("job_id", ["../elsewhere", "runs/../../elsewhere"])
def test_a_job_id_that_leads_out_of_the_runs_folder_is_refused(jobs, job_id):
    """A job id comes from a page's address: one that is a path ('..' inside it) is no job, even where a
    folder with a job.json stands at the end of that path."""
    elsewhere = jobs.home / "elsewhere"
    elsewhere.mkdir(parents=True)
    (elsewhere / "job.json").write_text('{"name": "secret"}', encoding="utf-8")
    (jobs.runs_dir / "runs").mkdir(parents=True)
    with pytest.raises(KeyError, match="is not a job id"):
        jobs.get(job_id)
    with pytest.raises(KeyError, match="is not a job id"):
        jobs.cancel(job_id)


def test_a_start_that_fails_leaves_no_folder_it_made_and_keeps_one_that_was_there(jobs, monkeypatch):
    """A launch that fails (a full disk) removes the run folder the start made, so no page lists an empty
    job; a folder that was there before (holding the uploaded images) is kept."""
    import errno
    from pathlib import Path

    from studio.trainrequest import TrainRequest

    def full(job):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jobs, "_launch", full)
    request = TrainRequest(name="cat", images=Path("imgs"))
    with pytest.raises(OSError):
        jobs.start(request, job_id="cat-new")
    assert not (jobs.runs_dir / "cat-new").exists()
    uploads = jobs.runs_dir / "cat-up" / "images"
    uploads.mkdir(parents=True)
    with pytest.raises(OSError):
        jobs.start(request, job_id="cat-up")
    assert uploads.is_dir()
