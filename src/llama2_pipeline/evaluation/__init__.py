"""Evaluation of the recipe's models: answers to held-out prompts judged by the world
(``answers``, below training: the stages generate and judge with it), the plots, and the final
report (``report``). The reward models' held-out tables are ``training.reward_eval``, GAtt's
adherence ``training.gatt_eval``: each beside the training it judges.

No Kedro or MLflow imports. ``from llama2_pipeline.evaluation import SamplingConfig, evaluate_model``
imports the submodule on first use.
"""

from llama2_pipeline.core.lazy import lazy_exports

_LAZY = dict.fromkeys(("SamplingConfig", "chat_messages", "compare_models", "evaluate_model", "generate_answers", "judge",
                       "summarise"), "answers")

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = sorted(_LAZY)
