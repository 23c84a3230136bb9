"""``report``: one node reading every stage's metrics and plots (the recipe's rounds included) and
writing ``data/08_reporting/report.{md,html}``."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from llama2_pipeline.project.config_loader import session_recipe
from llama2_pipeline.recipe import Recipe

from .nodes import build_report


def create_pipeline(recipe: Recipe | None = None, **kwargs) -> Pipeline:
    inputs = {"sft_metrics": "sft_metrics", "sft_samples": "sft_samples", "pretrain_metrics": "pretrain_metrics",
              "reward_metrics": "reward_metrics", "reward_accuracy": "reward_accuracy", "gatt_metrics": "gatt_metrics",
              "gatt_model_metrics": "gatt_model_metrics", "gatt_adherence": "gatt_adherence",
              "cleaning_report": "cleaning_report", "calibration_plot": "reward_calibration_plot",
              "gatt_plot": "gatt_adherence_plot", "cleaning_plot": "cleaning_report_plot",
              "pretrain_plot": "pretrain_loss_curve_plot", "world": "params:world", "seed": "params:seed",
              "profile": "params:profile", "gatt_select": "params:gatt.select",
              "gatt_case": "params:gatt.case"}
    inputs.update({f"rlhf_{r}": f"rlhf_{r}.metrics" for r in (recipe or session_recipe()).rlhf.rounds})
    return Pipeline([
        Node(build_report, inputs, ["report_markdown", "report_html", "rlhf_progress_plot", "model_dimensions_plot",
                                    "report_metrics", "report_runs"], name="build_report"),
    ])
