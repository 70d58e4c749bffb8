"""Transport security: the only module that builds gRPC credentials.

A config without a ``tls`` section talks plaintext gRPC, which is meant for
loopback only: a node that listens elsewhere without TLS says so in its log
at start. With ``tls``, every channel this package opens (client to node,
node to node, the readiness probe of ``cluster up``) is a TLS channel that
verifies the server against ``tls.ca``; nodes listen with their certificate
(``nodes[i].cert`` or ``tls.cert``), and with ``tls.require_client_cert`` they
refuse any client that does not present a certificate signed by ``tls.ca``.
Clients and forwarding nodes present ``tls.client_cert`` when it is set.

Certificates are read when a channel or server is built, so replacing the
files takes effect for new connections.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import urllib.parse
from typing import Sequence

import grpc

from chordctl.config import Config
from chordctl.errors import ConfigError
from chordctl.protocol import REPLY_LIMIT

Options = Sequence[tuple[str, object]]


def enabled(config: Config | None) -> bool:
    return config is not None and config.tls is not None


def _read(path: str, field: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"config: {field}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"config: {field}: {path} is not a PEM file (no -----BEGIN line)")
    return data


def server_credentials(config: Config, index: int) -> grpc.ServerCredentials | None:
    """Node *index*'s server credentials; None when the config has no tls section."""
    tls = config.tls
    if tls is None:
        return None
    node = config.node(index)
    if node.cert:
        cert, key = (node.cert, f"nodes[{index}].cert"), (node.key, f"nodes[{index}].key")
    elif tls.cert:
        cert, key = (tls.cert, "tls.cert"), (tls.key, "tls.key")
    else:
        raise ConfigError(f"config: tls.cert: node {index} has no server certificate; set "
                          f"tls.cert and tls.key (or nodes[{index}].cert and .key) to serve "
                          f"it over TLS")
    pair = (_read(key[0], key[1]), _read(cert[0], cert[1]))
    roots = _read(tls.ca, "tls.ca") if tls.ca else None
    return grpc.ssl_server_credentials([pair], root_certificates=roots,
                                       require_client_auth=tls.require_client_cert)


def channel_credentials(config: Config) -> grpc.ChannelCredentials:
    tls = config.tls
    roots = _read(tls.ca, "tls.ca") if tls.ca else None
    key = chain = None
    if tls.client_cert:
        key = _read(tls.client_key, "tls.client_key")
        chain = _read(tls.client_cert, "tls.client_cert")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                        certificate_chain=chain)


# How long one connection attempt may take (TCP, TLS, HTTP/2 settings): as
# long as a probe waits for an answer (client.CONNECT_TIMEOUT).
CONNECT_ATTEMPT_MS = 1000

# Every channel chordctl opens, client's or node's.
CHANNEL_OPTIONS = (
    # Reconnect soon after a failure (a restarted node is back in 0.1-1 s)...
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # ... but give each attempt CONNECT_ATTEMPT_MS to finish. gRPC takes this
    # option as its minimum connect timeout (doc/connection-backoff.md's
    # MIN_CONNECT_TIMEOUT): at 100 ms, a node busy for 100 ms when a client
    # connects (starting, a loaded machine, a TLS handshake over a long
    # round trip) failed every call of that client at once with "cannot
    # connect (no answer)".
    ("grpc.min_reconnect_backoff_ms", CONNECT_ATTEMPT_MS),
    ("grpc.max_send_message_length", REPLY_LIMIT),
    ("grpc.max_receive_message_length", REPLY_LIMIT),
    # Channels to the same address otherwise share one subchannel and with it
    # its reconnect backoff, so a reopened channel (the router's retry after a
    # peer restarted) would still fail fast until the old backoff ends.
    ("grpc.use_local_subchannel_pool", 1),
)


def channel(config: Config | None, address: str,
            options: Options = CHANNEL_OPTIONS) -> grpc.Channel:
    """A channel to *address*: TLS when the config has a tls section, else plaintext."""
    if not enabled(config):
        return grpc.insecure_channel(address, list(options))
    return grpc.secure_channel(address, channel_credentials(config), list(options))


def aio_channel(config: Config | None, address: str,
                options: Options = CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """channel(), for grpc.aio: call it on the event loop that will use it."""
    if not enabled(config):
        return grpc.aio.insecure_channel(address, list(options))
    return grpc.aio.secure_channel(address, channel_credentials(config), list(options))


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False   # a host name: it may well resolve to a public address


def plaintext_warning(config: Config, index: int) -> str | None:
    """The start-up warning for a node listening off loopback without TLS, or None."""
    node = config.node(index)
    if enabled(config) or is_loopback(node.host):
        return None
    return (f"security: node {index} listens on {node.address} without TLS: anyone who can "
            f"reach that address can read and change every key; add a tls section to the "
            f"config, or listen on 127.0.0.1")


_LAST_ERROR = re.compile(r"last error: [A-Z_]+: (?:(?:ipv4|ipv6|unix|dns):\S+: )?(.*)", re.S)


def connect_failure(details: str) -> str:
    """Why gRPC's "failed to connect ..." happened, with what to check, for a message.

    A refused TLS handshake shows on the client only as a closed socket (the
    reason is in the node's log), so that case names the TLS settings too.
    """
    m = _LAST_ERROR.search(details)
    reason = (m.group(1) if m else "").strip().rstrip(":").removesuffix(": OK").strip()
    low = reason.lower()
    if low.startswith(("tls handshake", "ssl handshake")) or "ssl_error" in low:
        ssl = re.search(r"OPENSSL_internal:(.*)", reason)
        why = (ssl.group(1) if ssl else reason).removesuffix(": OK")[:200]
        return (f": TLS handshake failed ({why}); is the node serving TLS, with a "
                f"certificate for this address signed by tls.ca?")
    if "socket closed" in low or "connection reset" in low:
        return (f" ({reason}): the node closed the connection before any reply: it may "
                f"have stopped or been killed meanwhile (`chordctl ring show`); if it "
                f"uses TLS, the config needs a tls section (tls.ca), and tls.client_cert "
                f"and tls.client_key if it requires client certificates; its log says why")
    detail = f" ({reason[:200]})" if reason else ""
    return (f"{detail}; is the node running? (`chordctl ring show`, "
            f"`chordctl cluster up`)")


# -- who is calling (admin.allow) ---------------------------------------------

def peer_is_loopback(peer: str) -> bool:
    """Whether grpc's ``context.peer()`` (``ipv4:127.0.0.1:5000``,
    ``ipv6:%5B::1%5D:5000``, ``unix:/path``) is a client on this host."""
    kind, _, rest = urllib.parse.unquote(peer).partition(":")
    if kind == "unix":
        return True
    if kind not in ("ipv4", "ipv6"):
        return False
    host = rest.rsplit(":", 1)[0].strip("[]").split("%")[0]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def certificate_der(pem: bytes) -> bytes:
    """The DER bytes of the first certificate of a PEM text (whitespace-proof)."""
    text = pem.decode("ascii", "replace")
    start = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", start) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[start:end])


def admin_certificate(config: Config) -> bytes:
    """DER of tls.client_cert: the certificate admin.allow: tls-client admits."""
    tls = config.tls
    if tls is None or not tls.require_client_cert or not tls.client_cert:
        # Without mutual TLS a node never asks for a client certificate.
        raise ConfigError("config: admin.allow: tls-client needs mutual TLS: set "
                          "tls.require_client_cert: true and tls.client_cert (the "
                          "certificate operators and nodes present), or use loopback")
    try:
        return certificate_der(_read(tls.client_cert, "tls.client_cert"))
    except ValueError:
        raise ConfigError(f"config: tls.client_cert: {tls.client_cert} holds no "
                          f"certificate") from None


def peer_presents(auth_context: dict, der: bytes) -> bool:
    """Whether the TLS peer of a call presented exactly the certificate *der*."""
    for pem in auth_context.get("x509_pem_cert") or ():
        try:
            if certificate_der(pem) == der:
                return True
        except ValueError:
            continue
    return False
