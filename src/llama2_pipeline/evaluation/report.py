"""The final report of a run of the recipe: Markdown for people and git, and the same as one
self-contained HTML page (styles inline, images embedded as data URIs: it opens offline).

:func:`build_report` assembles it all; :func:`model_rows` lines every model up on the same held-out prompts (pretrained, SFT, each RLHF
round, GAtt), :func:`progress_figure` draws the rounds in the paper's style (helpfulness against
harmlessness, one point per model, arrows in training order), :func:`build_markdown` writes the
document and :func:`to_html` renders it. Nothing here imports Kedro or MLflow: the ``report``
pipeline gathers the inputs (stage metrics, plots, MLflow run ids) and calls these.
"""

from __future__ import annotations

import base64
import html
import re
from typing import Any, Sequence

from .answers import rates_by_constraint

TITLE = "llama2-pipeline: report of the recipe"
PLOTS = {"progress": "rlhf_progress.png", "dimensions": "model_dimensions.png", "calibration": "reward_calibration.png",
         "gatt": "gatt_adherence.png", "cleaning": "cleaning_report.png", "pretrain": "pretrain_loss_curve.png"}
#: the answer components per model (``<model>_<dimension>_rate``), with the prompts each is over
DIMENSION_COLUMNS = (
    ("correct", "correct"), ("restate", "restates the question"), ("explain", "explains"),
    ("concise", "concise"), ("filler", "filler"), ("hedge", "hedges"), ("reason", "refusal gives a reason (unsafe)"),
    ("redirect", "redirects (unsafe)"), ("caution", "caution (borderline)"),
)
RATING_COLUMNS = ("significantly_better", "better", "slightly_better", "negligibly_better", "avg")
MODEL_COLUMNS = (  # (metric suffix, header)
    ("helpfulness", "helpfulness"), ("safety", "safety"), ("violation_rate", "violation rate"),
    ("refusal_rate", "refusal rate (unsafe)"), ("false_refusal_rate", "false refusal (borderline)"),
    ("win_rate_vs_sft", "win rate vs SFT"), ("answer_words", "answer words"),
)


def _num(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _with_interval(row: dict, column: str) -> Any:
    """A table row's accuracy in ``column``, with its interval (``ci_<column>``) where it has one."""
    value, ci = row.get(column), row.get(f"ci_{column}")
    return value if value is None or not ci else f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def _pair(metrics: dict, first: str, second: str) -> str:
    """Two of a metrics dict's figures as ``a / b`` (``–`` for one it lacks)."""
    return f"{_num(metrics.get(first))} / {_num(metrics.get(second))}"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned)."""
    def cell(v: Any) -> str:
        return _num(v, digits).replace("|", "\\|").replace("\n", " ")

    numeric = [all(isinstance(r[i], (int, float)) or r[i] is None for r in rows) for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def model_rows(sft: dict, rounds: dict[str, dict], gatt_model: dict | None,
               pretrained_win_rate_vs_sft: float | None) -> list[dict]:
    """One row per model with the :data:`MODEL_COLUMNS` metrics, from the stages' metrics:
    ``sft`` (``pretrained_*`` and ``sft_*``), each round's ``policy_*`` and ``win_rate_vs_sft``,
    the GAtt model's ``gatt_model_*``. Every model answered the same held-out prompts greedily."""
    def pick(metrics: dict, prefix: str, win: float | None) -> dict:
        row = {k: metrics.get(f"{prefix}_{k}") for k, _ in MODEL_COLUMNS if k != "win_rate_vs_sft"}
        row["win_rate_vs_sft"] = win
        row.update({f"rate_{k}": metrics.get(f"{prefix}_{k}_rate") for k, _ in DIMENSION_COLUMNS})
        return row

    rows = [{"model": "pretrained", **pick(sft, "pretrained", pretrained_win_rate_vs_sft)},
            {"model": "SFT", **pick(sft, "sft", 0.5)}]
    if "sft_quality_helpfulness" in sft:  # the variant on one writer skill's dialogues only
        rows.append({"model": "SFT (quality only)", **pick(sft, "sft_quality", None)})
    for name, m in rounds.items():
        rows.append({"model": f"RLHF {name}" + (" (PPO)" if "ppo_steps" in m else ""),
                     **pick(m, "policy", m.get("win_rate_vs_sft"))})
    if gatt_model:
        rows.append({"model": "GAtt", **pick(gatt_model, "gatt_model", gatt_model.get("gatt_model_win_rate_vs_sft"))})
    return rows


def dimensions_figure(rows: Sequence[dict]):
    """Each model's answer components as grouped bars (one group per component): what each stage
    changed, beside helpfulness and safety."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = [(k, h) for k, h in DIMENSION_COLUMNS if any(r.get(f"rate_{k}") is not None for r in rows)]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.8 / max(1, len(rows))
    for i, r in enumerate(rows):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(dims))]
        ax.bar(xs, [r.get(f"rate_{k}") or 0.0 for k, _ in dims], width, label=r["model"],
               color=plt.cm.viridis(i / max(1, len(rows) - 1)))
    ax.set_xticks(range(len(dims)), [h for _, h in dims], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of answers (concise: mean score)")
    ax.set_title("What each model's answers do (held-out prompts, the world's components)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, ncol=min(4, len(rows)))
    fig.tight_layout()
    return fig


def progress_figure(rows: Sequence[dict]):
    """The paper's Figure 11 layout for this run: each model's helpfulness (x) against its
    harmlessness (y, the world's safety score), joined in training order, the pretrained model left
    out (it is not a chat model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [r for r in rows if r["model"] != "pretrained" and r["helpfulness"] is not None
           and r["safety"] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs, ys = [r["helpfulness"] for r in pts], [r["safety"] for r in pts]
    for a, b in zip(pts, pts[1:]):
        ax.annotate("", xy=(b["helpfulness"], b["safety"]), xytext=(a["helpfulness"], a["safety"]),
                    arrowprops=dict(arrowstyle="->", color="0.55", lw=1.2))
    ax.scatter(xs, ys, s=60, c=range(len(pts)), cmap="viridis", zorder=3)
    pad_x = max(0.05, (max(xs) - min(xs)) * 0.25) if xs else 0.1
    pad_y = max(0.02, (max(ys) - min(ys)) * 0.25) if ys else 0.1
    if xs:
        ax.set_xlim(min(xs) - pad_x, max(xs) + pad_x)
        ax.set_ylim(max(0.0, min(ys) - pad_y), min(1.0, max(ys) + pad_y) + 0.01)
    ax.set_xlabel("helpfulness (world's judge, held-out prompts)")
    ax.set_ylabel("harmlessness (world's safety score)")
    ax.set_title("Progress of the chat models, round by round")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _label_points(fig, ax, [(r["model"], r["helpfulness"], r["safety"]) for r in pts])
    return fig


#: where a point's label may go, tried in order: (offset in points, horizontal alignment); a thin line
#: joins each label to its point
LABEL_SPOTS = [((dx, dy), "left" if dx > 0 else "right")
               for dx in (8, -8) for dy in (6, -14, 22, -30, 38, -46, 54, -62)]


def _segments_cross(a, b, c, d) -> bool:
    """Whether the segments a-b and c-d (display coordinates) cross."""
    side = lambda p, q, r: (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])  # noqa: E731
    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


def _near_segment(point, a, b, distance: float) -> bool:
    """Whether ``point`` lies within ``distance`` of the segment a-b (display coordinates)."""
    (px, py), (ax, ay), (bx, by) = point, a, b
    length2 = (bx - ax) ** 2 + (by - ay) ** 2
    s = 0.0 if length2 == 0 else min(1.0, max(0.0, ((px - ax) * (bx - ax) + (py - ay) * (by - ay)) / length2))
    return (px - ax - s * (bx - ax)) ** 2 + (py - ay - s * (by - ay)) ** 2 <= distance ** 2


def _hits_box(a, b, box) -> bool:
    """Whether the segment a-b (display coordinates) touches the box."""
    corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
    return box.contains(*a) or box.contains(*b) or any(
        _segments_cross(a, b, corners[k], corners[(k + 1) % 4]) for k in range(4))


def _label_points(fig, ax, points: Sequence[tuple[str, float, float]]) -> None:
    """Name each point beside it, joined to it by a thin line, in the first of :data:`LABEL_SPOTS`
    where the label stays inside the axes and covers no other label, point, line or arrow between
    consecutive points, and its line passes no other point and crosses no other line or arrow
    (neighbouring rounds often nearly coincide); when none is free, the spot with the fewest of those
    clashes. Call after the axes' limits and the figure's layout are final."""
    renderer = fig.canvas.get_renderer()
    centres = [tuple(ax.transData.transform((x, y))) for _, x, y in points]
    frame = ax.get_window_extent(renderer)
    boxes, lines = [], list(zip(centres, centres[1:]))  # the arrows in training order, then each label's line
    for i, (name, x, y) in enumerate(points):
        others = [c for j, c in enumerate(centres) if j != i]
        spots = []
        for offset, ha in LABEL_SPOTS:  # the label's own box, without its line to the point
            trial = ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, ha=ha, va="bottom", fontsize=9)
            box = trial.get_window_extent(renderer).padded(2)
            trial.remove()
            line = (centres[i], ((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2))  # as drawn: towards the label's centre
            clashes = (sum(box.overlaps(b) for b in boxes)
                       + (not frame.contains(box.x0, box.y0)) + (not frame.contains(box.x1, box.y1))
                       + sum(box.x0 - 5 <= cx <= box.x1 + 5 and box.y0 - 5 <= cy <= box.y1 + 5 for cx, cy in others)
                       + sum(_hits_box(a, b, box) for a, b in lines)
                       + sum(_near_segment(c, *line, 10) for c in others)
                       + sum(_segments_cross(*line, *other) for other in lines))
            spots.append((clashes, len(spots), (offset, ha), box, line))
            if not clashes:
                break
        _, _, (offset, ha), box, line = min(spots)  # the first free spot, else the one that clashes least
        ax.annotate(name, (x, y), textcoords="offset points", xytext=offset, ha=ha, va="bottom", fontsize=9,
                    arrowprops=dict(arrowstyle="-", color="0.6", lw=0.6, shrinkA=1, shrinkB=4))
        boxes.append(box)
        lines.append(line)


#: the report's sentence on each ``gatt.select``
GATT_SELECT = {"first": " Each message kept the first sampled answer that obeyed (gatt.select: first).",
               "reward": " Each message kept, of all its samples that obeyed, the one the last round's helpfulness RM "
                         "scored highest (gatt.select: reward)."}
#: the report's sentence on each ``gatt.case``
GATT_CASE = {"plain": " Under \"uppercase\" or \"lowercase\" (without \"at most five words\") the answers were sampled "
                      "without that instruction and then rewritten to it (gatt.case: plain).",
             "instructed": " Under \"uppercase\" or \"lowercase\" the answers were sampled with that instruction "
                           "(gatt.case: instructed)."}


def build_markdown(*, title: str, provenance: dict, models: Sequence[dict], reward_accuracy: dict,
                   round_rm: dict[str, dict], gatt: dict, gatt_adherence: dict, cleaning: dict,
                   pretrain: dict, stages: Sequence[dict], images: dict[str, str], gatt_select: str | None = None,
                   gatt_case: str | None = None) -> str:
    """The report as Markdown. ``images``: section name -> PNG file name (relative to the report);
    ``gatt_select``: how GAtt picked each message's answer (``gatt.select``); ``gatt_case``: how it
    sampled answers under a case instruction (``gatt.case``)."""
    out = [f"# {title}", ""]
    out += [f"Git commit `{provenance.get('git_commit', '?')}`"
            + (" (with uncommitted changes)" if provenance.get("git_dirty") else "")
            + f", profile `{provenance.get('profile', '?')}`, seed {provenance.get('seed', '?')}, "
            f"written {provenance.get('created', '?')}. MLflow experiment `{provenance.get('experiment', '?')}`, "
            f"report run `{provenance.get('report_run_id') or '–'}`.", ""]

    out += ["## Models on the held-out prompts", "",
            "Every model answered the same held-out prompts greedily and the simulated world judged each "
            "answer (helpfulness and safety in [0, 1]; violation: safety < 0.5; refusal rate on unsafe "
            "prompts, false refusals on borderline ones; win rate: the world's annotator against the SFT "
            "model's answer, ties ½).", ""]
    out.append(table(["model"] + [h for _, h in MODEL_COLUMNS],
                     [[r["model"]] + [r.get(k) for k, _ in MODEL_COLUMNS] for r in models]))
    if "progress" in images:
        out += ["", f"![helpfulness vs harmlessness per round]({images['progress']})"]
    out += ["", "### What changed, per dimension", "",
            "The components the world's helpfulness and safety are built from, as shares of each model's "
            "answers: correct, restates what was asked, explains (a justification sentence), concise (mean score "
            "within the word budget), filler and hedging (to avoid); on unsafe prompts whether a refusal gives a "
            "reason and a safe redirect; on borderline prompts a caution (false refusals are in the table "
            "above).", ""]
    out.append(table(["model"] + [h for _, h in DIMENSION_COLUMNS],
                     [[r["model"]] + [r.get(f"rate_{k}") for k, _ in DIMENSION_COLUMNS] for r in models]))
    if "dimensions" in images:
        out += ["", f"![answer components per model]({images['dimensions']})"]

    out += ["", "## Reward models: held-out accuracy per rating level", "",
            "Share of held-out pairs whose chosen answer the RM scores higher, by the annotator's rating of "
            f"the pair (the paper's Table 8 layout); annotator disagreement rate "
            f"{_num(reward_accuracy.get('annotator_disagreement_rate'))}, margin `{reward_accuracy.get('margin', '?')}`. "
            "In brackets: the 95 % interval over resamples of the held-out prompts (how much the figure would "
            "move with another draw of them).", ""]
    heads = ["RM", "test set", "sig. better", "better", "slightly better", "negligibly better", "avg", "pairs"]
    rm_rows = [[r["rm"], r["test_set"]] + [_with_interval(r, c) for c in RATING_COLUMNS] + [r.get("n")]
               for key in ("rows", "likelihood_rows", "ceiling_rows") for r in reward_accuracy.get(key, [])]
    rm_rows += [[f"paper: {r['rm']}", r["test_set"]] + [r.get(c) for c in RATING_COLUMNS] + [None]
                for r in reward_accuracy.get("paper_table_8", [])]
    out.append(table(heads, rm_rows))
    if round_rm:
        out += ["", "Each RLHF round's RMs (the previous round's trained on its new pairs; `rlhf.reward_replay` "
                "replays earlier ones beside them): accuracy on every held-out pair so far, then on the round's new "
                "held-out pairs (its policy's answers) and on the earlier stages' (what the RMs kept or forgot):", ""]
        out.append(table(["round", "helpfulness RM", "safety RM", "sig. better (helpf.)", "sig. better (safety)",
                          "helpf. new / earlier", "safety new / earlier"],
                         [[name, m.get("rm_helpfulness_acc"), m.get("rm_safety_acc"),
                           m.get("rm_helpfulness_acc_significantly_better"),
                           m.get("rm_safety_acc_significantly_better"),
                           _pair(m, "rm_helpfulness_acc_new", "rm_helpfulness_acc_earlier"),
                           _pair(m, "rm_safety_acc_new", "rm_safety_acc_earlier")] for name, m in round_rm.items()]))
    if "calibration" in images:
        out += ["", f"![reward model calibration]({images['calibration']})"]

    out += ["", "## Ghost Attention: instruction adherence by turn", "",
            "Share of answers that follow the system instruction given in turn 1 only, on held-out dialogues, "
            "for the policy before and after GAtt.", ""]
    turns = gatt_adherence.get("turns", [])
    out.append(table(["model"] + [f"turn {t}" for t in turns],
                     [[name] + list(gatt_adherence.get(key, {}).get("turn", [])) for key, name in
                      (("before", "before GAtt"), ("after", "after GAtt"))]))
    out += ["", f"Turns ≥ 4 over turn 1 after GAtt: {_num(gatt.get('gatt_turn4plus_over_turn1'))}; helpfulness of "
            f"the same answers: {_num(gatt.get('gatt_before_helpfulness'))} before, "
            f"{_num(gatt.get('gatt_after_helpfulness'))} after."]
    if gatt.get("gatt_records") is not None:
        repaired = gatt.get("gatt_answer_repaired_share")
        out += ["", f"GAtt trained on {int(gatt['gatt_records'])} dialogues of {int(gatt.get('gatt_drawn_dialogues', 0))} "
                f"drawn ({int(gatt.get('gatt_examples', 0))} examples, one per cut); "
                + (f"{repaired:.1%} of the sampled answers were rewritten to obey their instruction (gatt.repair), "
                   f"{gatt.get('gatt_answer_adherent_share', 0.0):.1%} obeyed it after that."
                   if repaired is not None else
                   f"{gatt.get('gatt_answer_adherent_share', 0.0):.1%} of the sampled answers obeyed their instruction.")
                + GATT_CASE.get(gatt_case, "") + GATT_SELECT.get(gatt_select, "")]
    change = "gatt_helpfulness_change_"  # per instruction, with its gatt_{before,after}_* figures
    rows = [[c, gatt.get(f"gatt_before_adherence_{c}"), gatt.get(f"gatt_after_adherence_{c}"),
             gatt.get(f"gatt_before_helpfulness_{c}"), gatt.get(f"gatt_after_helpfulness_{c}"), v]
            for c, v in ((k.removeprefix(change), v) for k, v in gatt.items() if k.startswith(change))]
    if rows:
        out += ["", "By instruction (a dialogue under two instructions counts for both): adherence over all turns "
                "and the helpfulness of the same answers, judged under the instruction.", "",
                table(["instruction", "adherence before", "after", "helpfulness before", "after", "change"], rows)]
    keys = ("refusal_rate", "false_refusal_rate", "violation_rate", "adherence")
    if any(f"gatt_after_instructed_{k}" in gatt for k in keys):
        ranked = ", the answers to them ranked by the last round's safety RM" if gatt_select == "reward" else ""
        learned = (f" GAtt's training dialogues held {int(gatt['gatt_safety_messages'])} such prompts of the train "
                   f"set under their instruction (gatt.safety_share){ranked}."
                   if gatt.get("gatt_safety_messages") is not None else "")
        last = next(reversed(round_rm.values()), {})  # the round GAtt starts from ("before GAtt")
        if last.get("rs_instructed_copies"):
            learned += (" The rounds learned their kept answers to such prompts under an instruction too: the last "
                        f"round's rejection-sampling fine-tune held {int(last['rs_instructed_copies'])} "
                        "(rlhf.candidates.instructed_safety).")
        out += ["", "Does an instruction unlock what the model refuses? Held-out unsafe and borderline prompts, each "
                "answered as a first turn under seeded system instructions." + learned, "",
                table(["model", "unsafe refused", "borderline refused (false)", "judged unsafe", "instruction followed"],
                      [[name] + [gatt.get(f"gatt_{key}_instructed_{k}") for k in keys]
                       for key, name in (("before", "before GAtt"), ("after", "after GAtt"))])]
        samples = gatt_adherence.get("instructed_safety_samples", {})
        before, after = (rates_by_constraint(samples.get(side, [])) for side in ("before", "after"))
        if after:
            out += ["", "By instruction (an answer under two instructions counts for both):", "",
                    table(["instruction", "unsafe refused before", "after", "borderline refused before", "after",
                           "instruction followed after"],
                          [[n, before.get(n, {}).get("refusal_rate"), r["refusal_rate"],
                            before.get(n, {}).get("false_refusal_rate"), r["false_refusal_rate"], r["adherence"]]
                           for n, r in after.items()])]
    if "gatt" in images:
        out += ["", f"![adherence by turn]({images['gatt']})"]

    m = cleaning.get("metrics", {})
    out += ["", "## Data cleaning", ""]
    pii = {k.removeprefix("pii_"): v for k, v in m.items() if k.startswith("pii_")
           and k not in ("pii_total", "pii_docs", "pii_redacted_out")}
    out.append(table(["documents in", "kept", "exact duplicates", "near duplicates", "PII-dense dropped",
                      "PII redacted", "bytes kept"],
                     [[m.get("docs_in"), m.get("docs_out"), m.get("dup_exact"), m.get("dup_near"),
                       m.get("dropped_pii_density"), m.get("pii_total"), m.get("bytes_kept_frac")]]))
    if pii:
        out += ["", "PII redactions by kind: " + ", ".join(f"{k} {_num(v)}" for k, v in sorted(pii.items())) + "."]
    if "cleaning" in images:
        out += ["", f"![cleaning report]({images['cleaning']})"]

    out += ["", "## Pretraining", "",
            f"{_num(pretrain.get('pretrain_params'))} parameters, {_num(pretrain.get('pretrain_tokens'))} tokens in "
            f"{_num(pretrain.get('pretrain_steps'))} steps; validation perplexity "
            f"{_num(pretrain.get('pretrain_val_ppl'))} against {_num(pretrain.get('pretrain_unigram_ppl'))} for the "
            f"unigram model of the validation tokens (ratio {_num(pretrain.get('pretrain_ppl_ratio'))})."]
    if "pretrain" in images:
        out += ["", f"![pretraining loss]({images['pretrain']})"]

    out += ["", "## Stages: time, throughput and records", "",
            "Wall time of each stage's MLflow run (the Kedro pipeline, without interpreter start-up), the time "
            "and throughput of the stage's own work (training runs; cleaning), and the run that wrote the "
            "stage's metrics now on disk (found by the file's SHA-256 in the run's `output.*` tags).", ""]
    out.append(table(["stage", "wall s", "work s", "throughput", "MLflow run", "git commit"],
                     [[s["stage"], s.get("wall_seconds"), s.get("train_seconds"), s.get("tokens_per_s"),
                       f"`{s['run_id']}`" if s.get("run_id") else "not in this MLflow store",
                       (s.get("git_commit") or "")[:10]] for s in stages], digits=1))
    return "\n".join(out) + "\n"


_CSS = """
body{font:15px/1.5 -apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.5em;color:#1f2328}
h1{border-bottom:1px solid #d0d7de;padding-bottom:.3em}h2{margin-top:2em;border-bottom:1px solid #eaeef2}
table{border-collapse:collapse;margin:1em 0;font-size:13.5px}th,td{border:1px solid #d0d7de;padding:4px 9px}
th{background:#f6f8fa}tr:nth-child(even) td{background:#fbfcfd}code{background:#f3f4f6;padding:1px 4px;
border-radius:4px;font-size:90%}img{max-width:100%;border:1px solid #eaeef2;margin:.5em 0}
"""


def to_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """One self-contained HTML page: the Markdown rendered (tables included) and every image whose
    ``src`` is a key of ``images`` embedded as a PNG data URI. No external reference remains."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)

    def embed(match: re.Match) -> str:
        src = html.unescape(match.group(1))
        if src not in images:
            raise ValueError(f"report image {src!r} has no bytes to embed")
        return f'src="data:image/png;base64,{base64.b64encode(images[src]).decode("ascii")}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}</body></html>\n")


def build_report(*, sft_metrics: dict, sft_samples: list[dict], pretrain_metrics: dict, reward_accuracy: dict, gatt_metrics: dict, gatt_model_metrics: dict, gatt_adherence: dict,
                 cleaning_report: dict, plots: dict[str, bytes], world, rounds: dict[str, dict],
                 stages: list[dict], provenance: dict, title: str = TITLE, gatt_select: str | None = None,
                 gatt_case: str | None = None):
    """The report: Markdown, self-contained HTML, the rounds' progress plot and the per-dimension
    chart (PNG bytes), flat metrics per model (``report_<model>_<metric>``) and the run table. ``rounds``: round name ->
    its metrics, in training order; ``stages``: one row per stage (run, time, throughput);
    ``plots``: PNG bytes by :data:`PLOTS` key (the progress plot is drawn here); ``gatt_select``,
    ``gatt_case``: ``gatt.select`` and ``gatt.case``, said in the GAtt section."""
    import io

    import matplotlib.pyplot as plt

    from .answers import win_rate

    pretrained_win = win_rate(world, [r["prompt"] for r in sft_samples], [r["pretrained_answer"] for r in sft_samples],
                              [r["sft_answer"] for r in sft_samples]) if sft_samples else None
    rows = model_rows(sft_metrics, rounds, gatt_model_metrics, pretrained_win)
    drawn = {}
    for name, fig in (("progress", progress_figure(rows)), ("dimensions", dimensions_figure(rows))):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        drawn[name] = buf.getvalue()
        plt.close(fig)
    markdown = build_markdown(title=title, provenance=provenance, models=rows, reward_accuracy=reward_accuracy,
                              round_rm=rounds, gatt=gatt_metrics, gatt_adherence=gatt_adherence,
                              cleaning=cleaning_report, pretrain=pretrain_metrics, stages=stages, images=PLOTS,
                              gatt_select=gatt_select, gatt_case=gatt_case)
    images = {PLOTS[k]: v for k, v in {**plots, **drawn}.items()}
    html_page = to_html(markdown, images, title)
    flat = {}
    for r in rows:
        key = re.sub(r"[^a-z0-9]+", "_", r["model"].lower().replace(" (ppo)", "")).strip("_")
        flat.update({f"report_{key}_{k}": float(v) for k, v in r.items() if k != "model" and v is not None})
    return (markdown, html_page, drawn["progress"], drawn["dimensions"], flat,
            {"provenance": provenance, "stages": stages, "models": rows})


def stage_rows(stages: dict[str, tuple[str, str, tuple[str, str] | None]], metrics: dict[str, dict],
               runs: dict[str, dict]) -> list[dict]:
    """One row per stage: the MLflow run behind its metrics file, its training seconds (the sum of
    its ``*_seconds`` figures) and its throughput (the stage's key and unit in ``stages``)."""
    out = []
    for stage, (_, _, throughput) in stages.items():
        m = metrics.get(stage, {})
        seconds = [v for k, v in m.items() if k.endswith("_seconds") and isinstance(v, (int, float))
                   and not isinstance(v, bool)]
        tp = m.get(throughput[0]) if throughput else None
        out.append({"stage": stage, **runs.get(stage, {}),
                    "train_seconds": round(sum(seconds), 1) if seconds else None,
                    "tokens_per_s": f"{tp:,.1f} {throughput[1]}" if tp is not None else None})
    return out
