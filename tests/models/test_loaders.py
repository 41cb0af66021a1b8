"""Loader round-trips and the errors a user gets for bad checkpoints."""

import pytest
import torch
from safetensors.torch import save_file

from sana_deploy.errors import CheckpointError, SanaDeployError
from sana_deploy.models.convert import diffusers_to_nvlabs
from sana_deploy.models.loaders import load_components, load_tokenizer, save_diffusers_folder
from sana_deploy.runtime.text import COMPLEX_HUMAN_INSTRUCTION


def _forward(model):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(1, 32, 8, 12, generator=g), torch.randn(1, 300, 64, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), y, torch.ones(1, 300, dtype=torch.long))


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    save_diffusers_folder(tiny, d / "folder")
    sd = tiny.transformer.state_dict()
    torch.save({"state_dict": diffusers_to_nvlabs(sd)}, d / "nvlabs.pth")
    save_file({k: v.contiguous() for k, v in diffusers_to_nvlabs(sd).items()}, str(d / "nvlabs.safetensors"))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "diffusers.safetensors"))
    return d


def test_diffusers_folder_round_trip(tiny, checkpoints):
    loaded = load_components(checkpoints / "folder")
    for comp in ("transformer", "vae", "text_encoder"):
        assert loaded.content_hash(comp) == tiny.content_hash(comp), comp
    assert loaded.preset.flow_shift == tiny.preset.flow_shift
    assert torch.equal(_forward(loaded.transformer), _forward(tiny.transformer))
    ids = loaded.tokenizer(["a red fox"]).input_ids[0]
    assert ids == tiny.tokenizer(["a red fox"]).input_ids[0] and ids[0] == 2  # BOS first


CHI = "\n".join(COMPLEX_HUMAN_INSTRUCTION)  # how diffusers' SanaPipeline joins it
TEXTS = [
    "a red fox",
    "  A Red Fox, in the SNOW!  (at dusk; 50% fog) -- \"quoted\" 'single' <tag> a_b\\c",
    "héllo wörld — 世界 🙂 naïve café\ttab\nnew line  two  spaces",
    "",
    CHI + "\n" + "a cat sleeping",
    "x" * 400,  # truncated
]


@pytest.fixture(scope="module")
def diffusers_pipe(checkpoints):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(str(checkpoints / "folder"))  # diffusers' own tokenizer, no override
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tokens(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    out = tokenizer(texts, padding="max_length", max_length=300, truncation=True, add_special_tokens=True)
    return out.input_ids, out.attention_mask


def test_saved_tokenizer_loads_identically_in_diffusers(tiny, checkpoints, diffusers_pipe):
    ours = tiny.tokenizer
    for name, tok in [
        ("diffusers", diffusers_pipe.tokenizer),
        ("load_tokenizer", load_tokenizer(checkpoints / "folder")),
    ]:
        assert "Gemma" not in type(tok).__name__, name
        assert tok.padding_side == "right", name
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (2, 1, 0), name
        assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (
            ours.bos_token_id,
            ours.eos_token_id,
            ours.pad_token_id,
        )
        for text in TEXTS:  # one at a time and as one padded batch
            assert _tokens(tok, [text]) == _tokens(ours, [text]), (name, text[:40])
        assert _tokens(tok, TEXTS) == _tokens(ours, TEXTS), name
        assert tok.encode(CHI) == ours.encode(CHI), name  # diffusers sizes the CHI token budget with encode()
        assert tok.vocab_size == ours.vocab_size <= tiny.preset.text_encoder["vocab_size"], name
    ids, mask = _tokens(ours, TEXTS)
    assert ids[3][:2] == [2, 0] and mask[3][:2] == [1, 0]  # "": BOS only, padded on the right
    assert 3 not in ids[1] and 3 not in ids[2]  # no <unk> for spaces, punctuation or unicode
    assert len(ours.encode(CHI)) + 300 - 2 <= ours.model_max_length  # room for CHI + prompt in byte tokens


def test_diffusers_from_pretrained_matches_our_pipeline(tiny, diffusers_pipe):
    from sana_deploy.runtime.pipeline import SanaDeployPipeline

    ours = SanaDeployPipeline.from_components(tiny, backend="torch")
    prompt = "  Héllo, Wörld: a red fox 🦊 in the SNOW!  "
    common = dict(height=128, width=128, num_inference_steps=2, guidance_scale=4.5, output_type="latent")
    a = ours(prompt, generator=torch.Generator().manual_seed(0), resolution_binning=False, **common).images
    b = diffusers_pipe(prompt, generator=torch.Generator().manual_seed(0), use_resolution_binning=False, **common)
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b.images).float()
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-4


@pytest.mark.parametrize("name", ["nvlabs.pth", "nvlabs.safetensors", "diffusers.safetensors"])
def test_single_file_round_trip(tiny, checkpoints, name):
    loaded = load_components(checkpoints / name, preset="sana-tiny")
    assert loaded.content_hash("transformer") == tiny.content_hash("transformer")
    assert torch.equal(_forward(loaded.transformer), _forward(tiny.transformer))


def test_missing_block_lists_keys_and_assumed_config(tiny, tmp_path):
    sd = {k: v for k, v in diffusers_to_nvlabs(tiny.transformer.state_dict()).items() if not k.startswith("blocks.1.")}
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as e:
        load_components(tmp_path / "broken.pth", preset="sana-tiny")
    msg = str(e.value)
    assert "missing keys" in msg and "transformer_blocks.1.attn1.to_q.weight" in msg and "sana-tiny" in msg
    assert not (tmp_path / "broken.pth.tmp").exists()


def test_unexpected_keys_are_listed(tiny, tmp_path):
    sd = diffusers_to_nvlabs(tiny.transformer.state_dict())
    sd["blocks.0.extra_adapter.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys.*extra_adapter"):
        load_components(tmp_path / "extra.pth", preset="sana-tiny")


def test_corrupt_checkpoint(tmp_path):
    p = tmp_path / "corrupt.pth"
    p.write_bytes(b"PK\x03\x04 definitely not a torch file")
    with pytest.raises(CheckpointError, match="Could not read checkpoint"):
        load_components(p)
    s = tmp_path / "truncated.safetensors"
    s.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="complete download"):
        load_components(s)


def test_not_a_sana_checkpoint(tmp_path):
    torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, tmp_path / "bert.pth")
    with pytest.raises(CheckpointError, match="not a Sana transformer checkpoint"):
        load_components(tmp_path / "bert.pth")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": print}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_components(tmp_path / "evil.pth")


def test_unknown_preset_and_released_preset_without_weights():
    with pytest.raises(SanaDeployError, match="neither a preset"):
        load_components("sana-9b")
    with pytest.raises(CheckpointError, match="never downloads"):
        load_components("sana-1.6b-1024")


def test_random_weights_for_real_config_are_seeded():
    a = load_components("sana-0.6b-512", ("transformer",), random_weights=True)
    assert a.transformer.config.hidden_size == 1152 and len(a.transformer.transformer_blocks) == 28
    b = load_components("sana-0.6b-512", ("transformer",), random_weights=True)
    assert a.content_hash("transformer") == b.content_hash("transformer")
