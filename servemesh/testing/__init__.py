"""Helpers for tests: real etcd, nats-server and docker-registry processes on free loopback ports (with TLS
and users when asked), and throw-away certificates and NKeys for them."""

from ..stack import EtcdServer, NatsServer, free_port, wait_http_ok, wait_tcp, wait_until
from .certs import CertAuthority, CertFiles, make_ca_and_cert, make_user_nkey
from .registry import RegistryServer, TokenServer

__all__ = ["CertAuthority", "CertFiles", "EtcdServer", "NatsServer", "RegistryServer", "TokenServer",
           "free_port", "make_ca_and_cert",
           "make_user_nkey", "wait_http_ok", "wait_tcp", "wait_until"]
