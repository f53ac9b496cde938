"""Terminal 2: the processor (chat template, tokenizer, detokenizer) for one model.

    python3 examples/llm/processor.py                          # gemma-3-270m's own vocabulary
    python3 examples/llm/processor.py --engine mock --model mock
    python3 examples/llm/processor.py --via-router             # call inference.router.generate
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh.apps.llm import ENGINES, make_tokenizer
from servemesh.llm.model import DEFAULT_MODEL
from servemesh.llm.processor import ENGINE_PATH, Processor
from servemesh.llm.router import ROUTER_PATH

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=ENGINES, default="llamacpp", help="which tokenizer family")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--model-path")
    parser.add_argument("--via-router", action="store_true", help="send engine calls to the router component")
    args = parser.parse_args()
    servemesh.configure_logging()
    tokenizer = make_tokenizer(args.engine, args.model, args.model_path)
    servemesh.run(Processor, tokenizer=tokenizer, engine_path=ROUTER_PATH if args.via_router else ENGINE_PATH)
