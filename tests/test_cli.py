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
