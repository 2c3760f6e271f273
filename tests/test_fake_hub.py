"""The hub path end to end, through a real HTTP server (tests/fake_hub.py) speaking the hub's routes to
the real huggingface_hub client: request budgets, retries, every failure as one line, `auto`'s fallback,
and the workshop set-up (an instructor fetches, learners load the shared cache offline).

What huggingface_hub 2.x sends for a pinned commit (no `model_info`: the revision is already a commit):
one `GET /api/models/{repo}/tree/{sha}?recursive=True`, then a HEAD and a GET `/resolve/` per file. It
retries by itself too: a failed HEAD once at once and then with backoff, a GET 5 times on 429/408, a
dropped body 5 times (asking `Range` from what it has written). Its waits are recorded, not slept.
"""

import pytest

from fake_hub import fake_hub, hub_server, replica_files  # noqa: F401  (fixtures)

from decidiff_lab import cli, hub, loading
from decidiff_lab.presets import HUB_PRESETS

DECI = HUB_PRESETS["deci-v2"]
SD = HUB_PRESETS["sd15"]
VAE = "vae/diffusion_pytorch_model.safetensors"  # a weights file deci-v2 needs
WHAT = f"downloading {DECI.repo_id}@{DECI.revision[:10]}"


def resolved(fake, method="GET"):
    """The repo paths the client asked /resolve/ for, with `method`."""
    return [path.split("/resolve/", 1)[1].split("/", 1)[1] for m, path in fake.requests
            if m == method and "/resolve/" in path]


def snapshot_files(preset):
    folder = hub.snapshot_dir(preset)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def leftovers(preset):
    """Temporary or partial blobs of `preset`'s repo left in the cache."""
    repo = hub.snapshot_dir(preset).parent.parent
    return sorted(p.name for p in repo.rglob("*.incomplete"))


def one_line(err) -> str:
    message = str(err)
    assert "\n" not in message and err.__cause__ is None and err.__suppress_context__, message
    return message


# --- 1. a cold download: exactly the needed files, within budget; then loads that ask nothing ------------

@pytest.mark.parametrize("preset", [DECI, SD], ids=lambda p: p.name)
def test_a_cold_download_fetches_exactly_the_needed_files_and_a_complete_cache_asks_nothing(fake_hub, preset, capsys):
    needed = hub.needed_files(preset)
    path = hub.ensure_snapshot(preset, sleep=pytest.fail)
    cold = list(fake_hub.requests)

    assert path == hub.snapshot_dir(preset) and hub.missing_files(preset) == []
    assert snapshot_files(preset) == sorted(needed)
    assert sorted(resolved(fake_hub)) == sorted(needed) and sorted(resolved(fake_hub, "HEAD")) == sorted(needed)
    never = ("safety_checker/", "feature_extractor/") + (("unet/",) if preset.flexible_unet else ())
    assert not any(p.split("/resolve/")[-1].split("/", 1)[1].startswith(never) for _, p in cold if "/resolve/" in p)
    assert [p for m, p in cold if p.startswith("/api/")] == [f"/api/models/{preset.repo_id}/tree/{preset.revision}"]
    assert len(cold) == 1 + 2 * len(needed)  # budget: one tree listing, a HEAD and a GET per file
    for name in needed:  # the bytes are the repo's
        assert (path / name).read_bytes() == replica_files(preset.name)[name]

    fake_hub.reset()
    for _ in range(2):  # the first load after the download, and a warm one
        pipe = loading.load_pipeline(preset.name, device="cpu")
        assert fake_hub.requests == []  # a complete snapshot is read locally, no request at all
    assert loading.resolved_commit(pipe.unet) == preset.revision
    assert f"Using {preset.name} ({preset.repo_id}@{preset.revision[:10]}) on cpu" in capsys.readouterr().out


# --- 2. rate limits --------------------------------------------------------------------------------------

def test_429_on_the_first_two_file_requests_is_absorbed_by_the_client(fake_hub, capsys):
    fake_hub.fail(429, match="/resolve/", times=2)
    waits = []
    hub.ensure_snapshot(DECI, sleep=waits.append)
    assert hub.missing_files(DECI) == []
    assert [s for _, _, s in fake_hub.log].count(429) == 2
    # huggingface_hub retries a failed HEAD by itself, at once: hub.py never sees the 429, waits nothing
    assert len(fake_hub.requests) == 1 + 2 * len(hub.needed_files(DECI)) + 2
    assert waits == [] and "hub busy" not in capsys.readouterr().out


def test_429_past_the_clients_own_retries_is_retried_with_backoff(fake_hub, capsys):
    fake_hub.fail(429, match=VAE, method="GET", times=7)  # the client's 6 tries, then hub.py's 2nd attempt
    waits = []
    hub.ensure_snapshot(DECI, sleep=waits.append)
    assert hub.missing_files(DECI) == [] and leftovers(DECI) == []
    assert waits == [2.0] and fake_hub.client_waits == [1.0] * 6  # Retry-After: 0, plus the client's 1 s
    assert capsys.readouterr().out == f"hub busy (HTTP 429) on {WHAT}: retrying in 2 s (attempt 2/5)\n"
    assert resolved(fake_hub).count(VAE) == 8
    assert fake_hub.count("/tree/") == 1  # the second attempt reads the tree listing from the cache


def test_429_forever_on_a_download_is_one_line_naming_the_rate_limit(fake_hub, capsys):
    fake_hub.fail(429, match=VAE, method="GET", times=None)
    waits = []
    with pytest.raises(hub.HubError) as caught:
        hub.ensure_snapshot(DECI, sleep=waits.append)
    assert one_line(caught.value) == (f"{WHAT}: the hub is rate-limiting this network "
                                      "(HTTP 429) after 5 tries with backoff")
    assert waits == [2.0, 4.0, 8.0, 16.0] and capsys.readouterr().out.count("hub busy (HTTP 429)") == 4
    assert resolved(fake_hub).count(VAE) == 5 * 6  # hub.py's 5 attempts x the client's 6 tries: bounded
    assert VAE in hub.missing_files(DECI) and leftovers(DECI) == []


WRAPPED = {  # id -> (status, the requests it answers, extra headers, what the message must name)
    "429-every-request": (429, "", None, "rate-limiting this network (HTTP 429"),
    "429-file-requests": (429, "/resolve/", None, "rate-limiting this network (HTTP 429"),
    "503-every-request": (503, "", None, "HTTP 503"),
    "403-not-gated": (403, "/tree/", {"X-Error-Code": "", "X-Error-Message": "Forbidden"}, "refused access (HTTP 403"),
}


@pytest.mark.parametrize("case", WRAPPED)
def test_an_http_error_wrapped_by_the_client_is_still_named(fake_hub, case):
    status, match, headers, named = WRAPPED[case]
    fake_hub.fail(status, match=match, times=None, headers=headers)
    with pytest.raises(hub.HubError) as caught:
        hub.ensure_snapshot(DECI, sleep=lambda s: None)
    assert named in one_line(caught.value)  # not "the hub is unreachable (LocalEntryNotFoundError: ..."


# --- 3. refused, gated, missing: one line, no retry --------------------------------------------------------

CAUSES = {
    401: "the hub refused access (HTTP 401: a gated or private repo, or a bad token; log in with `hf auth login` "
         "or accept the model's licence on its page)",
    403: "the hub refused access (HTTP 403: a gated or private repo, or a bad token; log in with `hf auth login` "
         "or accept the model's licence on its page)",
    404: "the hub has no such ",  # then "revision" (tree) or "file" (HEAD), from the hub's X-Error-Code
}


@pytest.mark.parametrize("where", ["tree", "file"])
@pytest.mark.parametrize("status", [401, 403, 404])
def test_refused_gated_or_missing_is_one_line_and_not_retried(fake_hub, status, where):
    # the hub's own answers: 401/403 GatedRepo, 404 RevisionNotFound (tree) or EntryNotFound (file)
    fake_hub.fail(status, match="/tree/" if where == "tree" else VAE, method=None if where == "tree" else "HEAD",
                  times=None)
    waits = []
    with pytest.raises(hub.HubError) as caught:
        hub.ensure_snapshot(DECI, sleep=waits.append)
    assert one_line(caught.value).startswith(f"{WHAT}: {CAUSES[status]}")
    assert [s for _, _, s in fake_hub.log].count(status) == 1  # asked once: not retried, by anyone
    assert waits == [] and fake_hub.client_waits == []
    assert VAE in hub.missing_files(DECI)


# --- 4. a connection dropped mid-body ---------------------------------------------------------------------

def test_a_connection_dropped_once_mid_body_is_resumed_by_the_client(fake_hub):
    fake_hub.drop(match=VAE, after=16)
    hub.ensure_snapshot(DECI, sleep=pytest.fail)
    assert hub.missing_files(DECI) == [] and leftovers(DECI) == []
    assert (hub.snapshot_dir(DECI) / VAE).read_bytes() == replica_files("deci-v2")[VAE]
    # fetched again from byte 0 (200, not a 206 `Range` resume): the client writes what it reads in 10 MiB
    # chunks, and the 16 bytes before the drop never completed one
    assert [s for m, p, s in fake_hub.log if p.endswith(VAE) and m == "GET"] == [0, 200]
    assert fake_hub.client_waits == [1]


def test_a_connection_dropped_every_time_is_one_line_and_leaves_no_partial_file(fake_hub):
    fake_hub.drop(match=VAE, after=0, times=None)  # headers promise the full size, then the socket closes
    with pytest.raises(hub.HubError) as caught:
        hub.ensure_snapshot(DECI, sleep=pytest.fail)
    assert one_line(caught.value) == (f"{WHAT}: the hub is unreachable (RemoteProtocolError: no network, a proxy, "
                                      "or a dropped connection)")
    assert resolved(fake_hub).count(VAE) == 6  # the client's 1 + 5 resumes; hub.py does not retry it
    assert VAE in hub.missing_files(DECI) and not (hub.snapshot_dir(DECI) / VAE).exists()
    assert leftovers(DECI) == []

    fake_hub.reset()  # the hub is back: the next run asks for the missing file only
    hub.ensure_snapshot(DECI, sleep=pytest.fail)
    url = f"/{DECI.repo_id}/resolve/{DECI.revision}/{VAE}"
    assert hub.missing_files(DECI) == [] and fake_hub.requests == [("HEAD", url), ("GET", url)]


# --- 5. `auto` on a GPU -------------------------------------------------------------------------------------

def test_auto_on_a_gpu_downloads_the_real_pair_then_asks_nothing(fake_hub):
    preset, why = loading._decide_auto("cuda")
    assert preset.name == "deci-v2"
    assert why == "auto: a CUDA GPU (cuda) and the Hugging Face hub (pinned revisions downloaded)"
    assert hub.missing_files(DECI) == [] and hub.missing_files(SD) == []
    needed = len(hub.needed_files(DECI)) + len(hub.needed_files(SD))
    assert fake_hub.count("/revision/") == 1 and fake_hub.count("/tree/") == 2  # the probe, two listings
    assert len(fake_hub.requests) == 1 + 2 + 2 * needed

    fake_hub.reset()  # a workshop machine whose cache is complete: decided with no request
    loading._AUTO.clear()
    preset, why = loading._decide_auto("cuda")
    assert preset.name == "deci-v2"
    assert why == "auto: a CUDA GPU (cuda), and every file of deci-v2 and sd15 is in the local cache"
    assert fake_hub.requests == []


AUTO_FAILURES = {  # rule -> the cause `auto` names, and the requests it may send
    "rate-limited": (lambda f: f.fail(429, times=None),
                     "the hub is rate-limiting this network (HTTP 429", 1),
    "gated": (lambda f: f.fail(401, times=None), "the hub refused access (HTTP 401", 1),
    "dropped": (lambda f: f.drop(match=VAE, after=0, times=None),
                f"{WHAT}: the hub is unreachable (RemoteProtocolError: no network, a proxy, or a dropped connection)",
                1 + 1 + 2 * len(hub.needed_files(DECI)) + 5),  # probe, tree, HEAD+GET each, 5 resumes of one
}


@pytest.mark.parametrize("failure", AUTO_FAILURES)
def test_auto_on_a_gpu_falls_back_to_nano_naming_the_cause(fake_hub, failure, monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF_S", 0.0)  # `auto` downloads with hub.py's real sleep
    rule, cause, budget = AUTO_FAILURES[failure]
    rule(fake_hub)
    preset, why = loading._decide_auto("cuda")
    assert preset.name == "nano-deci" and "\n" not in why
    assert why.startswith(f"auto: a CUDA GPU (cuda), but {cause}") and why.endswith(", so the offline nano model")
    assert len(fake_hub.requests) == budget


def test_auto_names_a_rate_limit_on_the_downloads(fake_hub, monkeypatch):
    monkeypatch.setattr(hub, "BACKOFF_S", 0.0)
    fake_hub.fail(429, match="/resolve/", times=None)
    preset, why = loading._decide_auto("cuda")
    assert preset.name == "nano-deci" and "rate-limiting" in why


# --- 6. the workshop: the instructor fetches, learners read the shared cache offline ------------------------

def test_fetch_fills_the_cache_and_learners_load_it_offline(fake_hub, monkeypatch, capsys):
    assert cli.main(["fetch", "deci-v2", "sd15"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == ["deci-v2", "sd15"]
    assert out[0].endswith(f"(pinned commit {DECI.revision})") and out[1].endswith(f"(pinned commit {SD.revision})")
    for preset in (DECI, SD):
        assert snapshot_files(preset) == sorted(hub.needed_files(preset))
    assert len(fake_hub.requests) == 2 + 2 * (len(hub.needed_files(DECI)) + len(hub.needed_files(SD)))

    fake_hub.reset()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a learner's notebook, on the shared HF_HOME
    for name in ("deci-v2", "sd15"):
        loading.load_pipeline(name, device="cpu", verbose=False)
    assert fake_hub.requests == []
    assert cli.main(["fetch", "deci-v2"]) == 2  # and fetching offline says where to run it
    assert "run `decidiff-lab fetch` on a machine that can reach the hub" in capsys.readouterr().err


# --- the environment, read at call time -------------------------------------------------------------------

def test_the_endpoint_is_read_at_call_time(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(hub.HubError, match="the hub is unreachable"):
        hub.ensure_snapshot(DECI, sleep=lambda s: None)
    assert fake_hub.requests == []


def test_unsetting_hf_hub_offline_after_import_is_honoured(fake_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as imported under HF_HUB_OFFLINE=1; the env is unset
    hub.ensure_snapshot(DECI, sleep=lambda s: None)
    assert hub.missing_files(DECI) == []
