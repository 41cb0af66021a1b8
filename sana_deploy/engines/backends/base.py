"""The one interface every engine backend implements, and what a build is given.

A backend turns one exported component (``model.onnx`` + manifest) and one :class:`Profile` into one artifact
file in a staging folder. It also says what identifies its output for the cache key (library version, target
device, plugin hashes) and whether an artifact it built can run on this machine.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sana_deploy.engines.profiles import Profile, ShapeTuple
from sana_deploy.errors import SanaDeployError, fail
from sana_deploy.versions import package_version


class BackendUnavailable(SanaDeployError):
    """The backend's package is not installed (the message names the extra to install)."""


class EngineBuildError(SanaDeployError):
    """A backend failed to build an engine (the message says which component, profile and why)."""


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that change the artifact (all of them go into the cache key). ``None`` = default."""

    opt_level: int | None = None  # TensorRT builder optimisation level (0-5, default 3)
    workspace_mb: int | None = None  # TensorRT workspace memory-pool limit
    timing_cache: bool = True  # share a timing cache per backend/version/device
    strip_weights: bool = False  # TensorRT: weight-stripped plan, refit from the ONNX at load
    targets: tuple[str, ...] | None = None  # tensorrt-rtx: compute capabilities to build for (sm86, sm89, sm120…)
    plugin_libraries: tuple[str, ...] | None = None  # TensorRT: plugin .so files (default: discovered)
    ort_providers: tuple[str, ...] | None = None  # onnxruntime: execution providers (default: best available)
    # TensorRT: the transformer's LoRA-targetable weights built refittable (REFIT_INDIVIDUAL), so an adapter swap
    # refits the engine instead of rebuilding it
    lora_refit: bool = True

    def key_fields(self) -> dict:
        """Fields that go into the cache key (excludes plugin paths: their *hashes* are keyed instead)."""
        return {
            "opt_level": self.opt_level,
            "workspace_mb": self.workspace_mb,
            "strip_weights": self.strip_weights,
            "targets": list(self.targets) if self.targets else None,
            "ort_providers": list(self.ort_providers) if self.ort_providers else None,
            "lora_refit": self.lora_refit,
        }


@dataclass
class BuildJob:
    """Everything one build needs. ``out_dir`` is a staging folder the cache renames into place."""

    model: str
    component: str
    precision: str
    profile: Profile
    onnx_path: Path
    manifest: dict
    input_shapes: dict[str, ShapeTuple]
    options: BuildOptions
    out_dir: Path
    device: str
    timing_cache: Path | None = None  # shared timing-cache file (the builder merges under a lock)
    components_loader: Callable | None = None  # () -> SanaComponents, for backends that trace PyTorch (aoti)
    progress: Callable[[str], None] = field(default=lambda msg: None)


@dataclass
class BuildOutput:
    artifact: str  # file name inside out_dir
    info: dict = field(default_factory=dict)  # backend-specific meta (bindings, plan header, providers…)


class Backend(ABC):
    """One way of compiling an exported component. Subclasses are stateless."""

    name: str = ""
    package: str = ""  # pip distribution that provides it
    module: str = ""  # import name
    extra: str = ""  # sana-deploy extra that installs it
    timing_cache: bool = False  # whether builds use the shared timing cache

    # --- availability -----------------------------------------------------------------------------------------
    def available(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def require(self) -> None:
        if not self.available():
            fail(
                f"Backend {self.name!r} needs the Python package {self.package!r}, which is not installed. "
                f"Install it with `pip install 'sana-deploy[{self.extra}]'`, or pick another backend "
                f"(--backend auto chooses one that is installed).",
                BackendUnavailable,
            )

    def version(self) -> str:
        return package_version(self.package) or "unknown"

    # --- identity for the cache key ---------------------------------------------------------------------------
    @abstractmethod
    def target_device(self, options: BuildOptions) -> str:
        """The device an artifact is built for: ``cpu``, ``sm90``, ``sm86+sm89`` …"""

    def plugin_hashes(self, options: BuildOptions) -> dict[str, str]:
        return {}

    def key_flags(self, precision: str) -> dict:
        """Backend-specific settings of an engine at ``precision`` that change its artifact (keyed, like options)."""
        return {}

    def export_precision(self, precision: str) -> str:
        """The precision of the ONNX export an engine of ``precision`` is built from (OpenVINO: bf16 is a hint)."""
        return precision

    def can_run(self, device: str) -> str | None:
        """None if an artifact built for ``device`` runs on this machine, else the reason it cannot."""
        from sana_deploy.engines.devices import current_device

        here = current_device()
        if device == "cpu" or device == here:
            return None
        if device.startswith("sm") and here in device.split("+"):
            return None
        return f"built for {device}, this machine is {here}"

    # --- the work ---------------------------------------------------------------------------------------------
    @abstractmethod
    def build(self, job: BuildJob) -> BuildOutput:
        """Write the artifact into ``job.out_dir`` and return its file name plus backend meta."""

    def inspect(self, artifact: Path, meta: dict) -> dict:
        """What can be read back from an artifact on this machine (and what cannot, under ``limits``)."""
        return {}
