"""Start a real ``tritonserver`` for a model repository: a Triton container's, or the one in ``nvidia-pytriton``.

PyTriton's wheel bundles Triton 2.51 with the Python backend (no ONNX Runtime / TensorRT backends). Its Python
backend stub embeds this interpreter but was built against NumPy 1.x: under NumPy 2 its tensors arrive garbled.
:func:`python_env` therefore prepares a virtual environment on top of this one (``--system-site-packages``) with
``numpy<2`` and puts its ``bin`` first on ``PATH``; the stub finds ``pyvenv.cfg`` there and uses it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from sana_deploy.errors import fail


def pytriton_root() -> Path:
    import importlib.util  # only pytriton's data files are used; importing it needs its optional deps

    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        fail("No tritonserver found: install `nvidia-pytriton` or run inside nvcr.io/nvidia/tritonserver.")
    root = Path(spec.origin).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        fail(f"{root} has no bin/tritonserver; reinstall nvidia-pytriton.")
    return root


def backend_dir(work: Path) -> Path:
    """A backend directory with the Python backend and the stub for this Python version."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        fail(f"nvidia-pytriton has no Python backend stub for Python {version}.")
    python = work / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    for src in (
        root / "backends/python/libtriton_python.so",
        root / "backends/python/triton_python_backend_utils.py",
        stub,
    ):
        dst = python / src.name
        if not dst.exists():
            dst.symlink_to(src)
    return work / "backends"


def python_env(cache: Path) -> Path:
    """A venv over this interpreter with ``numpy<2`` for the stub (created once; pip fetches numpy)."""
    import numpy

    venv = cache / "triton-python-env"
    if int(numpy.__version__.split(".")[0]) < 2:
        return Path(sys.prefix)
    if not (venv / "bin" / "python3").exists() or not list(venv.glob("lib/python*/site-packages/numpy")):
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "numpy<2"], check=True)
    return venv


class TritonServer:
    """``tritonserver`` on 127.0.0.1 for one repository; a context manager that always stops the process."""

    def __init__(self, repo: Path, work: Path, http_port: int, log_file: Path | None = None, timeout_s: float = 300):
        self.repo, self.work, self.http_port, self.timeout_s = Path(repo), Path(work), http_port, timeout_s
        self.log_file = log_file or self.work / "tritonserver.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        binary = shutil.which("tritonserver") or str(pytriton_root() / "bin" / "tritonserver")
        return [
            binary,
            f"--model-repository={self.repo}",
            f"--backend-directory={backend_dir(self.work)}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--allow-grpc=false",
            "--allow-metrics=false",
            "--exit-timeout-secs=5",
        ]

    def __enter__(self) -> TritonServer:
        env = dict(os.environ)
        env["PATH"] = f"{python_env(self.work) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libdir = sysconfig.get_config_var("LIBDIR")  # the stub must load *this* interpreter's libpython
        env["LD_LIBRARY_PATH"] = f"{libdir}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        self._log = open(self.log_file, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                fail(f"tritonserver exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.__exit__(None, None, None)
        fail(f"tritonserver was not ready after {self.timeout_s:g}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()
