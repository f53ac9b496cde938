"""Chapter 2: a router that load-balances engine requests over every engine of a model.

    python3 examples/llm/router.py --model gemma-3-270m --policy least_loaded
    python3 examples/llm/router.py --model mock --policy kv      # to the engine that has the prompt cached
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh.llm.kv import BLOCK_SIZE
from servemesh.llm.model import DEFAULT_MODEL
from servemesh.llm.router import POLICIES, Router

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--policy", choices=POLICIES, default="least_loaded")
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE,
                        help="kv: tokens per cached block; the engines' block size (16)")
    parser.add_argument("--overlap-weight", type=float, default=1.0,
                        help="kv: cost of a block to prefill, against one block in flight on an engine")
    args = parser.parse_args()
    servemesh.configure_logging()
    servemesh.run(Router, model=args.model, policy=args.policy, block_size=args.block_size,
                  overlap_weight=args.overlap_weight)
