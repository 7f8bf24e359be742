"""studio/generation/prompt.py: the prompt language, strings only."""

import pytest

from studio.generation.flatten import render, schedule
from studio.generation.prompt import (
    Blend,
    Edit,
    EmbeddingRef,
    PromptError,
    Text,
    Weighted,
    blends,
    embedding_names,
    parse,
    to_text,
)
from studio.generation.swaps import apply_swaps, parse_swap


def test_embedding_triggers_are_nodes_not_words():
    assert parse("a <cat> on a mat") == (Text("a "), EmbeddingRef("cat"), Text(" on a mat"))
    assert parse("a cat") == (Text("a cat"),)


def test_weights_render_as_compel_syntax():
    nodes = parse("a (<cat>:1.2) with (red:0.8) stripes")
    assert nodes[1] == Weighted((EmbeddingRef("cat"),), 1.2)
    assert render(nodes) == "a (<cat>)1.2 with (red)0.8 stripes"


def test_bare_parentheses_and_brackets_are_a1111_emphasis():
    assert render(parse("(big) [small]")) == "(big)1.1 (small)0.909091"


def test_prompt_editing_switches_at_a_fraction():
    nodes = parse("a [<cat>:<dog>:0.4] on a mat")
    assert nodes[1] == Edit((EmbeddingRef("cat"),), (EmbeddingRef("dog"),), 0.4)
    assert schedule(nodes, 10) == [(0.0, "a <cat> on a mat"), (0.4, "a <dog> on a mat")]


def test_prompt_editing_by_step_number():
    assert schedule(parse("a [red:blue:5] circle"), 20) == [(0.0, "a red circle"), (0.25, "a blue circle")]


def test_prompt_editing_may_drop_or_add_text():
    assert schedule(parse("a [red ::0.5]circle"), 4) == [(0.0, "a red circle"), (0.5, "a circle")]


def test_nested_weight_inside_an_edit():
    assert schedule(parse("[(red:1.5):blue:0.5] circle"), 2) == [
        (0.0, "(red)1.5 circle"),
        (0.5, "blue circle"),
    ]


def test_inline_blends_become_temporary_embeddings():
    nodes = parse("a <0.6*keyboard + 0.4*typewriter>")
    [blend] = blends(nodes)
    assert [(w, o.kind, o.text) for w, o in blend.parts] == [
        (0.6, "word", "keyboard"),
        (0.4, "word", "typewriter"),
    ]
    assert render(nodes) == f"a <{blend.name}>"
    assert blend.name.startswith("blend-")


def test_blend_of_embeddings_and_slerp():
    [lerp] = blends(parse("<0.5*<cat> + 0.5*<dog>>"))
    assert [o.text for _w, o in lerp.parts] == ["cat", "dog"] and lerp.method == "lerp"
    [sl] = blends(parse("<slerp(<cat>, <dog>, 0.3)>"))
    assert sl.method == "slerp" and [w for w, _o in sl.parts] == pytest.approx([0.7, 0.3])
    assert embedding_names(parse("x <slerp(<cat>, <dog>, 0.3)> <bird>")) == ["cat", "dog", "bird"]


def test_same_blend_same_name_and_spelling_round_trips():
    a = parse("<0.5*<cat> + 0.5*<dog>>")[0]
    b = parse("< 0.5 * <cat>  +  0.5 * <dog> >")[0]
    assert isinstance(a, Blend) and a.name == b.name
    assert to_text(parse(a.expression)) == a.expression


def test_escapes_keep_brackets_literal():
    assert parse(r"a \(literal\) \[x\]") == (Text(r"a \(literal\) \[x\]"),)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("a <0.5*x + >", "ends with an operator"),
        ("a <slerp(<a>, <b>)>", "slerp(<a>, <b>, t)"),
        ("a (b:c)", "expected a weight"),
        ("a [b:c]", "three parts"),
        ("a (b", "unclosed '('"),
        ("a <cat", "unclosed '<'"),
        ("a ) b", "unmatched ')'"),
        ("a [red|blue] circle", "alternation [a|b] is not supported"),
        ("a (red:-0.5) circle", "a weight must be 0 or more"),
    ],
)
def test_malformed_prompts_say_what_and_where(bad, words):
    with pytest.raises(PromptError, match="at character") as info:
        parse(bad)
    assert words in str(info.value)


def test_swap_replaces_whole_words_case_insensitively():
    nodes = apply_swaps(parse("a Puppy and a puppy-dog but not puppyish <puppy>"), {"puppy": "<cat>"})
    assert to_text(nodes) == "a <cat> and a <cat>-dog but not puppyish <puppy>"


def test_swap_equals_writing_the_embedding():
    swapped = apply_swaps(parse("a (puppy:1.3) [puppy:red:0.5]"), {"puppy": "<cat>"})
    assert swapped == parse("a (<cat>:1.3) [<cat>:red:0.5]")


def test_swap_reaches_blend_operands_and_word_targets():
    swapped = apply_swaps(parse("<0.5*puppy + 0.5*red>"), {"puppy": "<cat>", "red": "blue"})
    assert to_text(swapped) == "<0.5*<cat> + 0.5*blue>"


def test_parse_swap():
    assert parse_swap("puppy=<my-dog>") == ("puppy", "<my-dog>")
    assert parse_swap(" puppy = kitten ") == ("puppy", "kitten")
    for bad in ("puppy", "=<x>", "puppy=", "puppy=<bad name>"):
        with pytest.raises(PromptError, match="--swap"):
            parse_swap(bad)


def test_a_swap_word_with_a_space_is_refused():
    with pytest.raises(PromptError, match="a swap replaces one word; 'big dog' has a space"):
        parse_swap("big dog=<cat>")
