"""onnxruntime and aoti artifacts run and match PyTorch (fp32 rel err <= 1e-5) inside each profile, square and
non-square; a shape outside every profile is a clear miss."""

import subprocess
import sys

import pytest
import torch
from engine_helpers import pixel_sizes, rel_err, torch_reference

from sana_deploy.contract import BASE_GRAPHS, PIPELINE_COMPONENTS
from sana_deploy.engines import EngineCache, build_engines, load_runner
from sana_deploy.engines.backends import EngineBuildError
from sana_deploy.engines.resolve import resolve
from sana_deploy.errors import SanaDeployError, ShapeError

# (height, width, batch) inside each profile: the opt shape, a non-square bucket, batch 1
INSIDE = {
    512: [(512, 512, 2), (384, 640, 1)],
    1024: [(1024, 1024, 2), (768, 1344, 1)],
    2048: [(2048, 2048, 1), (1536, 2560, 2)],
    4096: [(2048, 2048, 1), (2048, 3072, 1)],
}
# decoding >= 1024 px images takes seconds each on CPU: the 2048/4096 VAE checks run with -m slow
VAE_INSIDE = {
    512: [(512, 512, 2), (384, 640, 1)],
    1024: [(512, 768, 1)],
    2048: [(1024, 1536, 1)],
    4096: [(2048, 2048, 1)],
}


@pytest.fixture(scope="module")
def ort_engines(export_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("ort-engines")
    entries = build_engines(
        "sana-tiny", "512,1024,2048,4096", backend="onnxruntime", engine_dir=root, export_root=export_root,
        components=BASE_GRAPHS, progress=False,
    )  # fmt: skip
    return root, entries


def test_default_build_is_the_caption_kv_split(export_root, tmp_path):
    """What the pipeline runs by default: text encoder, caption K/V graph, cached step graph, DC-AE."""
    entries = build_engines(
        "sana-tiny", "512", backend="onnxruntime", engine_dir=tmp_path, export_root=export_root, progress=False
    )
    assert sorted(e.component for e in entries) == sorted(PIPELINE_COMPONENTS)


@pytest.mark.parametrize("base", [512, 2048])
def test_onnxruntime_split_engines_match_pytorch(ort_engines, tiny, base):
    """The caption K/V graph is size-free (one engine serves every profile); the cached step matches PyTorch."""
    root, _ = ort_engines
    cache = EngineCache(root)
    for h, w, b in INSIDE[base]:
        text = cache.find("sana-tiny", "transformer_text", h, w, b, backend="onnxruntime")
        cached = cache.find("sana-tiny", "transformer_cached", h, w, b, backend="onnxruntime")
        assert text is not None and cached is not None and cached.covers(h, w, b)
        sizes = pixel_sizes("transformer", h, w, b)
        inputs, ref = torch_reference(tiny, "transformer", sizes, seed=h + w)
        kv = load_runner(text)(encoder_hidden_states=inputs["encoder_hidden_states"])["text_kv"]
        feeds = {k: v for k, v in inputs.items() if k != "encoder_hidden_states"}
        out = load_runner(cached)(text_kv=kv, **feeds)["noise_pred"]
        assert rel_err(out, ref["noise_pred"]) <= 1e-5


@pytest.mark.parametrize("base", [512, 1024, 2048, 4096])
def test_onnxruntime_transformer_matches_pytorch(ort_engines, tiny, base):
    root, _ = ort_engines
    cache = EngineCache(root)
    for h, w, b in INSIDE[base]:
        entry = cache.find("sana-tiny", "transformer", h, w, b, backend="onnxruntime")
        assert entry is not None and entry.covers(h, w, b)
        inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", h, w, b), seed=h + w)
        out = load_runner(entry)(**inputs)
        assert out["noise_pred"].shape == ref["noise_pred"].shape == (b, 32, h // 32, w // 32)
        assert out["noise_pred"].dtype == torch.float32
        assert rel_err(out["noise_pred"], ref["noise_pred"]) <= 1e-5, (base, h, w, b)


@pytest.mark.parametrize(
    "base", [512, 1024, pytest.param(2048, marks=pytest.mark.slow), pytest.param(4096, marks=pytest.mark.slow)]
)
def test_onnxruntime_vae_matches_pytorch(ort_engines, tiny, base):
    cache = EngineCache(ort_engines[0])
    for h, w, b in VAE_INSIDE[base]:
        entry = cache.find("sana-tiny", "vae", h, w, b, backend="onnxruntime")
        assert entry is not None
        inputs, ref = torch_reference(tiny, "vae", pixel_sizes("vae", h, w, b), seed=1)
        out = load_runner(entry)(**inputs)["sample"]
        assert out.shape == (b, 3, h, w)
        assert rel_err(out, ref["sample"]) <= 1e-5, (base, h, w, b)


def test_onnxruntime_static_profile_pins_the_size_not_the_batch(export_root, tmp_path, tiny):
    """A static profile pins the image size in the optimised graph; the batch stays free (1 .. 2 x max-batch)."""
    (entry,) = build_engines(
        "sana-tiny", "512", backend="onnxruntime", components="vae", static=True, engine_dir=tmp_path,
        export_root=export_root, progress=False,
    )  # fmt: skip
    found = EngineCache(tmp_path).find("sana-tiny", "vae", 512, 512, 1, backend="onnxruntime")
    assert found is not None and found.key == entry.key
    assert EngineCache(tmp_path).find("sana-tiny", "vae", 384, 640, 1, backend="onnxruntime") is None
    for b in (1, 2):
        inputs, ref = torch_reference(tiny, "vae", pixel_sizes("vae", 512, 512, b), seed=2)
        out = load_runner(entry)(**inputs)["sample"]
        assert out.shape == (b, 3, 512, 512) and rel_err(out, ref["sample"]) <= 1e-5, b


def test_onnxruntime_text_encoder_matches_pytorch(ort_engines, tiny):
    cache = EngineCache(ort_engines[0])
    for seq, b in ((300, 2), (77, 1)):
        entry = cache.find("sana-tiny", "text_encoder", 0, 0, b, backend="onnxruntime")
        inputs, ref = torch_reference(tiny, "text_encoder", {"batch": b, "seq": seq})
        out = load_runner(entry)(**inputs)["last_hidden_state"]
        assert rel_err(out, ref["last_hidden_state"]) <= 1e-5


def test_outside_every_profile_is_a_clear_miss(ort_engines, tiny):
    cache = EngineCache(ort_engines[0])
    assert cache.find("sana-tiny", "transformer", 8192, 8192, 2) is not None  # 4096 profile reaches 8192 px
    assert cache.find("sana-tiny", "transformer", 1000, 1000, 1) is None  # not a multiple of 32
    assert cache.find("sana-tiny", "transformer", 1024, 1024, 3) is None  # batch beyond 2 x max-batch
    assert cache.find("sana-tiny", "transformer", 128, 128, 1) is None  # below the 512 buckets
    assert cache.find("other-model", "transformer", 1024, 1024, 1) is None
    with pytest.raises(ShapeError, match="No engine .* covers transformer at 1024x1024, batch 3.*--profiles 1024"):
        resolve(cache, "sana-tiny", "transformer", 1024, 1024, 3, policy="error")
    # a runner refuses shapes outside its own profile instead of running them
    entry = cache.find("sana-tiny", "transformer", 512, 512, 1, backend="onnxruntime")
    inputs, _ = torch_reference(tiny, "transformer", pixel_sizes("transformer", 512, 512, 3))
    with pytest.raises(ShapeError, match="outside the transformer engine's profile"):
        load_runner(entry)(**inputs)


def test_find_prefers_the_closest_profile(ort_engines):
    cache = EngineCache(ort_engines[0])
    assert cache.find("sana-tiny", "transformer", 1024, 1024, 1).profile.name == "1024"
    assert cache.find("sana-tiny", "transformer", 2048, 2048, 1).profile.name == "2048"
    assert cache.find("sana-tiny", "transformer", 512, 768, 1).profile.name == "512"


@pytest.fixture(scope="module")
def aoti_transformer(export_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("aoti-engines")
    (entry,) = build_engines(
        "sana-tiny", "1024", backend="aoti", components="transformer", engine_dir=root, export_root=export_root,
        progress=False,
    )  # fmt: skip
    return root, entry


def test_aoti_transformer_matches_pytorch(aoti_transformer, tiny):
    root, entry = aoti_transformer
    assert entry.artifact.suffix == ".pt2" and entry.device == "cpu" and entry.meta["info"]["kernels"] == "inline"
    runner = load_runner(EngineCache(root).find("sana-tiny", "transformer", 768, 1344, 1, backend="aoti"))
    for h, w, b in INSIDE[1024] + [(512, 2048, 2)]:
        inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", h, w, b), seed=w)
        out = runner(**inputs)["noise_pred"]
        assert rel_err(out, ref["noise_pred"]) <= 1e-5, (h, w, b)


def test_aoti_package_runs_without_model_code(aoti_transformer, tiny, tmp_path):
    """A fresh interpreter that imports only torch (no sana_deploy: no model code, no sana:: ops) runs it."""
    _, entry = aoti_transformer
    inputs, ref = torch_reference(tiny, "transformer", pixel_sizes("transformer", 768, 1024, 2), seed=3)
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "m = torch._inductor.aoti_load_package(sys.argv[1])\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "torch.save(m(**x), sys.argv[3])\n"
        "assert not any(k.startswith('sana_deploy') for k in sys.modules)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(entry.artifact), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True,
        cwd=tmp_path,
        timeout=300,
    )
    out = torch.load(tmp_path / "out.pt", weights_only=True)
    assert rel_err(out, ref["noise_pred"]) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("base", [512, 2048])
def test_aoti_text_encoder(export_root, tmp_path, tiny, base):
    (entry,) = build_engines(
        "sana-tiny", str(base), backend="aoti", components="text-encoder", engine_dir=tmp_path,
        export_root=export_root, progress=False,
    )  # fmt: skip
    runner = load_runner(entry)
    for seq, b in ((77, 1), (300, 2), (1400, 1)):
        inputs, ref = torch_reference(tiny, "text_encoder", {"batch": b, "seq": seq}, seed=5)
        assert rel_err(runner(**inputs)["last_hidden_state"], ref["last_hidden_state"]) <= 1e-5, (base, seq, b)


@pytest.mark.slow
def test_aoti_vae_static_matches_and_dynamic_is_checked(export_root, tmp_path, tiny):
    """Static VAE packages (one size, batch 1..2 traced dynamic) match PyTorch at both batches and serve the
    pipeline's decode at batch 1. Dynamic-size ones are miscompiled by Inductor on torch 2.13 CPU (output height
    stuck at the traced size); the build's self-check must refuse them rather than cache a wrong package."""
    (entry,) = build_engines(
        "sana-tiny", "512", backend="aoti", components="vae", static=True, engine_dir=tmp_path,
        export_root=export_root, progress=False,
    )  # fmt: skip
    assert entry.meta["info"]["self_check"]["sizes"]["batch"] == 1  # checked away from the traced batch 2
    found = EngineCache(tmp_path).find("sana-tiny", "vae", 512, 512, 1, backend="aoti")
    assert found is not None and found.key == entry.key
    for b in (1, 2):
        inputs, ref = torch_reference(tiny, "vae", pixel_sizes("vae", 512, 512, b), seed=5)
        assert rel_err(load_runner(entry)(**inputs)["sample"], ref["sample"]) <= 1e-5, b
    try:
        (dyn,) = build_engines(
            "sana-tiny", "512", backend="aoti", components="vae", engine_dir=tmp_path, export_root=export_root,
            progress=False,
        )  # fmt: skip
    except EngineBuildError as exc:
        assert "miscompiled vae [512] with dynamic shapes" in str(exc) and "--static" in str(exc)
        assert EngineCache(tmp_path).find("sana-tiny", "vae", 384, 640, 1, backend="aoti") is None
        pytest.xfail("Inductor miscompiles the dynamic DC-AE decoder on this torch; refused by the self-check")
    for h, w, b in VAE_INSIDE[512]:
        inputs, ref = torch_reference(tiny, "vae", pixel_sizes("vae", h, w, b), seed=5)
        assert rel_err(load_runner(dyn)(**inputs)["sample"], ref["sample"]) <= 1e-5


def test_a_build_from_loaded_components_loads_nothing_and_finds_the_same_engines(
    ort_engines, export_root, tiny, monkeypatch
):
    """``loaded=``: the bench builds from the model it holds; same weights, so the same cache keys (cache hits)."""
    import sana_deploy.engines.builder as builder

    root, entries = ort_engines

    def no_load(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("build_engines loaded the model although it was passed in")

    monkeypatch.setattr(builder, "load_components", no_load)
    again = build_engines(
        "sana-tiny", "512", backend="onnxruntime", engine_dir=root, export_root=export_root,
        components=("transformer", "vae"), progress=False, loaded=tiny,
    )  # fmt: skip
    before = {(e.component, e.profile.name): e.key for e in entries}
    assert all(e.hit for e in again)
    assert {(e.component, e.profile.name): e.key for e in again}.items() <= before.items()


def test_loaded_components_must_hold_what_the_build_exports(export_root, tmp_path):
    from sana_deploy.models.random import random_components

    only_vae = random_components("sana-tiny", components=("vae",))
    with pytest.raises(SanaDeployError, match="lack transformer"):
        build_engines(
            "sana-tiny", "512", backend="onnxruntime", engine_dir=tmp_path, export_root=export_root,
            components="transformer", progress=False, loaded=only_vae,
        )  # fmt: skip


@pytest.mark.slow
def test_an_aoti_bf16_build_leaves_the_loaded_model_as_it_was(export_root, tmp_path, tiny):
    before = {p.dtype for p in tiny.transformer.parameters()}
    (entry,) = build_engines(
        "sana-tiny", "512", backend="aoti", precision="bf16", components="transformer_text", engine_dir=tmp_path,
        export_root=export_root, progress=False, loaded=tiny,
    )  # fmt: skip
    assert entry.precision == "bf16"
    assert {p.dtype for p in tiny.transformer.parameters()} == before == {torch.float32}
