"""`tokensmith demo-images`: writes N renders of a concept, deterministic per seed, clear errors."""

import json

import numpy as np
from PIL import Image

from demo.judge import judge
from studio.cli import main


def test_demo_images_writes_n_images_of_the_concept(tmp_path, capsys):
    out = tmp_path / "imgs"
    assert main(["demo-images", "purple triangle", "-n", "5", "--out", str(out)]) == 0
    files = sorted(out.glob("*.png"))
    assert len(files) == 5
    for f in files:
        verdict = judge(Image.open(f))
        assert (verdict.colour, verdict.shape, verdict.background) == ("purple", "triangle", "gray")
    assert "held out" in capsys.readouterr().err


def test_demo_images_is_deterministic_per_seed(tmp_path):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        main(
            [
                "demo-images",
                "small striped pink star on a blue background",
                "-n",
                "2",
                "--out",
                str(tmp_path / name),
                "--seed",
                seed,
            ]
        )
    arrays = {n: [np.asarray(Image.open(f)) for f in sorted((tmp_path / n).glob("*.png"))] for n in "abc"}
    assert all(np.array_equal(x, y) for x, y in zip(arrays["a"], arrays["b"], strict=True))
    assert not np.array_equal(arrays["a"][0], arrays["c"][0])


def test_demo_images_json_and_resolution(tmp_path, capsys):
    assert (
        main(["demo-images", "red circle", "-n", "1", "--out", str(tmp_path), "--resolution", "64", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["held_out"] is False and Image.open(report["files"][0]).size == (64, 64)


def test_demo_images_rejects_unknown_words_with_one_line(tmp_path, capsys):
    assert main(["demo-images", "red zebra", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown word 'zebra'" in err[0]
    assert main(["demo-images", "red circle", "-n", "0", "--out", str(tmp_path)]) == 1
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert main(["demo-images", "red circle", "--out", str(blocker)]) == 1
