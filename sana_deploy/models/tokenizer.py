"""A byte-level tokenizer built locally (no downloads) for sana-tiny.

Token ids: 0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, then one id per byte. Like Gemma's tokenizer it puts <bos>
first and pads on the right, so Sana's prompt handling (BOS + last 299 tokens) runs unchanged on it.

It is a plain ``PreTrainedTokenizerFast`` over a ``tokenizers.Tokenizer``: ``save_pretrained`` writes a
``tokenizer.json`` that ``AutoTokenizer`` and diffusers (``PreTrainedTokenizerFast.from_pretrained``) read back
with the same ids. Saved as a Gemma class it would not: Gemma's tokenizer rebuilds its own normalizer and
pre-tokenizer, so spaces turn into ``<unk>``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
VOCAB_SIZE = len(SPECIALS) + 256
# The class name written to tokenizer_config.json and model_index.json. transformers 5 would write its internal
# "TokenizersBackend"; "PreTrainedTokenizerFast" is the public name every transformers version (and diffusers,
# which imports the class named in model_index.json) resolves.
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# Room for Sana's complex human instruction (about 1060 byte tokens) plus a 300-token prompt; sana-tiny's Gemma-2
# has 4096 positions.
MODEL_MAX_LENGTH = 4096


def byte_tokenizer(model_max_length: int = MODEL_MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The byte-level tokenizer of the sana-tiny presets (deterministic, built without downloads)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIALS + alphabet)}
    assert len(vocab) == VOCAB_SIZE
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=model_max_length,
    )
