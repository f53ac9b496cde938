"""A real OCI registry for tests: Debian's ``docker-registry`` (CNCF distribution) on a free
loopback port, with a configuration of its own (never the system service's), anonymous or
with htpasswd users (basic auth) or with bearer tokens from :class:`TokenServer`."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from ..errors import ConfigError
from ..stack import _Server, free_port, wait_tcp


def registry_binary() -> str:
    found = shutil.which("docker-registry") or shutil.which("registry")
    if not found:
        raise ConfigError("docker-registry not found: install it with `apt-get install docker-registry` "
                          "(`python3 dev.py test` does)")
    return found


class RegistryServer(_Server):
    """``with RegistryServer() as registry: registry.host`` (``127.0.0.1:PORT``).

    ``users`` (``{"name": "password"}``) turns on htpasswd basic auth (needs ``bcrypt``);
    ``token`` (a :class:`TokenServer`) turns on bearer-token auth instead."""

    def __init__(self, *, users: dict[str, str] | None = None, token: TokenServer | None = None,
                 host: str = "127.0.0.1") -> None:
        if users and token:
            raise ConfigError("give RegistryServer users or a token server, not both")
        self.users = users
        self.token = token
        self.bind = host
        self.port = free_port(host)
        self._tmp = tempfile.TemporaryDirectory(prefix="servemesh-registry-")
        self.data_dir = Path(self._tmp.name)
        self.log_path = self.data_dir / "registry.log"

    @property
    def host(self) -> str:
        return f"{self.bind}:{self.port}"

    def config(self) -> str:
        auth = ""
        if self.users:
            import bcrypt

            lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}"
                     for u, p in self.users.items()]
            (self.data_dir / "htpasswd").write_text("\n".join(lines) + "\n")
            auth = f"auth:\n  htpasswd:\n    realm: servemesh-test\n    path: {self.data_dir / 'htpasswd'}\n"
        elif self.token is not None:
            auth = (f"auth:\n  token:\n    realm: {self.token.url}/token\n    service: {self.token.service}\n"
                    f"    issuer: {self.token.issuer}\n    rootcertbundle: {self.token.cert_path}\n")
        return (f"version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {self.data_dir / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.host}\n{auth}")

    def start(self, timeout: float = 30) -> None:
        conf = self.data_dir / "config.yml"
        conf.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([registry_binary(), "serve", str(conf)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_tcp(self.bind, self.port, timeout, self.proc)
        except BaseException:
            self.kill()
            raise RuntimeError(f"docker-registry did not start: {self.log()[-2000:]}") from None

    def stop(self, *args: Any, **kwargs: Any) -> None:
        super().stop(*args, **kwargs)
        self._tmp.cleanup()


class TokenServer:
    """A token service of the Docker registry token flow: ``GET /token?service=&scope=`` with
    basic auth answers a JWT (RS256, certificate in ``x5c``) granting what the scope asks."""

    def __init__(self, users: dict[str, str], *, service: str = "servemesh-registry",
                 issuer: str = "servemesh-test-issuer") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users = users
        self.service = service
        self.issuer = issuer
        self.issued = 0
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "servemesh token signer")])
        now = time.time()
        import datetime

        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(datetime.datetime.fromtimestamp(now - 3600, datetime.UTC))
                .not_valid_after(datetime.datetime.fromtimestamp(now + 86400, datetime.UTC))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self._key, hashes.SHA256()))
        self._cert_der = cert.public_bytes(serialization.Encoding.DER)
        self._tmp = tempfile.TemporaryDirectory(prefix="servemesh-token-")
        self.cert_path = Path(self._tmp.name) / "signer.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> TokenServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._tmp.cleanup()

    def token(self, user: str, scope: str) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for item in scope.split(" ") if scope else []:
            kind, _, rest = item.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self._cert_der).decode()]}
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": secrets.token_hex(8), "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self._key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        self.issued += 1
        return f"{signing}.{_b64(signature)}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                auth = self.headers.get("Authorization", "")
                user = ""
                if auth.startswith("Basic "):
                    user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
                    if server.users.get(user) != password:
                        self.send_response(401)
                        self.end_headers()
                        return
                else:  # anonymous: no token
                    self.send_response(401)
                    self.end_headers()
                    return
                token = server.token(user, " ".join(query.get("scope", [])))
                body = json.dumps({"token": token, "access_token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
