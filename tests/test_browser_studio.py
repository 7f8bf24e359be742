"""The studio in a real browser: Debian's Chromium driven by Playwright against `tokensmith ui` on 127.0.0.1.

What only a browser shows: every page renders with no exception element; images are uploaded over HTTP; a
real training job's progress updates with no input (the fragment ticks); a reload during training finds the
job again; the learned embedding appears in the Library, is blended and saved, used in a prompt, and the PNG
downloads with its provenance. The model is the shipped demo world (passed as ?model=demo), and the concept is
one it can express (a red square on blue, drawn by the test); screenshots go to test-artifacts/browser/.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlparse

import pytest
from PIL import Image, ImageDraw

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "browser"
PAGES = ["", "train", "library", "blend", "generate", "lab", "inspect"]  # "": Train; "train" opens it
APP_IDLE = '[data-testid="stApp"][data-test-script-state="notRunning"]'
TRAIN_TIMEOUT_S = 240
TRAIN_STEPS = 12  # long enough to watch the progress change over several 2 s polls, short on a CPU
# /usr/bin/chromium's wrapper skips --disable-dev-shm-usage here, so it is passed explicitly.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Chromium is not at /usr/bin/chromium (apt-get install chromium chromium-driver)",
)


# --- fixtures: one server and one browser for the module ---


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A `tokensmith ui` process on a free port with an empty home, using the demo world."""
    from studio.jobs import JobRunner

    base = tmp_path_factory.mktemp("studio")
    home = base / "home"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TOKENSMITH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    log = open(ARTIFACTS / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    server = subprocess.Popen(
        [sys.executable, "-m", "studio", "ui", "--port", str(port), "--home", str(home)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log.close()
            raise RuntimeError(
                f"tokensmith ui did not start: {(ARTIFACTS / 'server.log').read_text()[-2000:]}"
            )
        time.sleep(0.3)
    yield {"url": url, "home": home, "model": "demo"}
    runner = JobRunner(home)  # trainers run in their own sessions: stop them explicitly
    for job in runner.jobs():
        runner.cancel(job.id)
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(20)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 1600}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.js_errors = []
    page.on("pageerror", lambda exc: page.js_errors.append(str(exc)))
    yield page
    context.close()


# --- helpers ---


def wait_for_app(page, settle_ms: int = 300) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]')
    page.wait_for_selector(APP_IDLE)
    page.wait_for_timeout(settle_ms)
    page.wait_for_selector(APP_IDLE)


def open_page(page, studio, path: str, **query) -> None:
    params = "&".join(f"{k}={quote(str(v))}" for k, v in {"model": studio["model"], **query}.items())
    page.goto(f"{studio['url']}/{path}?{params}")
    wait_for_app(page)


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def assert_no_exception(page, where: str) -> None:
    exceptions = page.locator('[data-testid="stException"]')
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()[:500]}"
    assert not page.js_errors, f"{where}: {page.js_errors}"


def type_into(page, label: str, text: str) -> None:
    """Fill a text/number input and commit it (Streamlit commits on Enter)."""
    box = page.get_by_label(label, exact=True)
    box.fill(text)
    box.press("Enter")
    wait_for_app(page)


def draw_concept(folder: Path, count: int = 3) -> list[Path]:
    """A red square on blue, a few views (the test draws its own images)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = Image.new("RGB", (64, 64), (30, 40, 200))
        ImageDraw.Draw(image).rectangle([12 + 3 * i, 14, 46 + 2 * i, 48 - i], fill=(220, 30, 30))
        paths.append(folder / f"view-{i}.png")
        image.save(paths[-1])
    return paths


def progress_text(page) -> str:
    bars = page.locator('[data-testid="stProgress"]')
    return bars.first.inner_text() if bars.count() else ""


# --- tests ---


def test_every_page_renders_with_no_exception(page, studio):
    for path in PAGES:
        open_page(page, studio, path)
        page.wait_for_selector("h1")
        assert_no_exception(page, path or "train")
        assert page.get_by_text("Page not found").count() == 0, path
        shot(page, f"page-{path or 'train'}")


def test_back_from_train_leaves_the_studio_page_it_came_to(page, studio):
    open_page(page, studio, "library")
    open_page(page, studio, "")  # Train, at the root: no redirect to come back to
    seen = []
    for _ in range(2):  # the sidebar drops the default ?model=demo from the address: one more entry
        page.go_back()
        wait_for_app(page)
        seen.append(page.url)
    assert urlparse(page.url).path.rstrip("/").endswith("/library"), seen  # a redirect kept it on Train


def test_upload_train_watch_reload_library_blend_generate_download(page, studio, tmp_path):
    # Train: upload images over HTTP, start a short real training job.
    open_page(page, studio, "")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').first.set_input_files(
        [str(p) for p in draw_concept(tmp_path / "views")]
    )
    wait_for_app(page)
    type_into(page, "Concept name (the prompt trigger is <name>)", "red-square")
    type_into(page, "Steps", str(TRAIN_STEPS))
    page.get_by_text("More options").click()
    type_into(page, "Preview + snapshot every N steps (0: only at the end)", str(TRAIN_STEPS // 2))
    page.get_by_role("button", name="Start training").click()
    try:
        page.wait_for_url("**job=**")  # the job id goes into the URL, so a reload finds it
    except Exception:
        shot(page, "train-start-failed")
        raise
    wait_for_app(page)
    job_id = page.url.split("job=")[1].split("&")[0]

    # Reload during training: the job is found again from ?job= (session state is gone).
    page.reload()
    wait_for_app(page)
    assert job_id in page.locator('[data-testid="stMain"]').inner_text()
    shot(page, "train-after-reload")

    # Progress updates with no input: the fragment re-reads the run folder every 2 s.
    seen: list[str] = []
    deadline = time.monotonic() + TRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        text = progress_text(page)
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        # a 12-step run may end with the shape warning: 'Stored <red-square> ... But only ...'
        if any(page.get_by_text(f"{said} <red-square>").count() for said in ("Learned", "Stored")):
            break
        page.wait_for_timeout(500)
    else:
        shot(page, "train-timeout")
        raise AssertionError(f"training did not finish in {TRAIN_TIMEOUT_S} s; progress seen: {seen}")
    page.wait_for_timeout(500)
    wait_for_app(page)
    seen.append(progress_text(page))  # the final state, after the fragment's last full rerun
    assert len(set(seen)) >= 2, f"the progress never changed on its own: {seen}"
    assert any(f"step {TRAIN_STEPS}/{TRAIN_STEPS}" in text for text in seen), seen
    done = json.loads((studio["home"] / "runs" / job_id / "progress.jsonl").read_text().splitlines()[-1])
    assert done["event"] == "done" and done["steps"] == TRAIN_STEPS, done
    # the stored step's preview is shown (keep = best: the judge may have scored step 6 best)
    page.get_by_text(f"preview at step {done['kept']} (stored)").wait_for()
    shot(page, "train-done")
    assert_no_exception(page, "train")

    # Library: the learned embedding has a card.
    open_page(page, studio, "library")
    page.get_by_text("<red-square>").first.wait_for()
    shot(page, "library")
    assert_no_exception(page, "library")

    # Blend: red-square with the word "circle", saved with its lineage.
    open_page(page, studio, "blend")
    type_into(page, "Word or phrase", "circle")
    page.locator('[data-testid="stImage"] img').first.wait_for()
    type_into(page, "Name of the blend", "red-circle")
    page.get_by_role("button", name="Save <red-circle> to the library").click()
    wait_for_app(page)
    page.get_by_text("Saved <red-circle>").wait_for()
    shot(page, "blend")
    assert_no_exception(page, "blend")

    # Generate with the blend and download the PNG with its provenance.
    open_page(page, studio, "generate")
    prompt = page.get_by_label("Prompt", exact=True)
    prompt.fill("a <red-circle> on blue")
    prompt.press("Control+Enter")
    wait_for_app(page)
    page.get_by_role("button", name="Generate", exact=True).click()
    wait_for_app(page)
    page.locator('[data-testid="stImage"] img').first.wait_for()
    assert_no_exception(page, "generate")
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download PNG").first.click()
    download = download_info.value
    data = Path(download.path()).read_bytes()
    provenance = json.loads(Image.open(io.BytesIO(data)).text["tokensmith"])
    assert provenance["prompt"] == "a <red-circle> on blue"
    assert [e["name"] for e in provenance["embeddings"]] == ["red-circle"]
    shot(page, "generate")
