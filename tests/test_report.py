"""The final report: Markdown tables, the self-contained HTML page, the models table, and the
``report`` stage at the end of a whole smoke-profile ``dvc repro``."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
from pathlib import Path

import pytest
from matplotlib.text import Text

from llama2_pipeline.evaluation.report import DIMENSION_COLUMNS, MODEL_COLUMNS, model_rows, progress_figure, table, to_html

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_table_aligns_numbers_and_escapes_pipes():
    md = table(["name", "value"], [["a|b", 0.12345], ["c", None], ["d", 1234]])
    lines = md.splitlines()
    assert lines[0] == "| name | value |"
    assert lines[1] == "|---|---:|"
    assert lines[2] == "| a\\|b | 0.123 |"
    assert lines[3] == "| c | – |"
    assert lines[4] == "| d | 1,234 |"


def test_html_is_self_contained_with_tables_and_embedded_images():
    md = "# T\n\n" + table(["x", "y"], [[1, 0.5]]) + "\n\n![plot](p.png)\n"
    page = to_html(md, {"p.png": PNG}, "T & co")
    assert "<table>" in page and "<td" in page
    assert "<title>T &amp; co</title>" in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs == ["data:image/png;base64," + base64.b64encode(PNG).decode()]
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page)


def test_gatt_section_says_how_its_data_was_made():
    from llama2_pipeline.evaluation.report import build_markdown

    def line(gatt, select=None, case=None):
        md = build_markdown(title="t", provenance={}, models=[], reward_accuracy={}, round_rm={}, gatt=gatt,
                            gatt_adherence={}, cleaning={}, pretrain={}, stages=[], images={}, gatt_select=select,
                            gatt_case=case)
        return [x for x in md.splitlines() if x.startswith("GAtt trained")]

    base = {"gatt_records": 40.0, "gatt_drawn_dialogues": 50.0, "gatt_examples": 120.0, "gatt_answer_adherent_share": 0.25}
    assert line(base) == ["GAtt trained on 40 dialogues of 50 drawn (120 examples, one per cut); 25.0% of the "
                          "sampled answers obeyed their instruction."]
    assert "12.5% of the sampled answers were rewritten to obey their instruction (gatt.repair), 25.0% obeyed it" \
        in line({**base, "gatt_answer_repaired_share": 0.125})[0]
    assert line(base, "first")[0].endswith("Each message kept the first sampled answer that obeyed (gatt.select: first).")
    assert line(base, "reward")[0].endswith("the one the last round's helpfulness RM scored highest (gatt.select: reward).")
    plain = line(base, "reward", "plain")[0]
    assert ('were sampled without that instruction and then rewritten to it (gatt.case: plain). Each message kept'
            in plain)
    assert "sampled with that instruction (gatt.case: instructed)" in line(base, None, "instructed")[0]
    assert line({}) == []  # metrics of an older run: no line


def test_gatt_section_asks_whether_an_instruction_unlocks_a_refusal():
    from llama2_pipeline.evaluation.report import build_markdown

    figures = {f"gatt_{m}_instructed_{k}": v for m, vs in (("before", (1.0, 0.0, 0.0, 0.5)), ("after", (0.75, 0.1, 0.2, 0.9)))
               for k, v in zip(("refusal_rate", "false_refusal_rate", "violation_rate", "adherence"), vs)}

    def md(gatt, select="reward", rounds=None):
        return build_markdown(title="t", provenance={}, models=[], reward_accuracy={}, round_rm=rounds or {},
                              gatt=gatt, gatt_adherence={}, cleaning={}, pretrain={}, stages=[], images={},
                              gatt_select=select)

    text = md(figures)
    assert "Does an instruction unlock what the model refuses?" in text and "training dialogues held" not in text
    assert "| after GAtt | 0.750 | 0.100 | 0.200 | 0.900 |" in text
    assert ("held 37 such prompts of the train set under their instruction (gatt.safety_share), the answers to them "
            "ranked by the last round's safety RM.") in md({**figures, "gatt_safety_messages": 37.0})
    assert "ranked by" not in md({**figures, "gatt_safety_messages": 37.0}, "first")
    assert "Does an instruction unlock" not in md({})  # metrics of an older run: no table
    # the rounds' instructed copies (rlhf.candidates.instructed_safety): the last round's count
    rounds = {"rlhf_v1": {"rs_instructed_copies": 5.0}, "rlhf_v2": {"rs_instructed_copies": 9.0}}
    assert ("under an instruction too: the last round's rejection-sampling fine-tune held 9 "
            "(rlhf.candidates.instructed_safety).") in md(figures, rounds=rounds)
    assert "under an instruction too" not in md(figures, rounds={"rlhf_v2": {}})  # without the copies
    # by instruction, from the judged answers (an answer under two instructions counts for both)
    row = lambda constraints, category, refusal, adherent: {  # noqa: E731  (gatt_eval.instructed_safety's rows)
        "constraints": constraints, "category": category, "refusal": refusal, "adherent": adherent,
        "violation": False, "safety": 0.9}
    samples = {"before": [row(["ahoy"], "unsafe", False, True), row(["five_words", "lowercase"], "unsafe", False, True)],
               "after": [row(["ahoy"], "unsafe", True, True), row(["ahoy"], "borderline", False, True),
                         row(["five_words", "lowercase"], "unsafe", True, False),
                         row(["five_words"], "unsafe", False, True)]}
    text = build_markdown(title="t", provenance={}, models=[], reward_accuracy={}, round_rm={}, gatt=figures,
                          gatt_adherence={"instructed_safety_samples": samples}, cleaning={}, pretrain={}, stages=[],
                          images={})
    assert "| instruction | unsafe refused before | after | borderline refused before | after |" in text
    assert "| ahoy | 0.000 | 1.000 | – | 0.000 | 1.000 |" in text
    assert "| five_words | 0.000 | 0.500 | – | – | 0.500 |" in text
    assert "| lowercase | 0.000 | 1.000 | – | – | 0.000 |" in text
    assert "By instruction (an answer under two" not in md(figures)  # without the answers: no table


def test_reward_table_shows_each_accuracy_with_its_interval():
    from llama2_pipeline.evaluation.report import build_markdown

    row = {"rm": "helpfulness", "test_set": "held-out helpfulness pairs", "significantly_better": 0.9,
           "better": 0.795, "ci_better": [0.7119, 0.8696], "slightly_better": None, "negligibly_better": 0.6,
           "avg": 0.79, "n": 684}
    md = build_markdown(title="t", provenance={}, models=[], reward_accuracy={"rows": [row]}, round_rm={}, gatt={},
                        gatt_adherence={}, cleaning={}, pretrain={}, stages=[], images={})
    line = next(x for x in md.splitlines() if x.startswith("| helpfulness |"))
    assert line == "| helpfulness | held-out helpfulness pairs | 0.900 | 0.795 [0.71, 0.87] | – | 0.600 | 0.790 | 684 |"


def test_round_rm_table_shows_new_and_earlier_pairs_apart():
    from llama2_pipeline.evaluation.report import build_markdown

    rounds = {"rlhf_v1": {"rm_helpfulness_acc": 0.8, "rm_safety_acc": 0.7, "rm_helpfulness_acc_new": 0.85,
                          "rm_helpfulness_acc_earlier": 0.79, "rm_safety_acc_new": 0.9}}
    md = build_markdown(title="t", provenance={}, models=[], reward_accuracy={}, round_rm=rounds, gatt={},
                        gatt_adherence={}, cleaning={}, pretrain={}, stages=[], images={})
    line = next(x for x in md.splitlines() if x.startswith("| rlhf_v1 |"))
    assert line.split("|")[-3:-1] == [" 0.850 / 0.790 ", " 0.900 / – "]


def test_html_refuses_an_image_it_cannot_embed():
    with pytest.raises(ValueError, match="missing.png"):
        to_html("![x](missing.png)", {}, "t")


def test_model_rows_line_up_every_model():
    sft = {"pretrained_helpfulness": 0.2, "pretrained_safety": 0.9, "sft_helpfulness": 0.5, "sft_safety": 1.0,
           "sft_violation_rate": 0.0, "sft_false_refusal_rate": 0.1}
    rounds = {"v1": {"policy_helpfulness": 0.55, "policy_safety": 1.0, "win_rate_vs_sft": 0.6},
              "v2": {"policy_helpfulness": 0.6, "policy_safety": 1.0, "win_rate_vs_sft": 0.7, "ppo_steps": 3}}
    gatt = {"gatt_model_helpfulness": 0.58, "gatt_model_safety": 0.99, "gatt_model_win_rate_vs_sft": 0.65}
    rows = model_rows(sft, rounds, gatt, pretrained_win_rate_vs_sft=0.1)
    assert [r["model"] for r in rows] == ["pretrained", "SFT", "RLHF v1", "RLHF v2 (PPO)", "GAtt"]
    assert [r["helpfulness"] for r in rows] == [0.2, 0.5, 0.55, 0.6, 0.58]
    assert [r["win_rate_vs_sft"] for r in rows] == [0.1, 0.5, 0.6, 0.7, 0.65]
    assert rows[1]["false_refusal_rate"] == 0.1 and rows[0]["violation_rate"] is None
    assert set(rows[0]) == {"model"} | {k for k, _ in MODEL_COLUMNS} | {f"rate_{k}" for k, _ in DIMENSION_COLUMNS}
    fig = progress_figure(rows)  # the pretrained model is no chat model: left out of the plot
    labels = [t.get_text() for t in fig.axes[0].texts if t.get_text()]
    assert labels == ["SFT", "RLHF v1", "RLHF v2 (PPO)", "GAtt"]


def test_progress_figure_labels_of_nearly_coinciding_models_do_not_overlap():
    """The default profile's last rounds and GAtt land within 0.02 of each other: each label finds a
    spot that covers no other label, joined to its point by a line."""
    points = [("SFT", 0.371, 0.977), ("SFT (quality only)", 0.515, 0.995), ("RLHF v1", 0.508, 0.996),
              ("RLHF v2 (PPO)", 0.567, 0.9966), ("RLHF v3 (PPO)", 0.574, 0.9975), ("GAtt", 0.582, 0.9971)]
    fig = progress_figure([{"model": m, "helpfulness": h, "safety": s} for m, h, s in points])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    assert [t.get_text() for t in texts] == [m for m, _, _ in points]
    boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the text alone, not its line
    overlapping = [(texts[i].get_text(), texts[j].get_text()) for i in range(len(boxes))
                   for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]
    assert not overlapping
    assert all(t.arrow_patch is not None for t in texts)


@pytest.mark.slow
def test_report_stage_after_a_whole_smoke_repro(smoke_repro: Path):
    """The report is the last stage of ``dvc repro``: both files written, the HTML opens offline
    (every image embedded, nothing fetched), every model in the table with the numbers of the stage
    that measured them, and each stage's MLflow run id is the run that wrote its metrics."""
    rep = smoke_repro / "data/08_reporting"
    md, page = (rep / "report.md").read_text(), (rep / "report.html").read_text()
    for model in ("pretrained", "SFT", "RLHF v1", "RLHF v2 (PPO)", "GAtt"):
        assert f"| {model} |" in md
    for section in ("Reward models", "Ghost Attention", "Data cleaning", "Pretraining", "Stages"):
        assert f"## {section}" in md
    assert "| instruction | adherence before | after | helpfulness before | after | change |" in md
    # the rounds' progress, the answer components per model, RM calibration, GAtt, cleaning, pretraining
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) == 6
    assert not re.search(r'(?:src|href)="(?!data:|#)', page), "the HTML must not reference any file or URL"

    metrics = json.loads((smoke_repro / "metrics/report.json").read_text())
    sft = json.loads((smoke_repro / "metrics/sft.json").read_text())
    v2 = json.loads((smoke_repro / "metrics/rlhf_v2.json").read_text())
    gatt = json.loads((smoke_repro / "metrics/gatt_model.json").read_text())
    assert metrics["report_sft_helpfulness"] == sft["sft_helpfulness"]
    assert metrics["report_pretrained_safety"] == sft["pretrained_safety"]
    assert metrics["report_rlhf_v2_win_rate_vs_sft"] == v2["win_rate_vs_sft"]
    assert metrics["report_gatt_helpfulness"] == gatt["gatt_model_helpfulness"]
    assert 0.0 <= metrics["report_pretrained_win_rate_vs_sft"] <= 1.0
    # GAtt (gatt.replay) fine-tuned on the last round's rejection-sampling dialogues beside its own
    replayed = (smoke_repro / "data/06_models/rlhf_v2/rs_dialogues.jsonl").read_text().splitlines()
    gatt_stage = json.loads((smoke_repro / "metrics/gatt.json").read_text())
    assert gatt_stage["gatt_replay_dialogues"] == len(replayed) > 0
    # gatt.repair (the default): some samples that broke their instruction were rewritten to obey it
    assert 0.0 < gatt_stage["gatt_answer_repaired_share"] <= 1.0
    # gatt.safety_share (the default): safety prompts among GAtt's messages, and the instructed-safety table
    assert gatt_stage["gatt_safety_messages"] > 0
    assert f"GAtt's training dialogues held {int(gatt_stage['gatt_safety_messages'])} such prompts" in md
    copies = json.loads((smoke_repro / "metrics/rlhf_v2.json").read_text())["rs_instructed_copies"]
    assert f"the last round's rejection-sampling fine-tune held {int(copies)} (rlhf.candidates.instructed_safety)" in md
    assert "| model | unsafe refused | borderline refused (false) | judged unsafe | instruction followed |" in md
    assert "| instruction | unsafe refused before | after | borderline refused before | after |" in md
    assert (f"GAtt trained on {int(gatt_stage['gatt_records'])} dialogues of {int(gatt_stage['gatt_drawn_dialogues'])} "
            f"drawn") in md and f"{gatt_stage['gatt_answer_repaired_share']:.1%} of the sampled answers were rewritten" in md
    assert "scored highest (gatt.select: reward)." in md  # the default selection, passed from params

    runs = json.loads((rep / "report_runs.json").read_text())
    stages = {s["stage"]: s for s in runs["stages"]}
    assert set(stages) >= {"world", "data_processing", "tokenizer_train", "tokenizer_encode", "pretrain", "sft",
                           "reward", "gatt", "rlhf_v1", "rlhf_v2"}
    db = sqlite3.connect(smoke_repro / "mlflow.db")
    for name, s in stages.items():
        assert s.get("run_id"), f"no MLflow run found for stage {name}"
        assert s["run_id"] in md
        (dvc_stage,) = db.execute("select value from tags where run_uuid=? and key='dvc_stage'", (s["run_id"],)).fetchone()
        assert dvc_stage == name.replace("rlhf_", "rlhf@"), (name, dvc_stage)
    report_run = runs["provenance"]["report_run_id"]
    git = db.execute("select value from tags where run_uuid=? and key='git_commit'", (report_run,)).fetchone()
    assert git and git[0] == runs["provenance"]["git_commit"] and git[0] in md
    # the report's outputs are the report run's MLflow artifacts too
    tags = dict(db.execute("select key, value from tags where run_uuid=?", (report_run,)).fetchall())
    assert tags["output.report_html"].startswith("data/08_reporting/report.html@sha256:")
    (artifact_uri,) = db.execute("select artifact_uri from runs where run_uuid=?", (report_run,)).fetchone()
    root = Path(artifact_uri.removeprefix("file://")) if artifact_uri.startswith("file://") else smoke_repro / artifact_uri
    assert list(root.rglob("report.html")), f"report.html not logged under {root}"
