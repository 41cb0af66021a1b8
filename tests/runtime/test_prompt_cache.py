"""The prompt-embedding cache: hits return the tensors a fresh encode computes, it is bounded, its key separates
encoders / CHI / lengths, and the pipeline uses it (the empty negative prompt is encoded once)."""

from __future__ import annotations

import pytest
import torch

from sana_deploy.runtime.text import COMPLEX_HUMAN_INSTRUCTION, PromptCache, encode_prompts, encoder_key


@pytest.fixture(scope="module")
def encoder(tiny):
    from sana_deploy.runtime.assemble import torch_runner

    return torch_runner(tiny, "text_encoder", "fp32")


def test_hits_equal_a_fresh_encode(tiny, encoder, recording_encoder):
    cache = PromptCache(8)
    counting = recording_encoder(encoder)
    args = (counting, tiny.tokenizer, ["a red fox", "a cat"], ["", ""])
    fresh = encode_prompts(*args)  # no cache: what the pipeline computed before the cache existed
    first = encode_prompts(*args, cache=cache)
    second = encode_prompts(*args, cache=cache)
    for got in (first, second):
        assert torch.equal(got[0], fresh[0]) and torch.equal(got[1], fresh[1])
    assert counting.batches == [2, 1, 2, 1]  # fresh (prompts, negative), first cached run (same); second: nothing
    assert (cache.hits, cache.misses, len(cache)) == (3, 3, 3)
    # a hit is a copy: changing what a request got does not change the cache
    second[0].zero_()
    assert torch.equal(encode_prompts(*args, cache=cache)[0], fresh[0])


def test_only_missing_texts_are_encoded(tiny, encoder, recording_encoder):
    cache = PromptCache(8)
    counting = recording_encoder(encoder)
    encode_prompts(counting, tiny.tokenizer, ["a red fox"], [""], cache=cache)
    emb, mask = encode_prompts(counting, tiny.tokenizer, ["a red fox", "a dog"], ["", ""], cache=cache)
    assert counting.batches == [1, 1, 1]  # the second request encodes "a dog" alone
    ref = encode_prompts(encoder, tiny.tokenizer, ["a dog"], [""])
    assert torch.allclose(emb[3], ref[0][1], atol=1e-6) and torch.equal(mask[3], ref[1][1])


def test_key_separates_encoder_chi_and_lengths(tiny, encoder, recording_encoder):
    cache = PromptCache(16)
    a, b = recording_encoder(encoder), recording_encoder(encoder)
    assert encoder_key(a) != encoder_key(b) and encoder_key(a) == encoder_key(a)
    encode_prompts(a, tiny.tokenizer, ["x"], None, cache=cache)
    encode_prompts(b, tiny.tokenizer, ["x"], None, cache=cache)  # another encoder object: its own entry
    encode_prompts(a, tiny.tokenizer, ["x"], None, chi=None, cache=cache)  # without CHI: another entry
    encode_prompts(a, tiny.tokenizer, ["x"], None, cache=cache, max_length=64)  # another kept length
    encode_prompts(a, tiny.tokenizer, ["X  "], None, cache=cache)  # same text after Sana's preprocessing: a hit
    assert len(cache) == 4 and cache.hits == 1
    assert a.batches == [1, 1, 1] and b.batches == [1]
    short = encode_prompts(a, tiny.tokenizer, ["x"], None, cache=cache, max_length=64)
    assert short[0].shape[1] == 64


def test_bounded_by_entries_and_bytes():
    row = (torch.ones(1, 300, 64), torch.ones(1, 300, dtype=torch.int64))
    cache = PromptCache(max_entries=3)
    for i in range(5):
        cache.put(("enc", f"t{i}"), *row)
    assert len(cache) == 3 and cache.get(("enc", "t0")) is None and cache.get(("enc", "t4")) is not None
    cache.get(("enc", "t2"))  # recently used: survives the next insert
    cache.put(("enc", "t5"), *row)
    assert cache.get(("enc", "t2")) is not None and cache.get(("enc", "t3")) is None
    one = sum(t.numel() * t.element_size() for t in row)
    small = PromptCache(max_entries=100, max_bytes=2 * one)
    for i in range(4):
        small.put(i, *row)
    assert len(small) == 2 and small.nbytes == 2 * one
    assert len(PromptCache(0)) == 0
    off = PromptCache(0)
    off.put("k", *row)
    assert len(off) == 0
    nan = PromptCache(4)
    nan.put("k", torch.full((1, 3, 2), float("nan")), torch.ones(1, 3, dtype=torch.int64))
    assert len(nan) == 0  # a non-finite encode is never cached
    with pytest.raises(ValueError):
        PromptCache(-1)


def test_pipeline_encodes_the_empty_negative_once(tiny, recording_encoder):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    pipe = SanaDeployPipeline.from_components(tiny, backend="torch")
    pipe.prompt_cache = PromptCache(8)
    te = pipe.provider.runner("text_encoder", 256, 256, 1)
    counting = recording_encoder(te)
    pipe.provider.runners["text_encoder"] = counting
    kwargs = dict(height=256, width=256, num_inference_steps=2, generator=0, output_type="latent")
    first = pipe("a red fox", **kwargs)
    second = pipe("a blue bird", **kwargs)
    third = pipe("a red fox", **kwargs)
    assert counting.batches == [1, 1, 1]  # prompt + "" ; then only the new prompt; then nothing
    assert torch.equal(first.images, third.images)
    assert not torch.equal(first.images, second.images)
    pipe.prompt_cache = None  # off: every request encodes both texts
    pipe("a red fox", **kwargs)
    assert counting.batches[3:] == [1, 1]


def test_default_cache_is_shared_and_chi_is_part_of_the_key(tiny, encoder):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline
    from sana_deploy.runtime.text import PROMPT_CACHE

    pipe = SanaDeployPipeline.from_components(tiny, backend="torch")
    assert pipe.prompt_cache is PROMPT_CACHE
    key_chi = (encoder_key(encoder), "x", tuple(COMPLEX_HUMAN_INSTRUCTION), 300, None)
    cache = PromptCache(4)
    encode_prompts(encoder, tiny.tokenizer, ["x"], None, cache=cache)
    assert cache.get(key_chi) is not None
