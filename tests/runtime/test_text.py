"""The text-encoder stage runs only up to the batch's last real token: the kept real positions equal an encode over
the whole padded budget (as diffusers runs it), the masked ones are zero, and a static engine still gets its padding."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.models.config import TEXT_MIN_TOKENS
from sana_deploy.runtime.text import COMPLEX_HUMAN_INSTRUCTION, encode, tokenize


@pytest.fixture(scope="module")
def encoder(tiny, recording_encoder):
    from sana_deploy.runtime.assemble import torch_runner

    return recording_encoder(torch_runner(tiny, "text_encoder", "fp32"))


@pytest.mark.parametrize(
    ("prompts", "chi"),
    [(["a red fox", "a cat sleeping on a warm windowsill"], COMPLEX_HUMAN_INSTRUCTION), (["a red fox", ""], None)],
)
def test_runs_to_the_last_real_token_and_matches_the_padded_encode(tiny, encoder, prompts, chi):
    tok = tokenize(tiny.tokenizer, prompts, chi)
    budget = tok.input_ids.shape[1]
    real = int(tok.attention_mask.sum(1).max())
    assert real < budget  # the case is one with padding to skip

    encoder.shapes.clear()
    emb, mask = encode(encoder, tok)
    full, full_mask = encode(encoder, tok, pad_to=budget)  # the whole budget, as diffusers runs Gemma-2
    assert encoder.lengths == [real, budget]
    assert torch.equal(mask, full_mask) and emb.shape == full.shape
    on = mask.bool()
    assert torch.allclose(emb[on], full[on], rtol=1e-5, atol=1e-5)
    assert not emb[~on].any() and not full[~on].any()  # masked positions are zero either way


def test_empty_prompt_runs_the_shortest_sequence_the_graphs_take(tiny, encoder):
    tok = tokenize(tiny.tokenizer, [""], None)
    assert int(tok.attention_mask.sum()) == 1  # BOS only
    encoder.shapes.clear()
    emb, mask = encode(encoder, tok)
    assert encoder.lengths == [TEXT_MIN_TOKENS]
    assert mask[0, 0] == 1 and not mask[0, 1:].any()
    assert emb[0, 0].abs().sum() > 0 and not emb[0, 1:].any()


def test_static_engine_length_is_still_padded_to(tiny, encoder):
    tok = tokenize(tiny.tokenizer, ["a red fox"], None)
    encoder.shapes.clear()
    encode(encoder, tok, pad_to=tok.input_ids.shape[1] + 16)
    assert encoder.lengths == [tok.input_ids.shape[1] + 16]
