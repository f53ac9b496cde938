"""A client of the OCI distribution API: blobs (check, upload, download), manifests (get, put),
tags. Anonymous, basic and bearer-token auth:

- ``Credentials(user, password)``: sent as basic auth when the registry asks for it
  (``WWW-Authenticate: Basic``), or exchanged for a token at the realm the registry names
  (``WWW-Authenticate: Bearer realm=...,service=...,scope=...``: the token flow of Docker
  registries);
- ``Credentials(token=...)``: a bearer token sent as it is;
- no credentials: anonymous, with anonymous tokens where a realm gives them.

httpx is the transport; every request has the client's ``timeout``; errors become
``RegistryError`` (status, url).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import httpx

from ...errors import RegistryError
from .layers import sha256
from .oci import CONFIG, DOCKER_LIST, DOCKER_MANIFEST, INDEX, MANIFEST

ACCEPT = ", ".join((MANIFEST, INDEX, DOCKER_MANIFEST, DOCKER_LIST))
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Credentials:
    user: str | None = None
    password: str | None = None
    token: str | None = None

    def __repr__(self) -> str:  # never print secrets
        return f"Credentials(user={self.user!r}, password={'***' if self.password else None}, " \
               f"token={'***' if self.token else None})"


@dataclasses.dataclass(frozen=True)
class Reference:
    """``host[:port]/repository[:tag|@digest]``."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        rest = text.removeprefix("docker://")
        digest = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
        tag = None
        last = rest.rsplit("/", 1)[-1]
        if ":" in last:
            rest, tag = rest.rsplit(":", 1)
        first, _, path = rest.partition("/")
        if not path or not ("." in first or ":" in first or first == "localhost"):
            first, path = "registry-1.docker.io", rest if "/" in rest else f"library/{rest}"
        if not path:
            raise RegistryError(f"{text!r} is not an image reference (host[:port]/repository[:tag])")
        return cls(first, path, tag if tag or digest else "latest", digest)

    @property
    def ref(self) -> str:
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.host}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")


def plain_http_default(host: str) -> bool:
    """Loopback registries speak plain HTTP, as Docker assumes for them."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name in ("localhost", "127.0.0.1", "::1", "[::1]")


class RegistryClient:
    """``with RegistryClient("127.0.0.1:5000", creds) as registry: registry.blob_exists(repo, digest)``."""

    def __init__(self, host: str, credentials: Credentials | None = None, *, plain_http: bool | None = None,
                 timeout: float = 300.0, verify: bool | str = True) -> None:
        self.host = host
        self.credentials = credentials or Credentials()
        scheme = "http" if (plain_http_default(host) if plain_http is None else plain_http) else "https"
        self.base = f"{scheme}://{host}"
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), verify=verify,
                                 follow_redirects=True)
        self._tokens: dict[str, str] = {}
        #: what this client uploaded, for reports: ``[(digest, size)]``
        self.uploaded: list[tuple[str, int]] = []
        self.manifests_put: list[str] = []

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- the API ----------------------------------------------------------------------------------
    def blob_exists(self, repository: str, digest: str) -> bool:
        resp = self._request("HEAD", f"/v2/{repository}/blobs/{digest}", repository)
        if resp.status_code == 404:
            return False
        self._check(resp, f"checking blob {digest}")
        return True

    def get_blob(self, repository: str, digest: str) -> bytes:
        resp = self._request("GET", f"/v2/{repository}/blobs/{digest}", repository)
        self._check(resp, f"downloading blob {digest}")
        if sha256(resp.content) != digest:
            raise RegistryError(f"blob {digest} of {repository} arrived with another digest", 0, str(resp.url))
        return resp.content

    def upload_blob(self, repository: str, digest: str, data: bytes) -> None:
        """A monolithic upload: ``POST`` for a session, ``PUT`` the bytes with their digest."""
        resp = self._request("POST", f"/v2/{repository}/blobs/uploads/", repository, push=True)
        self._check(resp, "starting an upload", expect=(202,))
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError("the registry started an upload without a Location", resp.status_code,
                                str(resp.url))
        url = location if location.startswith("http") else self.base + location
        sep = "&" if "?" in url else "?"
        resp = self._request("PUT", f"{url}{sep}digest={digest}", repository, push=True, content=data,
                             headers={"Content-Type": "application/octet-stream"})
        self._check(resp, f"uploading blob {digest}", expect=(201, 204))
        self.uploaded.append((digest, len(data)))

    def get_manifest(self, repository: str, ref: str) -> tuple[bytes, str, str] | None:
        """``(bytes, media type, digest)``, or ``None`` when the tag or digest does not exist."""
        resp = self._request("GET", f"/v2/{repository}/manifests/{ref}", repository, headers={"Accept": ACCEPT})
        if resp.status_code == 404:
            return None
        self._check(resp, f"reading manifest {repository}:{ref}")
        media = resp.headers.get("Content-Type", MANIFEST).split(";")[0]
        return resp.content, media, sha256(resp.content)

    def put_manifest(self, repository: str, tag: str, data: bytes, media_type: str = MANIFEST) -> str:
        resp = self._request("PUT", f"/v2/{repository}/manifests/{tag}", repository, push=True, content=data,
                             headers={"Content-Type": media_type})
        self._check(resp, f"putting manifest {repository}:{tag}", expect=(201, 200))
        self.manifests_put.append(tag)
        return resp.headers.get("Docker-Content-Digest") or sha256(data)

    def tags(self, repository: str) -> list[str]:
        resp = self._request("GET", f"/v2/{repository}/tags/list", repository)
        if resp.status_code == 404:
            return []
        self._check(resp, f"listing tags of {repository}")
        return list(resp.json().get("tags") or [])

    def image_config(self, repository: str, ref: str) -> dict[str, Any] | None:
        """The config of ``repository:ref`` (the first platform of an index), or ``None``."""
        import json

        found = self.get_manifest(repository, ref)
        if found is None:
            return None
        doc = json.loads(found[0])
        if "manifests" in doc:
            found = self.get_manifest(repository, doc["manifests"][0]["digest"])
            if found is None:
                return None
            doc = json.loads(found[0])
        if doc.get("config", {}).get("mediaType") not in (CONFIG, "application/vnd.docker.container.image.v1+json"):
            raise RegistryError(f"{repository}:{ref} is not an image manifest")
        return dict(json.loads(self.get_blob(repository, doc["config"]["digest"])))

    # -- requests and auth ------------------------------------------------------------------------
    def _request(self, method: str, path: str, repository: str, *, push: bool = False,
                 content: bytes | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        url = path if path.startswith("http") else self.base + path
        scope = f"repository:{repository}:{'pull,push' if push else 'pull'}"
        headers = dict(headers or {})
        auth = self._authorization(scope)
        if auth:
            headers["Authorization"] = auth
        try:
            resp = self.http.request(method, url, content=content, headers=headers)
            if resp.status_code == 401:
                auth = self._answer(resp, scope)
                if auth:
                    headers["Authorization"] = auth
                    resp = self.http.request(method, url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise RegistryError(f"the registry {self.host} could not be reached: {type(exc).__name__}: {exc}",
                                0, url) from exc
        return resp

    def _authorization(self, scope: str) -> str | None:
        creds = self.credentials
        if creds.token:
            return f"Bearer {creds.token}"
        token = self._tokens.get(scope)
        if token:
            return f"Bearer {token}"
        if self._tokens.get("basic") and creds.user is not None:
            return _basic(creds)
        return None

    def _answer(self, resp: httpx.Response, scope: str) -> str | None:
        """What to send after a 401: basic credentials, or a token from the realm."""
        challenge = resp.headers.get("WWW-Authenticate", "")
        kind = challenge.split(" ", 1)[0].lower()
        creds = self.credentials
        if kind == "basic":
            if creds.user is None:
                raise RegistryError(f"the registry {self.host} needs a user and password (--user / --password, or "
                                    "SERVEMESH_REGISTRY_USER / SERVEMESH_REGISTRY_PASSWORD)", 401, str(resp.url))
            self._tokens["basic"] = "yes"
            return _basic(creds)
        if kind == "bearer" and not creds.token:
            fields = dict(_CHALLENGE.findall(challenge))
            realm = fields.get("realm")
            if not realm:
                raise RegistryError(f"the registry {self.host} asked for a token without naming a realm", 401,
                                    str(resp.url))
            params = {"service": fields.get("service", ""), "scope": fields.get("scope") or scope}
            auth = (creds.user, creds.password or "") if creds.user is not None else None
            try:
                got = self.http.get(realm, params=params, auth=auth)
            except httpx.HTTPError as exc:
                raise RegistryError(f"the token service {realm} could not be reached: {exc}", 0, realm) from exc
            if got.status_code != 200:
                raise RegistryError(f"the token service {realm} refused ({got.status_code}): {got.text[:200]}",
                                    got.status_code, realm)
            body = got.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise RegistryError(f"the token service {realm} answered without a token", got.status_code, realm)
            self._tokens[scope] = token
            return f"Bearer {token}"
        raise RegistryError(f"the registry {self.host} refused the credentials given (401)", 401, str(resp.url))

    def _check(self, resp: httpx.Response, doing: str, expect: tuple[int, ...] = (200,)) -> None:
        if resp.status_code in expect or (expect == (200,) and resp.status_code < 300):
            return
        detail = resp.text[:300] if resp.request.method != "HEAD" else ""
        raise RegistryError(f"{doing} at {self.host} failed: {resp.status_code} {detail}".rstrip(),
                            resp.status_code, str(resp.url))


def _basic(creds: Credentials) -> str:
    import base64

    raw = f"{creds.user}:{creds.password or ''}".encode()
    return "Basic " + base64.b64encode(raw).decode()
