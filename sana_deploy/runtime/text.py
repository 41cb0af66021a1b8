"""Sana's prompt handling around the Gemma-2 text-encoder stage (docs/SANA.md#text-encoder).

We follow **diffusers' ``SanaPipeline``** (``clean_caption=False``), not the NVlabs native pipeline, because
diffusers is the golden reference of the end-to-end test. Where the two differ:

* prompts are lower-cased and stripped (NVlabs only strips);
* the complex human instruction (CHI) is diffusers' default, with single quotes ('Enhanced prompt');
* the negative / empty prompt is encoded *without* CHI and with its own mask (for "" only BOS is valid),
  where NVlabs reuses the conditional mask for the unconditional half.

Token budget: ``max_len = len(encode(CHI)) + 300 - 2``; Gemma-2 runs on the CHI + prompt sequence (the prompt
tokens attend causally to the CHI) and BOS + the last 299 positions are kept: 300 tokens. Unlike diffusers, the
encoder stops at the batch's last real token (the right padding after it cannot change a real token's state), and
the kept positions the mask excludes are zero instead of Gemma's states of pad tokens, which the transformer's
masked cross-attention never reads.

Prompt-embedding cache (:class:`PromptCache`): a bounded LRU of encoded texts, keyed by the text encoder (the
runner object, which holds fixed weights, plus the model id and its backend/precision label), the text, whether
and which CHI it was encoded with, the kept length and the static engine's padding. One per process by default
(:data:`PROMPT_CACHE`), so the empty negative prompt is encoded once per text encoder per process and a repeated
prompt is a hit. A hit returns a copy of the very rows the first encode produced.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sana_deploy.models.config import TEXT_MAX_LENGTH, TEXT_MIN_TOKENS

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

    Gemma-2 is causal and the padding is on the right, so a real token's state depends only on the real tokens
    before it. The encoder therefore runs only up to the last real token of the batch (at least
    ``TEXT_MIN_TOKENS``), not over the whole padded budget: with the CHI and a short prompt that is about half
    the budget with Gemma's tokenizer (for the usual "" negative prompt, 2 tokens instead of 300). Kept positions
    the mask excludes are zero: the transformer's cross-attention gives them a -10000 bias, so it never reads them.

    ``pad_to``: a static text-encoder engine's sequence length; the batch is padded (masked) to it instead.
    """
    ids, mask = tokenized.input_ids, tokenized.attention_mask
    if pad_to is not None:
        if pad_to > ids.shape[1]:
            extra = pad_to - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (0, extra), value=0)
            mask = torch.nn.functional.pad(mask, (0, extra), value=0)
    else:
        real = mask.any(dim=0).nonzero()
        length = max(int(real[-1]) + 1 if len(real) else 0, TEXT_MIN_TOKENS)
        ids, mask = ids[:, :length], mask[:, :length]
    hidden = runner(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
    keep = torch.tensor(tokenized.keep)
    kept_mask = tokenized.attention_mask[:, keep]
    embeds = hidden.new_zeros(hidden.shape[0], len(keep), hidden.shape[2])
    ran = keep < hidden.shape[1]
    embeds[:, ran] = hidden[:, keep[ran]]
    return embeds * kept_mask[..., None].to(embeds.dtype), kept_mask


PromptKey = tuple  # (encoder, text, CHI or None, max_length, pad_to)


class PromptCache:
    """Bounded LRU of encoded texts: ``key -> (embeds (1, L, D) fp32, mask (1, L) int64)``, thread-safe.

    Bounded by entry count and by bytes (Gemma-2 2B: 2.8 MB per text at 300 tokens); the least recently used
    entry goes first. ``max_entries=0`` keeps nothing. ``hits``/``misses`` count lookups.
    """

    def __init__(self, max_entries: int = 32, max_bytes: int = 256 << 20) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ValueError(f"PromptCache bounds must be >= 0, got {max_entries} entries, {max_bytes} bytes.")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[PromptKey, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @staticmethod
    def _size(value: tuple[torch.Tensor, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in value)

    def get(self, key: PromptKey) -> tuple[torch.Tensor, torch.Tensor] | None:
        with self._lock:
            value = self._items.get(key)
            if value is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return value[0].clone(), value[1].clone()

    def put(self, key: PromptKey, embeds: torch.Tensor, mask: torch.Tensor) -> None:
        if not bool(torch.isfinite(embeds).all()):
            return  # a NaN/inf encode is refused downstream; never serve it again
        value = (embeds.detach().clone(), mask.detach().clone())
        size = self._size(value)
        with self._lock:
            if key in self._items:
                self._bytes -= self._size(self._items.pop(key))
            if self.max_entries == 0 or size > self.max_bytes:
                return
            self._items[key] = value
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= self._size(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


def _env_entries() -> int:
    try:
        return max(0, int(os.environ.get("SANA_DEPLOY_PROMPT_CACHE", "32")))
    except ValueError:
        return 32


# The process's cache (``SANA_DEPLOY_PROMPT_CACHE=<entries>``; 0 turns it off).
PROMPT_CACHE = PromptCache(_env_entries())
_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_COUNTER = itertools.count(1)
_TOKEN_LOCK = threading.Lock()


def encoder_key(runner: EncoderRunner, model_id: str = "") -> tuple:
    """What identifies a text encoder in cache keys: the model id, its ``backend/precision`` label and a number
    unique to the runner object in this process (a runner's weights never change, so the object is the weights)."""
    with _TOKEN_LOCK:
        try:
            token = _TOKENS.get(runner)
            if token is None:
                token = _TOKENS[runner] = next(_COUNTER)
        except TypeError:  # not weak-referenceable: never shared with another object
            token = f"id{id(runner)}"
    return (model_id, getattr(runner, "label", type(runner).__name__), token)


def encode_prompts(
    runner: EncoderRunner,
    tokenizer,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None,
    chi: Sequence[str] | None = COMPLEX_HUMAN_INSTRUCTION,
    pad_to: int | None = None,
    cache: PromptCache | None = None,
    model_id: str = "",
    max_length: int = TEXT_MAX_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and masks for one request, computed once: ``[negatives; prompts]`` when CFG is on.

    Each distinct text is encoded once (a batch of the same prompt, or the usual shared ``""`` negative). With a
    ``cache``, texts encoded before by this runner are taken from it and only the others are encoded (one batch).
    """
    owner = encoder_key(runner, model_id) if cache is not None else None

    def run(texts: Sequence[str], with_chi: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        unique = list(dict.fromkeys(texts))
        if cache is None:
            emb, mask = encode(runner, tokenize(tokenizer, unique, with_chi, max_length), pad_to)
        else:
            chi_key = tuple(with_chi) if with_chi else None
            keys = {t: (owner, preprocess(t), chi_key, max_length, pad_to) for t in unique}
            rows = {t: cache.get(k) for t, k in keys.items()}
            todo = [t for t, r in rows.items() if r is None]
            if todo:
                new_emb, new_mask = encode(runner, tokenize(tokenizer, todo, with_chi, max_length), pad_to)
                for i, t in enumerate(todo):
                    rows[t] = (new_emb[i : i + 1], new_mask[i : i + 1])
                    cache.put(keys[t], *rows[t])
            emb = torch.cat([rows[t][0] for t in unique])
            mask = torch.cat([rows[t][1] for t in unique])
        index = torch.tensor([unique.index(t) for t in texts])
        return emb[index], mask[index]

    emb, mask = run(prompts, chi)
    if negative_prompts is None:
        return emb, mask
    neg_emb, neg_mask = run(negative_prompts, None)
    return torch.cat([neg_emb, emb]), torch.cat([neg_mask, mask])
