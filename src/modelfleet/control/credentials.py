"""The cluster's secrets on disk: the token-signing key pair and the owner-only folder.

```
<workspace>/.modelfleet/credentials/        mode 0700
    token-signing-key.pem                   ES256 (P-256) private key, PKCS#8 PEM, mode 0600
    tls-cert.pem, tls-key.pem               the self-signed certificate (see control/tls.py)
```

The signing key is made on first use by whichever process needs it first: the SDK issuing a
token (``Webservice.get_token``) or the daemon setting up a token-auth service. Two racing
creators are safe: each writes a private temporary file and hard-links it into place, which
fails if the name exists, and the loser reads the winner's key. The key is never rotated
automatically: rotating it (delete the file, restart the cluster) ends every token at once.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from modelfleet.errors import ConfigError
from modelfleet.store.registry import META_DIR

CREDENTIALS_FOLDER = "credentials"
SIGNING_KEY_FILE = "token-signing-key.pem"


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


def signing_key(workspace_root: Path) -> ec.EllipticCurvePrivateKey:
    """The workspace's token-signing private key, made on first use."""
    path = credentials_dir(workspace_root) / SIGNING_KEY_FILE
    if not path.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(path, pem, replace=False)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"the token-signing key {path} is not a readable unencrypted PEM private key; delete it "
            "and restart the cluster to make a new one (tokens issued so far stop working)"
        ) from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(loaded.curve, ec.SECP256R1):
        raise ConfigError(
            f"the token-signing key {path} must be an EC P-256 key (ES256); delete it and restart "
            "the cluster to make a new one"
        )
    return loaded


def signing_public_key(workspace_root: Path) -> ec.EllipticCurvePublicKey:
    """The public half, which is all the router holds."""
    return signing_key(workspace_root).public_key()
