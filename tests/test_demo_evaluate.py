"""The evaluation's fixed prompt set and its report arithmetic (scored on rendered images, not a model)."""

import random

from demo import world
from demo.evaluate import BARS, Report, cases, format_report
from demo.judge import judge


def test_prompt_set_covers_every_seen_combination_background_size_and_held_out_concept():
    chosen = cases()
    seen = {(c.concept.colour, c.concept.shape) for c in chosen if c.group == "colour×shape"}
    assert len(seen) == len(world.TRAIN_COLOURS) * len(world.SHAPES) - len(world.HELD_OUT_COMBOS)
    assert {c.concept.background for c in chosen if c.group == "background"} == set(world.BACKGROUNDS) - {
        "gray"
    }
    assert {c.concept.size for c in chosen if c.group == "size"} == set(world.SIZES)
    held = {(c.concept.colour, c.concept.shape) for c in chosen if c.group == "held-out"}
    assert held == set(world.HELD_OUT_COMBOS)
    assert not any(c.concept.is_held_out for c in chosen if c.group != "held-out")
    assert cases() == chosen and len(cases(quick=True)) < len(chosen)


def test_report_on_the_renderers_own_images_passes_every_bar():
    chosen = cases(quick=True)
    rng = random.Random(0)
    verdicts = [judge(world.render(c.concept, rng)) for c in chosen]
    report = Report(chosen, verdicts, seconds=1.0)
    assert all(report.passes().values()), format_report(report)
    assert report.accuracy("colour", ("colour×shape",)) == 1.0
    text = format_report(report)
    assert "colour×shape" in text and "held-out" in text and "PASS" in text


def test_report_fails_the_shape_bar_when_every_shape_is_read_as_a_circle():
    chosen = cases(quick=True)
    rng = random.Random(0)
    circle = judge(world.render(world.Concept("circle", "red", size="medium"), rng))
    report = Report(chosen, [circle] * len(chosen), seconds=1.0)
    assert report.passes()["shape"] is False and report.accuracy("shape", ("colour×shape",)) < BARS["shape"]
    assert report.passes()["size order"] is False
