"""`auto`'s decision table: device x hub state -> preset and the printed reason (hub calls mocked here;
tests/test_fake_hub.py runs the same failures through a real HTTP server)."""

import pytest

from decidiff_lab import hub, loading

CAUSES = {
    "gated": "the hub refused access (HTTP 401: a gated or private repo",
    "forbidden": "the hub refused access (HTTP 403",
    "missing": "the hub has no such revision (HTTP 404",
    "rate-limited": "the hub is rate-limiting this network (HTTP 429) after 5 tries with backoff",
    "unreachable": "the hub is unreachable (ConnectError",
    "timeout": "the hub did not answer in time (timeout)",
}


@pytest.fixture
def hub_state(monkeypatch):
    """Set the hub's state: `cache` complete or empty, `online`, `probe` cause, `download` failure."""
    monkeypatch.setattr(loading, "_AUTO", {})
    calls = {"probe": 0, "download": 0}

    def set_state(cache=False, offline=False, probe=None, download=None):
        monkeypatch.setattr(hub, "missing_files", lambda preset: [] if cache else ["model_index.json"])
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

        def fake_probe(preset, timeout=3.0):
            calls["probe"] += 1
            return probe

        def fake_download(preset, sleep=None):
            calls["download"] += 1
            if download:
                raise hub.HubError(f"downloading {preset.repo_id}: {download}")
            return hub.snapshot_dir(preset)

        monkeypatch.setattr(hub, "probe", fake_probe)
        monkeypatch.setattr(hub, "ensure_snapshot", fake_download)
        return calls

    return set_state


GPUS = {"cuda": "a CUDA GPU (cuda)", "cuda:1": "a CUDA GPU (cuda:1)", "mps": "an Apple GPU (MPS)"}

# hub state -> (preset auto picks on a GPU, its reason after "auto: <the GPU>", hub calls made)
GPU_TABLE = {
    "complete cache, offline": (dict(cache=True, offline=True), "deci-v2",
                                ", and every file of deci-v2 and sd15 is in the local cache", {"probe": 0, "download": 0}),
    "complete cache, online": (dict(cache=True), "deci-v2",
                               ", and every file of deci-v2 and sd15 is in the local cache", {"probe": 0, "download": 0}),
    "hub answers": (dict(), "deci-v2", " and the Hugging Face hub (pinned revisions downloaded)",
                    {"probe": 1, "download": 2}),
    "offline, no cache": (dict(offline=True), "nano-deci",
                          ", but HF_HUB_OFFLINE is set and the local cache lacks deci-v2 or sd15, so the offline nano model",
                          {"probe": 0, "download": 0}),
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("cache", [True, False])
def test_no_gpu_is_always_nano_and_asks_nothing(hub_state, device, cache):
    calls = hub_state(cache=cache)
    preset, why = loading.resolve_preset("auto", device)
    assert preset.name == "nano-deci" and why == f"auto: no GPU ({device}), so the offline nano model"
    assert calls == {"probe": 0, "download": 0}


@pytest.mark.parametrize("state", GPU_TABLE)
@pytest.mark.parametrize("device", GPUS)
def test_gpu_decision_table(hub_state, device, state):
    setting, expected, reason, expected_calls = GPU_TABLE[state]
    calls = hub_state(**setting)
    preset, why = loading.resolve_preset("auto", device)
    assert (preset.name, why) == (expected, f"auto: {GPUS[device]}{reason}")
    assert calls == expected_calls


@pytest.mark.parametrize("cause", CAUSES.values(), ids=CAUSES)
@pytest.mark.parametrize("where", ["probe", "download"])
def test_every_hub_failure_is_one_line_and_the_nano_fallback(hub_state, cause, where):
    hub_state(probe=cause if where == "probe" else None, download=cause if where == "download" else None)
    preset, why = loading.resolve_preset("auto", "cuda")
    assert preset.name == "nano-deci"
    assert why.startswith("auto: a CUDA GPU (cuda), but ") and cause in why
    assert why.endswith("so the offline nano model") and "\n" not in why


def test_decided_once_per_process(hub_state):
    calls = hub_state(cache=False)
    first = loading.resolve_preset("auto", "cuda")
    assert loading.resolve_preset("auto", "cuda:0") == first and loading.comparison_pair("auto", "cuda")[0] == first[0]
    assert calls == {"probe": 1, "download": 2}


def test_a_named_preset_or_the_environment_variable_skips_the_decision(hub_state, monkeypatch):
    calls = hub_state(cache=False)
    assert loading.resolve_preset("deci-v1", "cuda") == (loading.get_preset("deci-v1"), "asked for 'deci-v1'")
    monkeypatch.setenv("DECIDIFF_LAB_PRESET", "sd15")
    assert loading.resolve_preset("auto", "cpu")[0].name == "sd15"
    assert calls == {"probe": 0, "download": 0}


@pytest.mark.parametrize("status, words", [(401, "refused access (HTTP 401"), (403, "gated or private"),
                                           (404, "HTTP 404"), (429, "rate-limiting"), (500, "answered HTTP 500")])
def test_describe_names_each_http_failure(status, words):
    from types import SimpleNamespace

    err = Exception(f"{status} Client Error")
    err.response = SimpleNamespace(status_code=status)
    assert words in hub.describe(err) and "\n" not in hub.describe(err)


def test_describe_names_connection_failures():
    class ConnectError(Exception):  # httpx's name
        pass

    assert hub.describe(ConnectError("[Errno -3] name resolution")).startswith("the hub is unreachable (ConnectError")
    assert hub.describe(TimeoutError()).startswith("the hub did not answer in time")
