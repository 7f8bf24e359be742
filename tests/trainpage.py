"""The Train page's test helpers: a stand-in trainer that honours the run-folder contract, and the form and
job-panel steps the Train page's tests share (the `fake_trainer` fixture that runs it is in conftest.py)."""

import io
import json
import textwrap
import time
from pathlib import Path

from apppage import open_page
from PIL import Image
from streamlit.testing.v1 import AppTest

TRAIN = "views/train.py"

# A stand-in for `tokensmith train`: claims the run folder (its lock on `pid`), writes progress rows, a
# preview, a snapshot and a checkpoint folder per step, stops cleanly on SIGTERM, continues from its last row
# with --resume, crashes without a final event when asked to, and at the end stores its result (in the store
# and as the run's snapshots/final.safetensors).
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    from PIL import Image

    args = sys.argv[1:]
    def opt(flag, default=None):
        return args[args.index(flag) + 1] if flag in args else default

    if os.environ.get("FAKE_REFUSE"):  # like the trainer refusing a resume before it writes anything
        print(os.environ["FAKE_REFUSE"], flush=True)
        sys.exit(1)
    run_dir = Path(opt("--run-dir"))
    steps = int(opt("--steps", "5"))
    delay = float(os.environ.get("FAKE_DELAY", "0.02"))
    time.sleep(float(os.environ.get("FAKE_STARTUP", "0")))  # the real trainer imports torch first
    from trainers.runfolder import RunFolder
    assert RunFolder(run_dir).claim() is None  # the lock on `pid` that tells the studio this run lives
    (run_dir / "config.toml").write_text(f'name = "{opt("--name")}"\\n')
    progress = run_dir / "progress.jsonl"
    start = 0
    if "--resume" in args:  # like the trainer: keep the rows, drop the old final event (atomic rewrite)
        rows = [json.loads(l) for l in progress.read_text().splitlines() if l.strip()]
        rows = [r for r in rows if "event" not in r]
        start = max((r["step"] for r in rows), default=0)
        tmp = run_dir / ".progress.tmp"
        tmp.write_text("".join(json.dumps(r) + "\\n" for r in rows))
        os.replace(tmp, progress)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))

    def write(item):
        with progress.open("a") as f:
            f.write(json.dumps(item) + "\\n")

    print("training", opt("--name"), "from", start, flush=True)
    for step in range(start + 1, steps + 1):
        if stop:
            write({"event": "stopped", "message": f"stopped at step {step - 1}"})
            sys.exit(0)
        if "--crash" in args and step == 3:
            print("Traceback: something broke", flush=True)
            os._exit(3)
        time.sleep(delay)
        write({"step": step, "total": steps, "loss": 1.0 / step, "val_loss": 0.5 / step,
               "metric": step / steps, "lr": 0.005, "elapsed": step * delay, "eta": (steps - step) * delay})
        for sub in ("previews", "snapshots"):
            (run_dir / sub).mkdir(exist_ok=True)
        Image.new("RGB", (32, 32), (8 * step % 256, 0, 0)).save(run_dir / "previews" / f"step-{step:06d}.png")
        (run_dir / "snapshots" / f"step-{step:06d}.safetensors").write_bytes(b"x")
        (run_dir / "checkpoints" / f"step-{step:06d}").mkdir(parents=True, exist_ok=True)
    if "--fail" in args:
        write({"event": "failed", "message": "loss became NaN: lower the learning rate"})
        sys.exit(1)
    kept = int(os.environ.get("FAKE_KEPT", steps))  # the trainer's keep = best may store an earlier step
    if opt("--home"):  # what it stores, in the store and as the run's final snapshot (one file's bytes)
        import hashlib
        import numpy as np
        from safetensors.numpy import save_file

        vectors = np.full((1, 4), steps, dtype=np.float32)
        meta = {"name": opt("--name"), "sha256": hashlib.sha256(vectors.tobytes()).hexdigest(),
                "trainer": json.dumps({"config": {"run_dir": str(run_dir)}})}
        for path in (run_dir / "snapshots" / "final.safetensors",
                     Path(opt("--home")) / "embeddings" / f"{opt('--name')}.safetensors"):
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"emb_params": vectors}, str(path), metadata=meta)
    write({"event": "done", "name": opt("--name"), "message": "learned", "kept": kept})
    """
)


def png(colour=(200, 30, 30), size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def open_train(**query) -> AppTest:
    return open_page(TRAIN, **query)


def fill(at: AppTest, *, name="red-square", files=None, steps=3) -> AppTest:
    at.text_input(key="name").set_value(name)
    at.number_input(key="steps").set_value(steps)
    if files is not None:
        at.file_uploader(key="images").set_value(files)
    return at.run()


def wait_for(at: AppTest, status: str, timeout=30.0) -> AppTest:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        at.run()
        if any(status in md.value for md in at.markdown):
            return at
        time.sleep(0.2)
    raise AssertionError(f"status {status!r} never shown: {[md.value for md in at.markdown]}")


def job_command(at: AppTest, home: Path) -> list[str]:
    """The `tokensmith train` command of the job the page just started."""
    return json.loads((home / "runs" / at.query_params["job"] / "job.json").read_text())["command"]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def run_folder(home: Path, rows: list[dict], final: dict | None = None, checkpoint: int | None = None) -> str:
    """A run folder as the trainer leaves it (no process alive): its id."""
    run_dir = home / "runs" / "cat-run"
    run_dir.mkdir(parents=True)
    lines = [*rows, *([final] if final else [])]
    (run_dir / "progress.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if final and final["event"] == "done":  # stored, as the trainer stores: its metadata names the run
        store_run_result(home, run_dir, final["name"])
    if checkpoint is not None:
        (run_dir / "checkpoints" / f"step-{checkpoint:06d}").mkdir(parents=True)
    return run_dir.name


def store_run_result(home: Path, run_dir: Path, name: str) -> None:
    """What a run in `run_dir` stores under `name` (a run from before snapshots/final.safetensors: the
    stored file's trainer metadata names its run folder)."""
    import torch

    from embeddings import Embedding, Store

    trainer = json.dumps({"config": {"run_dir": str(run_dir)}})
    Store.for_home(home).put(Embedding(name, {"emb_params": torch.ones(1, 8)}, {"trainer": trainer}))
