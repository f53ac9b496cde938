"""The whole LLM pipeline in one process: OpenAI frontend -> processor -> engine.

    python3 examples/llm/pipeline.py                       # gemma-3-270m on llama.cpp, CPU
    python3 examples/llm/pipeline.py --slots 8             # 8 requests decoded together (continuous batching)
    python3 examples/llm/pipeline.py --engine mock         # no model: deterministic tokens
    python3 examples/llm/pipeline.py --api-key sk-mine     # clients send Authorization: Bearer sk-mine

Embedded unless `servemesh up` ran (then the same components register in etcd and
can be joined by more engines from other terminals: see engine.py).
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh import DistributedRuntime, worker
from servemesh.apps.llm import ENGINES, add_engine_arguments, engine_options, serve_pipeline
from servemesh.llm.model import DEFAULT_MODEL


def how_to_call(url: str, model: str, keys: bool = False) -> None:
    key = "<your API key>" if keys else "none"  # never the key itself: this goes to logs
    auth = f" -H 'Authorization: Bearer {key}'" if keys else ""
    print(f"""
servemesh pipeline ready: model {model!r} at {url}/v1  (OpenAPI docs: {url}/docs)

  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{auth} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}], "max_tokens": 25}}'

  pip install openai; python3 -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{key}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}], \\
max_tokens=25).choices[0].message.content)"

Ctrl-C stops it.
""", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="llamacpp")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name (and packaged model)")
    parser.add_argument("--model-path", help="a GGUF file instead of the packaged model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--engines", type=int, default=1, help="engine instances behind the processor")
    parser.add_argument("--context-length", type=int, help="the model's context (llama.cpp n_ctx; mock: 131072)")
    parser.add_argument("--api-key", help="require `Authorization: Bearer <key>` (several: comma-separated; "
                        "default: SERVEMESH_API_KEY)")
    add_engine_arguments(parser)
    args = parser.parse_args()
    model = args.model if args.engine != "mock" or args.model != DEFAULT_MODEL else "mock"

    @worker(api_key=args.api_key)
    async def run(runtime: DistributedRuntime) -> None:
        keys = bool(runtime.settings.api_key or runtime.settings.api_key_file)
        await serve_pipeline(runtime, engine=args.engine, model=model, model_path=args.model_path,
                             host=args.host, port=args.port, engines=args.engines,
                             on_ready=lambda url, name: how_to_call(url, name, keys),
                             context_length=args.context_length,
                             **(engine_options(args) if args.engine == "llamacpp" else {}))

    servemesh.configure_logging()
    servemesh.run(run())


if __name__ == "__main__":
    main()
