from click.testing import CliRunner

from sana_deploy.cli import main


def test_models_lists_presets():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0
    assert "sana-1.6b-4k" in r.output and "2240" in r.output and "sana-tiny" in r.output


def test_export_bad_model_is_a_clear_error():
    r = CliRunner().invoke(main, ["export", "--model", "no-such-model"])
    assert r.exit_code == 2
    assert "neither a preset" in r.output and "sana-tiny" in r.output


def test_export_cli_writes_parity_report(tmp_path):
    r = CliRunner().invoke(main, ["export", "--components", "transformer", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "Parity report" in r.output and "ok" in r.output
    assert (tmp_path / "fp32" / "transformer" / "model.onnx").exists()


def test_console_script_registers_every_command():
    """In a fresh interpreter (nothing else imported), the group has every area's commands."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sana_deploy", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.split("Commands:")[1].splitlines() if line.strip()}
    assert {"models", "export", "build", "engines", "generate", "bench", "serve", "export-triton"} <= listed


def test_generate_step_cap_is_the_servers_default_cap():
    import dataclasses

    from sana_deploy.runtime.generate import MAX_STEPS
    from sana_deploy.serve.settings import ServeSettings

    cap = next(f.default for f in dataclasses.fields(ServeSettings) if f.name == "max_inference_steps")
    assert MAX_STEPS == cap == 50


def test_bad_output_fails_before_the_model_loads(tmp_path, monkeypatch):
    """-o naming a folder, or a folder under a file, fails in the checks: build_pipeline is never reached."""
    import pytest

    from sana_deploy.errors import SanaDeployError
    from sana_deploy.runtime import generate as gen

    def no_model(req):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr(gen, "build_pipeline", no_model)
    (tmp_path / "file").write_text("x")
    for output, message in [(tmp_path, "is a folder"), (tmp_path / "file" / "x.png", "is a file, not a folder")]:
        with pytest.raises(SanaDeployError, match=message):
            list(gen.generate_images(gen.GenerateRequest(prompts=["x"], output=output)))
    with pytest.raises(AssertionError, match="model was loaded"):  # a good path gets as far as the model
        list(gen.generate_images(gen.GenerateRequest(prompts=["x"], output=tmp_path / "new" / "x.png")))
    assert not (tmp_path / "new").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_read_prompts(tmp_path):
    import pytest

    from sana_deploy.errors import SanaDeployError
    from sana_deploy.runtime.generate import read_prompts

    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa cat\n\n  a déjà-vu dog  \r\n".encode())
    assert read_prompts(path) == ["a cat", "a déjà-vu dog"]
    for data, message in [(b"a\x00b", "NUL bytes"), (b"caf\xe9", "byte 0xe9 at offset 3")]:
        path.write_bytes(data)
        with pytest.raises(SanaDeployError, match=message):
            read_prompts(path)


def test_error_messages_are_one_line_with_advice():
    import errno

    from sana_deploy.cli import error_message
    from sana_deploy.errors import CheckpointError

    assert error_message(CheckpointError("Bad file; pass another.")) == ("Bad file; pass another.", 2)
    text, status = error_message(PermissionError(errno.EACCES, "Permission denied", "/srv/x"))
    assert status == 2 and text.startswith("Permission denied: /srv/x (") and "permissions" in text
    text, _ = error_message(OSError(errno.EROFS, "Read-only file system", "/ro/a", None, "/ro/b"))
    assert "/ro/a -> /ro/b" in text and "read-only" in text
    text, status = error_message(RuntimeError("x\ny"))
    assert status == 1 and "\n" not in text and text.startswith("unexpected RuntimeError: x. ") and "--debug" in text
