"""Deploy to a Kubernetes target with an ``image_registry``: the environment's hash tag is
looked up in a real registry (Debian's docker-registry); a miss refuses the service naming
the tag and ``modelfleet env build-image``, or, with ``image_build="kaniko"``, creates a Kaniko
Job (and its context ConfigMap) on the real control plane; a hit deploys. The node stand-in
cannot run Kaniko (no images, no container runtime): the Job is created and checked, not run."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
from k8s_control_plane import ControlPlane, wait_for
from k8s_services import SCRIPTS, serve_blobs
from kubernetes import client
from node_standin import NodeStandIn

from modelfleet import AksWebservice, InferenceConfig, KubernetesCompute, Model, Workspace
from modelfleet.envs.canonical import canonicalize
from modelfleet.errors import ConfigError, DeploymentFailed
from modelfleet.spec import EnvironmentSpec
from modelfleet.targets.kubernetes import kaniko
from registry_support import running_registry, skopeo_push, write_oci_layout

SCHEMA_VERSIONS = ("1.35.0", "1.36.0", "1.37.0")


def _deploy(ws: Workspace, tmp_path: Path, target: KubernetesCompute, name: str) -> object:
    weights = tmp_path / "w.json"
    weights.write_text("{}")
    model = Model.register(ws, model_path=str(weights), model_name="w")
    ic = InferenceConfig(entry_script="score.py", source_directory=str(SCRIPTS / "read_model"))
    dc = AksWebservice.deploy_configuration(autoscale_enabled=False, num_replicas=1, period_seconds=1)
    return Model.deploy(ws, name, [model], ic, dc, deployment_target=target)


def test_image_settings_are_checked_at_attach(tmp_path: Path, control_plane: ControlPlane) -> None:
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    kubeconfig = str(control_plane.admin_kubeconfig)
    with pytest.raises(ConfigError, match="image_build must be one of kaniko"):
        KubernetesCompute.attach(ws, "a", kubeconfig=kubeconfig, image_registry="r.example", image_build="docker")
    with pytest.raises(ConfigError, match='image_build="kaniko" needs image_registry'):
        KubernetesCompute.attach(ws, "a", kubeconfig=kubeconfig, image_build="kaniko")
    with pytest.raises(ConfigError, match="image_registry must be host"):
        KubernetesCompute.attach(ws, "a", kubeconfig=kubeconfig, image_registry="https://r.example")
    with pytest.raises(ConfigError, match="give one of them"):
        KubernetesCompute.attach(ws, "a", kubeconfig=kubeconfig, image_registry="r.example", image="x:1")


@pytest.mark.timeout(300)
def test_a_deploy_looks_its_image_up_and_builds_in_the_cluster_only_when_asked(
    admin: client.ApiClient, node: NodeStandIn, namespace: str, control_plane: ControlPlane, tmp_path: Path
) -> None:
    batch, core = client.BatchV1Api(admin), client.CoreV1Api(admin)
    ws = Workspace.create(name="ws", path=tmp_path / "ws")
    kubeconfig = str(control_plane.admin_kubeconfig)
    digest = canonicalize(EnvironmentSpec(name="default")).hash
    with running_registry(tmp_path / "reg") as registry, serve_blobs(ws.store) as blobs:
        tag = f"{registry.host}/modelfleet-env:{digest}"
        common = {"kubeconfig": kubeconfig, "namespace": namespace, "blob_store": blobs}
        target = KubernetesCompute.attach(ws, "prod", image_registry=registry.host, **common)
        try:
            # a miss, no in-cluster build: refused, saying what to run
            service = _deploy(ws, tmp_path, target, "missing")
            with pytest.raises(DeploymentFailed):
                service.wait_for_deployment(timeout_sec=120)
            error = service.error or ""
            assert f"image {tag} is not in registry {registry.host}" in error, error
            assert f"modelfleet env build-image default --registry {registry.host} --push" in error, error
            assert not batch.list_namespaced_job(namespace).items
            service.delete()
        finally:
            target.stop_controller()

        # a miss with image_build="kaniko": the Job and its context are created in the namespace
        target = KubernetesCompute.attach(
            ws, "prod", image_registry=registry.host, image_build="kaniko", overwrite=True, **common
        )
        try:
            service = _deploy(ws, tmp_path, target, "built")
            name = kaniko.build_name(tag)
            job = wait_for("the Kaniko Job", lambda: _read_job(batch, name, namespace), timeout=90)
            (container,) = job.spec.template.spec.containers
            assert container.image == kaniko.KANIKO_IMAGE
            assert f"--destination={tag}" in container.args and "--insecure" in container.args
            config_map = wait_for("its context", lambda: _read_config_map(core, name, namespace), timeout=30)
            assert config_map.metadata.owner_references[0].uid == job.metadata.uid
            archive = gzip.decompress(base64.b64decode(config_map.binary_data[kaniko.CONTEXT_KEY]))
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                dockerfile = tar.extractfile("Dockerfile")
                assert dockerfile is not None and f"docker build -t {tag} ." in dockerfile.read().decode()
            # the same environment again: the build that runs is not started twice
            again = _deploy(ws, tmp_path, target, "built-too")
            wait_for("the second service planned", lambda: again.state in ("Transitioning", "Healthy"), 60)
            assert [j.metadata.name for j in batch.list_namespaced_job(namespace).items] == [name]
            service.delete()
            again.delete()
        finally:
            target.stop_controller()

        # a hit: what the Job would have pushed, put there by skopeo; the deploy goes ahead
        context = tmp_path / "ctx"
        context.mkdir()
        (context / "marker").write_text("pushed by the test")
        write_oci_layout(tmp_path / "layout", "v1", context)
        skopeo_push(tmp_path / "layout", "v1", tag)
        target = KubernetesCompute.attach(ws, "prod", image_registry=registry.host, overwrite=True, **common)
        try:
            service = _deploy(ws, tmp_path, target, "present")
            service.wait_for_deployment(timeout_sec=180)
            assert service.state == "Healthy", service.error
            service.delete()
        finally:
            target.stop_controller()


def _read_job(batch: client.BatchV1Api, name: str, namespace: str) -> object:
    items = batch.list_namespaced_job(namespace, field_selector=f"metadata.name={name}").items
    return items[0] if items else None


def _read_config_map(core: client.CoreV1Api, name: str, namespace: str) -> object:
    items = core.list_namespaced_config_map(namespace, field_selector=f"metadata.name={name}").items
    return items[0] if items else None


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_the_kaniko_objects_validate_against_the_official_schemas(version: str) -> None:
    src = kaniko.BuildSource("r.example/modelfleet-env:" + "a" * 64, "a" * 64, b"\x1f\x8b context", "models")
    objects = kaniko.build_objects(src)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Job"]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)
    too_big = kaniko.BuildSource(src.tag, src.environment_hash, b"x" * (kaniko.CONTEXT_LIMIT + 1), "models")
    with pytest.raises(ConfigError, match="build and push it with `modelfleet env build-image"):
        kaniko.build_objects(too_big)
