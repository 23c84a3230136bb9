"""Pipeline ``rlhf``: the iterative RLHF rounds (rejection sampling, PPO in the rounds a param
names), each round a namespace ``rlhf_v<k>`` and its own registered pipeline."""

from .pipeline import create_pipeline, round_pipelines

__all__ = ["create_pipeline", "round_pipelines"]
