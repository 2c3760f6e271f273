"""The workshop configs: parse, and carry the settings docs/workshop.md promises (no cluster here)."""

from pathlib import Path

import yaml

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_z2jh_values_prepull_share_a_read_only_cache_and_limit_gpus():
    values = yaml.safe_load((DOCS / "jupyterhub" / "z2jh-values.yaml").read_text())
    single = values["singleuser"]
    assert values["prePuller"]["hook"]["enabled"] is True
    mount = single["storage"]["extraVolumeMounts"][0]
    assert mount["readOnly"] is True and mount["mountPath"] == single["extraEnv"]["HF_HOME"]
    assert single["storage"]["extraVolumes"][0]["name"] == mount["name"]
    assert single["extraEnv"]["HF_HUB_OFFLINE"] == "1"
    assert single["extraResource"]["limits"]["nvidia.com/gpu"] == "1"
    assert set(single["memory"]) == {"limit", "guarantee"}
    known = {"hub", "proxy", "singleuser", "prePuller", "scheduling", "cull", "ingress", "custom", "debug"}
    assert set(values) <= known  # top-level keys of the jupyterhub Helm chart


def test_tljh_config_uses_known_keys():
    config = yaml.safe_load((DOCS / "jupyterhub" / "tljh-config.yaml").read_text())
    assert set(config) <= {"users", "user_environment", "limits", "https", "services", "http", "auth"}
    assert config["user_environment"]["default_app"] == "jupyterlab"
    assert config["limits"]["memory"].endswith("G")


def test_workshop_doc_names_the_fetch_command_and_both_configs():
    text = (DOCS / "workshop.md").read_text()
    assert "decidiff-lab fetch deci-v2 sd15" in text
    assert "tljh-config.yaml" in text and "z2jh-values.yaml" in text
