from types import SimpleNamespace

import pytest
from huggingface_hub.errors import HfHubHTTPError

from decidiff_lab import fetch as fetch_module
from decidiff_lab.errors import UserError
from decidiff_lab.fetch import allow_patterns, fetch
from decidiff_lab.presets import get_preset


def _http_error(status):
    err = HfHubHTTPError.__new__(HfHubHTTPError)
    Exception.__init__(err, f"{status} Client Error")
    err.response = SimpleNamespace(status_code=status)
    return err


@pytest.fixture
def online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(fetch_module, "hub_reachable", lambda: True)


def test_only_the_pipeline_components_are_fetched():
    patterns = allow_patterns(get_preset("deci-v2"))
    assert "flexible_unet/diffusion_pytorch_model.safetensors" in patterns
    assert "model_index.json" in patterns and not any(p.endswith((".bin", ".ckpt")) for p in patterns)


def test_retries_with_backoff_on_http_429(online, tmp_path, capsys):
    (tmp_path / "model_index.json").write_text("{}")
    calls, waits = [], []

    def flaky(repo_id, **kwargs):
        calls.append(kwargs["revision"])
        if len(calls) < 3:
            raise _http_error(429)
        return str(tmp_path)

    path, size = fetch("sd15", download=flaky, sleep=waits.append)
    assert path == tmp_path and size == 2
    assert waits == [2.0, 4.0] and calls == ["main"] * 3
    assert capsys.readouterr().out.count("HTTP 429") == 2


def test_other_http_errors_are_one_line_and_not_retried(online):
    def forbidden(repo_id, **kwargs):
        raise _http_error(403)
    with pytest.raises(UserError, match="fetching Deci/DeciDiffusion-v2-0 failed: 403"):
        fetch("deci-v2", download=forbidden, sleep=lambda s: None)


def test_offline_says_where_to_run_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="hub is unreachable"):
        fetch("deci-v2")


def test_nano_presets_ship_with_the_course():
    with pytest.raises(UserError, match="unknown preset|nothing to fetch"):
        fetch("nano-sd")
