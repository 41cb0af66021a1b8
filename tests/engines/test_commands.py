"""``sana-deploy build`` and ``sana-deploy engines …`` through click: tables, checks, bad input."""

import pytest
from click.testing import CliRunner

from sana_deploy.cli import main
from sana_deploy.engines.backends import auto_backend


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory, export_root):
    root = tmp_path_factory.mktemp("cli-engines")
    res = _run("build", "--profiles", "512,1024", "--backend", "onnxruntime", "--engine-dir", str(root),
               "--export-dir", str(export_root))  # fmt: skip
    return root, res


def test_build_prints_the_table(built):
    root, res = built
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("component"))
    for col in ("profile", "shapes", "backend", "size", "build", "cache path"):
        assert col in lines[header]
    rows = [r for r in lines[header + 2 :] if r.strip()]
    assert len(rows) == 6  # caption K/V step graph x2, vae x2, one text encoder, one caption K/V graph (size-free)
    assert any("512-2048 x 512-2048 px, batch 1-2" in r and "onnxruntime (cpu)" in r for r in rows)
    assert all(str(root) in r for r in rows)


def test_second_build_reports_cached(built, export_root):
    root, _ = built
    res = _run("build", "--profiles", "1024,512", "--backend", "onnxruntime", "--engine-dir", str(root),
               "--export-dir", str(export_root))  # fmt: skip
    assert res.exit_code == 0 and res.output.count("  cached  ") == 6, res.output


def test_engines_list_inspect_verify_prune(built):
    root, _ = built
    res = _run("engines", "list", "--engine-dir", str(root))
    assert res.exit_code == 0 and res.output.count("onnxruntime") == 6 and "never" in res.output
    key = res.output.splitlines()[2].split()[0]
    res = _run("engines", "inspect", key, "--engine-dir", str(root))
    assert res.exit_code == 0 and '"checks": "ok"' in res.output and '"nodes"' in res.output
    res = _run("engines", "verify", "--engine-dir", str(root))
    assert res.exit_code == 0 and "6 ok, 0 bad" in res.output
    res = _run("engines", "prune", "--dry-run", "--engine-dir", str(root))
    assert res.exit_code == 0 and "0 to remove" in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profiles", "1000"], "No profile 1000; valid profiles are 512, 1024, 2048, 4096"),
        (["--profiles", "abc"], "'abc' is not a number; valid profiles are 512, 1024, 2048, 4096"),
        (["--max-batch", "0"], "max-batch must be an integer from 1 to 32"),
        (["--backend", "tensorrt-llm"], "'tensorrt-llm' is not one of 'tensorrt', 'tensorrt-rtx'"),
        (["--targets", "sm90", "--backend", "tensorrt-rtx"], "no Hopper"),
    ],
)
def test_bad_input(args, message, tmp_path):
    res = _run("build", *args, "--engine-dir", str(tmp_path), "--export-dir", str(tmp_path / "no-export"))
    assert res.exit_code == 2 and message in res.output, res.output
    assert not list(tmp_path.glob("sana-tiny/*/*"))


def test_missing_backend_package_names_the_extra(tmp_path, monkeypatch):
    from sana_deploy.engines.backends import BACKENDS

    monkeypatch.setattr(type(BACKENDS["aoti"]), "available", lambda self: False)
    res = _run("build", "--backend", "aoti", "--engine-dir", str(tmp_path))
    assert res.exit_code == 2 and "pip install 'sana-deploy[aoti]'" in res.output
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        res = _run("build", "--backend", "tensorrt", "--engine-dir", str(tmp_path))
        assert res.exit_code == 2 and "needs the Python package 'tensorrt'" in res.output
        assert "pip install 'sana-deploy[tensorrt]'" in res.output


def test_auto_says_what_it_picked_and_why():
    from sana_deploy.engines.devices import cuda_available

    backend, why = auto_backend()
    assert backend.name in ("tensorrt", "tensorrt-rtx", "onnxruntime") and why
    if not cuda_available():  # engines must run here: tensorrt-rtx only cross-builds when asked for by name
        assert backend.name == "onnxruntime"


def test_engines_list_on_an_empty_dir(tmp_path):
    res = _run("engines", "list", "--engine-dir", str(tmp_path / "none"))
    assert res.exit_code == 0 and "No engines" in res.output
