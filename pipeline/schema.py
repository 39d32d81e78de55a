"""The base of every params model: unknown keys are errors, values are frozen. Kept apart from params.py so that a
backend's params model (pipeline/backends/<name>/params.py) and the native builds' (build_native/params.py) need
nothing from the stages' schema."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
