"""The deployment files (deploy/, .dockerignore, docs/deploy.md) agree with each other and with the server.

No Docker engine or cluster is needed: YAML is parsed, the Dockerfile is read by a small line parser,
haproxy.cfg is checked with ``haproxy -c`` (Debian's package, installed here when missing and allowed),
and every option flag in the docs and manifests must be one that ``launch.py --help`` lists, or one of the
few being added. The container health check script is run against small local servers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
DOCS = REPO / "docs" / "deploy.md"

DRAIN_DEFAULT_S = 30  # --drain_s default (docs/deploy.md); the grace periods must exceed it
PORT = 8081  # the image's EXPOSE and every manifest's port
MODEL_DIR = "/models/vita"
# Options other helpers are adding right now; once in `launch.py --help` they are checked like the others.
PENDING_FLAGS = {"--drain_s", "--allowed_hosts", "--access_token", "--access_token_file"}
# Flags of other tools (docker, compose, systemctl, kubectl) that the docs and comments show.
FOREIGN_FLAGS = {"--gpus", "--shm-size", "--stop-timeout", "--name", "--build-arg", "--build", "--no-deps",
                 "--now", "--from-literal"}
FLAG_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def norm(flag: str) -> str:
    """argparse accepts --max_users and --max-users alike: compare in one spelling."""
    return "--" + flag[2:].replace("-", "_")


# ------------------------------------------------------------------ loading


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def k8s_objects() -> dict[str, dict[str, Any]]:
    """The Kubernetes objects of deploy/k8s/ (not its prometheus/ fragment), by kind."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in load_yaml(path):
            assert doc.get("apiVersion") and doc.get("kind"), f"{path.name}: not a Kubernetes object"
            assert doc["kind"] not in out, f"two {doc['kind']} objects"
            out[doc["kind"]] = doc
    return out


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # also inside a continued instruction, where Docker drops comment lines too
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        instr, _, rest = (buf + line).partition(" ")
        out.append((instr.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continued instruction"
    return out


def arg_value(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in an argument list (``--flag value`` or ``--flag=value``), in either spelling."""
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if norm(name) == norm(flag):
            return value if eq else args[i + 1]
    return None


def seconds(duration: str | int) -> float:
    """A compose duration (``60s``, ``1m30s``) or a number of seconds."""
    if isinstance(duration, int):
        return duration
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unreadable duration {duration!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


def deployment_container() -> dict[str, Any]:
    containers = k8s_objects()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def compose() -> dict[str, Any]:
    (doc,) = load_yaml(DEPLOY / "docker-compose.yml")
    return doc


def compose_replicas() -> dict[str, dict[str, Any]]:
    """The services built from deploy/Dockerfile (merge keys already resolved by the YAML loader)."""
    services = compose()["services"]
    return {name: s for name, s in services.items()
            if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == "deploy/Dockerfile"}


def dockerfile_uid() -> int:
    users = [rest for instr, rest in dockerfile() if instr == "USER"]
    assert users, "the image must not run as root"
    return int(users[-1].split(":")[0])


# ------------------------------------------------------------------ YAML everywhere


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path), f"{path} is empty"


# ------------------------------------------------------------------ Kubernetes


def test_deployment_probes_and_ports() -> None:
    c = deployment_container()
    args = c["args"]
    port = int(arg_value(args, "--port") or 0)
    assert port == PORT
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    tls = "--no-tls" not in args and "--no_tls" not in args
    expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named.get(get["port"], get["port"]) == port, f"{probe} probes another port"
        # The kubelet speaks plain HTTP unless told otherwise: it must match the server's --no-tls.
        assert get.get("scheme", "HTTP") == ("HTTPS" if tls else "HTTP"), probe
    # Liveness must not kill a pod that is still loading its engines: the startup probe covers minutes.
    startup = c["startupProbe"]
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 600


def test_deployment_drains_within_grace_period() -> None:
    spec = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    drain = float(arg_value(deployment_container()["args"], "--drain_s") or DRAIN_DEFAULT_S)
    assert spec["terminationGracePeriodSeconds"] > drain
    assert "lifecycle" not in deployment_container(), "SIGTERM drains by itself: no preStop hook"


def test_deployment_model_is_read_only() -> None:
    c = deployment_container()
    model = arg_value(c["args"], "--model_path")
    assert model == MODEL_DIR
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == model]
    assert mount.get("readOnly") is True
    volumes = {v["name"]: v for v in k8s_objects()["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    claim = volumes[mount["name"]].get("persistentVolumeClaim")
    assert claim is None or claim.get("readOnly") is True


def test_deployment_runs_as_the_images_non_root_user() -> None:
    spec = k8s_objects()["Deployment"]["spec"]["template"]["spec"]
    ctx = {**spec.get("securityContext", {}), **deployment_container().get("securityContext", {})}
    assert ctx["runAsNonRoot"] is True
    assert ctx["runAsUser"] == dockerfile_uid() != 0
    assert ctx.get("allowPrivilegeEscalation") is False


def test_deployment_gets_one_gpu() -> None:
    resources = deployment_container()["resources"]
    # Extended resources: requests and limits must be equal (the API server rejects anything else).
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1


def test_service_and_monitors_select_the_deployment() -> None:
    objs = k8s_objects()
    deployment = objs["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    port_names = {p["name"] for p in deployment_container()["ports"]}

    service = objs["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert all(p["targetPort"] in port_names | {PORT} for p in service["ports"])
    assert service.get("sessionAffinity", "None") == "None"  # WebSocket only: docs/deploy.md

    monitor = objs["PodMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in port_names


def test_plain_scrape_config_selects_the_pods() -> None:
    (doc,) = load_yaml(K8S / "prometheus" / "scrape-config.yaml")
    (job,) = doc["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    labels = k8s_objects()["Deployment"]["spec"]["template"]["metadata"]["labels"]
    keep = {tuple(r["source_labels"]): r["regex"] for r in job["relabel_configs"] if r.get("action") == "keep"}
    assert keep[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == labels["app.kubernetes.io/name"]
    assert keep[("__meta_kubernetes_pod_container_port_name",)] in {p["name"] for p in deployment_container()["ports"]}


# ------------------------------------------------------------------ compose, HAProxy, Prometheus


def haproxy_servers() -> set[str]:
    text = (DEPLOY / "haproxy.cfg").read_text()
    return {m[1] for m in re.finditer(r"^\s*server\s+\S+\s+(\S+)", text, re.MULTILINE)}


def test_compose_replicas() -> None:
    replicas = compose_replicas()
    assert len(replicas) >= 2
    for name, svc in replicas.items():
        args = [str(a) for a in svc["command"]]
        assert "--no-tls" in args, f"{name}: TLS ends at HAProxy"
        assert arg_value(args, "--model_path") == MODEL_DIR
        assert arg_value(args, "--port") == str(PORT)
        assert any(str(v).endswith(f":{MODEL_DIR}:ro") for v in svc["volumes"]), f"{name}: model not read-only"
        drain = float(arg_value(args, "--drain_s") or DRAIN_DEFAULT_S)
        assert seconds(svc["stop_grace_period"]) > drain, f"{name}: Docker would kill it mid-drain"
        assert svc.get("init") is True
    # HAProxy balances over exactly these replicas, Prometheus scrapes exactly these.
    targets = {f"{svc['hostname']}:{PORT}" for svc in replicas.values()}
    assert haproxy_servers() == targets
    (prom,) = load_yaml(DEPLOY / "prometheus.yml")
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert {t for sc in job["static_configs"] for t in sc["targets"]} == targets


def test_compose_mounts_proxy_and_prometheus_config() -> None:
    services = compose()["services"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in services["haproxy"]["volumes"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in services["prometheus"]["volumes"]


def test_haproxy_cfg_key_settings() -> None:
    text = (DEPLOY / "haproxy.cfg").read_text()
    for setting in ("balance leastconn", "option httpchk GET /readyz", "http-check expect status 200",
                    "timeout tunnel", "ssl crt ", "X-Forwarded-Proto https"):
        assert setting in text, setting
    tunnel = re.search(r"timeout tunnel\s+(\d+)([smh])", text)
    assert tunnel and int(tunnel[1]) * {"s": 1, "m": 60, "h": 3600}[tunnel[2]] >= 60, \
        "must outlast Socket.IO's 25 s ping interval with margin"


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The haproxy binary; Debian's package is installed when missing, the test runs as root and apt exists."""

    def find() -> str | None:
        return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)

    if find() is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "haproxy"]
        if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            subprocess.run(install, env=env, capture_output=True, timeout=600)
    found = find()
    if found is None:
        msg = "haproxy is not installed (Debian package `haproxy`), and could not be installed here"
        if in_ci():
            pytest.fail(msg)  # CI must not pass by skipping the config check
        pytest.skip(msg)
    return found


def test_haproxy_cfg_is_valid(haproxy: str, tmp_path: Path) -> None:
    from server.tls import make_self_signed

    cert, key = make_self_signed(tmp_path / "tls", ["localhost"])
    pem = tmp_path / "vita.pem"
    pem.write_text(cert.read_text() + key.read_text())
    cfg = (DEPLOY / "haproxy.cfg").read_text()
    assert "/usr/local/etc/haproxy/certs/vita.pem" in cfg  # where docker-compose.yml mounts the PEM
    checked = tmp_path / "haproxy.cfg"
    checked.write_text(cfg.replace("/usr/local/etc/haproxy/certs/vita.pem", str(pem)))
    run = subprocess.run([haproxy, "-c", "-f", str(checked)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


# ------------------------------------------------------------------ Dockerfile, .dockerignore


def test_dockerfile_builds_cpu_and_gpu_from_one_arg() -> None:
    instrs = dockerfile()
    first_from = next(i for i, (instr, _) in enumerate(instrs) if instr == "FROM")
    global_args = dict(rest.partition("=")[::2] for instr, rest in instrs[:first_from] if instr == "ARG")
    assert global_args.get("EXTRA") in ("cpu", "gpu")

    def resolve(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m[1] or m[2]], text)

    stages: dict[str, str] = {}
    for instr, rest in instrs:
        if instr == "FROM":
            image, _, name = rest.partition(" AS ")
            stages[name.strip() or f"final:{image}"] = image.strip()
    finals = [s for s in stages if s.startswith("final:")]
    assert finals == ["final:base-${EXTRA}"], "the last stage must be picked by EXTRA"
    assert resolve(stages["base-cpu"]).startswith("python:3.11-slim")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", resolve(stages["base-gpu"]))
    runs = " ".join(rest for instr, rest in instrs if instr == "RUN")
    assert "python3.11" in runs  # the CUDA image brings no Python of its own


def test_dockerfile_installs_only_from_pyproject() -> None:
    for instr, rest in dockerfile():
        if instr != "RUN":
            continue
        for cmd in re.split(r"&&|;", rest):
            words = cmd.split()
            if "pip" not in words or "install" not in words[words.index("pip"):]:
                continue
            ok = ('".[$EXTRA]"' in words or "'.[$EXTRA]'" in words  # the project's extra: deps of pyproject
                  or {"--no-deps", "-e", "."} <= set(words)  # the project itself, no dependencies
                  or words[-1] == "pip")  # pip upgrading itself
            assert ok, f"pip install outside pyproject.toml: {cmd.strip()}"
    runs = " ".join(rest for instr, rest in dockerfile() if instr == "RUN")
    assert "engine.gpu_env_check" in runs  # the build fails loudly on a wrong vLLM/torch, like make install


def test_dockerfile_runtime_settings() -> None:
    instrs = dict(dockerfile())  # last of each instruction wins, as in Docker
    assert dockerfile_uid() != 0 and not instrs["USER"].startswith("root")
    assert instrs["EXPOSE"].split() == [str(PORT)]
    assert instrs["STOPSIGNAL"] == "SIGTERM"
    health = instrs["HEALTHCHECK"]
    assert "CMD" in health and "deploy/healthcheck.py" in health
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()
    assert "curl" not in health  # not in the slim image
    cmd = json.loads(instrs["CMD"])
    assert arg_value(cmd, "--model_path") == MODEL_DIR
    assert arg_value(cmd, "--port") == str(PORT)
    assert arg_value(cmd, "--cert") and arg_value(cmd, "--key")  # TLS material mounted at run time


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for these patterns: the last matching line wins; a folder's pattern covers
    everything below it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(p, pat) or (pat.startswith("**/") and fnmatch(p.split("/")[-1], pat[3:]))
               for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_build_needs() -> None:
    patterns = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "launch.py", "server/app.py", "engine/interface.py",
                   "vad/silero.py", "vllm_patches/__init__.py", "static/app.js", "deploy/healthcheck.py"):
        assert (REPO / needed).exists(), needed
        assert not dockerignored(needed, patterns), f".dockerignore drops {needed}"
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "server/__pycache__/app.pyc",
                    "deploy/docker-compose.yml"):
        assert dockerignored(dropped, patterns), f".dockerignore keeps {dropped}"


# ------------------------------------------------------------------ docs and flags


@pytest.fixture(scope="module")
def help_flags() -> set[str]:
    run = subprocess.run([sys.executable, "launch.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    return {norm(f) for f in FLAG_RE.findall(run.stdout)}


def flag_sources() -> dict[str, list[str]]:
    """Every option flag in the docs, the YAML files (comments included) and the image's CMD."""
    out = {str(p.relative_to(REPO)): FLAG_RE.findall(p.read_text()) for p in [DOCS, *yaml_files()]}
    cmd = json.loads(dict(dockerfile())["CMD"])
    out["deploy/Dockerfile CMD"] = [a for a in cmd if a.startswith("--")]
    return out


def test_every_flag_exists(help_flags: set[str]) -> None:
    known = help_flags | {norm(f) for f in PENDING_FLAGS | FOREIGN_FLAGS}
    unknown = {src: sorted({f for f in flags if norm(f) not in known}) for src, flags in flag_sources().items()}
    unknown = {src: flags for src, flags in unknown.items() if flags}
    assert not unknown, f"flags launch.py does not know: {unknown}"


def test_docs_name_real_metrics() -> None:
    source = (REPO / "server" / "metrics.py").read_text()
    defined = set(re.findall(r'"(vita_[a-z_]+)"', source))
    named = set(re.findall(r"\bvita_[a-z_]+", DOCS.read_text()))
    base = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in named}
    assert base, "docs/deploy.md names no metrics"
    assert base <= defined, f"not in server/metrics.py: {sorted(base - defined)}"


def test_docs_stop_timeouts_exceed_drain() -> None:
    text = DOCS.read_text()
    found = [int(v) for v in re.findall(
        r"(?:TimeoutStopSec=|--stop-timeout |stop_grace_period: |terminationGracePeriodSeconds: )(\d+)", text)]
    assert found and all(v > DRAIN_DEFAULT_S for v in found), found


def test_page_is_websocket_only_as_documented() -> None:
    # docs/deploy.md (no sticky sessions) and haproxy.cfg rely on it: long-polling would need stickiness.
    m = re.search(r"transports:\s*\[([^\]]*)\]", (REPO / "static" / "app.js").read_text())
    assert m and [t.strip().strip("'\"") for t in m[1].split(",") if t.strip()] == ["websocket"]
    assert "transports: ['websocket']" in DOCS.read_text()


# ------------------------------------------------------------------ the container health check


def healthcheck_module() -> Any:
    spec = importlib.util.spec_from_file_location("vita_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_reads_the_servers_command_line() -> None:
    url = healthcheck_module().health_url
    assert url(["python", "/app/launch.py", "--model_path", MODEL_DIR]) == f"https://127.0.0.1:{PORT}/healthz"
    assert url(["docker-init", "--", "python", "launch.py", "--port", "9000", "--no-tls"]) == \
        "http://127.0.0.1:9000/healthz"
    assert url(["python", "launch.py", "--port=9001", "--no_tls"]) == "http://127.0.0.1:9001/healthz"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def health_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, type[_Health]]]:
    """A local /healthz server; ``request.param`` True serves it over TLS with a self-signed certificate."""
    handler = type("Health", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if getattr(request, "param", False):
        from server.tls import make_self_signed

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*make_self_signed(tmp_path / "tls", ["localhost"]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="healthz-test", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_healthcheck_plain(health_server: tuple[int, type[_Health]]) -> None:
    hc = healthcheck_module()
    port, handler = health_server
    argv = ["python", "launch.py", "--port", str(port), "--no-tls"]
    assert hc.main(argv) == 0
    handler.status = 503  # an engine died: unhealthy
    assert hc.main(argv) == 1
    assert not hc.healthy(f"https://127.0.0.1:{port}/healthz")  # TLS against plain HTTP fails cleanly


@pytest.mark.parametrize("health_server", [True], indirect=True, ids=["tls"])
def test_healthcheck_tls_self_signed(health_server: tuple[int, type[_Health]]) -> None:
    hc = healthcheck_module()
    port, _ = health_server
    assert hc.main(["python", "launch.py", "--port", str(port)]) == 0


def test_healthcheck_nothing_listening() -> None:
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert healthcheck_module().main(["python", "launch.py", "--port", str(port), "--no-tls"]) == 1
