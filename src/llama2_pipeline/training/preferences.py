"""Preference data for the reward models: the record format, collection, merging, splitting, mixing.

Every RLHF round runs the same four steps on this module (the ``reward`` pipeline's nodes):

* :func:`collect_preferences`: answer the world's train prompts with the newest policy, one
  sample per temperature, and with a second model variant (the pretrained model, or an earlier
  round's policy): the paper diversifies its pairs by temperature *and* model variant. The
  world's reference answer is a further candidate, and the world's annotator compares pairs of
  candidates (``sample_sample``: every two samples; ``sample_reference``: each sample against the
  reference; on safety-tagged prompts ``sample_refusal``: each sample against a bare refusal, and
  ``sample_full_refusal``: against a refusal with its reason and a redirect). Pairs the world
  scores exactly equal are left out with ``drop_ties``: their label would be the annotator's coin
  flip (two correct answers worded apart, two refusals), which no RM can learn and which caps
  held-out accuracy at chance for them.
* :func:`merge_preferences`: the accumulated data of earlier rounds (or a user's file) + a new batch.
* :func:`split_preferences`: train / held-out, disjoint by prompt (a seeded hash of the prompt).
* :func:`mix_preferences`: the paper's per-RM data mix (the safety RM sees all safety pairs and
  some helpfulness pairs, and the reverse), used by the training step.

The record format (JSONL; :func:`normalise_preference`): ``prompt`` (a user message) or
``messages`` (a conversation ending with a user turn), ``chosen``, ``rejected`` (the answers),
``rating`` (one of :data:`RATINGS`; missing means ``negligibly_better``: unknown strength, margin
0; the paper's spellings "significantly better", "unsure", ... are accepted), ``category``
(``helpfulness`` | ``safety``; missing means ``helpfulness``); other fields are kept (collected
pairs carry ``source`` and ``prompt_id``). ``chosen``/``rejected`` may also be whole
conversations ending with the assistant's answer (UltraFeedback-style exports): their shared
prefix becomes ``messages``. Errors name the source, the row and the field.

Nothing here imports Kedro or MLflow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import random
from typing import Any, Iterable, Sequence

import numpy as np

from ..tokenizer import ChatFormatError, validate_messages
from ..world.tasks import BARE_REFUSAL, HARMS, REFUSAL, is_refusal
from .config import CATEGORIES, PreferenceConfig

log = logging.getLogger(__name__)

RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better")
_RATING_ALIASES = {"significantly better": "significantly_better", "slightly better": "slightly_better",
                   "negligibly better": "negligibly_better", "unsure": "negligibly_better",
                   "negligibly better / unsure": "negligibly_better"}


class PreferenceError(ValueError):
    """A preference record that does not follow the format; the message names source, row and field."""


# --------------------------------------------------------------------------------------------
# The record format
# --------------------------------------------------------------------------------------------


def _answer_of(value: Any, field: str, where: str) -> tuple[str, list | None]:
    """(answer text, conversation before it or None) of a ``chosen``/``rejected`` value."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        last = value[-1]
        if last.get("role") != "assistant" or not isinstance(last.get("content"), str):
            raise PreferenceError(f"{where}: field '{field}' is a message list whose last message is not "
                                  "the assistant's answer")
        return last["content"], list(value[:-1])
    raise PreferenceError(f"{where}: field '{field}' is {type(value).__name__} {str(value)[:60]!r}, expected a "
                          "string (the answer) or a list of messages ending with the assistant's answer")


def normalise_preference(record: Any, *, source: str = "preferences", row: int | None = None) -> dict:
    """One record in the project's format (see the module docstring), checked; extra fields kept.

    Raises :class:`PreferenceError` naming ``source``, ``row`` and the field.
    """
    where = source if row is None else f"{source}, row {row}"
    if not isinstance(record, dict):
        raise PreferenceError(f"{where}: expected an object with prompt/chosen/rejected, got "
                              f"{type(record).__name__}")
    missing = [k for k in ("chosen", "rejected") if record.get(k) is None]
    if missing:
        raise PreferenceError(f"{where}: missing field(s) {missing}; a preference needs 'prompt' (or 'messages'), "
                              f"'chosen' and 'rejected' (optional 'rating', 'category'); got fields {sorted(record)}")
    chosen, prefix_c = _answer_of(record["chosen"], "chosen", where)
    rejected, prefix_r = _answer_of(record["rejected"], "rejected", where)
    if prefix_c is not None and prefix_r is not None and prefix_c != prefix_r:
        raise PreferenceError(f"{where}: the 'chosen' and 'rejected' conversations differ before the answer")
    prefix = prefix_c if prefix_c is not None else prefix_r
    out = {k: v for k, v in record.items() if k not in ("prompt", "messages", "chosen", "rejected")}
    messages, prompt = record.get("messages"), record.get("prompt")
    if isinstance(prompt, list) and messages is None:  # a conversation under "prompt"
        messages, prompt = prompt, None
    if messages is None and prefix:
        messages = prefix
    if messages is not None:
        try:
            validate_messages(messages, for_generation=True, record=where)
        except ChatFormatError as e:
            raise PreferenceError(f"field 'messages' of {e}") from None
        if len(messages) == 1:  # one user message: the plain form
            out["prompt"] = messages[0]["content"]
        else:
            out["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif isinstance(prompt, str) and prompt.strip():
        out["prompt"] = prompt
    else:
        raise PreferenceError(f"{where}: field 'prompt' is {prompt!r}, expected a non-empty string (or "
                              "'messages', a conversation ending with a user turn)")
    out["chosen"], out["rejected"] = chosen, rejected
    rating = record.get("rating")
    if rating is None or rating == "" or (isinstance(rating, float) and math.isnan(rating)):
        rating = "negligibly_better"  # unknown strength: no margin
    elif isinstance(rating, str) and rating.strip().lower() in _RATING_ALIASES:
        rating = _RATING_ALIASES[rating.strip().lower()]
    if rating not in RATINGS:
        raise PreferenceError(f"{where}: field 'rating' is {rating!r}, expected one of {list(RATINGS)} (or missing)")
    out["rating"] = rating
    category = record.get("category")
    if category is None or category == "" or (isinstance(category, float) and math.isnan(category)):
        category = "helpfulness"
    if category not in CATEGORIES:
        raise PreferenceError(f"{where}: field 'category' is {category!r}, expected one of {list(CATEGORIES)}")
    out["category"] = category
    return out


def validate_preferences(records: Iterable[Any] | None, source: str = "preferences",
                         rows: Sequence[int] | None = None) -> list[dict]:
    """Every record normalised (:func:`normalise_preference`); ``rows`` are the row numbers to
    name in errors (default 1, 2, ...). Pairs whose two answers are the same text carry no
    preference and are dropped (with a warning). ``None`` is no records."""
    out, same = [], 0
    for i, record in enumerate(records or []):
        rec = normalise_preference(record, source=source, row=rows[i] if rows is not None else i + 1)
        if rec["chosen"].strip() == rec["rejected"].strip():
            same += 1
            continue
        out.append(rec)
    if same:
        log.warning("%s: dropped %d pair(s) whose chosen and rejected answers are identical", source, same)
    return out


def prompt_key(record: dict) -> str:
    """The prompt (or conversation) a record answers, as one string: the unit of the held-out split."""
    if record.get("messages"):
        return json.dumps(record["messages"], sort_keys=True, ensure_ascii=False)
    return record["prompt"]


# --------------------------------------------------------------------------------------------
# Collect, merge, split, mix
# --------------------------------------------------------------------------------------------


def collect_preferences(policy_dir, tokenizer, prompts: Sequence[dict], world, sampling: PreferenceConfig, seed: int,
                        *, variant_dir=None, num_threads: int = 0, progress: bool = True,
                        stats: dict | None = None) -> list[dict]:
    """New preference pairs: the policy's answers to ``prompts`` compared by the world's annotator.

    Args:
        policy_dir: HF folder of the policy (SFT model, or the newest RLHF model).
        tokenizer: a :class:`~llama2_pipeline.tokenizer.Tokenizer`, or its ``.model`` file / folder.
        prompts: records with ``prompt`` (and ``id``, ``reference`` when known): ``prompts_train``.
        world: a :class:`~llama2_pipeline.world.World` (the annotator).
        sampling: :class:`PreferenceConfig`: ``collect`` (false: return no pairs), ``temperatures``
            (one policy sample per temperature), ``variant_temperatures`` (one sample of
            ``variant_dir``'s model per temperature), ``safety_samples`` (that many of each on a
            safety-tagged prompt, all compared with each other), ``top_p``, ``max_new_tokens``, ``batch_size``,
            ``max_prompts`` (0 = all; else a seeded sample), ``pairs`` (kinds of pairs), ``drop_ties``.
        seed: the run's seed (prompt sample, sampling).
        variant_dir: HF folder of the second model variant (None: the policy's samples only).
        num_threads: torch CPU threads while sampling (0 = leave torch's setting).
        stats: if given, filled with counts: ``pairs``, ``ties_dropped``, ``identical_skipped``,
            ``pairs_<source>`` per pair kind.

    Returns records ``prompt, chosen, rejected, rating, category, source, prompt_id``. Pairs of
    two identical answers are skipped (no preference). Deterministic for its inputs.
    """
    from ..evaluation.answers import SamplingConfig
    from ..tokenizer import Tokenizer

    if not sampling.collect:
        return []
    tok = tokenizer if hasattr(tokenizer, "encode_batch") else Tokenizer(tokenizer)
    prompts = [p for p in prompts if isinstance(p, dict) and p.get("prompt")]
    n = sampling.max_prompts
    if n and n < len(prompts):
        keep = set(random.Random(f"reward-prompts-{seed}").sample(range(len(prompts)), n))
        prompts = [p for i, p in enumerate(prompts) if i in keep]
    if not prompts:
        raise ValueError("collect_preferences got no prompts (records with a 'prompt' field)")
    runs = [("policy", policy_dir, sampling.temperatures)]
    if variant_dir is not None and sampling.variant_temperatures:
        runs.append(("variant", variant_dir, sampling.variant_temperatures))
    template = SamplingConfig(max_new_tokens=sampling.max_new_tokens, top_p=sampling.top_p,
                              batch_size=sampling.batch_size)
    answers = sample_answers(runs, tok, [p["prompt"] for p in prompts], template, seed, num_threads=num_threads,
                             progress=progress)
    # the safety RM's pairs come from few prompts: more answers to each of them, pooled with the first
    safety = [i for i, p in enumerate(prompts) if p.get("safety")]
    if safety and sampling.safety_samples > 1:
        again = [(label, folder, list(temps) * (sampling.safety_samples - 1)) for label, folder, temps in runs]
        more = sample_answers(again, tok, [prompts[i]["prompt"] for i in safety], template, seed, num_threads=num_threads,
                              progress=progress, first=sum(len(temps) for _, _, temps in runs), desc="safety prompts")
        for i, extra in zip(safety, more):
            answers[i] = answers[i] + extra
    out, counts = annotate_answers(world, prompts, answers, sampling.pairs, seed, drop_ties=sampling.drop_ties)
    counts["pairs"] = len(out)
    log.info("collected %d preference pairs (%s)", len(out), ", ".join(f"{k} {v}" for k, v in counts.items()))
    if stats is not None:
        stats.update(counts)
    return out


def sample_answers(runs: Sequence[tuple[str, Any, Sequence[float]]], tokenizer, texts: Sequence[str], sampling,
                   seed: int, *, num_threads: int = 0, progress: bool = True, first: int = 0,
                   desc: str = "") -> list[list[str]]:
    """Answers to ``texts``, per prompt one per (model, temperature): ``runs`` are ``(label, HF
    folder, temperatures)``; ``sampling`` is a :class:`~llama2_pipeline.evaluation.SamplingConfig`
    giving ``max_new_tokens``, ``batch_size``, ``top_p``. Sample j (over all runs, in order) is
    seeded ``seed * 1000 + first + j``. Returns ``answers[i][j]``."""
    from ..evaluation.answers import generate_answers
    from ..model import default_device, load_hf

    device = default_device()
    samples, k = [], first
    with torch_threads(num_threads):
        for label, folder, temps in runs:
            model = load_hf(folder, device=device).eval()
            for temperature in temps:
                cfg = dataclasses.replace(sampling, temperature=float(temperature), seed=seed * 1000 + k)
                k += 1
                answers = generate_answers(model, tokenizer, list(texts), cfg, progress=progress,
                                           desc=f"{label} T={temperature}" + (f" ({desc})" if desc else ""))
                samples.append([a["answer"] for a in answers])
            del model
    return [[s[i] for s in samples] for i in range(len(texts))]


def annotate_answers(world, prompts: Sequence[dict], answers: Sequence[Sequence[str]], kinds: Sequence[str],
                     seed: int, *, drop_ties: bool = False, max_pairs: int = 0) -> tuple[list[dict], dict[str, int]]:
    """The world's annotator on pairs of ``answers[i]`` (the answers to ``prompts[i]``): every two
    of them (``sample_sample``; at most ``max_pairs`` per prompt, a seeded sample, if > 0), each
    against the prompt's reference (``sample_reference``), and on safety-tagged prompts each
    against a bare refusal (``sample_refusal``) or against a refusal with its reason and a redirect
    (``sample_full_refusal``, :func:`full_refusal`).
    Returns (pair records, counts); identical answers are skipped, exact ties dropped if asked."""
    counts = {"ties_dropped": 0, "identical_skipped": 0, **{f"pairs_{kind}": 0 for kind in kinds}}
    out = []
    for i, (p, options) in enumerate(zip(prompts, answers)):
        candidates: list[tuple[str, str, str]] = []
        if "sample_sample" in kinds:
            pairs = [(a, b) for a in range(len(options)) for b in range(a + 1, len(options))]
            if 0 < max_pairs < len(pairs):
                pairs = sorted(random.Random(f"reward-pairs-{seed}-{p['prompt']}").sample(pairs, max_pairs))
            candidates += [(options[a], options[b], "sample_sample") for a, b in pairs]
        reference = p.get("reference")
        if "sample_reference" in kinds and isinstance(reference, str) and reference.strip():
            order = random.Random(f"reward-order-{seed}-{p['prompt']}")
            for a in options:
                candidates.append((a, reference, "sample_reference") if order.random() < 0.5
                                  else (reference, a, "sample_reference"))
        # the paper's borderline/adversarial contrast, on a safety-tagged prompt: each answer against
        # a bare refusal (better than compliance with harm, worse than helping safely), and against a
        # polite one with its reason and a redirect (the refusal a policy learns from the unsafe
        # prompts): the best answer to a harmful request, a false refusal of a borderline one however
        # polite, which the bare refusal alone never shows the RMs
        for kind, tag in (("sample_refusal", "refusal"), ("sample_full_refusal", "full-refusal")):
            if kind in kinds and p.get("safety"):
                refusal = BARE_REFUSAL if kind == "sample_refusal" else full_refusal(p, seed)
                order = random.Random(f"reward-{tag}-{seed}-{p['prompt']}")
                for a in options:
                    candidates.append((a, refusal, kind) if order.random() < 0.5 else (refusal, a, kind))
        for a, b, kind in candidates:
            if a.strip() == b.strip():
                counts["identical_skipped"] += 1
                continue
            c = world.compare(p["prompt"], a, b)
            if drop_ties and c.gap == 0:
                counts["ties_dropped"] += 1
                continue
            counts[f"pairs_{kind}"] += 1
            out.append({"prompt": p["prompt"], "chosen": c.chosen, "rejected": c.rejected, "rating": c.rating,
                        "category": c.category, "source": kind, "prompt_id": p.get("id", i)})
    return out, counts


def full_refusal(prompt: dict, seed: int) -> str:
    """The refusal with its reason and a redirect for a safety-tagged prompt: its reference where that
    is a refusal (an unsafe prompt's ideal answer), else the reasoned refusal with a redirect of the
    harm taxonomy drawn for the prompt (seeded), as an over-cautious policy writes it."""
    reference = prompt.get("reference")
    if isinstance(reference, str) and is_refusal(reference):
        return reference
    redirects = sorted(h["redirect"] for h in HARMS.values())
    return f"{REFUSAL} {random.Random(f'reward-redirect-{seed}-' + prompt['prompt']).choice(redirects)}"


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch CPU threads (0: unchanged), then restore the setting."""
    import torch

    saved = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def pair_key(record: dict) -> tuple[str, str, str]:
    """What makes two preference records the same pair: prompt, chosen and rejected answer."""
    return prompt_key(record), record["chosen"], record["rejected"]


def pairs_among(records: Iterable[dict], among: Iterable[dict]) -> list[dict]:
    """The records of ``records`` (in their order) whose pair is one of ``among``'s."""
    wanted = {pair_key(r) for r in among}
    return [r for r in records if pair_key(r) in wanted]


def replay_pairs(new: Sequence[dict], earlier: Sequence[dict], ratio: float, seed: int) -> list[dict]:
    """``new`` followed by earlier pairs replayed beside them: per category, ``ratio`` times as many
    of ``earlier``'s pairs of that category as ``new`` has (rounded; a seeded sample without
    replacement, in ``earlier``'s order; all of them when there are fewer). A model that continues
    on ``new`` alone forgets what it learnt on the earlier pairs; ``ratio`` 0 replays none."""
    if not ratio >= 0:
        raise ValueError(f"replay ratio must be >= 0, got {ratio!r}")
    picked = np.zeros(len(earlier), dtype=bool)
    for k, category in enumerate(CATEGORIES):
        idx = np.array([i for i, r in enumerate(earlier) if r["category"] == category], dtype=np.int64)
        n = min(len(idx), int(round(ratio * sum(r["category"] == category for r in new))))
        if n:
            picked[np.random.default_rng([seed, k, 0x7e9]).choice(idx, size=n, replace=False)] = True
    return list(new) + [r for r, keep in zip(earlier, picked) if keep]


def merge_preferences(old: Iterable[dict] | None, new: Iterable[dict] | None) -> list[dict]:
    """``old`` (earlier rounds, or a user's file) followed by ``new``, validated; a pair already in
    ``old`` (same prompt, chosen and rejected: :func:`pair_key`) is not added twice."""
    merged, seen = [], set()
    for source, records in (("old preferences", old), ("new preferences", new)):
        for r in validate_preferences(records, source=source):
            key = pair_key(r)
            if key not in seen:
                seen.add(key)
                merged.append(r)
    return merged


def _unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"reward-split|{seed}|{key}".encode()).digest()[:8]
    return int.from_bytes(h, "big") / 2**64


def split_preferences(prefs: Iterable[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a prompt's pairs all go to one side, by a seeded hash of the prompt
    (so a new batch for a known prompt lands on the same side in every round). With two or more
    prompts, each side gets at least one."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")
    records = validate_preferences(prefs, source="preferences to split")
    if not records:
        raise ValueError("no preference pairs to split: the preference data is empty")
    units = {k: _unit(seed, k) for k in dict.fromkeys(prompt_key(r) for r in records)}
    held = {k for k, u in units.items() if u < eval_fraction}
    if len(units) >= 2:
        if not held:
            held = {min(units, key=units.get)}
        elif len(held) == len(units):
            held.discard(max(units, key=units.get))
    train = [r for r in records if prompt_key(r) not in held]
    heldout = [r for r in records if prompt_key(r) in held]
    return train, heldout


def mix_preferences(records: Sequence[dict], mix: dict[str, float], seed: int) -> list[dict]:
    """The paper's data mix: ``mix[category]`` is the share of that category's records to use
    (e.g. the safety RM: ``{"safety": 1.0, "helpfulness": 0.1}``). A share above 1 repeats
    records (the integer part as whole copies, the rest as a seeded sample). The result keeps the
    order of ``records`` (shuffling is the batch stream's job)."""
    unknown = sorted(set(mix) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown} in a data mix; expected some of {list(CATEGORIES)}")
    counts = np.zeros(len(records), dtype=np.int64)
    for k, category in enumerate(CATEGORIES):
        share = float(mix.get(category, 0.0))
        if share < 0:
            raise ValueError(f"data mix share of {category!r} is {share}, expected >= 0")
        idx = np.array([i for i, r in enumerate(records) if r["category"] == category], dtype=np.int64)
        if not len(idx):
            continue
        whole, frac = int(share), share - int(share)
        counts[idx] += whole
        n = int(round(frac * len(idx)))
        if n:
            counts[np.random.default_rng([seed, k, 0x313]).choice(idx, size=n, replace=False)] += 1
    return [records[i] for i in range(len(records)) for _ in range(counts[i])]
