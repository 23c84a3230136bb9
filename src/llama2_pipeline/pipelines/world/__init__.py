"""Pipeline ``world``: the simulated world writes its raw data to data/01_raw/."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
