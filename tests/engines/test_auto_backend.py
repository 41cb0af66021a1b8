"""``--backend auto`` picks a backend whose engines run on this machine; explicit cross-builds say so."""

import pytest

from sana_deploy.engines import devices
from sana_deploy.engines.backends import BACKENDS, auto_backend, not_runnable_note

RTX_DEFAULT = "sm80+sm86+sm89+sm120"


def _machine(monkeypatch, device: str, name: str = "GPU", trt: bool = False, rtx: bool = True) -> None:
    """Pretend this machine has ``device`` (``cpu`` or ``sm86``) and the given TensorRT packages."""
    monkeypatch.setattr(devices, "cuda_available", lambda: device != "cpu")
    monkeypatch.setattr(devices, "current_device", lambda: device)
    monkeypatch.setattr(devices, "device_name", lambda: name)
    monkeypatch.setattr(type(BACKENDS["tensorrt"]), "available", lambda self: trt)
    monkeypatch.setattr(type(BACKENDS["tensorrt-rtx"]), "available", lambda self: rtx)


@pytest.mark.skipif(devices.cuda_available(), reason="checks a CPU-only machine")
def test_cpu_only_machine_with_tensorrt_rtx_installed_gets_onnxruntime():
    pytest.importorskip("tensorrt_rtx")
    backend, why = auto_backend()
    assert backend.name == "onnxruntime"
    assert "tensorrt-rtx is installed but" in why and "this machine has none" in why


@pytest.mark.parametrize(
    ("device", "name", "trt", "rtx", "picked", "said"),
    [
        ("sm90", "NVIDIA H200", True, True, "tensorrt", "a CUDA GPU is present"),
        ("sm86", "NVIDIA GeForce RTX 3090", False, True, "tensorrt-rtx", "targets this GPU"),
        ("sm89", "NVIDIA L40S", False, True, "tensorrt-rtx", "targets this GPU"),
        ("sm120", "NVIDIA GeForce RTX 5090", False, True, "tensorrt-rtx", "targets this GPU"),
        ("sm90", "NVIDIA H200", False, True, "onnxruntime", "does not target this GPU (NVIDIA H200, sm90)"),
        ("sm100", "NVIDIA B200", False, True, "onnxruntime", "does not target this GPU"),
        ("sm86", "NVIDIA GeForce RTX 3090", False, False, "onnxruntime", "tensorrt-rtx is not installed"),
        ("cpu", "x86_64", True, True, "onnxruntime", "no CUDA GPU"),
        ("cpu", "x86_64", False, True, "onnxruntime", "this machine has none"),
        ("cpu", "x86_64", False, False, "onnxruntime", "tensorrt-rtx is not installed"),
    ],
)
def test_auto_branches(monkeypatch, device, name, trt, rtx, picked, said):
    _machine(monkeypatch, device, name, trt, rtx)
    backend, why = auto_backend()
    assert backend.name == picked and said in why, why


def test_cross_build_note_only_when_engines_cannot_run_here(monkeypatch):
    _machine(monkeypatch, "cpu")
    note = not_runnable_note(BACKENDS["tensorrt-rtx"], RTX_DEFAULT)
    assert note and "NVIDIA RTX-class GPUs" in note and "will not run on this machine" in note
    assert not_runnable_note(BACKENDS["onnxruntime"], "cpu") is None
    _machine(monkeypatch, "sm86")
    assert not_runnable_note(BACKENDS["tensorrt-rtx"], RTX_DEFAULT) is None
    assert "will not run" in not_runnable_note(BACKENDS["tensorrt-rtx"], "sm89")
