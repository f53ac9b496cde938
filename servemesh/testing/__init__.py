"""Helpers for tests: real etcd and nats-server processes on free loopback ports."""

from ..stack import EtcdServer, NatsServer, free_port, wait_http_ok, wait_tcp

__all__ = ["EtcdServer", "NatsServer", "free_port", "wait_http_ok", "wait_tcp"]
