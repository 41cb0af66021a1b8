"""``onnxruntime``: the product pipeline over ONNX Runtime sessions of our exports
(``SanaDeployPipeline.from_components``, ``backend="onnxruntime"``).

Options (``onnxruntime[opt=all,threads=2,spin=1,split=1]``), mapped onto :class:`~sana_deploy.runners.OrtOptions`:
  opt      graph optimisation level: disable, basic, extended, all (default all)
  threads  intra-op threads (default: the cores this process may use); inter: inter-op threads (default 1)
  spin     ``session.intra_op.allow_spinning`` 1/0 (default: the runtime's, on)
  mode     execution mode seq/par (default seq)
  split    1: caption K/V once per request (``transformer_text`` + ``transformer_cached``); 0: the one-graph
           ``transformer`` (default 1)
  profile  1: write ONNX Runtime's profiling JSON for every session into the work folder
  vae      torch: the DC-AE stages on eager PyTorch (Winograd convolutions on a CPU), the pipeline's
           ``vae_backend="torch"``; onnxruntime (default): on ONNX Runtime like the rest
The export is the build step: cached under the work folder, keyed by the weights' hash.
"""

from __future__ import annotations

from sana_deploy.bench.case import BenchCase
from sana_deploy.bench.contenders.base import CaseContext, PipelineContender, Prepared, flag
from sana_deploy.contract import pipeline_components
from sana_deploy.errors import fail
from sana_deploy.export import ensure_export
from sana_deploy.runners import OrtOptions
from sana_deploy.runtime.assemble import without_torch_stages
from sana_deploy.runtime.pipeline import SanaDeployPipeline


def ort_options(options: dict[str, str], profile_prefix: str | None = None) -> OrtOptions:
    """``onnxruntime[...]`` options as the runtime's :class:`OrtOptions`."""
    mode = options.get("mode", "seq")
    if mode not in ("seq", "par"):
        fail(f"onnxruntime option mode={mode!r}: choose seq or par.")
    try:
        threads = int(options["threads"]) if "threads" in options else None
        inter = int(options.get("inter", 1))
    except ValueError:
        fail(f"onnxruntime options threads/inter must be integers, got {options}.")
    defaults = OrtOptions()  # the product's defaults unless an option says otherwise
    return OrtOptions(
        opt=options.get("opt", defaults.opt),
        threads=threads,
        inter_threads=inter,
        spin=flag(options, "spin", defaults.spin),
        parallel=mode == "par",
        profile_prefix=profile_prefix,
    )


class OrtContender(PipelineContender):
    name = "onnxruntime"
    description = "SanaDeployPipeline over our ONNX exports in ONNX Runtime"
    option_names = ("opt", "threads", "inter", "spin", "mode", "split", "profile", "vae")

    def validate(self) -> None:
        super().validate()
        ort_options(self.options)
        flag(self.options, "profile", False)
        if self.options.get("vae", "onnxruntime") not in ("onnxruntime", "torch"):
            fail(f"onnxruntime option vae={self.options['vae']!r}: choose onnxruntime or torch.")

    @property
    def vae_backend(self) -> str | None:
        return "torch" if self.options.get("vae") == "torch" else None

    def unavailable(self, case: BenchCase) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        if case.device != "cpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return "this onnxruntime has no CUDA provider (install onnxruntime-gpu, or use tensorrt on a GPU)"
        if case.device == "cpu" and case.precision != "fp32":
            return f"ONNX Runtime's CPU provider has no {case.precision} kernels for these graphs; use fp32"
        return None

    def make_pipeline(self, ctx: CaseContext) -> tuple[SanaDeployPipeline, Prepared]:
        case, root = ctx.case, ctx.export_root
        options = ort_options(self.options)
        names = tuple(dict.fromkeys(pipeline_components(self.split) + case.variant_graphs(self.split)))
        names = without_torch_stages(names, self.vae_backend)
        cached = [ensure_export(ctx.comps, c, case.precision, root)[1] for c in names]  # the variant's graphs too
        profile = flag(self.options, "profile", False)
        if profile:
            options = ort_options(self.options, str(ctx.work_dir / f"ort-profile-{'split' if self.split else 'one'}"))
        pipe = SanaDeployPipeline.from_components(
            ctx.comps,
            "onnxruntime",
            case.precision,
            export_dir=root,
            device=case.device,
            kv_cache=self.split,
            ort_options=options,
            variants=case.variant_graphs(self.split),
            vae_backend=self.vae_backend,
        )
        notes = [
            f"opt={options.opt} intra={options.threads or 'all usable cores'} inter={options.inter_threads} "
            f"spin={int(options.spin)} mode={'par' if options.parallel else 'seq'}",
            f"exports in {root}",
        ]
        if self.vae_backend == "torch":
            winograd = getattr(pipe.provider.runner("vae", 0, 0, 0), "winograd", False)
            notes.append(f"DC-AE stages on eager torch ({'Winograd' if winograd else 'direct'} convolutions)")

        def release() -> None:
            if profile:  # the sessions write their profiling JSON when profiling ends
                for name, runner in pipe.provider.runners.items():
                    path = runner.end_profiling() if hasattr(runner, "end_profiling") else None
                    if path:
                        notes.append(f"profile {name}: {path}")

        return pipe, Prepared(notes=notes, build_cached=all(cached), release=release)
