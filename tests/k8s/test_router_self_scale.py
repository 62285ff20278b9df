"""The router Deployment's own size (``targets/kubernetes/router_scale.py``): the rules as plain
data, then the Lease holder patching the router Deployment's scale on the control plane, out
on routing time and back in on CPU, with the thresholds the Deployment's annotation sets."""

from __future__ import annotations

from pathlib import Path

import pytest
from k8s_control_plane import wait_for
from k8s_services import router_process
from kubernetes import client
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

from modelfleet.errors import ConfigError
from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.router_scale import (
    ANNOTATION,
    LoadProbe,
    RouterScaleSettings,
    RouterScaleState,
    decide,
)

FAST = {"window_s": 1.0, "in_window_s": 1.0, "cooldown_s": 2.0}


def fill(state: RouterScaleState, start: float, end: float, lag_ms: float, cpu: float) -> None:
    t = start
    while t <= end:
        state.samples.append((t, lag_ms, cpu))
        t += 0.25


def test_out_on_routing_time_in_on_cpu_one_pod_at_a_time():
    s = RouterScaleSettings(min_replicas=2, max_replicas=3, out_lag_ms=20, window_s=30, in_cpu=0.2, in_window_s=300)
    state = RouterScaleState()
    fill(state, 0, 20, lag_ms=50, cpu=0.9)
    assert decide(2, s, state, 20) == (2, "")  # the window is not full yet
    fill(state, 20.25, 31, lag_ms=50, cpu=0.9)
    desired, why = decide(2, s, state, 31)
    assert desired == 3 and "routing time 50.0 ms > 20 ms" in why
    assert decide(3, s, state, 40) == (3, "")  # cooling down
    fill(state, 31.25, 200, lag_ms=50, cpu=0.9)
    assert decide(3, s, state, 200) == (3, "")  # at max_replicas
    quiet = RouterScaleState()
    fill(quiet, 0, 301, lag_ms=1, cpu=0.05)
    desired, why = decide(3, s, quiet, 301)
    assert desired == 2 and "CPU 0.05 < 0.2" in why
    fill(quiet, 301.25, 800, lag_ms=1, cpu=0.05)
    assert decide(2, s, quiet, 800) == (2, "")  # at min_replicas
    busy = RouterScaleState()
    fill(busy, 0, 301, lag_ms=1, cpu=0.5)
    assert decide(3, s, busy, 301) == (3, "")  # neither slow nor idle


def test_settings_come_from_the_deployments_annotation_and_are_checked():
    assert RouterScaleSettings.from_annotations({}) is None
    s = RouterScaleSettings(min_replicas=1, max_replicas=4)
    assert RouterScaleSettings.from_annotations({ANNOTATION: s.annotation()}) == s
    with pytest.raises(ConfigError, match="min_replicas <= max_replicas"):
        RouterScaleSettings(min_replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match=f"annotation {ANNOTATION}"):
        RouterScaleSettings.from_annotations({ANNOTATION: '{"nonsense": 1}'})
    dep = m.router_objects(m.RouterSource(image="r", replicas=2))[3]
    assert RouterScaleSettings.from_annotations(dep["metadata"]["annotations"]) == RouterScaleSettings(2, 10)


def test_the_probe_measures_how_late_the_timer_ran_and_the_cpu_used():
    now, cpu = [0.0], [0.0]
    probe = LoadProbe(clock=lambda: now[0], cpu_clock=lambda: cpu[0])
    state = RouterScaleState()
    probe.expect(0.25)
    now[0], cpu[0] = 0.30, 0.15  # 50 ms late, 0.15 s of CPU in 0.3 s
    probe.sample(state)
    ((t, lag, used),) = state.samples
    assert (t, round(lag, 3), round(used, 3)) == (0.30, 50.0, 0.5)


@pytest.mark.timeout(300)
def test_the_lease_holder_scales_the_router_deployment_out_and_back_in(
    admin: client.ApiClient, namespace: str, tmp_path: Path, service_account_kubeconfig
):
    apps = client.AppsV1Api(admin)
    log = tmp_path / "router.log"
    with router_process(admin, namespace, service_account_kubeconfig, log) as router:
        # The router Deployment, its pods kept Pending (no node matches): only its size matters.
        dep = m.router_objects(m.RouterSource(image="r:1", namespace=namespace, replicas=1))[3]
        dep["spec"]["template"]["spec"]["nodeSelector"] = {"modelfleet.io/no-such-node": "true"}
        out = RouterScaleSettings(min_replicas=1, max_replicas=2, out_lag_ms=0, in_cpu=0, **FAST)
        dep["metadata"]["annotations"] = {ANNOTATION: out.annotation()}
        create_from_yaml_single_item(admin, dep)

        def replicas() -> int:
            return int(apps.read_namespaced_deployment(m.ROUTER_NAME, namespace).spec.replicas)

        wait_for("scaled out on routing time", lambda: replicas() == 2, timeout=60)
        # the holder logs once its patch has returned, which may be after the test sees it
        wait_for("the scale-out logged", lambda: "router: scaled modelfleet-router 1 -> 2" in log.read_text(), 10)
        back = RouterScaleSettings(min_replicas=1, max_replicas=2, out_lag_ms=1e9, in_cpu=100, **FAST)
        annotations = {"metadata": {"annotations": {ANNOTATION: back.annotation()}}}
        apps.patch_namespaced_deployment(m.ROUTER_NAME, namespace, annotations)
        wait_for("scaled back in on CPU", lambda: replicas() == 1, timeout=60)
        wait_for("the scale-in logged", lambda: "router: scaled modelfleet-router 2 -> 1" in log.read_text(), 10)
        assert router.proc.poll() is None
