"""The deployment manifests in deploy/ agree with the CLI and with each other.

Every container that runs ``shop`` has its arguments parsed by ``shop.cli.build_parser()`` (a
renamed or removed flag fails here, not in a cluster), and what the arguments name must exist:
peer addresses point at Services (compose services) serving that peer on that port, the URLs at
PostgreSQL, Redis and NATS, the service key file into a volume every process shares, health
probes at the right gRPC health entry, scrape targets at every service's /metrics.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shop.cli import build_parser
from shop.common.runtime import SERVICES
from shop.supervisor import DEPENDENCIES
from shop.system import FULL_NAMES

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "k8s"
NAMESPACE = "shop"
IMAGE = "grpckit-shop"
SERVICE_KEY_SECRET = "shop-service-key"

REPLICAS = {"orders": 2, "payments": 2}

Doc = dict[str, Any]


# -- loading -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Process:
    """One container running ``shop``: its argv (after the image's ENTRYPOINT), resolved env and
    mounts (mount path -> volume source such as ``secret:shop-service-key``)."""

    where: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    mounts: Mapping[str, str]
    replicas: int
    raw: Doc = field(repr=False)

    @functools.cached_property
    def ns(self) -> argparse.Namespace:
        try:
            return build_parser().parse_args(self.argv)
        except SystemExit:
            pass  # argparse printed why; fail outside the handler for a short traceback
        pytest.fail(f"{self.where}: `shop {shlex.join(self.argv)}` does not parse (see stderr)")

    def setting(self, attr: str, env: str) -> str | None:
        """A flag's value, else its environment variable: the CLI's precedence."""
        value = getattr(self.ns, attr, None)
        return str(value) if value is not None else self.env.get(env)

    def peer(self, peer: str) -> str | None:
        return self.setting(f"{peer}_addr", f"SHOP_{peer.upper()}_ADDR")

    def mount_of(self, path: str) -> str | None:
        """The volume source holding ``path`` (the deepest mount containing it)."""
        hits = [m for m in self.mounts if PurePosixPath(path).is_relative_to(m)]
        return self.mounts[max(hits, key=len)] if hits else None


def _load_all(path: Path) -> list[Doc]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(path.read_text(), Loader=loader) if d is not None]
    assert all(isinstance(d, dict) for d in docs), f"{path.name}: every document is a mapping"
    return docs


@functools.cache
def k8s_docs() -> tuple[tuple[str, Doc], ...]:
    return tuple(
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in _load_all(path)
    )


@functools.cache
def kustomization() -> Doc:
    return _load_all(K8S / "kustomization.yaml")[0]


@functools.cache
def compose() -> Doc:
    return _load_all(DEPLOY / "compose.yaml")[0]


@functools.cache
def prometheus() -> Doc:
    return _load_all(DEPLOY / "prometheus.yml")[0]


def k8s(kind: str, name: str | None = None) -> list[Doc]:
    return [
        d
        for _, d in k8s_docs()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def k8s_one(kind: str, name: str) -> Doc:
    found = k8s(kind, name)
    assert len(found) == 1, f"expected one {kind}/{name} in deploy/k8s, found {len(found)}"
    return found[0]


def _secret_data(name: str) -> Mapping[str, str]:
    secrets = k8s("Secret", name)
    assert secrets, f"no Secret {name}"
    return {**secrets[0].get("data", {}), **secrets[0].get("stringData", {})}


def _k8s_env(container: Doc, where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(k8s_one("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(_secret_data(source["secretRef"]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
            continue
        ref = var["valueFrom"]
        if "secretKeyRef" in ref:
            data = _secret_data(ref["secretKeyRef"]["name"])
        else:
            data = k8s_one("ConfigMap", ref["configMapKeyRef"]["name"])["data"]
        key = ref.get("secretKeyRef", ref.get("configMapKeyRef"))["key"]
        assert key in data, f"{where}: env {var['name']} names a missing key {key}"
        env[var["name"]] = data[key]
    return env


def _k8s_volume(volume: Doc) -> str:
    if "secret" in volume:
        return f"secret:{volume['secret']['secretName']}"
    if "persistentVolumeClaim" in volume:
        return f"pvc:{volume['persistentVolumeClaim']['claimName']}"
    if "configMap" in volume:
        return f"configmap:{volume['configMap']['name']}"
    return next(iter(volume.keys() - {"name"}))


def _expand(arg: str, env: Mapping[str, str], where: str) -> str:
    """Kubernetes' $(VAR) expansion in args, refusing variables the container lacks."""

    def sub(m: re.Match[str]) -> str:
        assert m.group(1) in env, f"{where}: {arg!r} names $({m.group(1)}), not in its env"
        return env[m.group(1)]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", sub, arg)


@functools.cache
def k8s_processes() -> dict[str, Process]:
    """Deployment name -> its shop container."""
    found: dict[str, Process] = {}
    for file, doc in k8s_docs():
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: _k8s_volume(v) for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            if not c["image"].startswith(IMAGE):
                continue
            where = f"k8s/{file} {doc['kind']}/{doc['metadata']['name']}"
            assert c.get("command", ["shop"]) == ["shop"], f"{where}: keep the image's ENTRYPOINT"
            env = _k8s_env(c, where)
            mounts = {}
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{where}: mounts undeclared volume {m['name']}"
                mounts[m["mountPath"]] = volumes[m["name"]]
            found[doc["metadata"]["name"]] = Process(
                where=where,
                argv=tuple(_expand(str(a), env, where) for a in c.get("args", [])),
                env=env,
                mounts=mounts,
                replicas=doc["spec"].get("replicas", 1),
                raw=c,
            )
    return found


@functools.cache
def compose_processes() -> dict[str, Process]:
    """Compose service name -> its process (services built from or running the shop image)."""
    found: dict[str, Process] = {}
    for name, svc in compose()["services"].items():
        if not str(svc.get("image", "")).startswith(IMAGE) and "build" not in svc:
            continue
        command = svc.get("command", [])
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        env = svc.get("environment", {})
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env)
        mounts = {}
        for volume in svc.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = f"volume:{source}" if not source.startswith(".") else f"bind:{source}"
        found[name] = Process(
            where=f"compose.yaml services.{name}",
            argv=tuple(argv),
            env={k: str(v) for k, v in env.items()},
            mounts=mounts,
            replicas=svc.get("deploy", {}).get("replicas", 1),
            raw=svc,
        )
    return found


def all_processes() -> Iterator[Process]:
    yield from k8s_processes().values()
    yield from compose_processes().values()


# -- every process -----------------------------------------------------------------------------


def test_every_yaml_document_parses() -> None:
    files = sorted(DEPLOY.rglob("*.y*ml"))
    assert {f.name for f in files} >= {"compose.yaml", "prometheus.yml", "kustomization.yaml"}
    for path in files:
        assert _load_all(path), f"{path} is empty"
    for file, doc in k8s_docs():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), file
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{file}: {doc['kind']}"


def test_the_image_runs_shop() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile, re.MULTILINE)
    assert entrypoint is not None and json.loads(entrypoint.group(1)) == ["shop"]
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)


def test_every_shop_process_parses_with_the_cli() -> None:
    processes = list(all_processes())
    assert len(processes) == 2 * len(SERVICES)
    for p in processes:
        assert p.ns.command in ("serve", "up"), p.where
        assert p.ns.host == "0.0.0.0", f"{p.where}: bind all interfaces in a container"
        assert p.ns.http_port, f"{p.where}: --http-port serves /healthz and /metrics"


@pytest.mark.parametrize("deployment", ["k8s", "compose"])
def test_one_deployment_per_service_with_its_replicas(deployment: str) -> None:
    processes = k8s_processes() if deployment == "k8s" else compose_processes()
    assert sorted(processes) == sorted(SERVICES)
    for name, p in processes.items():
        assert (p.ns.command, p.ns.service) == ("serve", name), p.where
        assert p.replicas == REPLICAS.get(name, 1), f"{p.where}: replicas"


@pytest.mark.parametrize("deployment", ["k8s", "compose"])
def test_every_process_shares_one_service_key(deployment: str) -> None:
    processes = k8s_processes() if deployment == "k8s" else compose_processes()
    sources = set()
    for p in processes.values():
        key_file = p.setting("service_key_file", "SHOP_SERVICE_KEY_FILE")
        assert key_file, f"{p.where}: --service-key-file (or SHOP_SERVICE_KEY_FILE)"
        source = p.mount_of(key_file)
        assert source, f"{p.where}: {key_file} is on no volume"
        sources.add(source)
    expected = f"secret:{SERVICE_KEY_SECRET}" if deployment == "k8s" else "volume:service-key"
    assert sources == {expected}


@pytest.mark.parametrize("deployment", ["k8s", "compose"])
def test_users_keeps_its_signing_key_on_a_persistent_volume(deployment: str) -> None:
    users = (k8s_processes() if deployment == "k8s" else compose_processes())["users"]
    source = users.mount_of(str(users.ns.data_dir))
    assert source is not None and source.split(":")[0] in ("pvc", "volume"), source
    assert users.replicas == 1, "the signing key in the data dir is not shared across replicas"
    assert users.env.get("SHOP_ADMIN_EMAIL") and users.env.get("SHOP_ADMIN_PASSWORD")


# -- Kubernetes --------------------------------------------------------------------------------


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_service_has_deployment_headless_service_and_pdb(service: str) -> None:
    deployment = k8s_one("Deployment", service)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)

    svc = k8s_one("Service", service)
    assert svc["spec"]["clusterIP"] == "None", "headless: DNS lists every pod"
    assert _selects(svc["spec"]["selector"], labels)
    process = k8s_processes()[service]
    assert process.ns.port in [p["port"] for p in svc["spec"]["ports"]]

    pdb = k8s_one("PodDisruptionBudget", service)
    assert pdb["spec"]["minAvailable"] == 1
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_probes_ask_the_right_health_service(service: str) -> None:
    p = k8s_processes()[service]
    readiness, liveness = p.raw["readinessProbe"]["grpc"], p.raw["livenessProbe"]["grpc"]
    assert readiness == {"port": p.ns.port, "service": FULL_NAMES[service]}
    assert liveness["port"] == p.ns.port and liveness.get("service", "") == ""
    ports = {port["name"]: port["containerPort"] for port in p.raw["ports"]}
    assert ports == {"grpc": p.ns.port, "http": p.ns.http_port}


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_resources_and_scrape_annotations(service: str) -> None:
    p = k8s_processes()[service]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= p.raw["resources"][bound].keys(), f"{p.where}: {bound}"
    pod = k8s_one("Deployment", service)["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(p.ns.http_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def _host_port(url: str) -> tuple[str, int]:
    """``dns:///HOST:PORT`` (a gRPC target) or ``scheme://[user[:pw]@]HOST:PORT[/...]``."""
    netloc = url.removeprefix("dns:///") if url.startswith("dns:///") else urlsplit(url).netloc
    host, _, port = netloc.rpartition("@")[2].rpartition(":")
    return host, int(port)


def _k8s_target(url: str) -> tuple[str, int]:
    """(Service name, port) of a URL naming ``NAME.shop.svc.cluster.local:PORT``."""
    host, port = _host_port(url)
    name, _, rest = host.partition(".")
    assert rest == f"{NAMESPACE}.svc.cluster.local", f"{url}: not a Service in {NAMESPACE}"
    assert k8s("Service", name), f"{url}: no Service {name}"
    return name, port


@pytest.mark.parametrize("service", SERVICES)
def test_k8s_peers_and_backends_point_at_existing_services(service: str) -> None:
    p = k8s_processes()[service]
    for peer in SERVICES:
        addr = p.peer(peer)
        if peer in DEPENDENCIES[service]:
            assert addr and addr.startswith("dns:///"), f"{p.where}: {peer} address {addr}"
        if addr:
            assert _k8s_target(addr) == (peer, k8s_processes()[peer].ns.port), addr
    database = p.setting("database_url", "SHOP_DATABASE_URL")
    redis, nats = p.setting("redis_url", "SHOP_REDIS_URL"), p.setting("nats_url", "SHOP_NATS_URL")
    assert database and database.startswith("postgresql+asyncpg://")
    assert _k8s_target(database) == ("postgres", 5432)
    assert redis and _k8s_target(redis) == ("redis", 6379)
    assert nats and _k8s_target(nats) == ("nats", 4222)
    nats_server = k8s_one("StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]
    assert "-js" in nats_server["args"], "the event bus needs JetStream"


def test_k8s_secrets_and_kustomization() -> None:
    listed = kustomization()["resources"]
    on_disk = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk
    generated = {g["name"] for g in kustomization().get("secretGenerator", [])}
    assert SERVICE_KEY_SECRET in generated
    declared = {d["metadata"]["name"] for d in k8s("Secret")} | generated
    for _, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            for volume in doc["spec"]["template"]["spec"].get("volumes", []):
                if "secret" in volume:
                    assert volume["secret"]["secretName"] in declared, volume
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert k8s("PersistentVolumeClaim", claim), f"no PersistentVolumeClaim {claim}"


# -- compose and Prometheus --------------------------------------------------------------------


def _compose_target(url: str) -> tuple[str, int]:
    """(compose service, port) of a URL naming ``SERVICE:PORT``."""
    host, port = _host_port(url)
    assert host in compose()["services"], f"{url}: no compose service {host}"
    return host, port


@pytest.mark.parametrize("service", SERVICES)
def test_compose_peers_and_backends_point_at_existing_services(service: str) -> None:
    p = compose_processes()[service]
    for peer in SERVICES:
        addr = p.peer(peer)
        if peer in DEPENDENCIES[service]:
            assert addr and addr.startswith("dns:///"), f"{p.where}: {peer} address {addr}"
        if addr:
            assert _compose_target(addr) == (peer, compose_processes()[peer].ns.port), addr
    database = p.setting("database_url", "SHOP_DATABASE_URL")
    redis, nats = p.setting("redis_url", "SHOP_REDIS_URL"), p.setting("nats_url", "SHOP_NATS_URL")
    assert database and _compose_target(database) == ("postgres", 5432)
    assert redis and _compose_target(redis) == ("redis", 6379)
    assert nats and _compose_target(nats) == ("nats", 4222)
    assert "-js" in compose()["services"]["nats"]["command"], "the event bus needs JetStream"
    depends = p.raw.get("depends_on", {})
    for needed in ("postgres", "redis", "nats", *DEPENDENCIES[service]):
        assert depends.get(needed, {}).get("condition") == "service_healthy", f"{p.where}"


def test_compose_ports_are_distinct_and_health_checked() -> None:
    processes = compose_processes()
    ports = [p.ns.port for p in processes.values()] + [p.ns.http_port for p in processes.values()]
    assert len(set(ports)) == len(ports), ports
    for p in processes.values():
        assert f"http://127.0.0.1:{p.ns.http_port}/healthz" in p.raw["healthcheck"]["test"]


def test_compose_references_exist() -> None:
    doc = compose()
    declared = set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        assert "image" in svc or "build" in svc, name
        if "build" in svc:
            context = (DEPLOY / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: {source}"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for needed, condition in svc.get("depends_on", {}).items():
            assert needed in doc["services"], f"{name} depends on unknown {needed}"
            if condition.get("condition") == "service_healthy":
                assert "healthcheck" in doc["services"][needed], f"{needed} has no healthcheck"
    prometheus_mounts = doc["services"]["prometheus"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus_mounts


def test_prometheus_scrapes_every_service() -> None:
    targets = set()
    for job in prometheus()["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            targets.update((name, sd["port"]) for name in sd["names"])
        for static in job.get("static_configs", []):
            shop = [t for t in static["targets"] if not t.startswith("localhost:")]
            targets.update(_compose_target(f"//{t}") for t in shop)
    expected = {(name, p.ns.http_port) for name, p in compose_processes().items()}
    assert expected <= targets
