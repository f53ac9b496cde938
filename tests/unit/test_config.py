from __future__ import annotations

import json

import pytest

from servemesh.config import Settings
from servemesh.errors import ConfigError


def test_defaults_are_embedded(tmp_path):
    s = Settings.from_env({"SERVEMESH_STATE_DIR": str(tmp_path)})
    assert s.embedded and s.transport == "tcp" and s.port == 0


def test_environment_is_parsed_and_overrides_win(tmp_path):
    env = {"SERVEMESH_ETCD": "http://127.0.0.1:2379", "SERVEMESH_LEASE_TTL": "4",
           "SERVEMESH_DRAIN_TIMEOUT": "2.5", "SERVEMESH_STATE_DIR": str(tmp_path)}
    s = Settings.from_env(env, lease_ttl=7, port=None)
    assert s.etcd == "http://127.0.0.1:2379" and s.lease_ttl == 7 and s.drain_timeout == 2.5
    assert not s.embedded


@pytest.mark.parametrize(("env", "message"), [
    ({"SERVEMESH_LEASE_TTL": "soon"}, "SERVEMESH_LEASE_TTL"),
    ({"SERVEMESH_TRANSPORT": "carrier-pigeon"}, "SERVEMESH_TRANSPORT"),
    ({"SERVEMESH_TRANSPORT": "nats"}, "SERVEMESH_NATS"),
    ({"SERVEMESH_MAX_PAYLOAD": "0"}, "SERVEMESH_MAX_PAYLOAD"),
    ({"SERVEMESH_FLUSH_FRAMES": "0"}, "SERVEMESH_FLUSH_FRAMES"),
    ({"SERVEMESH_CAPABILITY_TTL": "2", "SERVEMESH_CAPABILITY_HEARTBEAT": "3"}, "SERVEMESH_CAPABILITY_HEARTBEAT"),
    ({"SERVEMESH_CAPABILITY_NAMESPACE": "a.b"}, "SERVEMESH_CAPABILITY_NAMESPACE"),
    ({"SERVEMESH_DELEGATION_MAX_DEPTH": "0"}, "SERVEMESH_DELEGATION_MAX_DEPTH"),
])
def test_bad_settings_name_the_variable(env, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**env, "SERVEMESH_STATE_DIR": str(tmp_path)})


def test_unknown_override_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown settings: colour"):
        Settings.from_env({"SERVEMESH_STATE_DIR": str(tmp_path)}, colour="blue")


def test_local_stack_is_used_when_nothing_is_configured(tmp_path):
    (tmp_path / "stack.json").write_text(json.dumps({"etcd": "http://127.0.0.1:1", "nats": "nats://x:2"}))
    s = Settings.from_env({"SERVEMESH_STATE_DIR": str(tmp_path)})
    assert s.etcd == "http://127.0.0.1:1" and s.nats == "nats://x:2"
    explicit = Settings.from_env({"SERVEMESH_STATE_DIR": str(tmp_path), "SERVEMESH_ETCD": "http://e:3"})
    assert explicit.etcd == "http://e:3"


def test_capability_settings_and_their_flush_default(tmp_path):
    from servemesh.apps.capability import FLUSH_FRAMES, tuned

    s = Settings.from_env({"SERVEMESH_STATE_DIR": str(tmp_path), "SERVEMESH_CAPABILITY_TTL": "4",
                           "SERVEMESH_CAPABILITY_TOKEN": "secret", "SERVEMESH_DELEGATION_MAX_DEPTH": "2"})
    assert (s.capability_ttl, s.capability_token, s.delegation_max_depth, s.flush_frames) == (4.0, "secret", 2, None)
    assert tuned(s).flush_frames == FLUSH_FRAMES  # API servers slice bursts
    assert tuned(s.replace(flush_frames=16)).flush_frames == 16  # unless told otherwise
