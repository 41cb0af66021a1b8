"""tensorrt-rtx builds real sana-tiny engines on the CPU for profiles 1024, 2048, 4096; inspect reads them back
as far as the library allows without CUDA."""

import pytest

pytest.importorskip("tensorrt_rtx")

import tensorrt_rtx as trt  # noqa: E402

from sana_deploy.engines import BuildOptions, EngineCache, build_engines, load_runner  # noqa: E402
from sana_deploy.engines.backends.trt_common import plan_header  # noqa: E402
from sana_deploy.engines.devices import cuda_available  # noqa: E402
from sana_deploy.engines.inspection import inspect_data  # noqa: E402
from sana_deploy.errors import SanaDeployError  # noqa: E402


@pytest.fixture(scope="module")
def rtx_engines(export_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("rtx-engines")
    entries = build_engines(
        "sana-tiny", "1024,2048,4096", backend="tensorrt-rtx", engine_dir=root, export_root=export_root, progress=False
    )
    return root, entries


def test_builds_one_engine_per_profile(rtx_engines):
    _, entries = rtx_engines
    by_comp = {}
    for e in entries:
        by_comp.setdefault(e.component, []).append(e)
        assert not e.hit and e.backend == "tensorrt-rtx" and e.device == "sm80+sm86+sm89+sm120"
        assert e.artifact.stat().st_size == e.size > 100_000
        assert e.artifact.read_bytes()[:4] == b"vtrt"
    assert sorted(e.profile.name for e in by_comp["transformer_cached"]) == ["1024", "2048", "4096"]
    assert len(by_comp["transformer_text"]) == 1  # size-free: one engine serves every profile
    assert sorted(e.profile.name for e in by_comp["vae"]) == ["1024", "2048", "4096"]
    assert len(by_comp["text_encoder"]) == 1  # not resolution-bound: the three profiles share one engine


def test_plan_profiles_and_bindings_are_recorded(rtx_engines):
    _, entries = rtx_engines
    tr = next(e for e in entries if e.component == "transformer_cached" and e.profile.name == "4096")
    assert tr.meta["input_shapes"]["latent"] == [[1, 32, 64, 64], [2, 32, 128, 128], [2, 32, 256, 256]]
    bindings = {b["name"]: b for b in tr.meta["info"]["bindings"]}
    assert bindings["latent"]["dtype"] == "float" and bindings["latent"]["shape"] == [-1, 32, -1, -1]
    assert bindings["encoder_attention_mask"]["dtype"] == "int64"  # fp32/int64 at the boundary
    assert bindings["noise_pred"]["mode"] == "output"
    assert tr.meta["info"]["plugin_nodes"] is False  # sana functions inlined: RTX has no plugin layers


def test_inspect_reads_the_plan_header_and_says_what_it_cannot(rtx_engines):
    _, entries = rtx_engines
    e = entries[0]
    header = plan_header(e.artifact)
    assert header == {"magic": "vtrt", "version": trt.__version__}
    data = inspect_data(e)
    assert data["checks"] == "ok"
    says = data["artifact_says"]
    assert says["header_matches_library"] is True
    if not cuda_available():
        assert "cannot be deserialized" in says["limits"]
        # and the library itself agrees: deserialising needs CUDA (it returns None, logging cudaError 35)
        runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
        assert runtime.deserialize_cuda_engine(e.artifact.read_bytes()) is None


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU message")
def test_runner_without_cuda_fails_clearly(rtx_engines):
    root, entries = rtx_engines
    with pytest.raises(SanaDeployError, match="cannot run here|CUDA GPU"):
        load_runner(entries[0])
    assert EngineCache(root).find("sana-tiny", "transformer_cached", 1024, 1024, 2) is None  # not runnable here


def test_second_build_is_a_hit(rtx_engines, export_root):
    root, first = rtx_engines
    said: list[str] = []
    again = build_engines(
        "sana-tiny", "1024,2048,4096", backend="tensorrt-rtx", engine_dir=root, export_root=export_root,
        progress=False, say=said.append,
    )  # fmt: skip
    assert [e.key for e in again] == [e.key for e in first]
    assert all(e.hit and e.lookup_seconds < 0.05 for e in again)
    if not cuda_available():  # the build output says what the engines are for and that they cannot run here
        note = next(m for m in said if m.startswith("note:"))
        assert "NVIDIA RTX-class GPUs" in note and "will not run on this machine" in note


@pytest.mark.skipif(cuda_available(), reason="checks the cross-build note on a CPU-only machine")
def test_cli_build_says_rtx_engines_will_not_run_here(rtx_engines, export_root):
    from click.testing import CliRunner

    from sana_deploy.cli import main

    root, _ = rtx_engines
    res = CliRunner().invoke(
        main, ["build", "--backend", "tensorrt-rtx", "--components", "vae", "--engine-dir", str(root),
               "--export-dir", str(export_root)], catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    tail = [line for line in res.output.splitlines() if line.strip()][-1]  # after the table (cached: no build)
    assert tail.startswith("note: these tensorrt-rtx engines are for NVIDIA RTX-class GPUs") and "will not run" in tail


def test_targets_change_the_key(export_root, tmp_path, rtx_engines):
    _, entries = rtx_engines
    default = next(e for e in entries if e.component == "text_encoder")
    (e,) = build_engines(
        "sana-tiny", "1024", backend="tensorrt-rtx", components="text-encoder", engine_dir=tmp_path,
        export_root=export_root, options=BuildOptions(targets=("sm89",)), progress=False,
    )  # fmt: skip
    assert e.device == "sm89" and e.key != default.key and not e.hit


@pytest.mark.skipif(cuda_available(), reason="checks the no-GPU refusal")
def test_stripped_plan_needs_a_gpu_for_rtx(export_root, tmp_path):
    with pytest.raises(SanaDeployError, match="weight-stripped plans without a GPU"):
        build_engines(
            "sana-tiny", "1024", backend="tensorrt-rtx", components="vae", engine_dir=tmp_path,
            export_root=export_root, options=BuildOptions(strip_weights=True), progress=False,
        )  # fmt: skip
    assert not list(tmp_path.glob("sana-tiny/vae/[0-9a-f]*"))  # nothing left that looks like an engine


def test_unknown_target_is_refused(export_root, tmp_path):
    with pytest.raises(SanaDeployError, match="cannot target.*no Hopper"):
        build_engines(
            "sana-tiny", "1024", backend="tensorrt-rtx", components="vae", engine_dir=tmp_path,
            export_root=export_root, options=BuildOptions(targets=("sm90",)), progress=False,
        )  # fmt: skip


@pytest.mark.slow
def test_real_size_0_6b_fp16_builds_on_cpu(tmp_path):
    """Sana 0.6B (random weights), fp16 export, tensorrt-rtx build of profile 1024 on the CPU, within 24 GB."""
    import resource

    (e,) = build_engines(
        "sana-0.6b-1024", "1024", backend="tensorrt-rtx", precision="fp16", components="transformer",
        engine_dir=tmp_path / "engines", export_root=tmp_path / "export", random_weights=True, progress=False,
    )  # fmt: skip
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"0.6B fp16 tensorrt-rtx: build {e.build_seconds:.0f} s, plan {e.size / 2**20:.0f} MiB, "
        f"peak RSS {peak_gb:.1f} GB"
    )
    assert e.artifact.read_bytes()[:4] == b"vtrt" and e.size > 1_000_000_000  # ~1.2 GB of fp16 weights inside
    assert peak_gb < 24


def test_shared_timing_cache_is_merged_under_a_lock(tmp_path):
    """The merge path the tensorrt backend uses (tensorrt-rtx keeps the API, as a no-op it warns about)."""
    import warnings

    from sana_deploy.engines.backends.trt_common import load_timing_cache, merge_timing_cache

    path = tmp_path / ".timing" / "x.cache"
    config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cache = load_timing_cache(config, path)
        merge_timing_cache(config, cache, path)
        merge_timing_cache(config, load_timing_cache(config, path), path)  # merging into an existing file
    assert path.exists() and path.stat().st_size > 0 and (tmp_path / ".timing" / "x.cache.lock").exists()
    assert not list(path.parent.glob(".tmp-*"))


def test_every_lora_target_can_be_marked_refittable(export_root):
    """LoRA swaps refit TensorRT engines: every LoRA-targetable weight of each transformer graph (the export's
    weight map) is found by its initializer's name in the parsed network and marked refittable. Building a
    refittable tensorrt-rtx engine needs one GPU architecture and CUDA (its code generator checks both), and
    running the refit needs CUDA: unverified here."""
    from sana_deploy.engines.backends.trt_common import make_logger, mark_refittable, parse_network
    from sana_deploy.runners.weights import read_weight_map

    for component in ("transformer_text", "transformer_cached"):
        logger = make_logger(trt)
        builder = trt.Builder(logger)
        onnx_path = export_root / "fp32" / component / "model.onnx"
        network, _parser = parse_network(trt, builder, logger, onnx_path, False)
        refs = read_weight_map(onnx_path.parent)
        assert refs and mark_refittable(network, refs) == {n: r.name for n, r in refs.items()}
        assert all(network.are_weights_marked_refittable(r.name) for r in refs.values())


def test_cpu_builds_keep_weights_constant_and_say_so(rtx_engines):
    """A multi-architecture build (every build without a GPU) cannot have refittable weights."""
    _, entries = rtx_engines
    assert all("+" in e.device and not e.meta["info"].get("refittable_weights") for e in entries)
