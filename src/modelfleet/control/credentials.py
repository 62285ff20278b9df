"""The cluster's secrets on disk: the token-signing key pair and the owner-only folder.

```
<workspace>/.modelfleet/credentials/        mode 0700
    token-signing-key.pem                   ES256 (P-256) private key, PKCS#8 PEM, mode 0600
    tls-cert.pem, tls-key.pem               the self-signed certificate (see control/tls.py); in a
                                            shared workspace, local copies of the team's, kept in its
                                            database
```

The signing key is made on first use by whichever process needs it first: the SDK issuing a
token (``Webservice.get_token``) or the daemon setting up a token-auth service. Two racing
creators are safe: each writes a private temporary file and hard-links it into place, which
fails if the name exists, and the loser reads the winner's key. The key is never rotated
automatically: rotating it (delete the file, restart the cluster) ends every token at once.

In a workspace a team shares (its metadata in PostgreSQL), the signing key is the team's: it
lives in the database's ``secrets`` table, encrypted with the team's key (store/secrets.py),
made by whoever needs it first (the first insert wins), so a token from one teammate's
``get_token()`` is accepted by the cluster another teammate runs. No file is written then.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.errors import ConfigError
from modelfleet.store.registry import META_DIR, Store

CREDENTIALS_FOLDER = "credentials"
SIGNING_KEY_FILE = "token-signing-key.pem"
SIGNING_KEY_SECRET = "token-signing-key"  # its name in a shared workspace's secrets table


def credentials_dir(workspace_root: Path) -> Path:
    """The owner-only folder (made on first use, 0700 whatever the umask)."""
    folder = Path(workspace_root) / META_DIR / CREDENTIALS_FOLDER
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def write_private(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` with mode 0600, atomically. With ``replace=False`` an existing
    file wins and False comes back (the caller then reads that one)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _new_pem() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


def _is_shared(workspace_root: Path) -> bool:
    try:
        info = json.loads((Path(workspace_root) / META_DIR / "workspace.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and bool(info.get("database"))


@functools.lru_cache(maxsize=8)
def _shared_pem(workspace_root: Path) -> bytes:
    # Cached: the key never changes while a process runs (rotating it means a restart, as with the file).
    with Store.open(workspace_root) as store:
        return store.secrets.get_or_create(SIGNING_KEY_SECRET, lambda: _new_pem().decode("ascii")).encode("ascii")


def signing_key(workspace_root: Path) -> ec.EllipticCurvePrivateKey:
    """The workspace's token-signing private key, made on first use (the team's, in a shared workspace)."""
    if _is_shared(workspace_root):
        where = f"the secret {SIGNING_KEY_SECRET!r} of the shared workspace at {workspace_root}"
        pem = _shared_pem(Path(workspace_root).resolve())
    else:
        path = credentials_dir(workspace_root) / SIGNING_KEY_FILE
        if not path.exists():
            write_private(path, _new_pem(), replace=False)
        where, pem = str(path), path.read_bytes()
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"the token-signing key {where} is not a readable unencrypted PEM private key; delete it "
            "and restart the cluster to make a new one (tokens issued so far stop working)"
        ) from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise ConfigError(
            f"the token-signing key {where} must be an EC P-256 key (ES256); delete it and restart "
            "the cluster to make a new one"
        )
    return loaded


def signing_public_key(workspace_root: Path) -> ec.EllipticCurvePublicKey:
    """The public half, which is all the router holds."""
    return signing_key(workspace_root).public_key()
