"""Optional TLS for every TCP link of a cluster.

Set ``ARAY_TLS_CERT``, ``ARAY_TLS_KEY`` and ``ARAY_TLS_CA`` (PEM files) in the environment of
every process of the cluster, or pass ``--tls-cert/--tls-key/--tls-ca`` to ``aray start``,
which sets them for the node and its workers. Then every server speaks TLS and asks for a
client certificate, and every client checks the server's: both must be signed by the CA
(mutual TLS), on top of the cluster token. Host names are not checked (nodes are addressed
by IP), the CA is what is trusted. Unix sockets, which never leave the machine, stay plain.
"""

from __future__ import annotations

import functools
import os
import ssl

ENV = ("ARAY_TLS_CERT", "ARAY_TLS_KEY", "ARAY_TLS_CA")


def settings() -> tuple[str, str, str] | None:
    """The three PEM paths, or None when TLS is off; raises ValueError when half set."""
    values = [os.environ.get(name, "") for name in ENV]
    if not any(values):
        return None
    missing = [name for name, value in zip(ENV, values) if not value]
    if missing:
        raise ValueError(f"TLS needs {', '.join(ENV)} all set; missing: {', '.join(missing)}")
    for name, path in zip(ENV, values):
        if not os.path.isfile(path):
            raise ValueError(f"{name}={path}: no such file")
    return values[0], values[1], values[2]


@functools.cache
def _contexts(config: tuple[str, str, str]) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key, ca = config
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
    server.load_cert_chain(cert, key)
    server.verify_mode = ssl.CERT_REQUIRED
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    client.load_cert_chain(cert, key)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    return server, client


def server_context() -> ssl.SSLContext | None:
    config = settings()
    return None if config is None else _contexts(config)[0]


def client_context() -> ssl.SSLContext | None:
    config = settings()
    return None if config is None else _contexts(config)[1]
