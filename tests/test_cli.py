import json
import subprocess
import sys

import pytest

from decidiff_lab.cli import main


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "decidiff_lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_arch_json_prints_the_exact_sd15_counts(capsys):
    assert main(["arch", "sd15", "deci-v2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sd15"]["unet"] == 859_520_964
    assert result["sd15"]["vae"] == 83_653_863
    assert result["sd15"]["text_encoder"] == 123_060_480
    assert result["sd15"]["total"] == 859_520_964 + 83_653_863 + 123_060_480
    assert result["deci-v2"]["unet_gflops_per_step"] < result["sd15"]["unet_gflops_per_step"]


def test_arch_table_labels_reconstructions(capsys):
    assert main(["arch", "sd15", "deci-v1", "deci-v2", "--resolution", "256"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "859,520,964" in lines["sd15"] and "256px" in lines["preset"]
    assert lines["deci-v1"].endswith("U-Net config: published") and "814,746,884" in lines["deci-v1"]
    assert lines["deci-v2"].endswith("U-Net config: our reconstruction")


@pytest.mark.parametrize("args, message", [
    (["arch", "sd14"], "unknown preset 'sd14'; valid presets: sd15, deci-v1, deci-v2"),
    (["arch", "sd15", "--resolution", "500"], "--resolution must be a positive multiple of 8"),
    (["arch", "sd15", "--resolution", "0"], "--resolution must be a positive multiple of 8"),
    (["arch", "sd15", "--resolution", "big"], "invalid int value: 'big'"),
    (["arch"], "the following arguments are required: presets"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: command"),
])
def test_bad_input_is_one_line_with_status_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("decidiff-lab: error: ") and message in err


@pytest.mark.slow
def test_the_command_itself_exits_2_with_one_line():
    # The same path as above, through a real process: exit status and stderr as a shell sees them.
    result = run_cli("arch", "sd14")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("decidiff-lab: error: unknown preset 'sd14'")


@pytest.mark.slow
def test_doctor_answers_fast_offline():
    result = run_cli("doctor", "--json")  # a hang would pass run_cli's timeout: a failure
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["hub"] == "HF_HUB_OFFLINE is set" and info["hub_check_seconds"] < 2
    assert {"python", "torch", "diffusers", "transformers", "device"} <= set(info)
    assert info["presets_local"]["sd15"] is False


def test_evaluate_reports_every_attribute_on_held_out_prompts(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["evaluate", "--presets", "nano-deci", "--prompts", "2", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "nano-deci: 2 steps, guidance" in out and "4 test prompts" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert lines["single"][1] == "2" and lines["pair"][1] == "2" and lines["overall"][1] == "4"
    assert all(cell.endswith("%") for cell in lines["single"][2:])


def test_evaluate_sweeps_guidance_scales(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["evaluate", "--presets", "nano-deci", "--prompts", "1", "--steps", "2", "--guidance", "1,4.5"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("nano-deci:")]
    assert [h.split(",")[1].strip() for h in headers] == ["guidance 1.0", "guidance 4.5"]
