"""greet: the function's lifecycle (the seed's main.py)."""

from metadata import Inputs, Outputs, Params, func

state: dict[str, str] = {}


@func.on_startup
async def load() -> None:
    state["word"] = "Hello"  # where a real function loads its model


@func.on_execute
async def main(inputs: Inputs, params: Params) -> Outputs:
    who = " ".join(p for p in (inputs.person.title, inputs.person.name) if p)
    return Outputs(greeting=" ".join([f"{state['word']}, {who}!"] * params.times))


@func.on_shutdown
async def shutdown() -> None:
    state.clear()
