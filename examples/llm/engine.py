"""Terminal 1: an engine. Start several for the processor (or router) to balance over.

    python3 examples/llm/engine.py                        # llama.cpp, gemma-3-270m, 4 slots
    python3 examples/llm/engine.py --slots 8 --threads 2  # 8 requests decoded together
    python3 examples/llm/engine.py --engine mock --model mock --tokens-per-s 50
    python3 examples/llm/engine.py --engine mock --model mock --kv-blocks 4096 --prefill-s-per-token 0.001
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh.apps.llm import ENGINES, add_engine_arguments, engine_class, engine_kwargs, engine_options
from servemesh.llm.model import DEFAULT_MODEL

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="llamacpp")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--model-path")
    parser.add_argument("--tokens-per-s", type=float, help="mock engine speed (0: as fast as it can)")
    parser.add_argument("--latency-s", type=float, help="mock engine delay before the first token")
    parser.add_argument("--context-length", type=int, help="the model's context (llama.cpp n_ctx; mock: 131072)")
    parser.add_argument("--kv-blocks", type=int,
                        help="mock engine: simulate a prefix cache of this many blocks of 16 tokens, published for "
                             "KV-aware routers (0: none)")
    parser.add_argument("--prefill-s-per-token", type=float,
                        help="mock engine: seconds of prefill per prompt token not in its cache")
    add_engine_arguments(parser)
    args = parser.parse_args()
    servemesh.configure_logging()
    extra = engine_options(args) if args.engine == "llamacpp" else {}
    extra |= {"tokens_per_s": args.tokens_per_s, "latency_s": args.latency_s, "kv_blocks": args.kv_blocks,
             "prefill_s_per_token": args.prefill_s_per_token} if args.engine == "mock" else {}
    extra["context_length"] = args.context_length
    servemesh.run(engine_class(args.engine), **engine_kwargs(args.engine, args.model, args.model_path, **extra))
