"""Environments: a specification → a canonical hash → a cached virtualenv that replicas run in.

Theory of operation
-------------------
``canonicalize(spec)`` reduces an ``EnvironmentSpec`` to what decides the virtualenv's
content, and hashes that (sha256 of canonical JSON):

- each pip requirement parsed (PEP 508) and respelled: names and extras PEP 503-normalised
  (``Scikit_Learn`` → ``scikit-learn``), specifiers sorted without spaces, duplicates
  dropped, the list sorted; pip options (``--find-links``, ``--index-url``, ``--no-index``,
  ``--extra-index-url``, ``--pre``) respelled long and sorted;
- the Python version asked for (``3.11`` when none is given and modelfleet runs on 3.11);
- the replica runtime: modelfleet's version plus a digest of the runtime files copied into
  the environment (``RUNTIME_FILES``), and ``RUNTIME_REQUIREMENTS``;
- the platform. Not the environment's name, nor its variables (set when a replica starts).

So ``numpy>=1.0, Scikit_Learn==1.5`` and ``scikit-learn == 1.5 / numpy >= 1.0`` share one
environment. ``resolve(spec, settings)`` then looks the hash up in the workspace cache, then
in the machine-wide cache (linking a hit into the workspace), and builds on a miss, into the
machine cache when there is one. A spec with no packages and no Python version is "this
interpreter": nothing is built. A spec with ``python_executable`` is that interpreter as it
is (v1's user-managed dependencies).

Modules: ``canonical`` (the normal form and the hash), ``build`` (lookup, lock, uv build),
``cache`` (list and prune the cache folders), ``image`` (a hash-tagged image context for
Kubernetes, FROM the environment's ``base_image`` or a CUDA base for GPUs), ``registry`` (is
a tag in an OCI registry: the look-up a deploy and ``env build-image`` make), ``builder``
(the container builder on PATH, or the commands to run elsewhere). This package imports
``spec``, ``errors`` and ``packaging``; never the store.
"""

from __future__ import annotations

from modelfleet.envs.build import (
    METADATA,
    SETTING_FIND_LINKS,
    SETTING_MACHINE_CACHE,
    SETTING_OFFLINE,
    SETTING_UV_CACHE,
    CacheSettings,
    Progress,
    Resolved,
    Step,
    resolve,
    unsatisfied,
    usable,
)
from modelfleet.envs.cache import CachedEnv, builds, list_cached, machine_users, prune_machine, prune_workspace
from modelfleet.envs.canonical import (
    RUNTIME_FILES,
    RUNTIME_REQUIREMENTS,
    V1_SERVING_PACKAGES,
    Canonical,
    canonicalize,
    conda_only_message,
    needs_build,
    runtime_version,
)
from modelfleet.envs.image import image_tag, write_image_context

__all__ = [
    "METADATA",
    "RUNTIME_FILES",
    "RUNTIME_REQUIREMENTS",
    "SETTING_FIND_LINKS",
    "SETTING_MACHINE_CACHE",
    "SETTING_OFFLINE",
    "SETTING_UV_CACHE",
    "V1_SERVING_PACKAGES",
    "CacheSettings",
    "CachedEnv",
    "Canonical",
    "Progress",
    "Resolved",
    "Step",
    "builds",
    "canonicalize",
    "conda_only_message",
    "image_tag",
    "list_cached",
    "machine_users",
    "needs_build",
    "prune_machine",
    "prune_workspace",
    "resolve",
    "runtime_version",
    "unsatisfied",
    "usable",
    "write_image_context",
]
