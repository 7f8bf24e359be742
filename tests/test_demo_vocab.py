"""The tiny CLIP BPE vocabulary: every caption word is one token; anything else still tokenizes."""

from transformers import CLIPTokenizer

from demo.vocab import BOS, EOS, MAX_LENGTH, build_tokenizer
from demo.world import caption_words


def test_every_caption_word_is_a_single_token():
    tokenizer = build_tokenizer(caption_words())
    for word in caption_words():
        assert tokenizer.tokenize(word) == [word + "</w>"], word


def test_repair_fixes_words_that_global_merge_ranks_break():
    # 'an' and 'triangle': without the repair merges, the `a n` merge fires inside "triangle"
    tokenizer = build_tokenizer(["an", "triangle", "and", "tan"])
    assert [tokenizer.tokenize(w) for w in ("triangle", "tan")] == [["triangle</w>"], ["tan</w>"]]


def test_unknown_words_fall_back_to_characters_and_padding_works():
    tokenizer = build_tokenizer(caption_words())
    assert "".join(tokenizer.tokenize("zebra")).replace("</w>", "") == "zebra"
    ids = tokenizer("a pink circle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH
    assert ids[0] == tokenizer.convert_tokens_to_ids(BOS) and ids[-1] == tokenizer.convert_tokens_to_ids(EOS)


def test_added_tokens_survive_save_and_reload(tmp_path):
    tokenizer = build_tokenizer(caption_words())
    tokenizer.add_tokens(["<pt>"])
    tokenizer.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again.tokenize("a <pt> circle") == ["a</w>", "<pt>", "circle</w>"]
    assert again("a red star").input_ids == tokenizer("a red star").input_ids
