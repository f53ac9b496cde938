"""Gateway workers that share a port: one answers /metrics for all, over Unix sockets
in the group's directory (``Peers``)."""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI

from servemesh import DistributedRuntime
from servemesh.gateway.kit import GatewayKit, Peers


def client(kit: GatewayKit) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(kit.asgi), base_url="http://t")


def requests_of(text: str, route: str) -> float:
    prefix = f'servemesh_http_requests_total{{route="{route}",status="200"}} '
    return sum(float(line.removeprefix(prefix)) for line in text.splitlines() if line.startswith(prefix))


async def test_one_worker_answers_metrics_for_all_and_names_itself(tmp_path):
    async with DistributedRuntime() as rt:
        kits = [GatewayKit(rt, "test") for _ in range(3)]
        peers = []
        for index, kit in enumerate(kits):
            app = FastAPI()
            app.add_api_route("/hello", lambda: {"hi": True}, methods=["GET"])
            kit.install(app)
            peers.append(await Peers(index, tmp_path).start(kit.local_metrics))
            kit.join(peers[-1])
        try:
            for index, kit in enumerate(kits):
                async with client(kit) as http:
                    for _ in range(index + 1):
                        assert (await http.get("/hello")).status_code == 200
                    health = (await http.get("/health")).json()
                    assert health["worker"] == index and health["pid"] == os.getpid()
            async with client(kits[1]) as http:
                text = (await http.get("/metrics")).text
                assert requests_of(text, "/hello") == 1 + 2 + 3
                assert requests_of(text, "/health") == 3
                assert text.count("# TYPE servemesh_http_requests_total counter") == 1
                await peers[2].close()  # gone (or restarting): left out of the sum, the scrape still answers
                assert not (tmp_path / "worker-2.sock").exists()
                assert requests_of((await http.get("/metrics")).text, "/hello") == 1 + 2
        finally:
            for p in peers:
                await p.close()
