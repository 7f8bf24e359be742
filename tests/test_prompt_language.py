"""The prompt language end to end: what compel is handed (flatten.fragments), that prompts compel read as
meant encode exactly as when it parsed our text, and that its own syntax no longer misreads names or text."""

import random
import shutil

import numpy as np
import pytest
import torch
from compel import Compel
from compel.prompt_parser import PromptParser

from embeddings import Embedding, Store
from studio.generation import GenerateRequest, Session
from studio.generation.conditioning import PromptEncoder, load_stored
from studio.generation.flatten import fragments, render
from studio.generation.prompt import PromptError, blends, parse
from studio.generation.swaps import unmatched_swaps
from trainers.models import LoadedModel, detect_family
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def model():
    pipe = tiny_pipeline("sd1")
    return LoadedModel(pipe=pipe, family=detect_family(pipe), source="tiny-sd1")


@pytest.fixture
def store(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    for seed, (name, n) in enumerate([("cat", 2), ("my--cat", 1), ("MyCat", 1)]):
        store.put(
            Embedding(name, {"emb_params": torch.randn(n, 32, generator=torch.Generator().manual_seed(seed))})
        )
    return store


def encode(encoder, prompt, store=None):
    nodes = parse(prompt)
    encoder.require(nodes, store)
    return encoder.encode(nodes).embeds  # (1, L, D)


# --- what compel is handed ---


def test_fragments_read_as_data():
    assert fragments(parse("a (<cat>:1.2) on a [mat]")) == [
        ("a", 1.0),
        ("<cat>", 1.2),
        ("on a", 1.0),
        ("mat", 0.909091),
    ]
    assert fragments(parse("((red:1.2) circle:0.8)")) == [("red", 0.96), ("circle", 0.8)]
    assert fragments(parse("")) == [("", 1.0)]


def test_escapes_become_the_literal_characters():
    assert fragments(parse(r"a \(x\) \[y\] \<z\> 1\:2 back\\slash")) == [
        ("a (x) [y] <z> 1:2 back\\slash", 1.0)
    ]


def test_weights_do_not_glue_onto_what_follows():
    assert fragments(parse("a (red)3 circles")) == [("a", 1.0), ("red", 1.1), ("3 circles", 1.0)]
    assert fragments(parse("a [red]3d circle")) == [("a", 1.0), ("red", 0.909091), ("3d circle", 1.0)]
    assert fragments(parse("(red:0.00001) (blue:1e6)")) == [("red", 1e-05), ("blue", 1e6)]
    assert fragments(parse("a(red:1.2)")) == [("a", 1.0), ("red", 1.2)]


def test_compels_own_syntax_is_plain_text():
    text = 'a red+ circle, c++ "quoted" word-- x.swap(y:1.2) useLora(z:1.1) <my--cat>'
    assert fragments(parse(text), spell=lambda name: "<ts0>") == [
        ('a red+ circle, c++ "quoted" word-- x.swap', 1.0),
        ("y", 1.2),
        ("useLora", 1.0),
        ("z", 1.1),
        ("<ts0>", 1.0),
    ]


def _prompt(rng, depth=0):
    words = ["a", "red", "well-lit", "1.5", "3", "don't", "wow!", "<cat>", ",", ".", "...", "\\(", "b&w", "é"]
    out = [" "]
    for _ in range(rng.randint(1, 5)):
        pick = rng.random()
        if pick < 0.2 and depth < 2:
            weight = rng.choice(["1.2", "0.8", "1", "2", "0.5", "1.23456789", "12.5"])
            out.append(f"({_prompt(rng, depth + 1)}:{weight})")
        elif pick < 0.3 and depth < 2:
            out.append(f"[{_prompt(rng, depth + 1)}]")
        elif pick < 0.4 and depth < 2:
            out.append(f"[{_prompt(rng, depth + 1)}:{_prompt(rng, depth + 1)}:0.5]")
        else:
            out.append(rng.choice(words))
        out.append(rng.choice([" ", ", ", "  "]))
    return "".join(out)


def test_fragments_are_what_compels_parser_made_of_prompts_it_read_as_meant():
    """The parity that keeps old images replayable: for prompts compel parsed as written (weights spaced
    from the text around them), our runs are exactly its runs: text, weight, fusing, ',' and '.' splits."""
    parser, rng = PromptParser(), random.Random(0)
    for _ in range(60):
        nodes = parse(_prompt(rng))
        for at in (0.0, 0.6):
            theirs = parser.parse_conjunction(render(nodes, at, 10)).prompts[0].children
            assert fragments(nodes, at, 10) == [(f.text, f.weight) for f in theirs]


# --- tensors ---


PROMPTS = [  # the tiny model reads 14 tokens
    "a red circle",
    "",
    "a <cat> on a mat",
    "(<cat>:1.2) (red:0.8) (big) [mat]",
    "a, (b...:1.2) c.",
    "a \\(b\\)",
    "((red:1.2) b:0.8) (a:0.5) (b:0.5)",
    "[a:(<cat>:0.7):0.5]",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompts_encode_exactly_as_when_compel_parsed_them(model, store, prompt):
    encoder = PromptEncoder(model)
    ours = encode(encoder, prompt, store)
    _key, tokenizer, text_encoder = model.encoders[0]
    compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=True)
    with torch.no_grad():
        theirs = compel(render(parse(prompt), spell=encoder.spell))  # what tokensmith 0.x handed compel
    assert torch.equal(ours, theirs)


def test_an_embedding_name_with_double_dashes_is_used(model, store):
    encoder = PromptEncoder(model)
    before = encode(encoder, "a <my--cat> star", store)
    store.put(Embedding("my--cat", {"emb_params": torch.randn(1, 32) * 3}), overwrite=True)
    assert not torch.equal(before, encode(encoder, "a <my--cat> star", store))  # the vectors are read
    assert "<my--cat>" not in model.encoders[0][1].get_added_vocab()  # installed under an alias


def test_text_that_looks_like_a_trigger_stays_text(model, store):
    encoder = PromptEncoder(model)
    encode(encoder, "a <cat>", store)
    literal = encode(encoder, r"a \<cat\>")
    assert not torch.equal(literal, encode(encoder, "a <cat>", store))


def test_a_prompt_longer_than_one_window_is_encoded_in_windows_not_cut(model):
    """The tiny model reads 14 tokens a window: a 21-token prompt is two windows, split at its sentence end,
    each exactly the encoding of its own text (as A1111 and compel do)."""
    encoder = PromptEncoder(model)
    first, second = "a red circle " + "red " * 8 + ".", "a blue " * 4 + "square"
    both = encode(encoder, f"{first} {second}")
    assert both.shape[1] == 2 * 16
    assert torch.equal(both[:, :16], encode(encoder, first))
    assert torch.equal(both[:, 16:], encode(encoder, second))
    weighted = encode(encoder, rf"{first} (a blue)1.4 " + "a blue " * 3 + "square")
    assert torch.equal(weighted[:, :16], both[:, :16]) and not torch.equal(weighted[:, 16:], both[:, 16:])


def test_an_embedding_at_a_window_boundary_goes_whole_into_the_next_window(model, store):
    encoder = PromptEncoder(model)  # <cat> has 2 vectors; the 13 words before it leave room for one
    both = encode(encoder, "a red circle " + "red " * 10 + "<cat> square", store)
    assert both.shape[1] == 2 * 16
    assert torch.equal(both[:, 16:], encode(encoder, "<cat> square", store))


def test_a_prompt_whose_windows_would_cut_an_embedding_apart_is_refused(model, store):
    store.put(Embedding("long", {"emb_params": torch.randn(20, 32)}))
    encoder = PromptEncoder(model)
    with pytest.raises(PromptError, match=r"cut <long> across two windows: its 20 vectors .* \(14\)"):
        encode(encoder, "a <long>", store)
    store.put(Embedding("twelve", {"emb_params": torch.randn(12, 32)}))
    with pytest.raises(PromptError, match="cut <twelve> across two windows: nothing before it"):
        encode(encoder, "<cat><cat><twelve> square", store)  # no word end before the 14th token
    with pytest.raises(PromptError, match=r"cut <0\.5\*<long> \+ 0\.5\*red> across two windows"):
        encode(encoder, "a <0.5*<long> + 0.5*red> circle", store)  # a blend is named as the prompt wrote it


def test_the_shorter_of_prompt_and_negative_prompt_gets_empty_windows(model):
    encoder = PromptEncoder(model)
    plan = encoder.plan(parse("a red circle"), 4)
    negative = encoder.plan(parse("blue " * 20), 4, what="the negative prompt")
    plan, negative = encoder.same_length(plan, negative)
    cond = plan.at(0.0).embeds
    assert cond.shape == negative.at(0.0).embeds.shape == (1, 32, 32)
    assert torch.equal(cond[:, :16], encode(encoder, "a red circle"))
    assert torch.equal(cond[:, 16:], encode(encoder, ""))  # the empty prompt's window


def test_a_single_operand_blend_scales_a_token(model, store):
    encoder, nodes = PromptEncoder(model), parse("a <2*<cat>>")
    encoder.require(nodes, store)
    [blend] = blends(nodes)
    scaled = encoder.materialize(blend).vectors["emb_params"]
    assert torch.equal(scaled, 2 * store.get("cat").vectors["emb_params"])


# --- names ---


def test_names_match_case_insensitively(store):
    assert load_stored("mycat", store).name == "MyCat"
    assert load_stored("CAT", store).name == "cat"
    # the store refuses such twins now; a folder from before, or filled by hand, may still hold them
    shutil.copy(store.path("MyCat"), store.path("MyCat").with_name("mYcAt.safetensors"))
    assert load_stored("mYcAt", store).name == "mYcAt"  # the exact spelling wins
    with pytest.raises(PromptError, match="<mycat> matches <MyCat> and <mYcAt>, which differ only in case"):
        load_stored("mycat", store)


def test_a_lower_case_trigger_generates_with_the_stored_name(model, store):
    session = Session(model)
    [lower] = session.generate(GenerateRequest("a <mycat>", steps=2), store=store)
    [exact] = session.generate(GenerateRequest("a <MyCat>", steps=2), store=store)
    assert (np.asarray(lower.image) == np.asarray(exact.image)).all()
    assert lower.provenance["embeddings"] == [{"name": "MyCat", "sha256": store.get("MyCat").sha256}]


# --- swaps ---


def test_a_swap_inside_a_quoted_blend_phrase_says_so():
    nodes = parse("a <0.5*'red puppy' + 0.5*blue>")
    with pytest.raises(PromptError, match="'puppy' is a word of the quoted blend phrase 'red puppy'"):
        unmatched_swaps({"puppy": "<cat>"}, nodes)
    assert unmatched_swaps({"kitten": "<cat>"}, nodes) == ["kitten"]


def test_literal_text_spelled_like_an_alias_stays_text(model, store):
    encoder = PromptEncoder(model)
    nodes = parse(r"a <cat> and \<ts0\> circle")
    encoder.require(nodes, store)
    alias = encoder.spell("cat").split()[0]
    assert alias == "<ts0>"  # the embedding's own token: the escaped text spells it
    [(text, _weight)] = fragments(nodes, spell=encoder.spell)
    literal_part = text.split(" and ", 1)[1]
    assert literal_part == "< ts0> circle"
    tokens = model.pipe.tokenizer.tokenize(literal_part)
    assert alias not in tokens and tokens[0] == "<</w>"  # text, as '\\<cat\\>' is
