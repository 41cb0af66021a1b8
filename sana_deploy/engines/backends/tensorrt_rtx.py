"""``tensorrt-rtx``: TensorRT for RTX GPUs. Builds real engines on the CPU for chosen compute capabilities.

This is what CI builds. It has no plugin layers, so the ``sana`` local functions are always inlined. Engines run
only on the RTX architectures they were built for (SM 7.5/8.0/8.6/8.9/12.x; no SM 9.0/H100) and only with CUDA.
"""

from __future__ import annotations

from pathlib import Path

from sana_deploy.engines.backends import trt_common
from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.errors import ShapeError, fail
from sana_deploy.runners.tensorrt import deserialize

# Ampere to Blackwell. One plan serves them all at no extra build time or size (measured on sana-tiny); Turing
# (sm75) is left out: its RTX builds reject fp32 GEMMs ("FP32 GEMM is not supported").
DEFAULT_TARGETS = ("sm80", "sm86", "sm89", "sm120")
# What --targets accepts: the RTX-class architectures TensorRT-RTX compiles for. No Hopper (sm90, H100/H200) and
# no datacenter Blackwell (sm100): its engines cannot run there.
TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")


def _capabilities(trt) -> dict[str, object]:  # noqa: ANN001
    return {n.lower(): v for n, v in trt.ComputeCapability.__members__.items() if n.startswith("SM")}


class TensorRtRtxBackend(Backend):
    name = "tensorrt-rtx"
    package = "tensorrt-rtx"
    module = "tensorrt_rtx"
    extra = "rtx"
    timing_cache = False  # "Timing cache operations are no-ops in TensorRT-RTX" (deprecated since 1.2)

    def _trt(self):
        import tensorrt_rtx

        return tensorrt_rtx

    def targets(self, options: BuildOptions) -> tuple[str, ...]:
        from sana_deploy.engines.devices import current_device

        if options.targets:
            wanted = tuple({t.lower().replace(".", ""): None for t in options.targets})
        else:
            here = current_device()
            wanted = (here,) if here in DEFAULT_TARGETS else DEFAULT_TARGETS
        bad = [t for t in wanted if t not in TARGETS]
        if bad:
            fail(f"tensorrt-rtx cannot target {bad}; choose from {', '.join(TARGETS)} (no Hopper/sm90).", ShapeError)
        return tuple(sorted(wanted, key=lambda t: int(t[2:])))

    def target_device(self, options: BuildOptions) -> str:
        return "+".join(self.targets(options))

    def unsupported_here(self) -> str | None:
        """None if engines built with the default targets run on this machine's GPU, else why they cannot."""
        from sana_deploy.engines.devices import current_device, device_name

        here = current_device()
        if here == "cpu":
            return "its engines need an NVIDIA RTX-class GPU with CUDA and this machine has none"
        if here not in self.targets(BuildOptions()):
            return (
                f"it does not target this GPU ({device_name()}, {here}); it builds for RTX-class GPUs "
                f"({', '.join(DEFAULT_TARGETS)}), not Hopper/datacenter parts"
            )
        return None

    @staticmethod
    def describe(device: str) -> str:
        """What an artifact built for ``device`` (``sm80+sm86``) runs on, in words."""
        return f"NVIDIA RTX-class GPUs of compute capability {', '.join(device.split('+'))}"

    def build(self, job: BuildJob) -> BuildOutput:
        from sana_deploy.engines.devices import cuda_available

        if job.options.strip_weights and not cuda_available():
            fail(
                "tensorrt-rtx cannot build weight-stripped plans without a GPU (its JIT compiler needs CUDA for "
                "STRIP_PLAN: 'graph_jit.cpp: CHECK(status == CUDA_SUCCESS)'). Drop --strip-weights here.",
                EngineBuildError,
            )
        trt = self._trt()
        caps = _capabilities(trt)
        targets = self.targets(job.options)
        missing = [t for t in targets if t not in caps]
        if missing:
            fail(f"This tensorrt-rtx {trt.__version__} does not know {missing}; it has {sorted(caps)}.", ShapeError)

        def set_targets(config) -> None:  # noqa: ANN001
            config.num_compute_capabilities = len(targets)
            for i, t in enumerate(targets):
                config.set_compute_capability(caps[t], i)

        out = trt_common.build_plan(trt, job, keep_plugin_nodes=False, extra_config=set_targets)
        out.info["targets"] = list(targets)
        return out

    def inspect(self, artifact: Path, meta: dict) -> dict:
        return trt_inspect(self._trt(), artifact, meta)


def trt_inspect(trt, artifact: Path, meta: dict) -> dict:  # noqa: ANN001
    """What a plan says about itself: its header always; bindings/profiles from the engine only with CUDA."""
    from sana_deploy.engines.devices import cuda_available

    header = trt_common.plan_header(artifact)
    info: dict = {"plan_header": header, "library_version": trt.__version__}
    info["header_matches_library"] = header["version"] == trt.__version__
    if not cuda_available():
        info["limits"] = (
            "no CUDA on this machine: the plan cannot be deserialized, so bindings and profile shapes are the "
            "ones recorded from the network and optimisation profile at build time (meta.json), not read back "
            "from the engine"
        )
        return info
    if Backend.can_run(TensorRtRtxBackend(), meta["device"]) is not None:
        info["limits"] = f"engine built for {meta['device']}: cannot deserialize it on this GPU"
        return info
    engine, _runtime, _logger = deserialize(trt, artifact.read_bytes())
    info.update(trt_common.engine_io(engine))
    info["from_engine"] = True
    return info
