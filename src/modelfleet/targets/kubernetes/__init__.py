"""The Kubernetes compute target.

manifests.py  pure functions: a service's deploy spec and its model/snapshot references ->
              the Deployment, Secret and ConfigMap that run it; the router's Deployment,
              Service, ServiceAccount, Role and RoleBinding. Plain dicts, API versions that
              Kubernetes 1.20 to 1.37 all serve.
fetch.py      the pods' init container: models and snapshot fetched by digest from the blob
              store and laid out as the local replica sees them (stdlib only).
"""
