"""``aoti``: torch AOTInductor. The component's export wrapper, traced with ``torch.export`` (dynamic dims whose
ranges come from the profile) under ``use_kernels("inline")``, compiled to a ``.pt2`` package that runs without
the model code, from Python (``torch._inductor.aoti_load_package``) and from C++
(``torch::inductor::AOTIModelPackageLoader``).

The package holds no Python-registered ops: the ``sana::`` ops are traced as plain aten ops. Built for this
machine's device (CPU here; CUDA when a GPU is present).

One rewrite during tracing: DC-AE's nearest ×2 upsampling (``F.interpolate(scale_factor=2, mode="nearest")``) is
traced as the equivalent broadcast + reshape, because Inductor (torch 2.13) fails to generate CPU code for nearest
upsampling with symbolic sizes ("Cannot convert expression to float"). The result is bit-identical.

Every package is checked after compiling (:func:`self_check`) against the traced program at other sizes: Inductor
on torch 2.13 (CPU) miscompiles the dynamic DC-AE decoder (output height stuck at the traced size), and such a
package is refused, never cached.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from sana_deploy.engines.backends.base import Backend, BuildJob, BuildOptions, BuildOutput, EngineBuildError
from sana_deploy.engines.devices import cuda_available, current_device
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.models.components import cast_copy
from sana_deploy.models.fp8 import to_fp8_

ARTIFACT = "model.pt2"


def dynamic_shapes(manifest: dict, profile_axes: dict) -> dict[str, dict[int, object]]:
    """``{input: {dim index: Dim}}`` with one shared ``Dim`` per named axis, ranges from the profile.

    Axes whose min == max are left static (the graph is specialised to that size).
    """
    from torch.export import Dim

    dims = {}
    for name, t in profile_axes.items():
        if t.min != t.max:
            dims[name] = Dim(name, min=int(t.min), max=int(t.max))

    def dim(d: object):  # noqa: ANN202  # a named axis, or a multiple of one ("32*latent_h": the encoder's image)
        factor, _, axis = str(d).rpartition("*")
        if factor.isdigit() and axis in dims:
            return int(factor) * dims[axis]
        return dims.get(d) if isinstance(d, str) else None

    out = {}
    for spec in manifest["inputs"]:
        out[spec["name"]] = {i: dim(d) for i, d in enumerate(spec["shape"]) if dim(d) is not None}
    return out


def trace_sizes(profile_axes: dict) -> dict[str, int]:
    """Example sizes to trace with: the profile's opt, nudged off 1 so torch.export does not specialise."""
    sizes = {}
    for name, t in profile_axes.items():
        v = int(t.opt)
        sizes[name] = 2 if v == 1 and t.max > 1 else v
    return sizes


@contextlib.contextmanager
def exact_nearest_upsample() -> Iterator[None]:
    """Trace integer-factor nearest ``F.interpolate`` as broadcast + reshape (see the module docstring)."""
    original = F.interpolate

    def interpolate(x, size=None, scale_factor=None, mode="nearest", *args, **kwargs):  # noqa: ANN001
        f = scale_factor
        if mode == "nearest" and size is None and x.dim() == 4 and isinstance(f, (int, float)) and f == int(f) > 1:
            f = int(f)
            b, c, h, w = x.shape
            return x[:, :, :, None, :, None].expand(b, c, h, f, w, f).reshape(b, c, h * f, w * f)
        return original(x, size, scale_factor, mode, *args, **kwargs)

    F.interpolate = interpolate
    try:
        yield
    finally:
        F.interpolate = original


def check_sizes(profile_axes: dict, traced: dict[str, int]) -> dict[str, int]:
    """Sizes unlike the traced ones, non-square, inside the profile: the smallest corner, width one larger."""
    sizes = {}
    for name, t in profile_axes.items():
        lo, hi = int(t.min), int(t.max)
        v = lo + 1 if name == "latent_w" and lo < hi else lo
        sizes[name] = v if v != traced[name] or lo == hi else min(v + 1, hi)
    return sizes


# Max relative error the package may have against the traced program. Fused kernels round in another order: in
# fp32 that stays far below 1e-3; bf16/fp16 carry 8/11 mantissa bits (a 2^-8 step is 3.9e-3), and FP8 layers
# quantize each call's activations, so a value may land on the neighbouring e4m3 step. A miscompile is far larger.
SELF_CHECK_TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 2e-2, "fp8": 2e-2}


def self_check(path: str, program, spec, components, job: BuildJob, device: str) -> dict:  # noqa: ANN001
    """Run the package and the traced program at other sizes; refuse the build if they disagree.

    Guards against Inductor miscompiling dynamic shapes: on torch 2.13 (CPU) the DC-AE decoder compiles to a
    package whose output height stays at the traced size for any other input height.
    """
    used = {d.rpartition("*")[2] for t in job.manifest["inputs"] for d in t["shape"] if isinstance(d, str)}
    sizes = {k: v for k, v in check_sizes(job.profile.axes, trace_sizes(job.profile.axes)).items() if k in used}
    inputs = {k: v.to(device) for k, v in spec.dummy_inputs(components, sizes, seed=1).items()}
    with torch.no_grad():
        expected = program.module()(**inputs)
        got = torch._inductor.aoti_load_package(path)(**inputs)
    got = got[0] if isinstance(got, (list, tuple)) else got
    expected = expected[0] if isinstance(expected, (list, tuple)) else expected
    if got.shape != expected.shape:
        fail(
            f"AOTInductor miscompiled {job.component} [{job.profile.name}] with dynamic shapes (torch "
            f"{torch.__version__}): at {sizes} the package returns {tuple(got.shape)}, the model "
            f"{tuple(expected.shape)}. Build this component with --static (one exact shape) or another backend.",
            EngineBuildError,
        )
    rel = ((got.float() - expected.float()).abs().max() / expected.float().abs().max().clamp_min(1e-30)).item()
    if not rel <= SELF_CHECK_TOLERANCE.get(job.precision, 1e-3):
        fail(
            f"AOTInductor package for {job.component} [{job.profile.name}] disagrees with the traced model at "
            f"{sizes} (max rel err {rel:.2e}); build it --static or with another backend.",
            EngineBuildError,
        )
    return {"sizes": sizes, "max_rel_err": rel}


class AotiBackend(Backend):
    name = "aoti"
    package = "torch"
    module = "torch"
    extra = "aoti"

    def version(self) -> str:
        return torch.__version__

    def target_device(self, options: BuildOptions) -> str:
        return current_device()

    def build(self, job: BuildJob) -> BuildOutput:
        from sana_deploy.contract import CONTROLNET, component_dtype, module_of
        from sana_deploy.export import SPECS
        from sana_deploy.plugins.registry import use_kernels

        if job.components_loader is None:
            fail("The aoti backend traces the PyTorch model; build it through build_engines().", EngineBuildError)
        components = job.components_loader()
        spec = SPECS[job.component](components)
        device = "cuda" if cuda_available() else "cpu"
        fp8 = job.precision == "fp8"  # bf16, with the transformer blocks' linear layers in FP8
        dtype = torch.bfloat16 if fp8 else component_dtype(job.component, job.precision)
        module = spec.wrap(components)
        if fp8 and module_of(job.component) in ("transformer", CONTROLNET):
            module = copy.deepcopy(module)  # the loaded model stays as it is for the build's other graphs
            to_fp8_(module)
            module = module.to(device=device, dtype=dtype).eval()
        else:
            module = cast_copy(module, dtype, device).eval()  # the caller's components (the bench's) stay as loaded
        sizes = trace_sizes(job.profile.axes)
        inputs = {k: v.to(device) for k, v in spec.dummy_inputs(components, sizes).items()}
        job.progress(f"torch.export ({device}, {dtype}) at {sizes}")
        try:
            with use_kernels("inline"), torch.no_grad(), exact_nearest_upsample(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.export.export(
                    module, (), kwargs=inputs, dynamic_shapes=dynamic_shapes(job.manifest, job.profile.axes)
                )
            job.progress("AOTInductor compile (C++; takes a while)")
            path = torch._inductor.aoti_compile_and_package(program, package_path=str(job.out_dir / ARTIFACT))
            job.progress("checking the package against the traced program at another shape")
            check = self_check(path, program, spec, components, job, device)
        except SanaDeployError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
            fail(
                f"AOTInductor failed for {job.component} [{job.profile.name}]: {type(exc).__name__}: {first}",
                EngineBuildError,
            )
        return BuildOutput(
            Path(path).name,
            {
                "device": device,
                "dtype": str(dtype).replace("torch.", ""),
                "input_order": [t["name"] for t in job.manifest["inputs"]],
                "outputs": [t["name"] for t in job.manifest["outputs"]],
                "kernels": "inline",
                "self_check": check,
            },
        )

    def inspect(self, artifact: Path, meta: dict) -> dict:
        import zipfile

        with zipfile.ZipFile(artifact) as z:
            names = z.namelist()
        libs = [n for n in names if n.endswith(".so")]
        return {"files": len(names), "shared_libraries": libs, "wrapper_device": meta.get("info", {}).get("device")}
