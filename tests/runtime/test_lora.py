"""LoRA golden test: adapters made with PEFT on diffusers' ``SanaTransformer2DModel`` and saved with
``SanaPipeline.save_lora_weights``; diffusers' ``SanaPipeline.load_lora_weights`` (+ ``set_adapters``,
``fuse_lora``, ``unfuse_lora``) is the reference for ``SanaDeployPipeline`` on torch and onnxruntime.

Adapters: "a" rank 4, alpha 6, on self- and cross-attention q/k/v/out and Mix-FFN's two 1x1 convolutions, with
``attn2.to_k`` at rank 8 (``rank_pattern``); "b" rank 8, alpha 3, on ``to_q``, ``conv_point`` and the caption
projection. PEFT's random A and B (``init_lora_weights=False``), so every layer changes the output.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana_deploy.models.lora import LoraError, load_adapter
from sana_deploy.runtime.pipeline import SanaDeployPipeline

PROMPT = "a lighthouse at dusk"
SIZE = 512
STEPS = 2
LATENT_TOL = 1e-4
BASE_TOL = 1e-6


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from sana_deploy.models.loaders import save_diffusers_folder
    from sana_deploy.models.random import random_components

    return save_diffusers_folder(random_components("sana-tiny"), tmp_path_factory.mktemp("lora") / "sana-tiny")


def _make_adapter(folder, out, r: int, alpha: float, targets: list[str], rank_pattern: dict, seed: int):  # noqa: ANN001
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    tr = SanaTransformer2DModel.from_pretrained(str(folder), subfolder="transformer")
    cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, rank_pattern=rank_pattern)
    tr.add_adapter(cfg, adapter_name="x")
    layers = get_peft_model_state_dict(tr, adapter_name="x")
    SanaPipeline.save_lora_weights(out, transformer_lora_layers=layers, transformer_lora_adapter_metadata=cfg.to_dict())
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def adapters(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    a = _make_adapter(
        folder,
        root / "a",
        4,
        6,
        ["to_q", "to_k", "to_v", "to_out.0", "conv_inverted", "conv_point"],
        {"attn2.to_k": 8},
        seed=1,
    )
    b = _make_adapter(folder, root / "b", 8, 3, ["to_q", "conv_point", "caption_projection.linear_1"], {}, seed=2)
    return {"a": a, "b": b}


def _run(pipe, **kw) -> np.ndarray:  # noqa: ANN001
    out = pipe(
        PROMPT, negative_prompt="", height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=4.5,
        generator=torch.Generator().manual_seed(3), output_type="latent", **kw,
    )  # fmt: skip
    images = out.images
    return np.asarray(images.float() if isinstance(images, torch.Tensor) else images)


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


@pytest.fixture(scope="module")
def reference(folder, adapters):
    """diffusers' latents for each LoRA state, computed once."""
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)

    def run() -> np.ndarray:
        return _run(pipe, use_resolution_binning=False)

    out = {"base": run()}
    pipe.load_lora_weights(str(adapters["a"].parent), adapter_name="a")
    out["a"] = run()
    pipe.load_lora_weights(str(adapters["b"].parent), adapter_name="b")
    out["b"] = run()
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
    out["a+b"] = run()
    pipe.fuse_lora(lora_scale=0.5)
    out["fused"] = run()
    pipe.unfuse_lora()
    out["unfused"] = run()
    return out


def _engine_pipe(folder, backend: str, tmp_path_factory) -> SanaDeployPipeline:  # noqa: ANN001
    """The caption K/V split from engines of ``backend`` (profile 512), the text encoder and DC-AE in torch."""
    from sana_deploy.contract import SPLIT_TRANSFORMER
    from sana_deploy.engines import build_engines, load_runner
    from sana_deploy.models.loaders import load_diffusers_folder
    from sana_deploy.runtime.assemble import torch_runner
    from sana_deploy.runtime.providers import FixedStages

    cache = tmp_path_factory.mktemp(f"lora-{backend}-engines")
    export = tmp_path_factory.mktemp(f"lora-{backend}-export")
    entries = build_engines(
        str(folder), [512], backend, engine_dir=cache, export_root=export, components=SPLIT_TRANSFORMER,
        progress=False, say=lambda m: None,
    )  # fmt: skip
    comps = load_diffusers_folder(folder)
    runners = {e.component: load_runner(e) for e in entries}
    for c in ("text_encoder", "vae"):
        runners[c] = torch_runner(comps, c, "fp32")
    pipe = SanaDeployPipeline(FixedStages(runners, vae_module=comps.vae), comps.tokenizer, comps.preset, comps.model_id)
    pipe.watched = [cache, export]  # the no-rebuild test lists these folders
    return pipe


@pytest.fixture(scope="module", params=["torch", "onnxruntime", "onnxruntime-engine", "aoti-engine"])
def pipe(request, folder, tmp_path_factory):
    from sana_deploy.models.loaders import load_diffusers_folder

    if request.param.endswith("-engine"):
        return _engine_pipe(folder, request.param.removesuffix("-engine"), tmp_path_factory)
    comps = load_diffusers_folder(folder)
    export = tmp_path_factory.mktemp("lora-export")
    pipe = SanaDeployPipeline.from_components(comps, backend=request.param, export_dir=export)
    pipe.watched = [export] if request.param != "torch" else []  # torch has no artifact to watch
    return pipe


def _snapshot(folders) -> dict:  # noqa: ANN001
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(f.rglob("*"))}


def test_swaps_never_write_an_export_or_engine(pipe, adapters, tmp_path) -> None:
    import shutil

    if not pipe.watched:
        pytest.skip("torch swaps parameters in memory; it has no export or engine")
    third = tmp_path / "c.safetensors"
    shutil.copyfile(adapters["a"], third)
    pipe.unload_lora_weights()
    _run(pipe, resolution_binning=False)  # every runner loaded
    before = _snapshot(pipe.watched)
    assert before
    pipe.load_lora_weights(adapters["a"], adapter_name="a")
    pipe.load_lora_weights(adapters["b"], adapter_name="b")
    pipe.load_lora_weights(third, adapter_name="c", scale=0.3)
    for names in (["a"], ["b"], ["c"], ["a", "b"], ["b"], ["a"], []):
        pipe.set_adapters(names)
        _run(pipe, resolution_binning=False)
    assert _snapshot(pipe.watched) == before
    pipe.unload_lora_weights()


def test_lora_matches_diffusers(pipe, adapters, reference) -> None:
    ours = lambda: _run(pipe, resolution_binning=False, sampler="flow-dpm-solver")  # noqa: E731
    base = ours()
    assert _err(base, reference["base"]) <= LATENT_TOL
    pipe.load_lora_weights(adapters["a"], adapter_name="a")
    got = ours()
    assert _err(got, reference["a"]) <= LATENT_TOL
    assert _err(got, base) > 100 * LATENT_TOL  # the adapter changes the result
    pipe.load_lora_weights(adapters["b"], adapter_name="b")
    assert pipe.get_active_adapters() == ["b"]
    assert _err(ours(), reference["b"]) <= LATENT_TOL
    pipe.set_adapters(["a", "b"], adapter_weights=[0.7, 0.4])
    assert _err(ours(), reference["a+b"]) <= LATENT_TOL
    pipe.fuse_lora(lora_scale=0.5)
    assert _err(ours(), reference["fused"]) <= LATENT_TOL
    pipe.unfuse_lora()
    assert _err(ours(), reference["unfused"]) <= LATENT_TOL
    pipe.unload_lora_weights()
    assert _err(ours(), base) <= BASE_TOL
    assert pipe.get_list_adapters() == {"transformer": []}


def test_bad_adapters_keep_previous_weights(pipe, adapters, tmp_path) -> None:
    from safetensors.torch import save_file

    pipe.unload_lora_weights()
    pipe.load_lora_weights(adapters["a"], adapter_name="good")
    before = _run(pipe, resolution_binning=False)
    sd = load_adapter(adapters["a"]).layers
    key = next(iter(sd))
    wrong = {
        f"transformer.{key[:-7]}.lora_A.weight": torch.randn(4, 7),
        f"transformer.{key[:-7]}.lora_B.weight": torch.randn(9, 4),
    }
    save_file(wrong, tmp_path / "size.safetensors")
    save_file(
        {
            "transformer.nothing.here.lora_A.weight": torch.randn(4, 8),
            "transformer.nothing.here.lora_B.weight": torch.randn(8, 4),
        },
        tmp_path / "keys.safetensors",
    )
    (tmp_path / "trunc.safetensors").write_bytes(adapters["a"].read_bytes()[:300])
    torch.save({"x": torch.zeros(1)}, tmp_path / "pickle.bin")
    cases = {
        tmp_path / "size.safetensors": "another model size",
        tmp_path / "keys.safetensors": "does not have",
        tmp_path / "trunc.safetensors": "corrupt or truncated",
        tmp_path / "pickle.bin": "pickle",
        tmp_path / "missing.safetensors": "does not exist",
    }
    for i, (path, message) in enumerate(cases.items()):
        with pytest.raises(LoraError, match=message):
            pipe.load_lora_weights(path, adapter_name=f"bad{i}")
    for scale in (-1, "abc", float("nan")):
        with pytest.raises(LoraError, match="scale"):
            pipe.load_lora_weights(adapters["b"], adapter_name="bad-scale", scale=scale)
    with pytest.raises(LoraError, match="already loaded"):
        pipe.load_lora_weights(adapters["a"], adapter_name="good")
    with pytest.raises(LoraError, match="No adapter named"):
        pipe.set_adapters(["nope"])
    assert pipe.get_list_adapters() == {"transformer": ["good"]}
    assert _err(_run(pipe, resolution_binning=False), before) <= BASE_TOL
    pipe.unload_lora_weights()


def test_every_lora_target_is_swappable(pipe) -> None:
    held = set()
    for c in ("transformer_text", "transformer_cached"):
        held |= set(pipe.provider.runner(c, 0, 0, 0).swappable_weights())
    # every linear and 1x1 conv weight of the transformer is swappable in the split's two graphs
    from sana_deploy.runtime.lora import transformer_weight_shapes

    want = {
        n
        for n, s in transformer_weight_shapes(pipe.preset).items()
        if n.endswith(".weight") and (len(s) == 2 or s[2:] == (1, 1))
    }
    assert want - held == set()


def test_a_new_adapter_adds_no_runner_calls(pipe, adapters, monkeypatch) -> None:
    """The first request with an adapter runs exactly the calls of a request without one (no warm-up, no extra
    steps, no re-export): the swap is all it adds."""
    pipe.unload_lora_weights()
    _run(pipe, resolution_binning=False)  # every runner loaded
    calls: list[str] = []
    for cls in {type(r) for r in pipe.provider.loaded_transformer_runners()}:
        inner = cls.infer

        def counted(self, inputs, _inner=inner):  # noqa: ANN001, ANN202
            calls.append(self.component)
            return _inner(self, inputs)

        monkeypatch.setattr(cls, "infer", counted)
    _run(pipe, resolution_binning=False)
    base = sorted(calls)
    calls.clear()
    pipe.load_lora_weights(adapters["b"], adapter_name="b")
    _run(pipe, resolution_binning=False)
    assert base and sorted(calls) == base
    pipe.unload_lora_weights()
