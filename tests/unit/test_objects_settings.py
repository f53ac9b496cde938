"""Where the object store lives, and its settings: parsed strictly, read from ``Settings``."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest

from servemesh.config import Settings
from servemesh.errors import ConfigError
from servemesh.objects import ObjectStoreSettings
from servemesh.objects.settings import DEFAULT_BUCKET, Location, parse_location


def test_an_absolute_directory_is_a_local_store(tmp_path):
    assert parse_location(str(tmp_path / "objects")) == Location("local", path=str(tmp_path / "objects"))
    assert parse_location("/tmp/anyserve-objects/") == Location("local", path="/tmp/anyserve-objects")


def test_home_is_expanded():
    where = parse_location("~/objects")
    assert where.kind == "local" and where.path.endswith("/objects") and not where.path.startswith("~")


@pytest.mark.parametrize("text", ["objects", "./objects", "../objects", "~user-that-does-not-exist-x/objects"])
def test_a_relative_directory_is_refused(text):
    with pytest.raises(ConfigError, match="absolute"):
        parse_location(text)


@pytest.mark.parametrize("text", ["file:///tmp/objects", "http://host/objects", "s3://bucket/x"])
def test_other_schemes_are_refused(text):
    with pytest.raises(ConfigError, match="neither a directory nor a nats:// URL"):
        parse_location(text)


def test_a_nats_url_is_a_jetstream_bucket():
    assert parse_location("nats://127.0.0.1:4222") == Location("jetstream", url="nats://127.0.0.1:4222",
                                                                bucket=DEFAULT_BUCKET)
    where = parse_location("tls://user:pw@nats.example:4222?bucket=models_1&replicas=3")
    assert (where.kind, where.url, where.bucket, where.replicas) == (
        "jetstream", "tls://user:pw@nats.example:4222", "models_1", 3)
    assert "pw" not in str(where)  # shown without the password


@pytest.mark.parametrize("text, why", [
    ("nats://host:4222?bucket=a.b", "bucket name"),
    ("nats://host:4222?bucket=", "bucket name"),
    ("nats://host:4222?bucket=../x", "bucket name"),
    ("nats://host:4222?replicas=9", "replicas"),
    ("nats://host:4222?replicas=two", "replicas"),
    ("nats://host:4222?buckett=x", "unknown parameters buckett"),
    ("nats://:4222", "no host"),
    ("nats://host:port", "does not parse"),
])
def test_bad_nats_urls_are_refused(text, why):
    with pytest.raises(ConfigError, match=why):
        parse_location(text)


def test_nats_alone_means_the_runtimes_nats():
    assert parse_location("nats", nats_url="nats://10.0.0.1:4222").url == "nats://10.0.0.1:4222"
    with pytest.raises(ConfigError, match="SERVEMESH_NATS"):
        parse_location("nats")


def test_defaults_are_safe():
    s = ObjectStoreSettings()
    assert s.location.endswith("/.servemesh/objects")
    assert s.default_ttl == 3600 and s.max_bytes == 64 * 1024 * 1024 and s.allow_pickle is False


@pytest.mark.parametrize("change", [
    {"location": ""}, {"default_ttl": 0}, {"default_ttl": -5}, {"default_ttl": math.nan}, {"max_bytes": 0},
    {"max_bytes": 1.5}, {"allow_pickle": "yes"}, {"gc_interval": 0}, {"timeout": math.inf},
    {"connect_timeout": -1},
])
def test_settings_that_cannot_work_are_refused(change):
    with pytest.raises(ConfigError):
        ObjectStoreSettings(**change)


def test_forever_is_a_valid_default_ttl_when_asked_for():
    assert ObjectStoreSettings(default_ttl=math.inf).default_ttl == math.inf


def test_from_settings_before_config_has_object_fields(tmp_path):
    settings = Settings(state_dir=str(tmp_path), connect_timeout=1.5, nats="nats://10.0.0.1:4222")
    s = ObjectStoreSettings.from_settings(settings)
    assert s.location == str(tmp_path / "objects")
    assert s.connect_timeout == 1.5 and s.nats is settings and s.allow_pickle is False
    assert ObjectStoreSettings.from_settings(settings, location="nats").where().url == "nats://10.0.0.1:4222"
    assert ObjectStoreSettings.from_settings(settings, location=None).location == str(tmp_path / "objects")


def test_from_settings_reads_the_object_fields_once_config_has_them(tmp_path):
    base = Settings(state_dir=str(tmp_path))
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    fields.update(object_store="nats://h:4222?bucket=b", object_ttl=60.0, object_max_bytes=1024,
                  object_allow_pickle=True, object_gc_interval=5.0, object_timeout=2.0)
    settings = types.SimpleNamespace(**fields)
    s = ObjectStoreSettings.from_settings(settings)  # type: ignore[arg-type]
    assert (s.location, s.default_ttl, s.max_bytes, s.allow_pickle, s.gc_interval, s.timeout) == (
        "nats://h:4222?bucket=b", 60.0, 1024, True, 5.0, 2.0)
    assert s.where().bucket == "b"
