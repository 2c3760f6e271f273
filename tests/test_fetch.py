"""`decidiff-lab fetch`: only the pipeline components, a retried rate limit, every other failure in one
line and not retried, offline says where to run it, nano presets need nothing. Downloads go through the
fake hub (tests/fake_hub.py), a real HTTP server speaking the hub's routes to the real client."""

import pytest

from fake_hub import fake_hub, hub_server  # noqa: F401  (fixtures)

from decidiff_lab import hub
from decidiff_lab.errors import UserError
from decidiff_lab.fetch import fetch, folder_bytes
from decidiff_lab.presets import HUB_PRESETS, get_preset


def fetched(fake):
    """The repo paths downloaded (GET /resolve/)."""
    return sorted(p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p in fake.requests
                  if m == "GET" and "/resolve/" in p)


@pytest.mark.parametrize("name", list(HUB_PRESETS))
def test_the_needed_files_are_the_pipeline_components(name):
    preset = HUB_PRESETS[name]
    files = hub.needed_files(preset)
    weights = f"diffusion_pytorch_model{'.fp16' if preset.fp16_variant else ''}.safetensors"
    assert {"model_index.json", "scheduler/scheduler_config.json", f"{preset.unet_subfolder}/config.json",
            f"{preset.unet_subfolder}/{weights}", f"vae/{weights}"} <= set(files)
    assert not any(f.startswith(("safety_checker/", "feature_extractor/")) or f.endswith((".bin", ".ckpt"))
                   for f in files)
    if preset.flexible_unet:  # Deci's stock `unet/` is never read
        assert not any(f.startswith("unet/") for f in files)


def test_only_the_pipeline_components_are_fetched(fake_hub):
    preset = get_preset("deci-v2")
    path, size = fetch("deci-v2", sleep=pytest.fail)
    assert path == hub.snapshot_dir(preset)
    assert fetched(fake_hub) == sorted(hub.needed_files(preset))  # not unet/, safety_checker/, feature_extractor/
    assert size == folder_bytes(path) == sum((path / f).stat().st_size for f in hub.needed_files(preset))

    fake_hub.reset()  # fetched already: nothing is asked again
    assert fetch("deci-v2", sleep=pytest.fail) == (path, size)
    assert fake_hub.requests == []


def test_retries_with_backoff_on_http_429(fake_hub, capsys):
    # 7 answers 429 to one download: huggingface_hub's own 6 tries, then fetch's second attempt succeeds
    fake_hub.fail(429, match="vae/diffusion_pytorch_model.fp16.safetensors", method="GET", times=7)
    waits = []
    path, size = fetch("sd15", sleep=waits.append)
    assert waits == [2.0] and hub.missing_files(get_preset("sd15")) == []
    assert capsys.readouterr().out.count("hub busy (HTTP 429)") == 1


def test_other_http_errors_are_one_line_and_not_retried(fake_hub):
    fake_hub.fail(403, match="/tree/", times=None)  # the hub's answer for a gated repo
    waits = []
    with pytest.raises(UserError, match=r"^downloading Deci/DeciDiffusion-v2-0@82c0da63ed: the hub refused access "
                                        r"\(HTTP 403: [^\n]*\)$"):
        fetch("deci-v2", sleep=waits.append)
    assert len(fake_hub.requests) == 1 and waits == [] and fake_hub.client_waits == []


def test_offline_says_where_to_run_it(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set: run `decidiff-lab fetch` on a machine that can reach "
                                        "the hub"):
        fetch("deci-v2")
    assert fake_hub.requests == []


def test_nano_presets_ship_with_the_course():
    with pytest.raises(UserError, match="unknown preset|nothing to fetch"):
        fetch("nano-sd")
