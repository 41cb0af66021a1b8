"""Our export-friendly transformer against diffusers' SanaTransformer2DModel with the same weights."""

import pytest
import torch

from sana_deploy.models.random import random_components


@pytest.mark.parametrize("preset", ["sana-tiny", "sana-tiny-pe"])
def test_matches_diffusers(preset):
    from diffusers import SanaTransformer2DModel

    c = random_components(preset, ("transformer",))
    ref = SanaTransformer2DModel(**c.preset.transformer.to_diffusers()).eval()
    ref.load_state_dict(c.transformer.state_dict(), strict=True)
    g = torch.Generator().manual_seed(0)
    for h, w in [(32, 32), (24, 32), (48, 64)]:
        x = torch.randn(2, 32, h, w, generator=g)
        y = torch.randn(2, 300, c.preset.transformer.caption_channels, generator=g)
        mask = torch.ones(2, 300, dtype=torch.long)
        mask[1, 17:] = 0
        t = torch.tensor([999.0, 417.0])
        with torch.no_grad():
            expected = ref(x, y, t, encoder_attention_mask=mask).sample
            actual = c.transformer(x, t, y, mask)
        rel = (actual - expected).abs().max() / expected.abs().max()
        assert rel < 1e-5, (preset, h, w, rel)


def test_positional_embedding_follows_run_time_size():
    """The PE table is computed for each latent size: no fixed-size buffer to overflow."""
    c = random_components("sana-tiny-pe", ("transformer",))
    pe = c.transformer.patch_embed
    a, b = pe.pos_embed(16, 16), pe.pos_embed(16, 24)
    assert a.shape == (256, 64) and b.shape == (384, 64)
    assert not torch.allclose(a, b[:256])  # positions are normalised to the base size, not cropped
