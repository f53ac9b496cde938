"""greet: the function's ports (the seed's metadata.py)."""

from pydantic import BaseModel, Field

from servemesh.functions import Function

func = Function(description="Greets someone, as often as asked")


class Person(BaseModel):
    name: str = Field(..., description="Who to greet")
    title: str | None = Field(None, description="Mr, Ms, Dr, ...")


@func.set_input
class Inputs(BaseModel):
    person: Person


@func.set_param
class Params(BaseModel):
    times: int = Field(1, ge=1, le=10, description="How many greetings")


@func.set_output
class Outputs(BaseModel):
    greeting: str
