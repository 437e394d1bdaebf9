"""The Kubernetes manifests as a reviewer reads them: each overlay rendered the way
`kubectl apply -k` renders it, then checked object by object. (Schema validation and the
policy check run in the container test: scripts/container-test.sh.)"""

import os
import re

import pytest

from .helpers import OVERLAYS, render_kustomization

APP_COMPONENTS = {"web", "migrate", "prune"}


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict]]:
    return {name: render_kustomization(path) for name, path in OVERLAYS.items()}


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod template) of every object that makes pods."""
    templates = []
    for o in objects:
        spec = o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            templates.append((f"{o['kind']}/{o['metadata']['name']}", spec["template"]))
        elif o["kind"] == "CronJob":
            template = spec["jobTemplate"]["spec"]["template"]
            templates.append((f"CronJob/{o['metadata']['name']}", template))
    return templates


def containers(template: dict) -> list[dict]:
    spec = template["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) matches."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for rule in selector.get("matchExpressions", []):
        key, operator, values = rule["key"], rule["operator"], rule.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def web_container(objects: list[dict]) -> dict:
    deployment = one(objects, "Deployment", "classifier")
    [web] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "web"]
    return web


def test_quick_start_is_a_load_balancer_on_port_80_to_the_pods_plain_http(overlays):
    objects = overlays["quickstart"]
    service = one(objects, "Service", "classifier")
    assert service["spec"]["type"] == "LoadBalancer"
    [port] = service["spec"]["ports"]
    assert port["port"] == 80
    web = web_container(objects)
    [target] = [p for p in web["ports"] if p["name"] == port["targetPort"]]
    config = one(objects, "ConfigMap", "classifier")["data"]
    assert config["GUNICORN_BIND"].endswith(f":{target['containerPort']}")
    assert "GUNICORN_CERTFILE" not in config
    # Answers at http://EXTERNAL-IP/ with no host list to edit once the address is known.
    assert config["DJANGO_ALLOWED_HOSTS"] == "*"


def test_production_serves_tls_on_443_with_explicit_hosts_and_no_database_in_the_cluster(
    overlays,
):
    objects = overlays["production"]
    service = one(objects, "Service", "classifier")
    assert service["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in service["spec"]["ports"]] == [443]
    config = one(objects, "ConfigMap", "classifier")["data"]
    assert config["DJANGO_HTTPS"] == "true"
    assert "*" not in config["DJANGO_ALLOWED_HOSTS"]
    assert "DJANGO_SILENCED_SYSTEM_CHECKS" not in config
    web = web_container(objects)
    [target] = [p for p in web["ports"] if p["name"] == "web"]
    assert config["GUNICORN_BIND"].endswith(f":{target['containerPort']}")
    assert {m["mountPath"] for m in web["volumeMounts"]} >= {
        os.path.dirname(config["GUNICORN_CERTFILE"])
    }
    assert of_kind(objects, "StatefulSet") == []
    assert not any(e["name"] == "DATABASE_URL" for e in web.get("env", []))  # from the Secret


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_load_balancer_keeps_the_clients_own_address(overlays, overlay):
    # The login lockout and the rate limit count by REMOTE_ADDR: it must be the client's.
    service = one(overlays[overlay], "Service", "classifier")
    assert service["spec"]["externalTrafficPolicy"] == "Local"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_an_autoscaler_scales_the_deployment_on_cpu_from_two_pods(overlays, overlay):
    objects = overlays[overlay]
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(objects, "Deployment", "classifier")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["minReplicas"] == 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert 0 < metric["resource"]["target"]["averageUtilization"] < 100
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 60
    # The autoscaler owns the count; a replicas field would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    # The percentage is of the CPU request: it must be there.
    assert web_container(objects)["resources"]["requests"]["cpu"]


def test_quick_start_runs_its_own_postgresql_on_a_volume_claim(overlays):
    objects = overlays["quickstart"]
    statefulset = one(objects, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 1
    [claim] = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    [postgres] = spec["template"]["spec"]["containers"]
    assert re.fullmatch(r"postgres:\d+\.\d+", postgres["image"]), postgres["image"]
    assert claim["metadata"]["name"] in {m["name"] for m in postgres["volumeMounts"]}
    assert "pg_isready" in postgres["readinessProbe"]["exec"]["command"][0]
    env = {e["name"]: e for e in postgres["env"]}
    assert "POSTGRES_PASSWORD" not in env  # read from the mounted Secret instead
    assert env["POSTGRES_PASSWORD_FILE"]["value"].startswith("/etc/postgres/secret/")
    headless = one(objects, "Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(
        {"matchLabels": headless["spec"]["selector"]}, spec["template"]["metadata"]["labels"]
    )


def test_the_apps_database_url_is_composed_from_the_secret_in_every_app_container(overlays):
    objects = overlays["quickstart"]
    for where, template in pod_templates(objects):
        if template["metadata"]["labels"].get("app.kubernetes.io/component") not in APP_COMPONENTS:
            continue
        [app] = template["spec"]["containers"]
        names = [e["name"] for e in app["env"]]
        env = {e["name"]: e for e in app["env"]}
        secret = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (secret["name"], secret["key"]) == ("classifier", "POSTGRES_PASSWORD"), where
        # Expanded by Kubernetes from the variable defined before it.
        assert names.index("POSTGRES_PASSWORD") < names.index("DATABASE_URL"), where
        assert "$(POSTGRES_PASSWORD)@classifier-postgres:5432/" in env["DATABASE_URL"]["value"]


def test_only_the_apps_pods_reach_postgresql(overlays):
    objects = overlays["quickstart"]
    postgres_labels = one(objects, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    [policy] = [
        p
        for p in of_kind(objects, "NetworkPolicy")
        if "Ingress" in p["spec"]["policyTypes"]
        and selects(p["spec"]["podSelector"], postgres_labels)
    ]
    [rule] = policy["spec"]["ingress"]
    assert [(p["port"], p.get("protocol", "TCP")) for p in rule["ports"]] == [(5432, "TCP")]
    [source] = rule["from"]
    assert set(source) == {"podSelector"}  # this namespace's pods only
    admitted = {
        where
        for where, template in pod_templates(objects)
        if selects(source["podSelector"], template["metadata"]["labels"])
    }
    assert admitted == {
        "Deployment/classifier",
        "Job/classifier-migrate",
        "CronJob/classifier-prune",
    }
    assert not selects(source["podSelector"], {"app.kubernetes.io/name": "other", "app": "x"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_meets_pod_security_restricted(overlays, overlay):
    objects = overlays[overlay]
    namespace = one(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    templates = pod_templates(objects)
    assert len(templates) >= 3
    for where, template in templates:
        pod = template["spec"].get("securityContext", {})
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert template["spec"].get("automountServiceAccountToken") is False, where
        for container in containers(template):
            name = f"{where}/{container['name']}"
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            assert not security.get("capabilities", {}).get("add"), name
            assert security.get("readOnlyRootFilesystem") is True, name
            requests = container.get("resources", {}).get("requests", {})
            assert requests.get("cpu"), name
            assert requests.get("memory"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_web_container_is_probed_on_its_web_port(overlays, overlay):
    objects = overlays[overlay]
    web = web_container(objects)
    scheme = "HTTPS" if overlay == "production" else "HTTP"
    for probe, path in (
        ("startupProbe", "/readyz"),
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
    ):
        get = web[probe]["httpGet"]
        assert (get["path"], get["port"], get.get("scheme", "HTTP")) == (path, "web", scheme), probe
    assert web["lifecycle"]["preStop"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_are_in_the_manifests(overlays, overlay):
    objects = overlays[overlay]
    assert of_kind(objects, "Secret") == []
    config = one(objects, "ConfigMap", "classifier")["data"]
    assert not [k for k in config if re.search("PASSWORD|SECRET_KEY|DATABASE_URL|API_KEYS", k)]
    for where, template in pod_templates(objects):
        for container in containers(template):
            for env in container.get("env", []):
                value = env.get("value", "")
                # A URL's password, if any, is a variable the Secret fills in.
                assert not re.search(r"://[^/:@]+:(?!\$\()[^@]+@", value), (where, env)
                secret_name = re.search("PASSWORD|SECRET_KEY|API_KEYS", env["name"])
                if secret_name and not env["name"].endswith("_FILE"):
                    assert "value" not in env, (where, env)
