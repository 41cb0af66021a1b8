import pytest

from sana_deploy.errors import SanaDeployError
from sana_deploy.models.config import PRESETS, TransformerConfig, get_preset


def test_released_dimensions():
    small, big = get_preset("sana-0.6b-1024").transformer, get_preset("sana-1.6b-1024").transformer
    assert (small.num_layers, small.hidden_size, small.num_attention_heads) == (28, 1152, 36)
    assert (small.num_cross_attention_heads, small.cross_attention_head_dim, small.ffn_hidden) == (16, 72, 2880)
    assert (big.num_layers, big.hidden_size, big.num_attention_heads) == (20, 2240, 70)
    assert (big.num_cross_attention_heads, big.cross_attention_head_dim, big.ffn_hidden) == (20, 112, 5600)
    assert get_preset("sana-1.5-4.8b-1024").transformer.num_layers == 60
    assert get_preset("sana-1.5-1.6b-1024").transformer.qk_norm


def test_positional_embedding_tiers():
    assert not get_preset("sana-1.6b-1024").transformer.use_pe
    two_k, four_k = get_preset("sana-1.6b-2k"), get_preset("sana-1.6b-4k")
    assert (two_k.transformer.interpolation_scale, two_k.transformer.sample_size, two_k.flow_shift) == (1.0, 64, 3.0)
    assert (four_k.transformer.interpolation_scale, four_k.transformer.sample_size, four_k.flow_shift) == (
        2.0,
        128,
        6.0,
    )
    assert four_k.resolution == 4096 and four_k.dtype == "bf16"


def test_diffusers_config_round_trip():
    for p in PRESETS.values():
        assert TransformerConfig.from_diffusers(p.transformer.to_diffusers()) == p.transformer


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(SanaDeployError) as e:
        get_preset("sana-9b")
    assert "sana-tiny" in str(e.value) and "sana-1.6b-4k" in str(e.value)
