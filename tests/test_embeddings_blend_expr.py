"""The blend expression language: strings in, a BlendSpec out, clear errors with the position."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.blend_expr import BlendSpec, BlendSyntaxError, Operand, parse_blend

CAT, DOG = Operand("embedding", "cat"), Operand("embedding", "dog")


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("0.5*<cat> + 0.5*<dog>", BlendSpec("lerp", ((CAT, 0.5), (DOG, 0.5)))),
        ("<cat>*2 - .5*<dog>", BlendSpec("lerp", ((CAT, 2.0), (DOG, -0.5)))),
        ("<cat> + <dog>", BlendSpec("lerp", ((CAT, 1.0), (DOG, 1.0)))),
        ("-<cat>", BlendSpec("lerp", ((CAT, -1.0),))),
        ("1e-1*<cat>", BlendSpec("lerp", ((CAT, 0.1),))),
        ("slerp(<cat>, <dog>, 0.25)", BlendSpec("slerp", ((CAT, 0.75), (DOG, 0.25)))),
        ("lerp(<cat>, keyboard, 0.5)", BlendSpec("lerp", ((CAT, 0.5), (Operand("word", "keyboard"), 0.5)))),
        (
            "0.6*keyboard + 0.4*'old typewriter'",
            BlendSpec("lerp", ((Operand("word", "keyboard"), 0.6), (Operand("word", "old typewriter"), 0.4))),
        ),
        (
            "0.5*<my-cat.v2> + 0.5*<dog>",
            BlendSpec("lerp", ((Operand("embedding", "my-cat.v2"), 0.5), (DOG, 0.5))),
        ),
    ],
)
def test_expressions_parse_to_specs(text, spec):
    assert parse_blend(text) == spec


def test_words_need_a_model():
    assert parse_blend("0.5*keyboard + 0.5*<cat>").needs_model
    assert not parse_blend("0.5*<dog> + 0.5*<cat>").needs_model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("0.5 <cat>", "expected '\\*'"),
        ("<cat> <dog>", "expected \\+ or -"),
        ("0.5*<cat> +", "ends with an operator"),
        ("<cat> * <dog>", "expected a number"),
        ("slerp(<cat>, <dog>)", "slerp\\(<a>, <b>, t\\)"),
        ("0.5*<cat> + 0.5*$", "cannot read"),
        ("0.5*", "expected <name> or a word"),
        ("slerp(<cat>, <dog>, 1.5)", "t must be between 0 and 1.*got 1.5"),
        ("<cat>*1e400 + <dog>", "1e400 is too large for a weight"),
    ],
)
def test_bad_expressions_say_what_is_wrong(text, message):
    with pytest.raises(BlendSyntaxError, match=message):
        parse_blend(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="<>()*+-,.'\" 0123456789abcdeslrp_", max_size=40))
def test_any_text_parses_or_fails_with_a_blend_syntax_error(text):
    try:
        spec = parse_blend(text)
    except BlendSyntaxError:
        return
    assert spec.parts and all(isinstance(w, float) for _, w in spec.parts)
