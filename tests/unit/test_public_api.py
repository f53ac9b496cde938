from __future__ import annotations

import subprocess
import sys

import servemesh
from servemesh import errors


def test_public_api_is_small_and_explicit():
    assert sorted(servemesh.__all__) == sorted([
        "Annotated", "Cancelled", "Client", "ConfigError", "Context", "DeadlineExceeded",
        "DistributedRuntime", "InstanceUnavailable", "NoInstancesError", "Overloaded", "RemoteError",
        "ResponseStream", "ServemeshError", "ServiceClient", "ServiceContext", "Settings", "StreamIncomplete",
        "ValidationError", "__version__", "async_init", "configure_logging", "depends", "endpoint", "entrypoint",
        "on_shutdown", "run", "serve", "service", "worker",
    ])
    for name in servemesh.__all__:
        assert hasattr(servemesh, name)


def test_every_error_is_a_servemesh_error():
    for name in dir(errors):
        obj = getattr(errors, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == errors.__name__:
            assert issubclass(obj, errors.ServemeshError), name


def test_no_instances_error_says_what_exists_and_what_to_do():
    exc = errors.NoInstancesError("inference.engine.generate", ["inference.processor.process"])
    text = str(exc)
    assert "inference.engine.generate" in text
    assert "inference.processor.process" in text
    assert "servemesh ls inference" in text


def test_import_has_no_side_effects():
    code = ("import logging, servemesh, asyncio; "
            "assert not logging.getLogger().handlers; "
            "import threading; assert threading.active_count() == 1")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_functions_api_is_small_and_explicit():
    import servemesh.functions
    import servemesh.functions.build

    assert sorted(servemesh.functions.__all__) == sorted([
        "CSV", "PDF", "Audio", "Empty", "Function", "FunctionContext", "Image", "Media", "Video", "load_function",
        "validate",
    ])
    assert sorted(servemesh.functions.build.__all__) == sorted([
        "BuildOptions", "Credentials", "Image", "PushReport", "Reference", "RegistryClient", "build",
        "image_reference", "push",
    ])
    for module in (servemesh.functions, servemesh.functions.build):
        for name in module.__all__:
            assert hasattr(module, name)
