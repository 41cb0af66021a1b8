"""Sana's prompt handling around the Gemma-2 text-encoder stage (docs/SANA.md#text-encoder).

We follow **diffusers' ``SanaPipeline``** (``clean_caption=False``), not the NVlabs native pipeline, because
diffusers is the golden reference of the end-to-end test. Where the two differ:

* prompts are lower-cased and stripped (NVlabs only strips);
* the complex human instruction (CHI) is diffusers' default, with single quotes ('Enhanced prompt');
* the negative / empty prompt is encoded *without* CHI and with its own mask (for "" only BOS is valid),
  where NVlabs reuses the conditional mask for the unconditional half.

Token budget: ``max_len = len(encode(CHI)) + 300 - 2``; Gemma-2 runs on the whole CHI + prompt sequence
(the prompt tokens attend causally to the CHI) and BOS + the last 299 positions are kept: 300 tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sana_deploy.models.config import TEXT_MAX_LENGTH

# diffusers' SanaPipeline default (single-quoted 'Enhanced prompt'); NVlabs' configs use double quotes.
COMPLEX_HUMAN_INSTRUCTION: tuple[str, ...] = (
    "Given a user prompt, generate an 'Enhanced prompt' that provides detailed visual descriptions suitable for "
    "image generation. Evaluate the level of detail in the user prompt:",
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
)

# text-encoder stage: runner(input_ids=(B,S) int64, attention_mask=(B,S) int64) -> {"last_hidden_state": (B,S,D)}
EncoderRunner = Callable[..., dict[str, torch.Tensor]]


def preprocess(prompt: str) -> str:
    """diffusers' ``_text_preprocessing`` with ``clean_caption=False``."""
    return prompt.lower().strip()


@dataclass(frozen=True)
class Tokenized:
    input_ids: torch.Tensor  # (B, S) int64
    attention_mask: torch.Tensor  # (B, S) int64
    keep: list[int]  # positions kept after encoding (BOS + last 299), in the padded sequence


def tokenize(
    tokenizer, prompts: Sequence[str], chi: Sequence[str] | None, max_length: int = TEXT_MAX_LENGTH
) -> Tokenized:
    """Tokenize ``prompts`` as Sana does: optional CHI prefix, right padding to the full budget."""
    texts = [preprocess(p) for p in prompts]
    if chi:
        chi_text = "\n".join(chi)
        texts = [chi_text + t for t in texts]
        total = len(tokenizer.encode(chi_text, verbose=False)) + max_length - 2
    else:
        total = max_length
    tok = tokenizer(
        texts, padding="max_length", max_length=total, truncation=True, add_special_tokens=True, return_tensors="pt"
    )
    keep = [0] + list(range(total - max_length + 1, total)) if chi else list(range(total))
    return Tokenized(tok.input_ids.long(), tok.attention_mask.long(), keep)


def encode(runner: EncoderRunner, tokenized: Tokenized, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the text-encoder stage and keep Sana's 300 positions: (embeds (B,300,D) fp32, mask (B,300) int64).

    ``pad_to``: a static text-encoder engine's sequence length. Extra right padding is masked out and Gemma
    is causal, so the kept positions are unchanged by it.
    """
    ids, mask = tokenized.input_ids, tokenized.attention_mask
    if pad_to is not None and pad_to > ids.shape[1]:
        extra = pad_to - ids.shape[1]
        ids = torch.nn.functional.pad(ids, (0, extra), value=0)
        mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    hidden = runner(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
    keep = torch.tensor(tokenized.keep)
    return hidden[:, keep], tokenized.attention_mask[:, keep]


def encode_prompts(
    runner: EncoderRunner,
    tokenizer,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None,
    chi: Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
    pad_to: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and masks for one request, computed once: ``[negatives; prompts]`` when CFG is on.

    Each distinct text is encoded once (a batch of the same prompt, or the usual shared ``""`` negative).
    """

    def run(texts: Sequence[str], with_chi: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        unique = list(dict.fromkeys(texts))
        emb, mask = encode(runner, tokenize(tokenizer, unique, with_chi), pad_to)
        index = torch.tensor([unique.index(t) for t in texts])
        return emb[index], mask[index]

    emb, mask = run(prompts, chi)
    if negative_prompts is None:
        return emb, mask
    neg_emb, neg_mask = run(negative_prompts, None)
    return torch.cat([neg_emb, emb]), torch.cat([neg_mask, mask])
