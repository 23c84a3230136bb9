"""The recipe's models as MLflow models: what ``mlflow.pyfunc.load_model("models:/llama2-chat@champion")``
returns, in any process with torch, sentencepiece and mlflow installed.

MLflow saves this file with each registered version ("models from code": MLflow 3 refuses to
unpickle models by default) and the package's code beside it (``code/llama2_pipeline``), so a
version loads without this project checked out. ``model_config["kind"]`` says what the folder
(the ``model`` artifact: ``config.json``, ``model.safetensors``, ``tokenizer.model``) holds:

* ``chat``: a chat policy. ``predict`` takes user messages (a DataFrame with a ``prompt``
  column, a list of strings, or one string) and returns the answers, generated with the recipe's
  chat template; params ``max_new_tokens``, ``temperature`` (0 = greedy), ``top_p``, ``seed``,
  by default the held-out evaluation's (the recipe's ``sft.eval``, saved in ``model_config``).
* ``reward``: a reward model (helpfulness or safety). ``predict`` takes a DataFrame with
  ``prompt`` and ``response`` columns and returns one score per row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

#: sampling of ``predict`` when neither params nor the model's config (the recipe's ``sft.eval``) give it
CHAT_PARAMS = {"max_new_tokens": 48, "temperature": 0.0, "top_p": 1.0, "seed": 0}


def _column(model_input: Any, name: str) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "columns"):  # a DataFrame
        if name not in model_input.columns:
            raise ValueError(f"the input needs a column {name!r}; it has {list(model_input.columns)}")
        return [str(v) for v in model_input[name]]
    if isinstance(model_input, dict):
        value = model_input[name]
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in model_input]


class RecipeModel(PythonModel):
    """A chat policy or a reward model of the recipe (``model_config["kind"]``)."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts["model"])
        config = context.model_config or {}
        self.kind = config.get("kind", "chat")
        self.sampling = {**CHAT_PARAMS, **config.get("sampling", {})}
        if self.kind == "chat":
            from llama2_pipeline.model import load_hf
            from llama2_pipeline.tokenizer import Tokenizer

            self.model = load_hf(folder)
            self.tokenizer = Tokenizer(folder / "tokenizer.model")
        elif self.kind == "reward":
            from llama2_pipeline.model import RewardModel

            self.model = RewardModel.load(folder)
        else:
            raise ValueError(f"model_config kind {self.kind!r}: expected 'chat' or 'reward'")

    def predict(self, context, model_input, params=None):  # (no type hints: MLflow would read them as the schema)
        if self.kind == "reward":
            return self.model.score(_column(model_input, "prompt"), _column(model_input, "response"))
        from llama2_pipeline.evaluation.answers import generate_answers
        from llama2_pipeline.model.config import SamplingConfig

        p = {**self.sampling, **{k: v for k, v in (params or {}).items() if v is not None}}
        sampling = SamplingConfig(max_new_tokens=int(p["max_new_tokens"]), temperature=float(p["temperature"]),
                                  top_p=float(p["top_p"]), seed=int(p["seed"]))
        rows = generate_answers(self.model, self.tokenizer, _column(model_input, "prompt"), sampling, progress=False)
        return [r["answer"] for r in rows]


mlflow.models.set_model(RecipeModel())
