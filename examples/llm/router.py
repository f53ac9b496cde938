"""Chapter 2: a router that load-balances engine requests over every engine of a model.

    python3 examples/llm/router.py --model gemma-3-270m --policy least_loaded
"""

from __future__ import annotations

import argparse

import servemesh
from servemesh.llm.model import DEFAULT_MODEL
from servemesh.llm.router import Router

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--policy", choices=["least_loaded", "round_robin", "random"], default="least_loaded")
    args = parser.parse_args()
    servemesh.configure_logging()
    servemesh.run(Router, model=args.model, policy=args.policy)
