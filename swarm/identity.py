"""A node's persistent identity: one RSA key in the home directory that is both its libp2p peer id and the
key that signs its DHT records, so that a record's owner and the peer it names can be checked against each
other, and a restarted node keeps its peer id (and gets its cluster back)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.p2p.p2p_daemon_bindings.datastructures import PeerID
from hivemind.proto import crypto_pb2
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from protocol.errors import ParisError
from protocol.swarm_gossip import peer_id_from_public_der

IDENTITY_FILE = "identity.key"
DEFAULT_HOME = Path("~/.paris")


@dataclass(frozen=True)
class Identity:
    """The loaded identity. `identity_path` is handed to the p2p daemon, `private_key` to the signer."""

    home: Path
    identity_path: Path
    private_key: RSAPrivateKey
    peer_id: str

    @property
    def public_key_bytes(self) -> bytes:
        return self.private_key.get_public_key().to_bytes()

    def private_key_der(self) -> bytes:
        """The private key's DER bytes: what this node's own secrets derive from (never published)."""
        return self.private_key._private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def load_identity(home: Path | str | None = None) -> Identity:
    """Load the identity from `home` (default ~/.paris), creating the directory and a new key on first use."""
    home = Path(home if home is not None else DEFAULT_HOME).expanduser()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = home / IDENTITY_FILE
    if not path.exists():
        _create(path)
    try:
        blob = path.read_bytes()
        key_der = crypto_pb2.PrivateKey.FromString(blob).data
        key = serialization.load_der_private_key(key_der, password=None)
    except Exception as e:  # protobuf and cryptography raise several unrelated types
        msg = f"{path} is not a valid paris-node identity ({e}); move it away to start afresh"
        raise ParisError(msg) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ParisError(f"{path} holds a non-RSA key; move it away to create a new one")
    private_key = RSAPrivateKey.__new__(RSAPrivateKey)
    private_key._private_key = key
    return Identity(home=home, identity_path=path, private_key=private_key,
                    peer_id=PeerID.from_identity(blob).to_base58())


def _create(path: Path) -> None:
    """Write a fresh key with 0600 permissions, atomically (a crash leaves no half-written identity)."""
    key = RSAPrivateKey()
    blob = crypto_pb2.PrivateKey(key_type=crypto_pb2.KeyType.RSA, data=key.to_bytes()).SerializeToString()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created it first: keep theirs
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@functools.lru_cache(maxsize=4096)
def peer_id_of_public_key(ssh_public_key: bytes) -> str:
    """The libp2p peer id that belongs to an RSA public key in OpenSSH form (as record subkeys carry it)."""
    public = RSAPublicKey.from_bytes(ssh_public_key)._public_key
    return peer_id_from_public_der(
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def sign(identity: Identity, data: bytes) -> bytes:
    """An RSA signature of `data` by this identity (what a run's creator puts on its bundle)."""
    return identity.private_key.sign(data)


def verify_signature(ssh_public_key: bytes, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the holder of `ssh_public_key`'s signature of `data`; False for any bad input."""
    try:
        return bool(RSAPublicKey.from_bytes(ssh_public_key).verify(data, signature))
    except Exception:  # a malformed key or signature from a peer is a failed check, not a crash
        return False
