"""The deployment files cannot run here (no Docker engine, no cluster, no
GPU), so each is parsed and checked against the service's own config and
code: ports, probe service names, metric ports, replica addresses, models."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from server.app import LIVENESS_NAME, SERVICE_NAME
from server.config import load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
REMOTE = load(ROOT / "config/remote.yaml")


def k8s(name: str) -> dict[tuple[str, str], dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def all_k8s() -> dict[tuple[str, str], dict]:
    out = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out.update(k8s(path.name))
    return out


def arg(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def replica_hosts() -> dict[str, tuple[str, int]]:
    """tier -> (host, port) of its single replica in config/remote.yaml."""
    out = {}
    for name, tier in REMOTE.tiers.items():
        assert tier.backend == "remote" and len(tier.replicas) == 1
        url = urlparse(tier.replicas[0])
        out[name] = (url.hostname, url.port)
    return out


def test_remote_profile_names_vllm_servers_that_exist_in_compose_and_kubernetes():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    objects = all_k8s()
    for name, (host, port) in replica_hosts().items():
        tier = REMOTE.tiers[name]
        service = compose[host]
        assert int(arg(service["command"], "--port")) == port
        assert arg(service["command"], "--served-model-name") == tier.model
        assert int(arg(service["command"], "--max-model-len")) >= tier.max_model_len
        svc = objects[("Service", host)]
        assert any(p["port"] == port for p in svc["spec"]["ports"])
        container = objects[("Deployment", host)]["spec"]["template"]["spec"]["containers"][0]
        assert arg(container["args"], "--served-model-name") == tier.model
        assert int(arg(container["args"], "--max-model-len")) >= tier.max_model_len
        assert int(arg(container["args"], "--port")) == port
        assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": port}


def test_router_deployment_ports_probes_and_scrape_annotations_match_the_service():
    objects = k8s("router.yaml")
    pod = objects[("Deployment", "triage-router")]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = container["args"]
    assert (ROOT / arg(args, "--config")).resolve() == (ROOT / "config/remote.yaml").resolve()
    port, metrics_port = int(arg(args, "--port")), int(arg(args, "--metrics-port"))
    assert (port, metrics_port) == (REMOTE.server.port, REMOTE.server.metrics_port)
    assert {p["containerPort"] for p in container["ports"]} == {port, metrics_port}
    assert container["readinessProbe"]["grpc"] == {"port": port, "service": SERVICE_NAME}
    assert container["livenessProbe"]["grpc"] == {"port": port, "service": LIVENESS_NAME}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == metrics_port
    assert pod["spec"]["terminationGracePeriodSeconds"] > REMOTE.server.grace_seconds
    service_ports = {p["name"]: p for p in objects[("Service", "triage-router")]["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == port and service_ports["metrics"]["port"] == metrics_port


def test_compose_router_and_prometheus_agree_with_the_config():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    router = compose["router"]
    assert (DEPLOY / router["build"]["context"] / router["build"]["dockerfile"]).is_file()
    args = router["command"]
    assert (ROOT / arg(args, "--config")).resolve() == (ROOT / "config/remote.yaml").resolve()
    published = {int(p.split(":")[1]) for p in router["ports"]}
    assert published == {REMOTE.server.port, REMOTE.server.metrics_port} == {int(arg(args, "--port")), int(arg(args, "--metrics-port"))}
    mounted = compose["prometheus"]["volumes"][0].split(":")[0]
    scrape = yaml.safe_load((DEPLOY / mounted).read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert f"router:{REMOTE.server.metrics_port}" in targets
    assert {f"{h}:{p}" for h, p in replica_hosts().values()} <= targets
    for volume in compose["grafana"]["volumes"]:
        assert (DEPLOY / volume.split(":")[0]).is_dir()


@pytest.mark.parametrize("dockerfile, profile", [("Dockerfile.cpu", "config/cpu.yaml"), ("Dockerfile.gpu", "config/gpu.yaml")])
def test_images_expose_the_profile_ports_and_start_the_server(dockerfile, profile):
    text = (DEPLOY / "docker" / dockerfile).read_text()
    config = load(ROOT / profile)
    exposed = {int(p) for line in re.findall(r"^EXPOSE (.+)$", text, re.M) for p in line.split()}
    assert exposed == {config.server.port, config.server.metrics_port}
    entrypoint = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", text, re.M).group(1))
    assert entrypoint[-4:] == ["-m", "server", "--host", "0.0.0.0"]
    assert arg(cmd, "--config") == profile and int(arg(cmd, "--port")) == config.server.port
    assert int(arg(cmd, "--metrics-port")) == config.server.metrics_port
    healthcheck = re.search(r"^\s+CMD (.+) \|\| exit 1$", text, re.M).group(1)
    assert shlex.split(healthcheck)[-1] == "health" and f"127.0.0.1:{config.server.port}" in healthcheck


SMG = load(ROOT / "config/smg.yaml")


def test_smg_profile_gateways_front_worker_pools_that_exist_in_compose_and_kubernetes():
    """config/smg.yaml's gateways are compose services (profile smg) and
    Kubernetes Services; each fronts workers that serve the tier's model with
    a long enough context, probed on the endpoints that mean "a worker can
    serve"; Prometheus scrapes every gateway's metrics port."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    objects = all_k8s()
    scrape = yaml.safe_load((DEPLOY / "prometheus/compose.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    router = compose["router-smg"]
    assert (ROOT / arg(router["command"], "--config")).resolve() == (ROOT / "config/smg.yaml").resolve()
    assert f"router-smg:{SMG.server.metrics_port}" in targets
    smg_image = (DEPLOY / "docker/Dockerfile.smg").read_text()
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.+)$", smg_image, re.M).group(1))
    gateway_port, gateway_metrics = int(arg(entry, "--port")), int(arg(entry, "--prometheus-port"))
    for name, tier in SMG.tiers.items():
        assert tier.backend == "smg"
        url = urlparse(tier.gateway_url)
        assert url.port == gateway_port
        gateway = compose[url.hostname]
        assert gateway["profiles"] == ["smg"] and arg(gateway["command"], "--model-path") == tier.model_path
        workers = gateway["command"][gateway["command"].index("--worker-urls") + 1:gateway["command"].index("--model-path")]
        assert len(workers) >= 2
        for worker_url in workers:
            worker = compose[urlparse(worker_url).hostname]
            assert worker_url.startswith("grpc://") and urlparse(worker_url).port == 50051
            assert arg(worker["command"], "--served-model-name") == tier.model
            assert int(arg(worker["command"], "--max-model-len")) >= tier.max_model_len
        assert f"{url.hostname}:{gateway_metrics}" in targets
        # Kubernetes: the gateway's Service and probes, and the worker pool it discovers.
        service = objects[("Service", url.hostname)]
        assert {p["port"] for p in service["spec"]["ports"]} == {gateway_port, gateway_metrics}
        pod = objects[("Deployment", url.hostname)]["spec"]["template"]
        container = pod["spec"]["containers"][0]
        assert container["readinessProbe"]["httpGet"] == {"path": "/readiness", "port": gateway_port}
        assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == gateway_metrics
        selector = dict([arg(container["args"], "--selector").split("=")])
        pool = objects[("Deployment", f"worker-{name}")]["spec"]["template"]
        assert selector.items() <= pool["metadata"]["labels"].items()
        worker = pool["spec"]["containers"][0]
        assert arg(worker["args"], "--served-model-name") == tier.model and int(arg(worker["args"], "--max-model-len")) >= tier.max_model_len
        assert worker["readinessProbe"]["grpc"] == {"port": int(arg(container["args"], "--service-discovery-port"))}


def test_the_routers_share_the_postgresql_that_compose_and_kubernetes_start():
    """store.url names the database service, user and name each file starts,
    and the password comes from the environment, never the URL."""
    from server.config import load

    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    router, db = compose["router"], compose["postgres"]
    url = arg(router["command"], "--set").removeprefix("store.url=")
    assert url == f"postgresql://{db['environment']['POSTGRES_USER']}@postgres:5432/{db['environment']['POSTGRES_DB']}"
    assert "PGPASSWORD" in router["environment"] and router["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert load(ROOT / arg(router["command"], "--config"), [arg(router["command"], "--set")]).store.url == url

    objects = all_k8s()
    container = objects[("Deployment", "triage-router")]["spec"]["template"]["spec"]["containers"][0]
    k8s_url = arg(container["args"], "--set").removeprefix("store.url=")
    db_pod = objects[("StatefulSet", "triage-postgres")]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in db_pod["env"]}
    service = objects[("Service", "triage-postgres")]["spec"]["ports"][0]
    assert k8s_url == f"postgresql://{env['POSTGRES_USER']}@triage-postgres:{service['port']}/{env['POSTGRES_DB']}"
    assert [e["name"] for e in container["env"]] == ["PGPASSWORD"]
