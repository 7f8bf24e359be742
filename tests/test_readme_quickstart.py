"""THE README'S MAIN JOB, END TO END: `tokensmith demo` renders a held-out concept, trains a token on the demo
world, stores it, generates with it and with a blend (the concept's shape in a word's colour), writes the
contact sheet and prints judge scores.

It is also the demo-world learning test: after training, the samples' foreground colour must be within
LEARNED_DISTANCE of the concept's colour (RGB distance, the demo judge) and MARGIN closer than before, and at
least 3 of 4 samples must be triangles (the init, "red circle", draws none).
Takes about a minute and a half on a 2-core CPU.
"""

import json

import pytest
from PIL import Image

from embeddings import Store
from studio.cli import main
from trainers.models import demo_model_dir

LEARNED_DISTANCE = 40.0  # the README's bar for a learned colour: mean RGB distance of the samples' foreground
MARGIN = 50.0  # ... and at least this much closer than the untrained init word's samples

pytestmark = pytest.mark.skipif(
    not (demo_model_dir() / "model_index.json").is_file(),
    reason="the demo model is not built (python -m demo.build)",
)


def test_tokensmith_demo_learns_the_held_out_concept(tokensmith_home, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    for label in ("concept", "token", "before", "after", "blend", "contact sheet", "time"):
        assert any(line.startswith(label) for line in captured.err.splitlines()), captured.err
    before, after = result["before"], result["after"]
    assert after["colour_distance"] <= LEARNED_DISTANCE, result
    assert before["colour_distance"] - after["colour_distance"] >= MARGIN, result
    assert after["colour_hits"] >= 3, result  # of 4 samples, the judge names the concept's colour
    assert after["shape_hits"] >= 3 and before["shape_hits"] == 0, result  # ... and the triangle
    # the blend turns the token halfway to "blue": the concept's triangle in the word's colour
    blend = result["blend"]
    assert blend["prompt"] == f"a <slerp(<{result['name']}>, blue, 0.5)>", blend
    assert blend["reads_as"] == "blue triangle" and blend["count"] >= 3, blend
    assert result["steps"] <= result["trained_steps"] <= 150  # the stored step, and what was trained
    assert result["held_out"] and not result["replaced"]
    assert result["contact_sheet"] == str((out / "contact-sheet.png").resolve())
    stored = Store.for_home(tokensmith_home).get(result["name"])
    assert stored.family == "demo" and stored.meta["base_model"] == "demo"
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.width > 4 * 32 and sheet.height > 4 * 32
    assert len(list((out / "images").glob("*.png"))) == 5
    assert (out / "run" / "progress.jsonl").read_text().splitlines()[-1].startswith('{"event": "done"')
    # the demo family's latents are fitted to its VAE decoder (the run folder keeps them), 8 previews scored
    config = (out / "run" / "config.toml").read_text()
    assert "refine_latents = 50" in config and "preview_images = 8" in config  # the demo family's defaults
    assert (out / "run" / "latents.safetensors").is_file()
