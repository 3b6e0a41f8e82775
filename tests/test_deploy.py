"""``deploy/``: the Containerfile and Kubernetes manifests, checked offline, and the
container's exact command line and environment run on loopback with its probes."""

from __future__ import annotations

import copy
import json
import re
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from .conftest import Spawn
from .processes import TRIO_ECHO, fill_both_directions

DEPLOY = Path(__file__).parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
#: The oldest Kubernetes release still commonly run; the schemas ship with the package.
KUBERNETES_VERSION = "1.30"


def documents() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in documents() if doc["kind"] == kind]
    return dict(found)


def container() -> dict[str, Any]:
    (only,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(only)


def containerfile() -> list[tuple[str, str]]:
    """The Containerfile's instructions as (INSTRUCTION, rest), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Containerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, rest in containerfile():
        if instruction == "ENV":
            for key, value in re.findall(r'(\w+)="([^"]*)"', rest):
                env[key] = value
    return env


def seconds(duration: str) -> float:
    return float(duration.removesuffix("s"))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_are_valid_kubernetes_objects_offline(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_does_catch_a_mistake() -> None:
    broken = copy.deepcopy(by_kind("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_deployment_probes_drains_and_outlasts_the_grace() -> None:
    spec = by_kind("Deployment")["spec"]["template"]["spec"]
    main = container()
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    ports = {port["name"]: port["containerPort"] for port in main["ports"]}
    env = {**image_env(), **{e["name"]: e["value"] for e in main["env"]}}
    assert env["TRIO_ECHO_METRICS"] == f":{ports['metrics']}"
    assert env["TRIO_ECHO_PORT"] == str(ports["echo"])
    pause = main["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    grace = seconds(main["args"][main["args"].index("--grace") + 1])
    assert spec["terminationGracePeriodSeconds"] > grace + float(pause[1])
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_requests_cover_the_measured_memory_per_connection() -> None:
    main = container()
    connections = int(main["args"][main["args"].index("--max-connections") + 1])
    # The README's figures: 26.3 MiB at start, 4.13 KiB per idle connection.
    needed_mib = 26.3 + 5 + connections * 4.13 / 1024
    requested = main["resources"]["requests"]["memory"]
    assert requested.endswith("Mi")
    assert needed_mib <= int(requested[:-2]) <= 2 * needed_mib
    assert int(main["resources"]["limits"]["memory"][:-2]) >= int(requested[:-2])


def test_service_and_disruption_budget_select_the_pods() -> None:
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = by_kind("Service")["spec"]
    assert service["selector"] == labels
    assert {(p["targetPort"], p["protocol"]) for p in service["ports"]} == {
        ("echo", "TCP"),
        ("metrics", "TCP"),
    }
    assert by_kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == labels


def test_containerfile_is_multi_stage_non_root_exec_form_sigterm() -> None:
    instructions = containerfile()
    kinds = [kind for kind, _ in instructions]
    assert kinds.count("FROM") >= 2
    assert ("STOPSIGNAL", "SIGTERM") in instructions
    (entrypoint,) = [rest for kind, rest in instructions if kind == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["trio-echo"]  # exec form: PID 1 gets the signals
    (user,) = [rest for kind, rest in instructions if kind == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    assert (
        int(uid)
        == by_kind("Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    )
    # USER comes after the last FROM: the final stage runs as that user.
    assert kinds.index("USER") > len(kinds) - 1 - kinds[::-1].index("FROM")


def free_port() -> int:
    """A port free on every address, IPv4 and IPv6 (what TRIO_ECHO_HOST="*" binds)."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


def probe(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.system
def test_the_containers_command_and_environment_serve_with_probes(spawn: Spawn) -> None:
    """Exactly the manifests' arguments and the image's environment under the
    Deployment's, except the two ports, remapped to free ones (a shared machine)."""
    main = container()
    env = {**image_env(), **{e["name"]: e["value"] for e in main["env"]}}
    echo_port, metrics_port = free_port(), free_port()
    env["TRIO_ECHO_PORT"] = str(echo_port)
    env["TRIO_ECHO_METRICS"] = f":{metrics_port}"
    # ENTRYPOINT ["trio-echo"] with the Deployment's args, as the runtime execs it.
    server = spawn([TRIO_ECHO, *main["args"]], env={"PATH": "/usr/bin:/bin", **env})
    server.wait_for(r'"event":"start"')
    readiness = main["readinessProbe"]["httpGet"]["path"]
    liveness = main["livenessProbe"]["httpGet"]["path"]
    assert probe(metrics_port, readiness) == 200
    assert probe(metrics_port, liveness) == 200
    with socket.create_connection(("127.0.0.1", echo_port), timeout=10) as client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
    with socket.create_connection(("127.0.0.1", echo_port), timeout=10) as busy:
        # A connection stuck mid-echo keeps the shutdown going for a while.
        fill_both_directions(busy)
        server.signal(signal.SIGTERM)
        server.wait_for(r'"event":"stopping"')
        assert probe(metrics_port, readiness) == 503
        assert probe(metrics_port, liveness) == 200
    status, log = server.finish(
        timeout=by_kind("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    )
    assert status == 0, log
    events = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    config = next(e for e in events if e["event"] == "config")
    assert (config["grace"], config["max_connections"], config["host"]) == (20.0, 10000, None)
