"""Evaluation of the recipe's models: answers to held-out prompts judged by the world
(``answers``), the reward models' held-out tables (``reward``), and the final report (``report``).

No Kedro or MLflow imports. ``from llama2_pipeline.evaluation import SamplingConfig, evaluate_model``
imports the submodule on first use.
"""

from llama2_pipeline.core.lazy import lazy_exports

_LAZY = dict.fromkeys(("SamplingConfig", "chat_messages", "compare_models", "evaluate_model", "generate_answers", "judge",
                       "summarise"), "answers")

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
