"""Loader round-trips and the errors a user gets for bad checkpoints."""

import pytest
import torch
from safetensors.torch import save_file

from sana_deploy.errors import CheckpointError, SanaDeployError
from sana_deploy.models.convert import diffusers_to_nvlabs
from sana_deploy.models.loaders import load_components, save_diffusers_folder


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
