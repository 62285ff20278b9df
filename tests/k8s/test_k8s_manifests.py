"""The generated Kubernetes objects: valid for today's clusters (the official OpenAPI schemas of
1.35, 1.36 and 1.37, offline, strict: no unknown field) and accepted by the real 1.20 API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from k8s_control_plane import api_client_for, wait_for
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

from modelfleet.errors import ConfigError
from modelfleet.spec import aks_deploy_configuration
from modelfleet.targets.kubernetes import manifests as m

# The newest three releases kubernetes-validate 1.37 ships schemas for (it has 1.35.0, 1.36.0
# and 1.37.0 at the top of utils.all_versions()).
SCHEMA_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")
# networking.k8s.io/v1 (the router's Ingress): served since 1.19
API_VERSIONS = {"v1", "apps/v1", "rbac.authorization.k8s.io/v1", "coordination.k8s.io/v1", "networking.k8s.io/v1"}

MODEL = m.ModelLayout("regressor", 3, (m.ModelFile("model.pkl", "a" * 64), m.ModelFile("sub/vocab.txt", "b" * 64)))


def source(**deploy: Any) -> m.ServiceSource:
    return m.ServiceSource(
        name="scorer",
        deploy=aks_deploy_configuration(**deploy),
        image="registry.example/modelfleet-replica:env-0123abcd",
        entry_script="score.py",
        blob_store="https://blobs.example/ws",
        models=(MODEL,),
        snapshot="c" * 64,
        primary_key="primary-secret-1",
        secondary_key="secondary-secret-2",
    )


CASES = {
    "defaults": source(),
    "limits-gpu-tags": source(
        cpu_cores=0.5,
        memory_gb=1.5,
        cpu_cores_limit=2,
        memory_gb_limit=4,
        gpu_cores=1,
        tags={"team name": "ml", "cost/center": "42"},
        description="the scorer",
        autoscale_enabled=False,
        num_replicas=3,
        success_threshold=2,
        namespace="models",
    ),
    "collects": source(collect_model_data=True),  # the "ship" sidecar and its data folder
}
ROUTERS = {
    lb: m.RouterSource(
        image="registry.example/modelfleet-router:1", load_balancer_type=lb, secret_names=["scorer-keys"]
    )
    for lb in m.LOAD_BALANCER_TYPES
}
TLS_INGRESS = m.RouterSource(
    image="registry.example/modelfleet-router:1",
    load_balancer_type="ClusterIP",
    secret_names=["scorer-keys"],
    port=443,
    tls_digest="0123456789abcdef",
    ingress_class="nginx",
    ingress_host="models.example.com",
)
TLS_SECRET = m.router_tls_secret("default", b"-----BEGIN CERTIFICATE-----\n", b"-----BEGIN PRIVATE KEY-----\n")


def every_object() -> list[dict[str, Any]]:
    objs = [o for s in CASES.values() for o in m.service_objects(s)]
    objs += [o for r in (*ROUTERS.values(), TLS_INGRESS) for o in m.router_objects(r)]
    return [*objs, TLS_SECRET]


def test_the_schema_versions_are_the_newest_three_shipped():
    shipped = sorted(set(kubernetes_validate.utils.all_versions()), key=lambda v: tuple(map(int, v.split("."))))
    assert tuple(shipped[-3:]) == SCHEMA_VERSIONS


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_every_object_validates_against_the_official_schema(version: str):
    for obj in every_object():
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_validator_refuses_what_a_cluster_would():
    # The check above has teeth: an unknown field and a wrong type are both refused.
    dep = m.service_objects(CASES["defaults"])[2]
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["memoryGb"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, SCHEMA_VERSIONS[-1], strict=True)
    bad = json.loads(json.dumps(dep))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, SCHEMA_VERSIONS[-1], strict=True)


def test_only_api_versions_that_1_20_and_1_37_both_serve():
    assert {o["apiVersion"] for o in every_object()} <= API_VERSIONS


def test_the_service_deployment_follows_the_deploy_spec():
    secret, config, dep = m.service_objects(CASES["limits-gpu-tags"])
    assert [o["kind"] for o in (secret, config, dep)] == ["Secret", "ConfigMap", "Deployment"]
    for o in (secret, config, dep):
        assert o["metadata"]["namespace"] == "models"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelfleet"
        assert o["metadata"]["labels"]["modelfleet.io/service"] == "scorer"
    assert secret["stringData"] == {"primaryKey": "primary-secret-1", "secondaryKey": "secondary-secret-2"}
    assert "secret-" not in json.dumps(config) + json.dumps(dep)  # keys live in the Secret only
    spec = dep["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (replica,) = pod["containers"]
    assert replica["resources"] == {
        "requests": {"cpu": "500m", "memory": "1536Mi"},
        "limits": {"cpu": "2000m", "memory": "4096Mi", "nvidia.com/gpu": "1"},
    }
    assert replica["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert replica["livenessProbe"]["initialDelaySeconds"] == 310
    assert replica["livenessProbe"]["successThreshold"] == 1  # Kubernetes allows no other
    assert replica["readinessProbe"]["successThreshold"] == 2
    assert "initialDelaySeconds" not in replica["readinessProbe"]
    assert json.loads(dep["metadata"]["annotations"]["modelfleet.io/tags"]) == {"team name": "ml", "cost/center": "42"}
    env = {e["name"]: e.get("value") for e in replica["env"]}
    assert env["AZUREML_MODEL_DIR"] == "/var/azureml-app/azureml-models/regressor/3"
    assert env["AZUREML_ENTRY_SCRIPT"] == "score.py"
    assert "--host" in replica["args"] and "$(MODELFLEET_POD_IP)" in replica["args"]
    assert pod["automountServiceAccountToken"] is False


def test_the_init_container_fetches_models_and_snapshot_by_digest():
    _, config, dep = m.service_objects(CASES["defaults"])
    layout = json.loads(config["data"]["layout.json"])
    assert layout["files"] == [
        {"path": "azureml-models/regressor/3/model.pkl", "digest": "a" * 64},
        {"path": "azureml-models/regressor/3/sub/vocab.txt", "digest": "b" * 64},
    ]
    assert layout["snapshot"] == "c" * 64
    (init,) = dep["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == m.FETCH_COMMAND
    assert init["args"][init["args"].index("--dest") + 1] == m.APP_ROOT
    settings = json.loads(config["data"]["settings.json"])
    assert settings["cpu_cores"] == 0.1 and "primary_key" not in settings


def test_a_changed_setting_rolls_the_pods():
    before = m.service_objects(source())[2]["spec"]["template"]["metadata"]["annotations"]
    after = m.service_objects(source(scoring_timeout_ms=5000))[2]["spec"]["template"]["metadata"]["annotations"]
    assert before != after


def test_the_replica_gets_its_secret_from_the_services_secret_and_nothing_else_holds_it():
    given = replace(source(), environment_variables={"MODELFLEET_REPLICA_SECRET": "set-by-the-user-0123456789"})
    secret, config, dep = m.service_objects(replace(given, replica_secret="r" * 43))
    assert secret["stringData"][m.REPLICA_SECRET_KEY] == "r" * 43
    (replica,) = dep["spec"]["template"]["spec"]["containers"]
    [entry] = [e for e in replica["env"] if e["name"] == "MODELFLEET_REPLICA_SECRET"]  # the user's is dropped
    assert entry == {
        "name": "MODELFLEET_REPLICA_SECRET",
        "valueFrom": {"secretKeyRef": {"name": "scorer-keys", "key": "replicaSecret"}},
    }
    assert "r" * 43 not in json.dumps(config) + json.dumps(dep)  # only a digest of it, in the pod template
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[m.REPLICA_SECRET_ANNOTATION] == m.replica_secret_digest("r" * 43)

    # another one rolls the pods (they read it when they start)
    other = m.service_objects(replace(given, replica_secret="q" * 43))[2]["spec"]["template"]["metadata"]
    assert other["annotations"][m.REPLICA_SECRET_ANNOTATION] != annotations[m.REPLICA_SECRET_ANNOTATION]

    # none given (printed manifests): none printed, and the pod still refers to the Secret's
    secret, _, dep = m.service_objects(given)
    assert m.REPLICA_SECRET_KEY not in secret["stringData"]
    assert m.REPLICA_SECRET_ANNOTATION not in dep["spec"]["template"]["metadata"]["annotations"]
    assert entry in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    with pytest.raises(ConfigError, match="replica_secret must be 16-512 characters"):
        replace(given, replica_secret="short")


def test_the_routers_role_grants_secrets_by_name_only():
    rules = m.router_rules(["b-keys", "a-keys"])
    secret_rules = [r for r in rules if "secrets" in r["resources"]]
    assert secret_rules == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a-keys", "b-keys"], "verbs": ["get"]}
    ]
    assert not any("*" in r["verbs"] or "*" in r["resources"] for r in rules)
    scale = [r for r in rules if r["resources"] == ["deployments/scale"]]
    assert scale == [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"]}]
    assert not [r for r in m.router_rules([]) if "secrets" in r["resources"]]  # never every Secret


def test_the_router_service_types():
    def service(lb: str) -> dict[str, Any]:
        return m.router_objects(ROUTERS[lb])[-1]

    assert service("LoadBalancer")["spec"]["type"] == "LoadBalancer"
    assert "annotations" not in service("LoadBalancer")["metadata"]
    internal = service("InternalLoadBalancer")
    assert internal["spec"]["type"] == "LoadBalancer"
    assert internal["metadata"]["annotations"] == {m.AZURE_INTERNAL_LB_ANNOTATION: "true"}
    assert service("ClusterIP")["spec"]["type"] == "ClusterIP"
    dep = m.router_objects(ROUTERS["LoadBalancer"])[3]
    assert dep["kind"] == "Deployment" and dep["spec"]["replicas"] == 2


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ConfigError, match="load_balancer_type"):
        m.RouterSource(image="r", load_balancer_type="NodePort")
    with pytest.raises(ConfigError, match="router"):
        m.ServiceSource(
            name="modelfleet-router", deploy=aks_deploy_configuration(), image="i", entry_script="s.py", blob_store="b"
        )
    with pytest.raises(ConfigError, match="service name"):
        m.ServiceSource(
            name="Bad_Name", deploy=aks_deploy_configuration(), image="i", entry_script="s.py", blob_store="b"
        )
    with pytest.raises(ConfigError, match="version"):
        m.ModelLayout("m", 0, ())


@pytest.mark.timeout(600)  # may be the test that starts the control plane
def test_the_1_20_api_server_accepts_every_object(admin: client.ApiClient, namespace: str):
    # Server-side dry run: full validation, defaulting and admission, nothing stored or scheduled.
    objs = [o for o in m.service_objects(_in(namespace, CASES["limits-gpu-tags"]))]
    objs += m.service_objects(replace(_in(namespace, CASES["collects"]), name="collects"))
    objs.append(m.upload_secret("https://blobs.example/ws", namespace, sas="sv=1&sig=x"))
    objs += m.router_objects(m.RouterSource(image="r:1", namespace=namespace, secret_names=["scorer-keys"]))
    objs += m.router_objects(replace(TLS_INGRESS, namespace=namespace))[3:]  # Deployment, Service, Ingress
    objs.append({**TLS_SECRET, "metadata": {**TLS_SECRET["metadata"], "namespace": namespace}})
    for obj in objs:
        created = create_from_yaml_single_item(admin, obj, dry_run="All")
        assert created.metadata.name == obj["metadata"]["name"], obj["kind"]
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": m.ROUTER_LEASE, "namespace": namespace},
        "spec": {"holderIdentity": "router-0", "leaseDurationSeconds": 15},
    }
    create_from_yaml_single_item(admin, lease, dry_run="All")


def _in(namespace: str, src: m.ServiceSource) -> m.ServiceSource:
    from dataclasses import replace

    return replace(src, deploy=src.deploy.replace(namespace=namespace))


@pytest.mark.timeout(600)  # may be the test that starts the control plane
def test_the_routers_service_account_gets_what_its_role_grants_and_no_more(
    admin: client.ApiClient, namespace: str, service_account_kubeconfig: Callable[..., Path]
):
    src = _in(namespace, CASES["defaults"])
    for obj in m.service_objects(src):
        if obj["kind"] == "Deployment":
            obj["spec"]["replicas"] = 0  # nothing to schedule: the permissions are the point
        create_from_yaml_single_item(admin, obj)
    client.CoreV1Api(admin).create_namespaced_secret(
        namespace, {"metadata": {"name": "other"}, "stringData": {"k": "v"}}
    )
    router = m.RouterSource(image="r:1", namespace=namespace, secret_names=[m.secret_name("scorer")])
    for obj in m.router_objects(router):
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            create_from_yaml_single_item(admin, obj)

    api = api_client_for(service_account_kubeconfig(namespace, m.ROUTER_NAME, create=False))
    try:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        leases = client.CoordinationV1Api(api)

        def keys_readable() -> bool:
            try:
                return core.read_namespaced_secret("scorer-keys", namespace).data is not None
            except ApiException as e:
                if e.status != 403:  # the authorizer's cache may lag the RoleBinding briefly
                    raise
                return False

        wait_for("the router to read its service's keys", keys_readable, timeout=30)
        # Granted: discovery, scaling, events, its own Lease.
        core.list_namespaced_pod(namespace, label_selector=f"{m.SERVICE_LABEL}=scorer")
        apps.list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/managed-by=modelfleet")
        core.read_namespaced_config_map(m.config_map_name("scorer"), namespace)
        apps.patch_namespaced_deployment_scale("scorer", namespace, {"spec": {"replicas": 0}})
        core.create_namespaced_event(
            namespace,
            {
                "metadata": {"name": "scorer.scaled"},
                "involvedObject": {"kind": "Deployment", "name": "scorer", "namespace": namespace},
                "reason": "Scaled",
                "message": "0 -> 0",
            },
        )
        lease = {
            "metadata": {"name": m.ROUTER_LEASE},
            "spec": {"holderIdentity": "router-0", "leaseDurationSeconds": 15},
        }
        created = leases.create_namespaced_lease(namespace, lease)
        created.spec.holder_identity = "router-1"
        leases.replace_namespaced_lease(m.ROUTER_LEASE, namespace, created)
        # Refused: any other Secret, listing Secrets, changing a Deployment but its scale,
        # deleting, creating pods, another Lease.
        refused = [
            lambda: core.read_namespaced_secret("other", namespace),
            lambda: core.list_namespaced_secret(namespace),
            lambda: apps.patch_namespaced_deployment("scorer", namespace, {"metadata": {"labels": {"x": "y"}}}),
            lambda: apps.delete_namespaced_deployment("scorer", namespace),
            lambda: core.create_namespaced_pod(
                namespace, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
            ),
            lambda: leases.read_namespaced_lease("someone-elses", namespace),
            lambda: core.read_namespaced_secret("scorer-keys", "default"),
        ]
        for i, call in enumerate(refused):
            with pytest.raises(ApiException) as info:
                call()
            assert info.value.status == 403, f"refused[{i}]"
    finally:
        api.close()
