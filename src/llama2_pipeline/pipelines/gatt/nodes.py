"""Nodes of ``gatt``: build the GAtt dialogues with the policy, fine-tune with the ``sft`` node
(loss on the last answer only), measure adherence by turn before and after."""

from __future__ import annotations

from pathlib import Path

from llama2_pipeline.tracking import mlflow_log_fn


def _sampling(d: dict, seed: int):
    from llama2_pipeline.evaluation import SamplingConfig

    return SamplingConfig(**{**d, "seed": seed})


def build_dialogues(policy: Path, prompts: list[dict], gatt: dict, seed: int) -> tuple[list[dict], dict]:
    """GAtt training dialogues: drawn from the train prompts, answered by the policy with the
    instruction (adherent samples kept), the instruction kept in the first turn only."""
    from llama2_pipeline.model import default_device, load_hf
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.training.gatt import construct, draw_dialogues, sample_adherent, truncations
    from llama2_pipeline.training.preferences import torch_threads

    dialogues = draw_dialogues(prompts, gatt["dialogues"], gatt["turns"], seed,
                               max_constraints=gatt["max_constraints"],
                               spare=gatt["spare_messages"] if gatt["keep_adherent"] else 0)
    with torch_threads(gatt["num_threads"]):
        model = load_hf(policy, device=default_device()).eval()
        tok = Tokenizer(Path(policy) / "tokenizer.model")
        dialogues, answers, stats = sample_adherent(model, tok, dialogues, _sampling(gatt["sampling"], seed),
                                                    gatt["tries"], prefix_only=gatt["keep_adherent"],
                                                    context=gatt["context"])
    records, more = construct(dialogues, answers, keep_adherent=gatt["keep_adherent"], system=True,
                              min_turns=gatt["min_turns"])
    stats.update(more)
    if not records:
        raise ValueError(f"no GAtt dialogue kept: none of the {len(dialogues)} dialogues had adherent answers in its "
                         f"first {gatt['min_turns']} turns (gatt.min_turns); raise gatt.tries or lower gatt.min_turns")
    cut = truncations(records, gatt["min_turns"], seed, every=gatt["cuts"] == "every")
    stats["gatt_examples"] = len(cut)
    mlflow_log_fn("gatt/")(stats, 0)
    return cut, stats


def finetune_gatt(dialogues: list[dict], policy: Path, workspace: Path, gatt: dict, seed: int):
    from llama2_pipeline.pipelines.sft.nodes import finetune_model

    return finetune_model(dialogues, policy, workspace, gatt["finetune"], seed, prefix="gatt")


def evaluate_gatt(before: Path, after: Path, prompts: list[dict], world: dict, gatt: dict, seed: int,
                  build_stats: dict, training: dict):
    """Adherence by turn (instruction as the system prompt of turn 1 only) and helpfulness of the
    same answers, for the policy before and after GAtt, on dialogues of held-out prompts."""
    from llama2_pipeline.model import default_device, load_hf
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.training.gatt import adherence_by_turn, draw_dialogues, sample_turns
    from llama2_pipeline.training.preferences import torch_threads
    from llama2_pipeline.world import World

    ev = gatt["eval"]
    w = World.from_params({**world, "seed": seed})
    dialogues = draw_dialogues(prompts, ev["dialogues"], ev["turns"], seed, max_constraints=gatt["max_constraints"],
                               salt="gatt-eval")
    sampling = _sampling({"max_new_tokens": ev["max_new_tokens"], "batch_size": ev["batch_size"],
                          "temperature": 0.0}, seed)
    metrics: dict[str, float] = {}
    report: dict = {"turns": list(range(1, ev["turns"] + 1))}
    samples = [{"users": d["users"], "constraints": d["constraints"]} for d in dialogues]
    with torch_threads(gatt["num_threads"]):
        for name, folder in (("before", before), ("after", after)):
            model = load_hf(folder, device=default_device()).eval()
            answers = sample_turns(model, Tokenizer(Path(folder) / "tokenizer.model"), dialogues, sampling)
            adh = adherence_by_turn(dialogues, answers)
            report[name] = adh
            helpful = [w.helpfulness(u, a) for d, row in zip(dialogues, answers) for u, a in zip(d["users"], row)]
            metrics[f"gatt_{name}_helpfulness"] = sum(helpful) / len(helpful)
            for t, v in enumerate(adh["turn"], 1):
                metrics[f"gatt_{name}_adherence_turn{t}"] = v
            late = [v for v in adh["turn"][3:] if v is not None]
            metrics[f"gatt_{name}_adherence_turn4plus"] = sum(late) / len(late) if late else 0.0
            for c, values in adh["by_constraint"].items():
                metrics[f"gatt_{name}_adherence_{c}"] = sum(v for v in values if v is not None) / len(values)
            for s, row in zip(samples, answers):
                s[f"{name}_answers"] = row
    a1 = metrics["gatt_after_adherence_turn1"]
    metrics["gatt_turn4plus_over_turn1"] = metrics["gatt_after_adherence_turn4plus"] / a1 if a1 else 0.0
    metrics["gatt_helpfulness_change"] = metrics["gatt_after_helpfulness"] - metrics["gatt_before_helpfulness"]
    metrics.update({k: v for k, v in {**build_stats, **training}.items() if isinstance(v, (int, float))})
    metrics = {k: round(float(v), 6) for k, v in metrics.items()}
    return metrics, report, samples, plot_adherence(report)


def evaluate_chat(model: Path, sft_samples: list[dict], prompts: list[dict], world: dict, sft: dict, gatt: dict,
                  seed: int) -> dict[str, float]:
    """The GAtt model as a plain chat model: the held-out prompts answered with the SFT evaluation's
    settings (single turn, no system instruction) and judged like every other model
    (``gatt_model_helpfulness``, ``_safety``, ``_violation_rate``, ``_false_refusal_rate``, ...), and
    its win rate against the SFT model's answers to the same prompts (the annotator)."""
    from llama2_pipeline.evaluation import SamplingConfig, evaluate_model
    from llama2_pipeline.model import default_device, load_hf
    from llama2_pipeline.pipelines.sft.nodes import split_params
    from llama2_pipeline.tokenizer import Tokenizer
    from llama2_pipeline.training.preferences import torch_threads
    from llama2_pipeline.training.rlhf import win_rate
    from llama2_pipeline.world import World

    sft_answers = {row["id"]: row["sft_answer"] for row in sft_samples}
    missing = [p["id"] for p in prompts if p["id"] not in sft_answers]
    if missing:
        raise ValueError(f"sft_samples has no SFT answer for {len(missing)} held-out prompt(s), e.g. {missing[:3]}: "
                         "rerun the sft stage on the same prompts_eval")
    w = World.from_params({**world, "seed": seed})
    with torch_threads(gatt["num_threads"]):
        policy = load_hf(model, device=default_device()).eval()
        metrics, rows = evaluate_model(policy, Tokenizer(Path(model) / "tokenizer.model"), w, prompts,
                                       SamplingConfig.from_dict(split_params(sft, seed)[2]), "gatt_model")
    metrics["gatt_model_win_rate_vs_sft"] = win_rate(w, [p["prompt"] for p in prompts], [r["answer"] for r in rows],
                                                     [sft_answers[p["id"]] for p in prompts])
    return {k: round(float(v), 6) for k, v in metrics.items()}


def plot_adherence(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    turns = report["turns"]
    for name, label in (("before", "before GAtt (last RLHF round)"), ("after", "after GAtt")):
        ax.plot(turns, report[name]["turn"], marker="o", label=label)
    ax.set_xlabel("dialogue turn")
    ax.set_ylabel("answers following the system instruction")
    ax.set_ylim(0, 1)
    ax.set_xticks(turns)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Ghost Attention: instruction adherence by turn (held-out prompts)")
    fig.tight_layout()
    return fig
