"""What the KServe REST and gRPC surfaces share: finding a model, calling its replicas,
shaping the answer, metadata, Triton's model config and statistics.

A model is a capability with a ``model=<name>`` label (``ModelCatalog``); a request for
model ``m`` (version ``v``) is routed by the labels ``{model: m[, version: v]}`` over
every live replica serving it, least loaded first, with the router's failover
(``CapabilityRouter``). The request travels to the replica in the capability wire's
contents JSON; its answer comes back the same way and is re-encoded for the client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from ...capability import wire
from ...capability.catalog import MODEL_LABEL, ModelCatalog, ModelInfo
from ...capability.models import VERSION_LABEL, TensorSpec
from ...capability.routing import CapabilityRouter
from ...errors import NoInstancesError, ValidationError
from ...runtime import Context
from ...tensors import InferRequest, InferResponse, decode_contents_response
from ..kit import ApiError

#: OIP v2 extensions this gateway implements (``GET /v2``, ``ServerMetadata``)
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration"]
#: Triton's parameter asking for an empty last response on a stream, and the one marking it
ENABLE_FINAL = "triton_enable_empty_final_response"
FINAL = "triton_final_response"

_TRITON_TYPES = {"BYTES": "TYPE_STRING"}


class KServeService:
    """The model calls and descriptions behind both KServe surfaces (one per gateway)."""

    def __init__(self, router: CapabilityRouter) -> None:
        self.router = router
        self.catalog = ModelCatalog(router)
        self.stats = Statistics()

    def model(self, name: str, version: str = "") -> ModelInfo:
        """The live model, or a 404 (no such model or version) / 503 (none live now)."""
        info = self.catalog.require(name, version)
        if info is None:
            known = self.catalog.get(name)
            if known is not None:
                have = ", ".join(known.versions) or "none declared: ask without a version"
                raise ApiError(404, f"model {name!r} has no version {version!r} (versions: {have})",
                               type="not_found_error", code="model_not_found")
            names = ", ".join(sorted(self.catalog.models())) or "none"
            raise ApiError(404, f"model {name!r} is not served here (models: {names})", type="not_found_error",
                           code="model_not_found")
        return info

    def ready(self, name: str, version: str = "") -> bool:
        try:
            return self.catalog.require(name, version) is not None
        except NoInstancesError:
            return False

    # -- inference ---------------------------------------------------------------------------
    def _call(self, request: InferRequest) -> tuple[wire.InferCall, ModelInfo]:
        info = self.model(request.model_name, request.model_version)
        if info.spec is not None:
            info.spec.check_inputs(info.name, request.inputs)
        want = {MODEL_LABEL: request.model_name}
        if request.model_version:
            want[VERSION_LABEL] = request.model_version
        return wire.InferCall(wire.encode_request(request), want), info

    async def infer(self, request: InferRequest, ctx: Context) -> InferResponse:
        """The model's answer to ``request`` (its ``model_name`` and ``model_version`` say which)."""
        call, info = self._call(request)
        if not info.unary:
            raise ValidationError(f"model {info.name!r} is decoupled (it streams its responses): call it with "
                                  "ModelStreamInfer over gRPC (tritonclient: start_stream, async_stream_infer)")
        started = time.perf_counter_ns()
        try:
            data = await self.router.unary(call, ctx)
            response = self.finish(decode_contents_response(data), request)
        except BaseException:
            self.stats.add(request.model_name, request.model_version, started, ok=False)
            raise
        self.stats.add(request.model_name, request.model_version, started, ok=True)
        return response

    async def stream(self, request: InferRequest, ctx: Context) -> AsyncIterator[InferResponse]:
        """The model's responses to ``request``: every one a streaming handler sends (a
        unary model: its one answer). A replica lost mid-stream raises (``StreamIncomplete``)."""
        call, _ = self._call(request)
        started = time.perf_counter_ns()
        ok = False
        try:
            first, rest = await self.router.stream(call, ctx)
        except BaseException:
            self.stats.add(request.model_name, request.model_version, started, ok=False)
            raise
        try:
            if first is not None:
                yield self.finish(decode_contents_response(first), request)
            async for batch in rest:
                for item in batch:
                    yield self.finish(decode_contents_response(item), request)
            ok = True
        finally:
            await rest.aclose()  # type: ignore[attr-defined]
            self.stats.add(request.model_name, request.model_version, started, ok=ok)

    def finish(self, response: InferResponse, request: InferRequest) -> InferResponse:
        """The outputs the request asked for (all if it named none), in its order; the
        model's name, version and the request's id."""
        response.model_name = request.model_name
        response.model_version = request.model_version or response.model_version
        response.id = request.id or response.id
        if request.outputs:
            by_name = {t.name: t for t in response.outputs}
            chosen = []
            for wanted in request.outputs:
                tensor = by_name.get(wanted.name)
                if tensor is None:
                    raise ValidationError(f"model {request.model_name!r} has no output {wanted.name!r} (it gave: "
                                          f"{', '.join(by_name) or 'none'})", field=wanted.name)
                chosen.append(tensor)
            response.outputs = chosen
        return response

    # -- descriptions --------------------------------------------------------------------------
    def metadata(self, info: ModelInfo) -> dict[str, Any]:
        """The OIP model metadata (``GET /v2/models/{name}``)."""
        spec = info.spec
        return {"name": info.name, "versions": list(info.versions), "platform": info.platform,
                "inputs": [t.to_record() for t in spec.inputs] if spec else [],
                "outputs": [t.to_record() for t in spec.outputs] if spec else []}

    def config(self, info: ModelInfo) -> dict[str, Any]:
        """Triton's model configuration (``GET /v2/models/{name}/config``), with what is known."""
        spec = info.spec

        def tensors(items: tuple[TensorSpec, ...]) -> list[dict[str, Any]]:
            return [{"name": t.name, "data_type": _TRITON_TYPES.get(t.datatype, f"TYPE_{t.datatype}"),
                     "dims": list(t.shape)} for t in items]

        policy: dict[str, Any] = ({"specific": {"versions": list(info.versions)}} if info.versions
                                  else {"latest": {"num_versions": 1}})
        return {"name": info.name, "platform": info.platform, "backend": "servemesh", "max_batch_size": 0,
                "input": tensors(spec.inputs) if spec else [], "output": tensors(spec.outputs) if spec else [],
                "version_policy": policy, "model_transaction_policy": {"decoupled": bool(info.streams)}}

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model seen, ``READY`` while a replica serves it."""
        live = self.catalog.models()
        out = []
        for name, info in sorted(self.catalog.known().items()):
            state = "READY" if name in live else "UNAVAILABLE"
            reason = "" if name in live else "no live replica"
            for version in info.versions or [""]:
                out.append({"name": name, "version": version, "state": state, "reason": reason})
        return out


class Statistics:
    """Triton's per-model inference statistics, as counted by this gateway."""

    def __init__(self) -> None:
        #: (model, version) -> [successes, their ns, failures, their ns, last inference in ms]
        self._counts: dict[tuple[str, str], list[int]] = {}

    def add(self, model: str, version: str, started_ns: int, *, ok: bool) -> None:
        counts = self._counts.get((model, version))
        if counts is None:
            if len(self._counts) >= 4096:
                return
            counts = self._counts[(model, version)] = [0, 0, 0, 0, 0]
        elapsed = time.perf_counter_ns() - started_ns
        i = 0 if ok else 2
        counts[i] += 1
        counts[i + 1] += elapsed
        counts[4] = int(time.time() * 1000)

    def report(self, name: str | None = None, version: str = "") -> dict[str, Any]:
        stats = []
        for (model, ver), (ok, ok_ns, fail, fail_ns, last) in sorted(self._counts.items()):
            if name is not None and (model != name or (version and ver != version)):
                continue
            zero = {"count": 0, "ns": 0}
            stats.append({"name": model, "version": ver, "last_inference": last, "inference_count": ok,
                          "execution_count": ok,
                          "inference_stats": {"success": {"count": ok, "ns": ok_ns},
                                              "fail": {"count": fail, "ns": fail_ns},
                                              "queue": zero, "compute_input": zero, "compute_infer": zero,
                                              "compute_output": zero, "cache_hit": zero, "cache_miss": zero},
                          "batch_stats": []})
        return {"model_stats": stats}
