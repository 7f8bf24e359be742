"""Only the new token rows are trainable: a frozen table plus a small parameter of new rows.

diffusers' script gives the whole 49408×D table a gradient and AdamW state, then restores every other row
after each step. Here the text encoder's input embedding is swapped for `RowsEmbedding`: it looks up the
frozen table for ordinary ids and the trainable rows for the new ids, so gradients, optimizer state and
updates touch only (n, D) numbers and every other row stays bit-identical by construction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from embeddings.errors import TokensmithError


class RowsEmbedding(nn.Module):
    """An input embedding: frozen `table` rows for ids below `first_id`, trainable `rows` for the new ids."""

    def __init__(self, table: nn.Embedding, first_id: int, init: torch.Tensor):
        super().__init__()
        self.frozen = table  # the original module, never modified
        self.first_id = first_id
        # float32 whatever the frozen table's dtype: under fp16/bf16 the table is half precision, but AdamW
        # updates of ~1e-3 vanish in bf16 rows and fp16 loss scaling refuses to unscale fp16 gradients. They
        # live in a child registered after the table, so the encoder's first parameter (what transformers'
        # `.dtype` and so diffusers' pipelines read) is still the table's.
        self.new = nn.ParameterDict({"rows": nn.Parameter(init.detach().clone().float())})  # (n, D)

    @property
    def rows(self) -> nn.Parameter:
        return self.new["rows"]

    @property
    def weight(self) -> torch.Tensor:
        """The frozen table (what `get_input_embeddings().weight` readers such as resize expect)."""
        return self.frozen.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        is_new = ids >= self.first_id  # (B, L)
        base = self.frozen(ids.clamp(max=self.frozen.num_embeddings - 1))  # (B, L, D)
        if not bool(is_new.any()):
            return base
        slot = (ids - self.first_id).clamp(0, self.rows.shape[0] - 1)  # (B, L)
        new = self.rows.to(base.dtype)[slot]  # (B, L, D)
        return torch.where(is_new[..., None], new, base)  # (B, L, D)


@dataclass
class EncoderRows:
    """The new tokens installed in one (tokenizer, text encoder) pair for training."""

    key: str  # "emb_params" | "clip_l" | "clip_g"
    tokenizer: object
    text_encoder: nn.Module
    tokens: list[str]
    module: RowsEmbedding

    @property
    def rows(self) -> nn.Parameter:
        return self.module.rows


def token_strings(name: str, num_vectors: int) -> list[str]:
    """['<cat>', '<cat>_1', ...]: diffusers' multi-vector token naming (the same as the embeddings core)."""
    return [f"<{name}>"] + [f"<{name}>_{i}" for i in range(1, num_vectors)]


def attach(key: str, tokenizer, text_encoder: nn.Module, name: str, init: torch.Tensor) -> EncoderRows:
    """Route new tokens to trainable rows initialised from `init` (n, D); the given tokenizer is not changed.

    The tokens go into a copy of `tokenizer` (returned as `.tokenizer`), and `detach_rows` puts the text
    encoder's original embedding back, so a loaded model is left exactly as it was.
    """
    tokens = token_strings(name, init.shape[0])
    if any(token in tokenizer.get_vocab() for token in tokens):
        raise TokensmithError(
            f"token <{name}> is already in the {key} tokenizer; train under another name or reload the model"
        )
    table = text_encoder.get_input_embeddings()
    if init.shape[1] != table.embedding_dim:
        raise TokensmithError(
            f"init vectors have width {init.shape[1]} but the {key} text encoder has {table.embedding_dim}"
        )
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_tokens(tokens)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise TokensmithError(f"the {key} tokenizer gave the new tokens non-consecutive ids {ids}")
    # Ids at or past the table's end (or past the tokenizer's old length, when the table is padded) are ours.
    module = RowsEmbedding(table, ids[0], init)
    text_encoder.set_input_embeddings(module)
    return EncoderRows(key=key, tokenizer=tokenizer, text_encoder=text_encoder, tokens=tokens, module=module)


def detach_rows(rows: EncoderRows) -> torch.Tensor:
    """Put the text encoder's original embedding back; returns the learned rows (n, D) as float32 on CPU."""
    rows.text_encoder.set_input_embeddings(rows.module.frozen)
    return rows.rows.detach().float().cpu().clone()
