"""deploy/kubernetes/ and the Dockerfile, checked without a Kubernetes cluster: the manifests
render (kustomize) and validate against Kubernetes' schemas, the Dockerfile lints and copies
what pip needs, and the start commands of the manifests run on this machine as a pod runs
them. And what they need of aray: a head joined by its name, the node's own address, the
health checks, --min-nodes and ``aray status --wait``, the warning of a small /dev/shm."""

from __future__ import annotations

import asyncio
import doctest
import importlib
import logging
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import descendants, wait_gone, wait_until, watch_root
from test_cli import free_port

from aray import _protocol as P
from aray._link import Server, connect
from aray._netaddr import (
    LOOPBACK,
    DialResolver,
    choose_node_ip,
    default_node_ip,
    node_ip_for,
    route_source,
)
from aray._shmcheck import shm_warning

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "deploy" / "kubernetes"
COMPONENTS = sorted(p.name for p in (BASE / "components").iterdir() if p.is_dir())
KUBECTL = shutil.which("kubectl")
HADOLINT = shutil.which("hadolint", path=os.path.dirname(sys.executable)) or shutil.which(
    "hadolint")
ARAY = [sys.executable, "-m", "aray"]
#: the env variable that carries the number of each named container port
PORT_ENV = {"head": "HEAD_PORT", "dashboard": "DASHBOARD_PORT", "agent": "AGENT_PORT"}


# --- rendering ----------------------------------------------------------------------------


def kustomize(path: Path) -> list[dict]:
    """What ``kubectl apply -k path`` would apply."""
    out = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def load_base(path: Path) -> list[dict]:
    """Without kubectl: the base's resources, as its kustomization.yaml lists them, with
    its images set (all kustomize does to a base of plain resources)."""
    kustomization = yaml.safe_load((path / "kustomization.yaml").read_text())
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i.get('newTag', 'latest')}"
              for i in kustomization.get("images", [])}
    docs = [doc for name in kustomization["resources"]
            for doc in yaml.safe_load_all((path / name).read_text()) if doc]
    for doc in docs:
        if doc["kind"] == "Deployment":
            spec = doc["spec"]["template"]["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                container["image"] = images.get(container["image"], container["image"])
    return docs


def render_base() -> list[dict]:
    return kustomize(BASE) if KUBECTL else load_base(BASE)


def overlay(tmp_path: Path, components: list[str]) -> Path:
    """A user's overlay of the base with some of its components (kustomize wants relative
    paths)."""
    base = os.path.relpath(BASE, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [base], "components": [f"{base}/components/{c}" for c in components]}))
    return tmp_path


def find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_spec(docs: list[dict], name: str) -> dict:
    return find(docs, "Deployment", name)["spec"]["template"]["spec"]


def env_entry(container: dict, name: str) -> dict:
    return next(e for e in container["env"] if e["name"] == name)


# --- what the kubelet does with a container ------------------------------------------------

SUFFIXES = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "m": 1e-3}


def quantity(text) -> float:
    """A Kubernetes quantity ("2", "500m", "4Gi") as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert match, text
    return float(match[1]) * SUFFIXES.get(match[2], 1)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in a container's args: a variable of its env
    is replaced, ``$$`` is a ``$``, and anything else stays as written."""
    def one(match):
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(container: dict, pod_ip: str, secret_values: dict,
                  overrides: dict[str, str]) -> dict[str, str]:
    """The env a container gets (its values, the downward API, Secrets), then
    ``overrides``: what this machine needs instead (ports, host names)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            value = str(entry["value"])
        else:
            source = entry["valueFrom"]
            if "fieldRef" in source:
                assert source["fieldRef"]["fieldPath"] == "status.podIP", source
                value = pod_ip
            elif "resourceFieldRef" in source:
                ref = source["resourceFieldRef"]
                assert ref["containerName"] == container["name"], ref
                kind, resource = ref["resource"].split(".")
                amount = quantity(container["resources"][kind][resource])
                value = str(math.ceil(amount / quantity(ref.get("divisor", "1"))))
            else:
                ref = source["secretKeyRef"]
                value = secret_values[ref["name"]][ref["key"]]
        env[entry["name"]] = expand(value, env)
    for name, value in overrides.items():
        assert name in env, f"{container['name']} has no env {name}"
        env[name] = value
    return env


def command(container: dict, env: dict[str, str]) -> list[str]:
    """The container's command line (the image's entrypoint, tini, runs it), for here."""
    args = [expand(arg, env) for arg in container["args"]]
    unexpanded = [arg for arg in args if "$(" in arg]
    assert not unexpanded, f"args with no env variable of that name: {unexpanded}"
    assert args[0] == "aray", args
    return [*ARAY, *args[1:]]


def probe(port: int, path: str) -> tuple[int, str]:
    """An HTTP GET as the kubelet's httpGet probe makes it: (status, body); (0, "") when
    nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, ""


# --- the manifests ------------------------------------------------------------------------


def test_the_manifests_validate_against_kubernetes_schemas(tmp_path):
    import kubernetes_validate

    renders = {"base": render_base()}
    if KUBECTL:
        renders["with every component"] = kustomize(overlay(tmp_path, COMPONENTS))
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in renders["base"])
    assert kinds == [("Deployment", "aray-head"), ("Deployment", "aray-worker"),
                     ("NetworkPolicy", "aray"), ("Service", "aray-head")]
    for what, docs in renders.items():
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(),
                                             strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{what}: {doc['kind']} {doc['metadata']['name']}: {exc}")
    if not KUBECTL:
        pytest.skip("kubectl is not installed: validated the base's files as they are; the "
                    "components need kustomize (kubectl kustomize) to render")


def test_the_manifests_fit_together():
    docs = render_base()
    head, worker = pod_spec(docs, "aray-head"), pod_spec(docs, "aray-worker")
    service = find(docs, "Service", "aray-head")
    head_deployment = find(docs, "Deployment", "aray-head")
    assert head_deployment["spec"]["replicas"] == 1
    assert head_deployment["spec"]["strategy"]["type"] == "Recreate"  # never two heads
    # the Service reaches the head pod, ready or not (it is ready once workers joined)
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = head_deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    head_ports = {p["name"]: p["containerPort"] for p in head["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"head", "dashboard"}
    for spec in (head, worker):
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"] + spec.get("initContainers", []):
            token = env_entry(container, "ARAY_TOKEN")["valueFrom"]["secretKeyRef"]
            assert token == {"name": "aray-token", "key": "token"}, container["name"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for name, number in ports.items():  # what the command listens on
            assert env[PORT_ENV[name]] == str(number), name
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            check = container[kind]["httpGet"]
            assert check["port"] in ports and check["path"] in ("/healthz", "/readyz"), kind
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        # the object store: /dev/shm in memory, no larger than the store asks
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        assert int(env["OBJECT_STORE_BYTES"]) <= quantity(shm["sizeLimit"])
        assert quantity(shm["sizeLimit"]) < quantity(container["resources"]["limits"]["memory"])
        # CPUs and memory of the limits, by the downward API
        for name, resource in (("NUM_CPUS", "limits.cpu"), ("MEMORY_BYTES", "limits.memory")):
            ref = env_entry(container, name)["valueFrom"]["resourceFieldRef"]
            assert ref["resource"] == resource and ref["containerName"] == container["name"]
        assert "--num-cpus=$(NUM_CPUS)" in container["args"]
        assert "--memory=$(MEMORY_BYTES)" in container["args"]
        assert "--num-gpus=$(NUM_GPUS)" in container["args"]
    # workers join by the Service's name, at its port
    worker_env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert worker_env["HEAD_SERVICE"] == service["metadata"]["name"]
    service_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "head")
    assert worker_env["HEAD_PORT"] == str(service_port) == str(head_ports["head"])
    assert "--address=$(HEAD_SERVICE):$(HEAD_PORT)" in worker["containers"][0]["args"]
    assert not any(a.startswith("--node-ip-address") for a in worker["containers"][0]["args"])
    assert worker["initContainers"][0]["args"][:3] == ["aray", "status", "--wait=1"]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: the components need "
                    "kustomize (kubectl kustomize) to render")
def test_the_components_add_redis_storage_and_gpus(tmp_path):
    docs = kustomize(overlay(tmp_path, ["redis-storage", "gpu-workers"]))
    head = pod_spec(docs, "aray-head")["containers"][0]
    storage = env_entry(head, "ARAY_STORAGE")["valueFrom"]["secretKeyRef"]
    assert storage == {"name": "aray-storage", "key": "url"}
    assert env_entry(head, "ARAY_TOKEN")  # the base's env is kept
    worker = pod_spec(docs, "aray-worker")["containers"][0]
    assert env_entry(worker, "NUM_GPUS")["value"] == str(
        worker["resources"]["limits"]["nvidia.com/gpu"])
    plain = render_base()
    assert not any(e["name"] == "ARAY_STORAGE"
                   for e in pod_spec(plain, "aray-head")["containers"][0]["env"])


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed: an overlay needs "
                    "kustomize (kubectl kustomize) to render")
def test_the_overlay_of_the_docs_renders_and_validates(tmp_path):
    import kubernetes_validate

    page = (ROOT / "docs" / "kubernetes.md").read_text()
    (block,) = [b for b in re.findall(r"^```yaml\n(.*?)^```", page, re.S | re.M)
                if "kind: Kustomization" in b]
    (tmp_path / "kustomization.yaml").write_text(
        block.replace("../aray/deploy/kubernetes", os.path.relpath(BASE, tmp_path)))
    docs = kustomize(tmp_path)
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(),
                                     strict=True)
        assert doc["metadata"]["namespace"] == "ml"
    head, worker = pod_spec(docs, "aray-head"), pod_spec(docs, "aray-worker")
    assert env_entry(head["containers"][0], "MIN_NODES")["value"] == "9"
    assert env_entry(head["containers"][0], "ARAY_STORAGE")
    assert find(docs, "Deployment", "aray-worker")["spec"]["replicas"] == 8
    container = worker["containers"][0]
    assert container["image"] == "registry.example.com/aray:0.1.0"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
    shm = next(v for v in worker["volumes"] if v["name"] == "dshm")["emptyDir"]
    assert int(env_entry(container, "OBJECT_STORE_BYTES")["value"]) == quantity(
        shm["sizeLimit"])
    assert any(v["name"] == "tmp" for v in worker["volumes"])  # the base's, kept


# --- the image ----------------------------------------------------------------------------


def dockerfile_copies() -> list[str]:
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def test_the_dockerfile_lints():
    if HADOLINT is None:
        pytest.skip("hadolint is not installed (the test extras bring it on x86-64 Linux)")
    proc = subprocess.run([HADOLINT, str(ROOT / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 1000" in text and "pip install --no-cache-dir ." in text


def test_the_dockerfile_copies_all_that_pip_needs(tmp_path):
    """What the image's COPY lines bring (as Docker copies them: links as links) builds a
    wheel with all of aray in it."""
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    context = tmp_path / "context"
    context.mkdir()
    for source in dockerfile_copies():
        assert source not in ignored, f"{source} is copied but .dockerignore leaves it out"
        path = ROOT / source
        if path.is_dir():
            shutil.copytree(path, context / source, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, context / source)
    # (with build isolation, as `pip install .` in the image: pyproject.toml's setuptools)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w",
                           str(tmp_path / "wheel"), "."],
                          capture_output=True, text=True, timeout=300, cwd=context)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    import zipfile

    (wheel,) = (tmp_path / "wheel").glob("aray-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("aray/cli.py", "aray/_netaddr.py", "aray/node/agent.py",
                   "aray/store/shm.py", "aray/_head/static/index.html"):
        assert needed in names, needed


def _docker_builds() -> str:
    """Why the image cannot be built here ("" when it can)."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return "docker's daemon does not run here"
    base = next(line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
                if line.startswith("FROM "))
    if subprocess.run([docker, "image", "inspect", base], capture_output=True,
                      timeout=30).returncode != 0:
        return f"the base image {base} is not here, and no registry of images is reachable"
    return ""


def test_the_image_builds_and_runs_aray():
    why = _docker_builds()
    if why:
        pytest.skip(f"not building the image: {why}")
    tag = f"aray-test:{secrets.token_hex(4)}"
    try:
        build = subprocess.run(["docker", "build", "-t", tag, str(ROOT)], capture_output=True,
                               text=True, timeout=900)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        run = subprocess.run(["docker", "run", "--rm", "--network", "none", tag, "aray",
                              "--version"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.startswith("aray "), run.stderr
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)


# --- the manifests' commands, run here ----------------------------------------------------


class Pods:
    """The containers of the manifests, run here as processes, with a session root of
    their own; ended (SIGTERM, as the kubelet does) by :meth:`stop`."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="aray-k-")
        self.procs: list[tuple[subprocess.Popen, int]] = []

    def env(self, container_env: dict[str, str]) -> dict[str, str]:
        return {**os.environ, **container_env, "ARAY_SESSION_ROOT": self.root}

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """A container whose command is ``aray start --block``: returns once its node runs."""
        err = open(os.path.join(self.root, f"stderr-{len(self.procs)}"), "w+")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True,
                                env=self.env(env))
        proc.stderr_file = err  # type: ignore[attr-defined]
        line = proc.stdout.readline()
        if "Started an aray" not in line:
            proc.wait(30)
            err.seek(0)
            pytest.fail(f"{argv} did not start: {line}{err.read()}")
        node_pid = int(line.split("(pid ")[1].split(")")[0])
        self.procs.append((proc, node_pid))
        return proc

    def run(self, argv: list[str], env: dict[str, str], timeout: float = 60):
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=self.env(env))

    def stop(self, proc: subprocess.Popen) -> int:
        """SIGTERM, as the kubelet ends a container; its node and workers go with it."""
        node_pid = next(pid for p, pid in self.procs if p is proc)
        pids = [node_pid, *descendants(node_pid)]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        assert wait_gone(pids) == [], "the node outlived its container's command"
        proc.stdout.close()
        proc.stderr_file.close()  # type: ignore[attr-defined]
        return code

    def stop_all(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None or not proc.stdout.closed:
                self.stop(proc)
        watch_root(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


DRIVER = """
import aray
from aray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

aray.init(address="auto")

@aray.remote(num_cpus=1)
def where():
    return aray.get_runtime_context().get_node_id()

nodes = [n for n in aray.nodes() if n["Alive"]]
ran = aray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
    n["NodeID"], soft=False)).remote() for n in nodes])
print("RAN", len(nodes), sorted(ran) == sorted(n["NodeID"] for n in nodes))
print("ADDRESSES", sorted(n["NodeManagerAddress"] for n in nodes))
"""


@pytest.mark.slow
def test_the_manifests_start_commands_run_here(tmp_path):
    """The head's, the worker's init container's and the worker's commands, as the
    manifests write them, with the values a pod would get; only what this machine needs
    differs: free loopback ports, and ``localhost`` for the Service's name."""
    docs = render_base()
    head_spec, worker_spec = pod_spec(docs, "aray-head"), pod_spec(docs, "aray-worker")
    head_c, init_c, worker_c = (head_spec["containers"][0], worker_spec["initContainers"][0],
                                worker_spec["containers"][0])
    for container in (head_c, worker_c):  # one CPU each, as an overlay would set (2 cores)
        container["resources"]["limits"].update(cpu="1", memory="1Gi")
    token = secrets.token_hex(16)
    values = {"aray-token": {"token": token}}
    head_port, head_agent, worker_agent = free_port(), free_port(), free_port()
    head_env = container_env(head_c, LOOPBACK, values, {
        "HEAD_PORT": str(head_port), "DASHBOARD_PORT": str(free_port()),
        "DASHBOARD_HOST": LOOPBACK, "AGENT_PORT": str(head_agent), "MIN_NODES": "2",
        "OBJECT_STORE_BYTES": str(64 * 2**20)})
    assert head_env["NUM_CPUS"] == "1" and head_env["MEMORY_BYTES"] == str(2**30)
    assert head_env["ARAY_TOKEN"] == token
    service = {"HEAD_SERVICE": "localhost", "HEAD_PORT": str(head_port)}
    init_env = container_env(init_c, LOOPBACK, values, service)
    worker_env = container_env(worker_c, LOOPBACK, values, {
        **service, "AGENT_PORT": str(worker_agent), "OBJECT_STORE_BYTES": str(64 * 2**20)})
    ports = {"head": {"head": head_port, "agent": head_agent},
             "worker": {"agent": worker_agent}}

    def probes(container: dict, which: dict) -> dict[str, tuple[int, str]]:
        return {kind: probe(which[container[kind]["httpGet"]["port"]],
                            container[kind]["httpGet"]["path"])
                for kind in ("startupProbe", "livenessProbe", "readinessProbe")}

    pods = Pods()
    try:
        # the worker pod's init container may start first: it waits for the head
        init = subprocess.Popen(command(init_c, init_env), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=pods.env(init_env))
        head = pods.start(command(head_c, head_env), head_env)
        out, err = init.communicate(timeout=60)
        assert init.returncode == 0 and "1 node alive" in out, out + err
        head_probes = probes(head_c, ports["head"])
        assert head_probes["livenessProbe"] == head_probes["startupProbe"] == (200, "ok\n")
        assert head_probes["readinessProbe"] == (503, "waiting for nodes\n")  # 1 of 2 nodes
        waited = pods.run([*ARAY, "status", "--wait", "2", "--timeout", "1", "--address",
                           f"localhost:{head_port}"], init_env)
        assert waited.returncode == 1, waited.stdout + waited.stderr
        assert waited.stderr.strip() == ("aray status: timed out after 1 s waiting for 2 "
                                         "nodes: 1 alive")

        worker = pods.start(command(worker_c, worker_env), worker_env)
        wait_until(lambda: probe(head_port, "/readyz")[0] == 200, 30,
                   message="the head ready with 2 nodes")
        assert set(probes(worker_c, ports["worker"]).values()) == {(200, "ok\n"),
                                                                   (200, "ready\n")}
        status = pods.run([*ARAY, "status", "--wait", "2", "--timeout", "30", "--address",
                           f"localhost:{head_port}"], init_env)
        assert status.returncode == 0 and "2 nodes alive" in status.stdout, status.stderr
        # each node offers the CPUs and memory of its limits (1 and 1 GiB)
        assert re.search(r"CPU +0 / 2\n", status.stdout), status.stdout
        assert re.search(r"memory +2\.00 GiB\n", status.stdout), status.stdout
        script = tmp_path / "driver.py"
        script.write_text(textwrap.dedent(DRIVER))
        ran = pods.run([sys.executable, str(script)], {}, timeout=90)
        assert "RAN 2 True" in ran.stdout, ran.stdout + ran.stderr
        # the worker found its own address on the route to the head: loopback here
        assert "ADDRESSES ['127.0.0.1', '127.0.0.1']" in ran.stdout

        # the head pod is replaced: the same command, the same name and port
        assert pods.stop(head) == 0
        head = pods.start(command(head_c, head_env), head_env)
        workers = [worker]

        def rejoined():
            if workers[-1].poll() is not None:  # it stopped with its head: the kubelet
                assert workers[-1].returncode == 1  # sees it fail, and starts it again
                pods.stop(workers[-1])
                workers.append(pods.start(command(worker_c, worker_env), worker_env))
            return probe(head_port, "/readyz")[0] == 200

        wait_until(rejoined, 60, interval=0.2, message="the worker in the new head's cluster")
        worker = workers[-1]
        again = pods.run([*ARAY, "status", "--wait", "2", "--timeout", "60", "--address",
                          f"localhost:{head_port}"], init_env, timeout=90)
        assert again.returncode == 0 and "2 nodes alive" in again.stdout, again.stderr
        for proc in (worker, head):
            assert pods.stop(proc) == 0
    finally:
        pods.stop_all()


# --- what the manifests need of aray ------------------------------------------------------


@pytest.mark.parametrize("module", ["aray._netaddr", "aray._health", "aray._shmcheck"])
def test_docstring_examples(module):
    found = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert found.failed == 0 and found.attempted > 0


def test_the_node_address_is_the_one_on_the_route_to_the_head():
    assert route_source("127.0.0.1") == "127.0.0.1"
    assert route_source("127.0.0.2", 6379) in ("127.0.0.1", "127.0.0.2")
    # a head on loopback (by name too): a cluster of this machine, on 127.0.0.1
    assert node_ip_for("localhost") == node_ip_for("127.0.0.5") == LOOPBACK
    assert default_node_ip("") == default_node_ip("tcp://localhost:6379") == LOOPBACK
    # elsewhere: the source address of the route to the head's first address
    asked = []
    assert choose_node_ip(["10.96.0.10", "10.96.0.11"],
                          lambda ip: asked.append(ip) or "10.244.3.9") == "10.244.3.9"
    assert asked == ["10.96.0.10"]
    with pytest.raises(ValueError, match="resolves to no address"):
        choose_node_ip([])
    try:
        assert route_source("::1") == "::1"
    except OSError:  # a machine without IPv6
        pass


def test_shm_warning_says_what_to_do():
    gib, mib = 2**30, 2**20
    asked = shm_warning(2 * gib, True, free=64 * mib, memory=16 * gib)
    assert asked.startswith("the object store was asked for 2.00 GiB, but /dev/shm has "
                            "64 MiB free")
    assert "sizeLimit" in asked and "--shm-size" in asked and "--object-store-memory" in asked
    assert shm_warning(gib, True, free=2 * gib, memory=16 * gib) == ""
    # the default store, cut to what a container's /dev/shm holds
    cut = shm_warning(64 * mib, False, free=64 * mib, memory=16 * gib)
    assert cut.startswith("the object store has only 64 MiB") and "4.80 GiB" in cut
    assert shm_warning(int(4.8 * gib), False, free=8 * gib, memory=16 * gib) == ""
    assert shm_warning(gib, True, free=0, memory=16 * gib) == ""  # /dev/shm unreadable


def test_aray_start_warns_of_a_small_dev_shm():
    """`aray start` says so, on stderr (a pod's log), before it starts a node whose store
    /dev/shm cannot hold. (Here the node then fails at once: its port is taken, so no
    store that large is ever made.)"""
    import socket

    root = tempfile.mkdtemp(prefix="aray-s-")  # short: it holds unix sockets
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        asked = shutil.disk_usage("/dev/shm").free + 2**30
        proc = subprocess.run([*ARAY, "start", "--head", "--port",
                               str(taken.getsockname()[1]), "--include-dashboard", "false",
                               "--object-store-memory", str(asked)],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, "ARAY_SESSION_ROOT": root})
    watch_root(root)
    shutil.rmtree(root, ignore_errors=True)
    assert proc.returncode == 1 and "is in use" in proc.stderr, proc.stderr
    warning = proc.stderr.splitlines()[0]
    assert warning.startswith("aray start: warning: the object store was asked for "), warning
    assert "/dev/shm has" in warning and "sizeLimit" in warning


def test_min_nodes_is_for_a_head_and_at_least_one(session_root):
    joining = subprocess.run([*ARAY, "start", "--address", "127.0.0.1:1", "--min-nodes", "2"],
                             capture_output=True, text=True, timeout=60)
    assert joining.returncode == 1
    assert "--min-nodes is the head's" in joining.stderr
    zero = subprocess.run([*ARAY, "start", "--head", "--min-nodes", "0"], capture_output=True,
                          text=True, timeout=60)
    assert zero.returncode == 1 and "--min-nodes must be 1 or more" in zero.stderr


def test_status_wait_says_why_it_gave_up(session_root):
    port = free_port()  # nothing listens there
    proc = subprocess.run([*ARAY, "status", "--wait", "1", "--timeout", "1", "--address",
                           f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ARAY_TOKEN": "t"})
    assert proc.returncode == 1
    assert proc.stderr.startswith("aray status: timed out after 1 s waiting for 1 node: the "
                                  f"head did not answer (cannot reach aray at tcp://127.0.0.1:{port}")


# --- links: probes and names --------------------------------------------------------------


def _hello() -> P.Hello:
    return P.Hello(P.PROTOCOL_VERSION, "secret", "core", "test", os.getpid(), {})


async def _serve(port: int = 0) -> Server:
    server = Server("secret", lambda link, hello: {}, name="test")
    server.probes["/healthz"] = lambda: (200, "ok\n")
    await server.start(f"tcp://127.0.0.1:{port}")
    return server


async def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.request(
            method, f"http://127.0.0.1:{port}{path}") as reply:
        return reply.status, await reply.text()


def test_probes_answer_without_a_token_and_nothing_else_does():
    async def main():
        server = await _serve()
        port = int(server.address.rsplit(":", 1)[1])
        try:
            assert await _get(port, "/healthz") == (200, "ok\n")
            assert (await _get(port, "/healthz", "HEAD"))[0] == 200
            assert (await _get(port, "/healthz", "POST"))[0] == 404
            assert (await _get(port, "/readyz"))[0] == 404  # not a probe of this server
            assert (await _get(port, "/link"))[0] == 400  # a link needs its Hello
        finally:
            await server.aclose()

    asyncio.run(main())


def test_each_dial_resolves_the_heads_name_anew(caplog):
    """A link dialled by name resolves it at each dial: a head that comes back (here on
    the same address; on Kubernetes, maybe another) is found by its name."""
    async def main():
        port = free_port()
        server = await _serve(port)
        try:
            for _ in range(2):
                link = await connect(f"tcp://localhost:{port}", _hello())
                await link.aclose()
        finally:
            await server.aclose()
        server = await _serve(port)  # restarted
        try:
            link = await connect(f"tcp://localhost:{port}", _hello())
            await link.aclose()
        finally:
            await server.aclose()

    with caplog.at_level(logging.DEBUG, logger="aray.netaddr"):
        asyncio.run(main())
    resolved = [r.getMessage() for r in caplog.records if r.name == "aray.netaddr"]
    assert resolved == ["resolved localhost to 127.0.0.1"] * 3, resolved


def test_a_name_that_resolves_elsewhere_is_logged(caplog):
    async def main():
        resolver = DialResolver()
        return await resolver.resolve("localhost", 6379)

    DialResolver.last["localhost"] = ["10.244.0.7"]  # what an earlier dial was told
    with caplog.at_level(logging.INFO, logger="aray.netaddr"):
        asyncio.run(main())
    assert "localhost resolves to 127.0.0.1 now (was 10.244.0.7)" in caplog.text
    assert DialResolver.last["localhost"] == ["127.0.0.1"]
