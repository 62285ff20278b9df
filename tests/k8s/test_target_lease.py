"""Two router pods never both scale: the Lease (``targets/kubernetes/scaler.Lease``) against the
real API server, with the router's ServiceAccount: one holder at a time, renewed while held,
taken over only once it expired."""

from __future__ import annotations

import time

from k8s_control_plane import api_client_for
from kubernetes import client
from kubernetes.utils.create_from_yaml import create_from_yaml_single_item

from modelfleet.targets.kubernetes import manifests as m
from modelfleet.targets.kubernetes.scaler import Lease


def test_one_holder_at_a_time_and_a_takeover_after_expiry(
    admin: client.ApiClient, namespace: str, service_account_kubeconfig
):
    for obj in m.router_objects(m.RouterSource(image="r:test", namespace=namespace))[:3]:
        create_from_yaml_single_item(admin, obj)
    api = api_client_for(service_account_kubeconfig(namespace, m.ROUTER_NAME, create=False))
    try:
        a = Lease(api, namespace, "router-a", duration_s=2)
        b = Lease(api, namespace, "router-b", duration_s=2)
        assert a.tick() is True  # created
        assert b.tick() is False  # held by a, not expired
        assert a.tick() is True  # renewed
        assert b.tick() is False
        holder = client.CoordinationV1Api(admin).read_namespaced_lease(m.ROUTER_LEASE, namespace).spec.holder_identity
        assert holder == "router-a"
        time.sleep(3)  # a stops renewing (its pod died): the lease expires
        assert b.tick() is True
        assert a.tick() is False
    finally:
        api.close()
