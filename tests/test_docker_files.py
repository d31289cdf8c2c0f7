"""docker/ cannot be run here (no Docker engine): parse and cross-check what can be."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gateway.config.model import load_config
from tests.services import ROOT

DOCKER = ROOT / "docker"


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return document


def test_compose_has_a_three_node_cluster_two_gateways_and_the_brokers() -> None:
    services = compose()["services"]
    nats_nodes = [name for name, s in services.items() if str(s.get("image", "")).startswith("nats:")]
    assert sorted(nats_nodes) == ["n1", "n2", "n3"]
    gateways = [name for name, s in services.items() if s.get("image") == "fngate:latest"]
    assert sorted(gateways) == ["gw1", "gw2"]
    assert {"mosquitto", "kafka", "lb"} <= set(services)
    for name in gateways:
        gateway = services[name]
        assert gateway["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
        assert set(gateway["depends_on"]) >= {"n1", "n2", "n3"}
        assert "${FNGATE_TOKEN:?" in gateway["environment"]["FNGATE_TOKEN"]
    for name in nats_nodes:
        assert "test" in services[name]["healthcheck"]


def test_every_referenced_file_exists_and_volumes_are_declared() -> None:
    document = compose()
    declared = set(document.get("volumes", {}))
    for name, service in document["services"].items():
        build = service.get("build")
        if build:
            assert (DOCKER / build["context"] / build["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} not declared"


def test_published_ports_are_unique() -> None:
    ports = [p.split(":")[0] for s in compose()["services"].values() for p in s.get("ports", [])]
    assert len(ports) == len(set(ports))


def test_nats_nodes_route_to_each_other() -> None:
    for i in (1, 2, 3):
        conf = (DOCKER / "nats" / f"n{i}.conf").read_text()
        assert f"server_name: n{i}" in conf and "jetstream" in conf
        routes = set(re.findall(r"nats-route://(n\d):6222", conf))
        assert routes == {"n1", "n2", "n3"}


def test_dockerfile_is_multi_stage_non_root_with_a_readiness_healthcheck() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(stages) >= 2
    final = text[text.rindex("\nFROM ") :]
    users = re.findall(r"^USER\s+(\S+)", final, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "HEALTHCHECK" in final and "/readyz" in final
    assert re.search(r'^ENTRYPOINT \["fngate"\]', final, re.MULTILINE)
    assert "build-essential" not in final
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, re.MULTILINE):
        assert (ROOT / source).exists(), source


def test_load_balancer_checks_readiness_of_both_replicas() -> None:
    text = (DOCKER / "haproxy.cfg").read_text()
    assert "GET /readyz" in text and "server gw1 gw1:8080" in text and "server gw2 gw2:8080" in text


def test_the_deployment_config_validates(tmp_path: Path) -> None:
    config = load_config(
        DOCKER / "fngate.yaml", env={"FNGATE_TOKEN": "token-12345678", "FNGATE_READ_TOKEN": "read-12345678"}
    )
    assert config.nats.servers == ["nats://n1:4222", "nats://n2:4222", "nats://n3:4222"]
    assert config.nats.replicas == 3 and config.api.host == "0.0.0.0" and config.api.tokens
    assert {t.type for t in config.triggers} == {"timer", "mqtt", "kafka"}
    from gateway.cli.main import full_check

    path = tmp_path / "fngate.yaml"
    path.write_text(
        (DOCKER / "fngate.yaml")
        .read_text()
        .replace("${FNGATE_TOKEN}", "t" * 12)
        .replace("${FNGATE_READ_TOKEN}", "r" * 12)
    )
    _, errors, _ = full_check(str(path))
    assert errors == []
