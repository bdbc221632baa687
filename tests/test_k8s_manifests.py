"""deploy/: every Kubernetes manifest parses and agrees with the code, without a cluster.

The sources of truth are the project itself: image names from the Dockerfiles' build lines,
commands parsed by ``depthfleet.cli.build_parser()``, setting names read by
``Settings.from_env`` (``test_deploy_files.setting_names``), API routes of ``create_app()``,
worker health routes of ``worker.observability.ROUTES``, Celery's shutdown configuration from
``make_celery``, gunicorn's graceful timeout from its config module, and metric names from
``shared.metrics``. Each ``check_*`` returns a list of problems; ``test_every_check_can_fail``
runs each on a broken copy, so none is a tautology.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY

from depthfleet.api import gunicorn_conf
from depthfleet.cli import build_parser
from depthfleet.shared.metrics import ProcessMemoryCollector, QueueCollector
from depthfleet.shared.queue import QUEUE, make_celery
from depthfleet.shared.settings import Settings
from test_deploy_files import check_setting_names, make_app, setting_names

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCS = REPO / "docs" / "operations.md"
COMPONENTS = {"api": "Dockerfile.api", "worker": "Dockerfile.worker"}
COMPONENT_LABEL = "app.kubernetes.io/component"
# Measured worker memory (docs/operations.md): parent, idle pool process, growth per pixel.
PARENT_BYTES, POOL_IDLE_BYTES, POOL_BYTES_PER_PIXEL = 120e6, 190e6, 20
METRIC_NAME = re.compile(r"\bdepthfleet_[a-z0-9_]+")
ROUTE_LABEL = re.compile(r'route="([^"]+)"')

Manifests = dict[str, list[dict[str, Any]]]  # file (relative to deploy/) -> its documents


# ---------------------------------------------------------------------------------- reading
def load_manifests() -> Manifests:
    return {str(path.relative_to(DEPLOY)): [d for d in yaml.safe_load_all(path.read_text()) if d]
            for path in sorted(DEPLOY.rglob("*.y*ml"))}


def documents(manifests: Manifests, kind: str | None = None) -> Iterator[dict[str, Any]]:
    for docs in manifests.values():
        yield from (d for d in docs if kind is None or d.get("kind") == kind)


def named(manifests: Manifests, kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in documents(manifests, kind) if d["metadata"]["name"] == name), None)


def deployment(manifests: Manifests, component: str) -> dict[str, Any]:
    found = [d for d in documents(manifests, "Deployment")
             if d["spec"]["template"]["metadata"]["labels"].get(COMPONENT_LABEL) == component]
    assert len(found) == 1, f"expected one {component} Deployment, found {len(found)}"
    return found[0]


def pod(workload: Mapping[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def container(workload: Mapping[str, Any]) -> dict[str, Any]:
    return pod(workload)["containers"][0]


def pod_env(manifests: Manifests, workload: Mapping[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps and Secrets, then its own ``env``."""
    env: dict[str, str] = {}
    spec = container(workload)
    for source in spec.get("envFrom", []):
        kind, ref = ("ConfigMap", source["configMapRef"]) if "configMapRef" in source \
            else ("Secret", source["secretRef"])
        found = named(manifests, kind, ref["name"]) or {}
        env.update(found.get("data") or found.get("stringData") or {})
    env.update({e["name"]: str(e.get("value", "")) for e in spec.get("env", [])})
    return env


def argv(workload: Mapping[str, Any]) -> list[str]:
    spec = container(workload)
    return [*spec.get("command", []), *spec.get("args", [])]


def container_port(workload: Mapping[str, Any], port: int | str) -> int | None:
    """A container port by name or number, as probes and Services refer to it."""
    for entry in container(workload).get("ports", []):
        if port in (entry.get("name"), entry["containerPort"]):
            return int(entry["containerPort"])
    return None


def image_names() -> dict[str, str]:
    """Dockerfile -> the image name its ``docker build ... -t NAME`` line documents."""
    names = {}
    for dockerfile in COMPONENTS.values():
        match = re.search(r"docker build -f \S+ -t (\S+)", (REPO / dockerfile).read_text())
        assert match, f"{dockerfile} documents no image name"
        names[dockerfile] = match.group(1)
    return names


def image_repository(image: str) -> str:
    """``registry.example.com:5000/team/depthfleet-api:1.2`` -> ``depthfleet-api``."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (CPU or bytes) as a number."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(value))
    assert match, f"bad quantity {value!r}"
    return float(match.group(1)) * units.get(match.group(2), 1.0)


def probes(workload: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    spec = container(workload)
    return {kind: spec[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe",
                                                     "readinessProbe") if kind in spec}


def metric_names() -> set[str]:
    """Every family and sample name DepthFleet exports."""
    families = [m for m in REGISTRY.collect() if m.name.startswith("depthfleet_")]
    families += QueueCollector.describe() + ProcessMemoryCollector.describe()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ()}
    return {f.name for f in families} | {f.name + s for f in families for s in suffixes[f.type]}


def pre_stop_words(workload: Mapping[str, Any]) -> list[str]:
    command = container(workload).get("lifecycle", {}).get("preStop", {}).get("exec", {}) \
        .get("command", [])
    return shlex.split(command[2]) if command[:2] == ["/bin/sh", "-c"] else list(command)


def sleeps(text: str) -> float:
    """Seconds a shell script spends in ``sleep``."""
    return sum(float(n) for n in re.findall(r"\bsleep (\d+(?:\.\d+)?)", text))


def seconds_before(words: list[str], action: str) -> float | None:
    """Seconds of ``sleep`` in a preStop script before ``action`` (e.g. ``kill -QUIT 1``)."""
    text = " ".join(words)
    return sleeps(text.split(action)[0]) if action in text else None


# ----------------------------------------------------------------------------------- checks
def check_structure(manifests: Manifests) -> list[str]:
    """Every document is a named Kubernetes object; the kustomization covers every file."""
    problems = [f"{file}: a document without apiVersion, kind or metadata.name"
                for file, docs in manifests.items() for d in docs
                if d.get("kind") != "Kustomization"
                and not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name"))]
    kustomization = manifests.get("k8s/kustomization.yaml", [{}])[0]
    listed = set(kustomization.get("resources", []))
    problems += [f"kustomization lists {r}, which does not exist" for r in sorted(listed)
                 if f"k8s/{r}" not in manifests]
    mentioned = (K8S / "kustomization.yaml").read_text()
    problems += [f"{file} is neither a kustomization resource nor explained there"
                 for file in manifests if file.startswith("k8s/") and file != "k8s/kustomization.yaml"
                 and file.removeprefix("k8s/") not in mentioned]
    return problems


def check_images_and_commands(manifests: Manifests, images: Mapping[str, str]) -> list[str]:
    """Each component runs its documented image and `depthfleet <component>`, which parses."""
    problems = []
    for component, dockerfile in COMPONENTS.items():
        workload = deployment(manifests, component)
        image = container(workload)["image"]
        if image_repository(image) != images[dockerfile]:
            problems.append(f"{component}: image {image}, but {dockerfile} builds {images[dockerfile]}")
        words = argv(workload)
        if words[:2] != ["depthfleet", component]:
            problems.append(f"{component}: runs {words}, not `depthfleet {component}`")
            continue
        try:
            args = build_parser().parse_args(words[1:])
        except SystemExit:
            problems.append(f"{component}: `{' '.join(words)}` does not parse")
            continue
        if component == "api" and args.host != "0.0.0.0":
            problems.append(f"api: listens on {args.host}, unreachable from its Service")
    return problems


def check_ports(manifests: Manifests) -> list[str]:
    """Container ports are the ones the processes listen on; Services reach them."""
    api, worker = deployment(manifests, "api"), deployment(manifests, "worker")
    api_port = build_parser().parse_args(argv(api)[1:]).port
    metrics_port = Settings.from_env(pod_env(manifests, worker)).metrics_port
    problems = []
    if container_port(api, "http") != api_port:
        problems.append(f"api: port `http` is not the port it serves ({api_port})")
    if metrics_port == 0 or container_port(worker, "metrics") != metrics_port:
        problems.append(f"worker: port `metrics` is not DEPTHFLEET_METRICS_PORT ({metrics_port})")
    for workload, port in ((api, api_port), (worker, metrics_port)):
        annotation = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotation.get("prometheus.io/port") != str(port):
            problems.append(f"{workload['metadata']['name']}: scrape annotation port "
                            f"{annotation.get('prometheus.io/port')} is not {port}")
    for service in documents(manifests, "Service"):
        selected = [d for d in documents(manifests, "Deployment")
                    if service["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        if not selected:
            problems.append(f"Service {service['metadata']['name']} selects no Deployment's pods")
        problems += [f"Service {service['metadata']['name']}: targetPort {p['targetPort']} is "
                     "not a container port" for p in service["spec"]["ports"] for d in selected
                     if container_port(d, p["targetPort"]) is None]
    return problems


def check_settings(manifests: Manifests, known: set[str]) -> list[str]:
    """Every DEPTHFLEET_* name is a setting; each pod's environment parses and is complete."""
    texts = {str(p.relative_to(REPO)): p.read_text() for p in [*DEPLOY.rglob("*.y*ml"), DOCS]}
    problems = check_setting_names(texts, known)
    problems += [f"{(d.get('kind'), d['metadata']['name'])}: {var} is not a DepthFleet setting"
                 for d in documents(manifests) if d.get("kind") in ("ConfigMap", "Secret")
                 for var in (d.get("data") or d.get("stringData") or {})
                 if var.startswith("DEPTHFLEET_") and var not in known]
    for component in COMPONENTS:
        workload = deployment(manifests, component)
        for source in container(workload).get("envFrom", []):
            kind, ref = next(iter(source.items()))
            if named(manifests, "ConfigMap" if kind == "configMapRef" else "Secret",
                     ref["name"]) is None:
                problems.append(f"{component}: envFrom {ref['name']} is defined nowhere")
        env = pod_env(manifests, workload)
        try:
            settings = Settings.from_env(env)
        except Exception as exc:
            problems.append(f"{component}: its environment does not parse: {exc}")
            continue
        if not settings.redis_url or not settings.storage_url:
            problems.append(f"{component}: no DEPTHFLEET_REDIS_URL or DEPTHFLEET_STORAGE_URL")
        if component == "api" and not settings.api_keys:
            problems.append("api: no DEPTHFLEET_API_KEYS: it would serve loopback clients only")
        if component == "worker":
            if "DEPTHFLEET_API_KEYS" in env:
                problems.append("worker: gets the API keys, which it never needs")
            cpus = quantity(container(workload)["resources"]["requests"]["cpu"])
            if (settings.concurrency or 0) * (settings.threads or 0) != cpus:
                problems.append(f"worker: {settings.concurrency} processes x {settings.threads} "
                                f"threads do not match its {cpus} CPUs")
    return problems


def check_probes(manifests: Manifests, app: Any, worker_routes: Mapping[str, Any]) -> list[str]:
    """Probes ask for routes that exist and need no key, on the right port; liveness checks
    the process only (a Redis outage must not restart pods)."""
    problems = []
    adapter = app.url_map.bind("localhost")
    for component in COMPONENTS:
        workload = deployment(manifests, component)
        found = probes(workload)
        if {"livenessProbe", "readinessProbe"} - found.keys():
            problems.append(f"{component}: needs liveness and readiness probes")
        if found.get("readinessProbe", {}).get("path") != "/readyz":
            problems.append(f"{component}: readiness is not /readyz")
        if found.get("livenessProbe", {}).get("path") != "/healthz":
            problems.append(f"{component}: liveness is not /healthz")
        expected_port = "http" if component == "api" else "metrics"
        for kind, probe in found.items():
            if container_port(workload, probe["port"]) != container_port(workload, expected_port):
                problems.append(f"{component} {kind}: port {probe['port']} is not {expected_port}")
            if component == "worker":
                if probe["path"] not in worker_routes:
                    problems.append(f"worker {kind}: {probe['path']} is not a worker route")
                continue
            try:
                adapter.match(probe["path"], method="GET")
            except Exception as exc:  # NotFound, MethodNotAllowed, RequestRedirect
                problems.append(f"api {kind}: GET {probe['path']} is not a route ({exc})")
                continue
            with app.test_request_context(probe["path"]):
                try:
                    app.preprocess_request()  # authentication, not the view
                except Exception as exc:
                    problems.append(f"api {kind}: GET {probe['path']} needs credentials ({exc})")
    return problems


def check_shutdown(manifests: Manifests, celery_conf: Mapping[str, Any],
                   graceful_timeout: float) -> list[str]:
    """Workers get SIGTERM (warm shutdown) at once, SIGQUIT (soft then cold shutdown: the task
    goes back) in time to finish before the grace period ends; the API drains first."""
    problems = []
    worker = deployment(manifests, "worker")
    grace = pod(worker).get("terminationGracePeriodSeconds", 30)
    words = pre_stop_words(worker)
    if seconds_before(words, "kill -TERM 1") != 0:
        problems.append("worker preStop: must send SIGTERM to Celery (PID 1) first")
    quit_at = seconds_before(words, "kill -QUIT 1")
    soft = celery_conf["worker_soft_shutdown_timeout"]
    if quit_at is None or quit_at + soft + 10 > grace:
        problems.append(f"worker: SIGQUIT at {quit_at}s + {soft}s soft shutdown + 10s does not "
                        f"fit the {grace}s grace period")
    if not (celery_conf["task_acks_late"] and celery_conf["task_reject_on_worker_lost"]):
        problems.append("Celery does not ack late: a task cancelled at shutdown would be lost")
    api = deployment(manifests, "api")
    drain = sleeps(" ".join(pre_stop_words(api)))
    if pod(api).get("terminationGracePeriodSeconds", 30) <= drain + graceful_timeout:
        problems.append(f"api: grace period under preStop {drain}s + gunicorn's "
                        f"{graceful_timeout}s graceful timeout")
    return problems


def check_memory(manifests: Manifests) -> list[str]:
    """The worker's memory limit holds every pool process at DEPTHFLEET_MAX_PIXELS (measured)."""
    worker = deployment(manifests, "worker")
    settings = Settings.from_env(pod_env(manifests, worker))
    resources = container(worker)["resources"]
    limit = quantity(resources.get("limits", {}).get("memory", "0"))
    request = quantity(resources["requests"]["memory"])
    pool = (settings.concurrency or 1) * (POOL_IDLE_BYTES + POOL_BYTES_PER_PIXEL * settings.max_pixels)
    problems = []
    if limit < PARENT_BYTES + pool:
        problems.append(f"worker: memory limit {limit / 2**20:.0f} MiB under the "
                        f"{(PARENT_BYTES + pool) / 2**20:.0f} MiB peak at "
                        f"{settings.max_pixels} pixels")
    if not PARENT_BYTES + (settings.concurrency or 1) * POOL_IDLE_BYTES <= request <= limit:
        problems.append("worker: memory request below the idle footprint or above the limit")
    return problems


def check_autoscaling(manifests: Manifests) -> list[str]:
    """KEDA scales the worker Deployment on the Celery queue list of the Redis workers use."""
    objects = list(documents(manifests, "ScaledObject"))
    if not objects:
        return ["no KEDA ScaledObject"]
    worker = deployment(manifests, "worker")
    redis_url = urlsplit(Settings.from_env(pod_env(manifests, worker)).redis_url or "")
    problems = []
    for scaled in objects:
        spec = scaled["spec"]
        if spec["scaleTargetRef"]["name"] != worker["metadata"]["name"]:
            problems.append("ScaledObject: does not target the worker Deployment")
        if spec.get("minReplicaCount", 0) < 1:
            problems.append("ScaledObject: minReplicaCount 0 stops workers whose tasks left the "
                            "list (reserved tasks are not counted)")
        for trigger in (t for t in spec["triggers"] if t["type"] == "redis"):
            meta = trigger["metadata"]
            if meta.get("address") != redis_url.netloc.rsplit("@", 1)[-1]:
                problems.append(f"redis trigger: {meta.get('address')} is not the Redis of "
                                f"DEPTHFLEET_REDIS_URL ({redis_url.netloc})")
            if meta.get("databaseIndex", "0") != (redis_url.path.strip("/") or "0"):
                problems.append("redis trigger: another database than DEPTHFLEET_REDIS_URL's")
            if meta.get("listName") != QUEUE:
                problems.append(f"redis trigger: list {meta.get('listName')}, the queue is {QUEUE}")
    return problems


def check_metric_references(texts: Mapping[str, str], known: set[str], app: Any) -> list[str]:
    """Alert rules and the operator guide name real metrics and real API routes."""
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    problems = [f"{name}: {metric} is not a DepthFleet metric" for name, text in texts.items()
                for metric in sorted(set(METRIC_NAME.findall(text)) - known)]
    problems += [f"{name}: route {route} is not an API route" for name, text in texts.items()
                 for route in sorted(set(ROUTE_LABEL.findall(text)) - rules)]
    return problems


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def manifests() -> Manifests:
    return load_manifests()


@pytest.fixture(scope="module")
def app() -> Any:
    return make_app()


@pytest.fixture(scope="module")
def worker_routes() -> dict[str, Any]:
    from depthfleet.worker.observability import ROUTES

    return ROUTES


@pytest.fixture(scope="module")
def celery_conf() -> dict[str, Any]:
    return dict(make_celery(Settings(redis_url="redis://127.0.0.1:9/0")).conf)


@pytest.fixture(scope="module")
def reference_texts() -> dict[str, str]:
    texts = {str(p.relative_to(REPO)): p.read_text() for p in DEPLOY.rglob("*.y*ml")}
    return {**texts, "docs/operations.md": DOCS.read_text()}


def test_manifests_parse(manifests: Manifests) -> None:
    kinds = {d["kind"] for d in documents(manifests)}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "ScaledObject"} <= kinds
    assert check_structure(manifests) == []


def test_images_and_commands(manifests: Manifests) -> None:
    assert check_images_and_commands(manifests, image_names()) == []


def test_ports(manifests: Manifests) -> None:
    assert check_ports(manifests) == []


def test_settings(manifests: Manifests) -> None:
    assert check_settings(manifests, setting_names()) == []


def test_probes(manifests: Manifests, app: Any, worker_routes: dict[str, Any]) -> None:
    assert check_probes(manifests, app, worker_routes) == []


def test_shutdown(manifests: Manifests, celery_conf: dict[str, Any]) -> None:
    assert check_shutdown(manifests, celery_conf, gunicorn_conf.graceful_timeout) == []


def test_memory(manifests: Manifests) -> None:
    assert check_memory(manifests) == []


def test_autoscaling(manifests: Manifests) -> None:
    assert check_autoscaling(manifests) == []


def test_metric_references(reference_texts: dict[str, str], app: Any) -> None:
    assert "depthfleet_items_pending" in reference_texts["docs/operations.md"]
    assert check_metric_references(reference_texts, metric_names(), app) == []


def test_celery_sends_task_events(celery_conf: dict[str, Any]) -> None:
    """Flower and celery-exporter read Celery's task events: they must stay on."""
    assert celery_conf["worker_send_task_events"] and celery_conf["task_send_sent_event"]


def test_every_check_can_fail(manifests: Manifests, app: Any, worker_routes: dict[str, Any],
                              celery_conf: dict[str, Any]) -> None:
    """Each check, given a broken copy of the real manifests, reports a problem."""

    def broken(edit: Callable[[Manifests], object]) -> Manifests:
        data = copy.deepcopy(manifests)
        edit(data)
        return data

    def api(data: Manifests) -> dict[str, Any]:
        return container(deployment(data, "api"))

    def worker(data: Manifests) -> dict[str, Any]:
        return container(deployment(data, "worker"))

    def config(data: Manifests) -> dict[str, str]:
        return named(data, "ConfigMap", "depthfleet")["data"]

    def trigger(data: Manifests) -> dict[str, str]:
        return next(documents(data, "ScaledObject"))["spec"]["triggers"][0]["metadata"]

    known = setting_names()
    images = image_names()
    cases = {
        "untyped document": check_structure(broken(lambda d: d["k8s/api.yaml"][0].pop("kind"))),
        "file outside kustomization": check_structure({**manifests, "k8s/extra.yaml": []}),
        "wrong image": check_images_and_commands(broken(
            lambda d: api(d).update(image="registry.local/depthfleet:1")), images),
        "wrong command": check_images_and_commands(broken(
            lambda d: worker(d).update(command=["depthfleet", "api"])), images),
        "bad flag": check_images_and_commands(broken(
            lambda d: api(d)["command"].append("--no-such-flag")), images),
        "api on loopback": check_images_and_commands(broken(
            lambda d: api(d).update(command=["depthfleet", "api", "--port", "8000"])), images),
        "api port": check_ports(broken(lambda d: api(d)["ports"][0].update(containerPort=9000))),
        "metrics port": check_ports(broken(
            lambda d: config(d).update(DEPTHFLEET_METRICS_PORT="9999"))),
        "metrics off": check_ports(broken(lambda d: config(d).update(DEPTHFLEET_METRICS_PORT="0"))),
        "service port": check_ports(broken(lambda d: next(documents(d, "Service"))["spec"][
            "ports"][0].update(targetPort="web"))),
        "service selector": check_ports(broken(lambda d: next(documents(d, "Service"))["spec"][
            "selector"].update(tier="nothing"))),
        "unknown setting": check_settings(broken(
            lambda d: config(d).update(DEPTHFLEET_NO_SUCH=1)), known),
        "bad setting value": check_settings(broken(
            lambda d: config(d).update(DEPTHFLEET_ITEMS_PER_TASK="many")), known),
        "missing secret": check_settings(broken(
            lambda d: api(d)["envFrom"][2]["secretRef"].update(name="nope")), known),
        "keys in worker": check_settings(broken(lambda d: worker(d)["envFrom"].append(
            {"secretRef": {"name": "depthfleet-api"}})), known),
        "cpu mismatch": check_settings(broken(
            lambda d: worker(d)["resources"]["requests"].update(cpu="4")), known),
        "probe route": check_probes(broken(
            lambda d: api(d)["readinessProbe"]["httpGet"].update(path="/ready")), app, worker_routes),
        "probe needs key": check_probes(broken(
            lambda d: api(d)["livenessProbe"]["httpGet"].update(path="/v1/jobs/x")), app,
            worker_routes),
        "worker route": check_probes(broken(
            lambda d: worker(d)["livenessProbe"]["httpGet"].update(path="/live")), app,
            worker_routes),
        "probe port": check_probes(broken(
            lambda d: worker(d)["readinessProbe"]["httpGet"].update(port=8000)), app, worker_routes),
        "no TERM first": check_shutdown(broken(lambda d: worker(d)["lifecycle"]["preStop"][
            "exec"].update(command=["/bin/sh", "-c", "sleep 1; kill -TERM 1"])), celery_conf, 30),
        "grace too short": check_shutdown(broken(lambda d: pod(deployment(d, "worker")).update(
            terminationGracePeriodSeconds=60)), celery_conf, 30),
        "early acks": check_shutdown(manifests, {**celery_conf, "task_acks_late": False}, 30),
        "api grace": check_shutdown(manifests, celery_conf, 60),
        "memory limit": check_memory(broken(
            lambda d: config(d).update(DEPTHFLEET_MAX_PIXELS="64000000"))),
        "memory request": check_memory(broken(
            lambda d: worker(d)["resources"]["requests"].update(memory="256Mi"))),
        "scaler target": check_autoscaling(broken(lambda d: next(documents(d, "ScaledObject"))[
            "spec"]["scaleTargetRef"].update(name="depthfleet-api"))),
        "scale to zero": check_autoscaling(broken(lambda d: next(documents(d, "ScaledObject"))[
            "spec"].update(minReplicaCount=0))),
        "scaler redis": check_autoscaling(broken(
            lambda d: trigger(d).update(address="redis:6379"))),
        "scaler db": check_autoscaling(broken(lambda d: trigger(d).update(databaseIndex="3"))),
        "scaler list": check_autoscaling(broken(lambda d: trigger(d).update(listName="celery"))),
        "unknown metric": check_metric_references({"x": "rate(depthfleet_items_done[5m])"},
                                                  metric_names(), app),
        "unknown route": check_metric_references({"x": 'x{route="/v1/job"}'}, metric_names(), app),
    }
    assert not [name for name, problems in cases.items() if not problems]
