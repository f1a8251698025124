"""Every overlay renders, validates against the Kubernetes 1.33 schemas (strict: no unknown
fields), passes checkov with 0 failed checks (each skip carries its reason), and wires what the
design needs: selectors that match the pods, restricted security, probes, GPU and /dev/shm."""

import json
import subprocess

import pytest
from deploy_tools import OVERLAYS, objects, one, tool

from service.router_launch import RouterConfig
from service.routing_key import ROUTING_KEY_HEADER

KUBERNETES_VERSION = "1.33.0"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}  # no schema in kubernetes-validate: checked below


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schema(rendered, overlay):
    result = subprocess.run(
        [tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", str(rendered[overlay])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    docs = objects(rendered[overlay])
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    assert len(passed) == len([d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS])


def test_checkov_reports_no_failed_check_and_every_skip_has_a_reason(rendered):
    args = [tool("checkov"), "--framework", "kubernetes", "--skip-download", "--quiet", "-o", "json"]
    for path in rendered.values():
        args += ["-f", str(path)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
    assert report["summary"]["passed"] > 100  # it did check the objects
    for check in report["results"].get("skipped_checks", []):
        assert (check["check_result"].get("suppress_comment") or "").strip(), check["check_id"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_pdb_hpa_and_network_policy_target_the_pods(rendered, overlay):
    docs = objects(rendered[overlay])
    deployment = one(docs, "Deployment", "vlcache-serve")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    def selects(selector):
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    assert selects(deployment["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "Service", "vlcache-serve")["spec"]["selector"])
    assert selects(one(docs, "PodDisruptionBudget", "vlcache-serve")["spec"]["selector"]["matchLabels"])
    assert selects(one(docs, "NetworkPolicy", "vlcache-serve")["spec"]["podSelector"]["matchLabels"])
    assert one(docs, "HorizontalPodAutoscaler", "vlcache-serve")["spec"]["scaleTargetRef"]["name"] == "vlcache-serve"
    monitor = one(docs, "ServiceMonitor", "vlcache-serve")
    assert selects(monitor["spec"]["selector"]["matchLabels"])
    assert {d["metadata"].get("namespace") for d in docs} == {"vlcache"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_restricted(rendered, overlay):
    for deployment in [d for d in objects(rendered[overlay]) if d["kind"] == "Deployment"]:
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert {"readinessProbe", "livenessProbe"} <= container.keys()
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            assert mounts["tmp"]["mountPath"] == "/tmp" and "tmp" in writable  # the only writable place


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_readiness_is_ready_and_the_api_key_comes_from_a_secret(rendered, overlay):
    pod = one(objects(rendered[overlay]), "Deployment", "vlcache-serve")["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    (key,) = [e for e in gateway["env"] if e["name"] == "VLCACHE_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "vlcache-api-key"
    sglang = next(c for c in pod["containers"] if c["name"] == "sglang")
    assert "--radix-cache-backend" in sglang["args"] and sglang["startupProbe"]["failureThreshold"] >= 60


def test_gpu_overlay_requests_a_gpu_and_a_memory_backed_shm(rendered):
    pod = one(objects(rendered["gpu"]), "Deployment", "vlcache-serve")["spec"]["template"]["spec"]
    sglang = next(c for c in pod["containers"] if c["name"] == "sglang")
    assert sglang["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {m["mountPath"] for m in sglang["volumeMounts"]} >= {"/dev/shm", "/models/model"}
    assert ":gpu" in sglang["image"] or "gpu-" in sglang["image"]


def test_cpu_overlay_runs_the_cpu_engine_on_the_embedded_model(rendered):
    pod = one(objects(rendered["cpu"]), "Deployment", "vlcache-serve")["spec"]["template"]["spec"]
    sglang = next(c for c in pod["containers"] if c["name"] == "sglang")
    assert "nvidia.com/gpu" not in sglang["resources"]["limits"]
    assert {"--device", "cpu", "--disable-overlap-schedule"} <= set(sglang["args"])
    assert {"name": "SGLANG_USE_CPU_ENGINE", "value": "1"} in sglang["env"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]  # the model is in the image


def test_router_component_points_the_gateway_at_the_router_and_opens_the_engine_to_it(rendered):
    docs = objects(rendered["cpu-router"])
    gateway_config = one(docs, "ConfigMap", "vlcache-gateway")["data"]
    assert gateway_config["VLCACHE_BACKEND_URL"] == "http://vlcache-router:30000"
    router = one(docs, "Deployment", "vlcache-router")["spec"]["template"]["spec"]["containers"][0]
    args = router["args"]
    assert router["command"] == ["smg", "launch"]
    assert args[args.index("--policy") + 1] == "round_robin"
    # sticky sessions on the header the gateways send their chats' routing keys in
    assert "--sticky-sessions" in args
    assert args[args.index("--routing-key-headers") + 1] == gateway_config["VLCACHE_ROUTING_KEY_HEADER"]
    assert gateway_config["VLCACHE_ROUTING_KEY_HEADER"] == ROUTING_KEY_HEADER
    # the health checks the integration tier runs (service/router_launch.py): a busy CPU worker stays in
    tested = RouterConfig(["http://w:1"], "/m").argv()
    for flag in ("--health-check-timeout-secs", "--health-failure-threshold", "--health-success-threshold"):
        assert args[args.index(flag) + 1] == tested[tested.index(flag) + 1], flag
    # SMG's Prometheus series are scraped like the gateway's: Service port -> container port -> flag
    service = one(docs, "Service", "vlcache-router")
    monitor = one(docs, "ServiceMonitor", "vlcache-router")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (scraped,) = [p for p in service["spec"]["ports"] if p["name"] == monitor["spec"]["endpoints"][0]["port"]]
    (container_port,) = [p for p in router["ports"] if p["name"] == scraped["targetPort"]]
    assert str(container_port["containerPort"]) == args[args.index("--prometheus-port") + 1]
    assert ":cpu" in router["image"] or "cpu-" in router["image"]
    router_labels = one(docs, "Deployment", "vlcache-router")["spec"]["template"]["metadata"]["labels"]
    assert all(router_labels.get(k) == v for k, v in service["spec"]["selector"].items())
    sglang = one(docs, "Deployment", "vlcache-serve")["spec"]["template"]["spec"]["containers"][0]
    assert sglang["args"][sglang["args"].index("--host") + 1] == "0.0.0.0"
    ingress = one(docs, "NetworkPolicy", "vlcache-router-to-engines")["spec"]["ingress"][0]
    assert ingress["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "router"}
