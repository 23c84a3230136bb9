"""The recipe's sampling workload: a trained policy answering chat prompts until EOS.

Where ``bench_model.py`` times generation with EOS disabled (every row makes max_new_tokens), this
times what rejection sampling, PPO and GAtt ask of ``generate``: the train prompts in the chat
template, left-padded into batches, answers of very different lengths stopping at EOS. Arms, timed
alternately in one run (median of ``--rounds``):

* ``ours``: ``generate`` as the stages call it (on CPU, eager decoding that drops finished rows
  from the batch's forward);
* ``ours_keep``: the same with every row kept to the end (``drop_finished=False``), as before;
* ``hf``: transformers' ``generate`` on the same weights (the policy folder is a Hugging Face
  folder), the same prompts, batch, EOS and sampling settings.

The figure is answer tokens per second (tokens up to and including each row's EOS). Greedy answers
of ``ours`` and ``ours_keep`` are compared token for token, and ``ours`` against ``hf`` in float32.

    dvc repro   # (or any run that left a policy in data/06_models)
    python benchmarks/bench_rollouts.py --out benchmarks/results/cpu_rollouts.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from llama2_pipeline.core.files import read_jsonl, write_json
from llama2_pipeline.evaluation.answers import chat_messages
from llama2_pipeline.model import generate, load_hf
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.tokenizer.chat import encode_chat_prompt


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="data/06_models/rlhf_v2/policy",
                   help="a Hugging Face model folder (default: the default recipe's last round's policy)")
    p.add_argument("--prompts", default="data/01_raw/prompts_train.jsonl", help="JSON lines with a 'prompt' field")
    p.add_argument("--n", type=int, default=512, help="prompts answered per arm and round")
    p.add_argument("--batch", type=int, default=256, help="prompts per generate call (the stages' batch_size)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="the rejection-sampling candidates' (0: greedy)")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    from transformers import LlamaForCausalLM

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.policy)
    for path in (folder / "config.json", Path(args.prompts)):
        if not path.exists():
            p.error(f"{path} not found: run `dvc repro` first, or pass --policy/--prompts")
    ours = load_hf(folder).eval()
    hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    tok = Tokenizer(folder / "tokenizer.model")
    records, lines = read_jsonl(args.prompts)
    if not records:
        p.error(f"{args.prompts}: no prompts")
    missing = next((n for r, n in zip(records, lines) if not isinstance(r, dict) or "prompt" not in r), None)
    if missing is not None:
        p.error(f"{args.prompts}, line {missing}: no 'prompt' field")
    texts = [r["prompt"] for r in records]
    texts = (texts * (args.n // len(texts) + 1))[:args.n]
    prompts = [encode_chat_prompt(tok, chat_messages(t), record=i) for i, t in enumerate(texts)]  # as generate_answers
    batches = [prompts[i:i + args.batch] for i in range(0, len(prompts), args.batch)]
    pad, eos = ours.config.pad_id if ours.config.pad_id is not None else 0, tok.eos_id

    def run_ours(drop: bool, temperature: float, seed: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        rows = []
        for b in batches:
            rows += generate(ours, b, args.max_new_tokens, temperature=temperature, top_p=args.top_p, eos_id=eos,
                             generator=g, drop_finished=drop).tokens
        return rows

    def run_hf(temperature: float, seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        sample = dict(do_sample=temperature > 0)
        if temperature > 0:
            sample.update(temperature=temperature, top_p=args.top_p, top_k=0)
        rows = []
        with torch.inference_mode():
            for b in batches:
                width = max(len(q) for q in b)
                ids = torch.tensor([[pad] * (width - len(q)) + q for q in b])
                mask = torch.tensor([[0] * (width - len(q)) + [1] * len(q) for q in b])
                out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                  eos_token_id=eos, pad_token_id=pad, **sample)[:, width:].tolist()
                rows += [r[:r.index(eos) + 1] if eos in r else r for r in out]
        return rows

    arms = {"ours": lambda s: run_ours(True, args.temperature, s), "ours_keep": lambda s: run_ours(False, args.temperature, s),
            "hf": lambda s: run_hf(args.temperature, s)}
    greedy = {"ours": run_ours(True, 0.0, 0), "ours_keep": run_ours(False, 0.0, 0), "hf": run_hf(0.0, 0)}
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    tokens: dict[str, list[int]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for name, arm in arms.items():
            t0 = time.perf_counter()
            rows = arm(args.seed + r)
            seconds[name].append(time.perf_counter() - t0)
            tokens[name].append(sum(len(x) for x in rows))
    speed = {a: statistics.median(n / s for n, s in zip(tokens[a], seconds[a])) for a in arms}
    result = {
        "policy": str(folder), "prompts": args.n, "batch": args.batch, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "top_p": args.top_p, "rounds": args.rounds, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "answer_tokens_per_s": {a: round(v, 1) for a, v in speed.items()},
        "mean_answer_tokens": {a: round(statistics.mean(tokens[a]) / args.n, 2) for a in arms},
        "seconds": {a: [round(s, 3) for s in v] for a, v in seconds.items()},
        "ours_over_keep": round(speed["ours"] / speed["ours_keep"], 3),
        "ours_over_hf": round(speed["ours"] / speed["hf"], 3),
        "greedy_ours_equals_keep": greedy["ours"] == greedy["ours_keep"],
        "greedy_ours_equals_hf_share": round(sum(a == b for a, b in zip(greedy["ours"], greedy["hf"])) / args.n, 4),
    }
    print(json.dumps(result, indent=2))
    print(f"answer tokens/s: ours {speed['ours']:,.0f}, rows kept {speed['ours_keep']:,.0f} "
          f"({result['ours_over_keep']}x), transformers {speed['hf']:,.0f} ({result['ours_over_hf']}x)")
    if args.out:
        write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
