"""Learning-rate schedules as data."""

import pytest

from trainers.schedules import ScheduleError, parse_piecewise, schedule_for


def test_a1111_piecewise_string_holds_each_rate_until_its_step():
    lr = schedule_for("0.005:100, 1e-3:1000, 1e-5", 0.02, total_steps=2000)
    assert [lr(0), lr(99), lr(100), lr(999), lr(1000), lr(5000)] == [0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]


def test_piecewise_without_open_end_keeps_the_last_rate():
    lr = schedule_for("0.005:100, 1e-3:1000", 0.02, total_steps=2000)
    assert lr(1500) == 1e-3


def test_constant_warmup_and_cosine():
    assert schedule_for("constant", 0.02, total_steps=10)(7) == 0.02
    warm = schedule_for("warmup", 0.02, total_steps=10, warmup_steps=4)
    assert [round(warm(s), 6) for s in range(5)] == [0.005, 0.01, 0.015, 0.02, 0.02]
    cosine = schedule_for("cosine", 0.02, total_steps=12, warmup_steps=2)
    assert cosine(0) == pytest.approx(0.01) and cosine(2) == pytest.approx(0.02)
    assert cosine(7) == pytest.approx(0.01) and cosine(12) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0.005:abc", "cannot read"),
        ("0.005:100, 1e-3:50", "must increase"),
        ("-1:10", "positive"),
        (" , ", "empty"),
    ],
)
def test_bad_piecewise_strings_are_explained(text, fragment):
    with pytest.raises(ScheduleError, match=fragment):
        parse_piecewise(text)


def test_unknown_schedule_name_lists_the_choices():
    with pytest.raises(ScheduleError, match="constant, warmup, cosine"):
        schedule_for("linear", 0.02, total_steps=10)
