"""Helpers for tests: real etcd and nats-server processes on free loopback ports (with TLS
and users when asked), and throw-away certificates and NKeys for them."""

from ..stack import EtcdServer, NatsServer, free_port, wait_http_ok, wait_tcp, wait_until
from .certs import CertAuthority, CertFiles, make_ca_and_cert, make_user_nkey

__all__ = ["CertAuthority", "CertFiles", "EtcdServer", "NatsServer", "free_port", "make_ca_and_cert",
           "make_user_nkey", "wait_http_ok", "wait_tcp", "wait_until"]
