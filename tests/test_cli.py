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
