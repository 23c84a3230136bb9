"""What the RLHF stages learn, shown in-process at smoke size and judged by the world.

The stage tests start from a random smoke model and check plumbing; here a small policy is first
fine-tuned from scratch on World v2's demonstrations (writers of mixed skill) until it answers in
the writers' styles, its samples are annotated by the world and both reward models trained on
them, as the reward stage does. Then, each from that policy and with the library's own functions:

* a rejection-sampling round with the trained reward models raises the world's score of the
  policy's answers to its train prompts, sampled as the round samples them (the small policy's
  greedy answer is already about as good as the best of its samples: the round moves the rest
  of its distribution towards it);
* PPO with the reward models (not a toy reward) raises that reward and the world's score of the
  policy's sampled answers (its greedy answer no lower) while its KL to the start stays under the
  round's bound;
* Ghost Attention raises the late-turn adherence to a first-turn instruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from llama2_pipeline import recipe as P
from llama2_pipeline.evaluation.answers import SamplingConfig, evaluate_model
from llama2_pipeline.model import Llama, ModelConfig, load_hf
from llama2_pipeline.tokenizer import Tokenizer
from llama2_pipeline.world import World
from tests.conftest import ROOT

SEED = 1234


@dataclass
class Mini:
    world: World
    recipe: P.Recipe
    tokenizer: Tokenizer
    policy: Path  # HF folder: the policy every test starts from
    helpfulness: Path  # the trained reward models
    safety: Path
    prompts: list[dict]  # train prompts
    root: Path

    def score(self, model_dir: Path, prompts: list[dict] | None = None) -> dict[str, float]:
        """The world's judgement of the model's greedy answers (``x_*`` metrics)."""
        model = load_hf(model_dir).eval()
        metrics, _ = evaluate_model(model, self.tokenizer, self.world, prompts or self.prompts,
                                    SamplingConfig(max_new_tokens=48, batch_size=256), "x", progress=False)
        return metrics

    def candidates(self, k: int):
        """How these tests sample ``k`` candidates per train prompt, as a round does (temperature 0.7)."""
        return self.recipe.rlhf.candidates.replace(k=k, temperature=0.7, max_prompts=0, max_new_tokens=48)

    def sampled_score(self, model_dir: Path, k: int = 4) -> float:
        """The world's mean helpfulness of ``k`` answers of the model per train prompt, sampled as a
        round samples its candidates (:meth:`candidates`): a policy's distribution, not only its mode."""
        from llama2_pipeline.training.rlhf import sample_candidates

        answers = sample_candidates(model_dir, self.tokenizer, self.prompts, self.candidates(k), SEED + 1,
                                    progress=False)
        scores = [self.world.helpfulness(c["prompt"], a) for c in answers for a in c["answers"]]
        return sum(scores) / len(scores)


def _train_tokenizer(world: World, dialogues: list[dict], folder: Path) -> Tokenizer:
    from llama2_pipeline.tokenizer.spm import train_tokenizer

    texts = [" ".join(m["content"] for m in d["messages"]) for d in dialogues]
    texts += [f"{t.prompt} {t.reference}" for t in world.tasks]
    (folder / "corpus").mkdir(parents=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts,
                             "source": ["demo"] * len(texts)}), folder / "corpus/part-00000.parquet")
    train_tokenizer(folder / "corpus", folder / "tokenizer", vocab_size=512, seed=SEED, progress=False)
    return Tokenizer(folder / "tokenizer/tokenizer.model")


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Mini:
    from llama2_pipeline.training.preferences import collect_preferences
    from llama2_pipeline.training.reward import train_reward_models
    from llama2_pipeline.training.sft import finetune

    root = tmp_path_factory.mktemp("learning")
    recipe = P.load(ROOT / "params.yaml", profile="smoke")
    world_params = P.deep_merge(recipe.world.to_dict(), {"sft": {"n_dialogues": 800}})
    world = World.from_params({**world_params, "seed": SEED})
    dialogues = world.sft_dialogues()
    tok = _train_tokenizer(world, dialogues, root)
    config = ModelConfig.from_preset("smoke", vocab_size=tok.vocab_size, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                     pad_id=tok.pad_id)
    torch.manual_seed(SEED)
    sft = {"epochs": 16, "val_fraction": 0.0,
           "train": {"seq_len": 256, "micro_batch": 16, "lr": 3e-3, "warmup_steps": 10, "seed": SEED,
                     "eval_every": 0, "checkpoint_every": 0, "log_every": 50}}
    finetune(Llama(config), tok, dialogues, sft, root / "sft_run", hf_dir=root / "sft",
             tokenizer_model=tok.path, progress=False)
    prompts = world.prompts("train")
    sampling = recipe.reward.preferences.replace(max_prompts=0, max_new_tokens=48, variant_temperatures=[])
    pairs = collect_preferences(root / "sft", tok, prompts, world, sampling, SEED, progress=False)
    reward = recipe.reward.replace(epochs=2.0)
    out = {"helpfulness": root / "rm_helpfulness", "safety": root / "rm_safety"}
    train_reward_models(pairs, root / "sft", reward, root / "rm_run", out, progress=False)
    return Mini(world, recipe, tok, root / "sft", out["helpfulness"], out["safety"], prompts, root)


def test_rejection_sampling_with_trained_rms_raises_the_worlds_score(mini):
    from llama2_pipeline.training.rejection import best_of_k
    from llama2_pipeline.training.rlhf import sample_candidates
    from llama2_pipeline.training.sft import finetune

    rlhf, world = mini.recipe.rlhf, mini.world
    candidates = sample_candidates(mini.policy, mini.tokenizer, mini.prompts, mini.candidates(8), SEED, progress=False)
    dialogues, scored, stats = best_of_k(candidates, mini.helpfulness, mini.safety, rlhf)
    kept = [world.helpfulness(c["prompt"], c["answers"][c["best"]]) for c in scored if c["best"] is not None]
    every = [world.helpfulness(c["prompt"], a) for c in scored for a in c["answers"]]
    # the RMs pick answers the world rates above the average sample
    assert sum(kept) / len(kept) > sum(every) / len(every) + 0.05, (sum(kept) / len(kept), sum(every) / len(every))

    rs = rlhf.rejection_sampling.replace(val_fraction=0.0, epochs=4, train=rlhf.rejection_sampling.train.replace(
        eval_every=0, checkpoint_every=0, micro_batch=4, seq_len=128))
    finetune(mini.policy, mini.tokenizer, dialogues, rs, mini.root / "rs_run", hf_dir=mini.root / "rs", progress=False)

    before, after = mini.sampled_score(mini.policy), mini.sampled_score(mini.root / "rs")
    print("rejection sampling: world helpfulness of sampled answers", before, "->", after)
    assert after > before + 0.03, (before, after)
    assert mini.score(mini.root / "rs")["x_safety"] >= mini.score(mini.policy)["x_safety"] - 0.02


def test_ppo_with_the_reward_models_raises_reward_and_world_score_within_its_kl_bound(mini):
    from llama2_pipeline.training.rlhf import ppo_finetune

    rlhf = mini.recipe.rlhf
    cfg = rlhf.ppo.replace(steps=24, max_prompts=0, rollouts=32, minibatch=16, micro_batch=0, max_new_tokens=48,
                           lr=1e-4, beta=0.05, max_kl=3.0, seed=SEED)
    out, history, summary = ppo_finetune(mini.policy, mini.helpfulness, mini.prompts, cfg, rlhf.safety_threshold,
                                         safety_dir=mini.safety, out_dir=mini.root / "ppo", progress=False)
    first = sum(h["reward"] for h in history[:6]) / 6
    last = sum(h["reward"] for h in history[-6:]) / 6
    before, after = mini.score(mini.policy), mini.score(out)
    sampled = mini.sampled_score(mini.policy), mini.sampled_score(out)
    print("PPO: reward", first, "->", last, "; world helpfulness", before["x_helpfulness"], "->",
          after["x_helpfulness"], "; of sampled answers", sampled, "; KL max", summary["ppo_kl_max"])
    assert len(history) >= 12 and last > first + 0.03, (len(history), first, last)
    # PPO moves the policy's distribution (its rollouts are samples): the world rates its sampled answers
    # higher, and its greedy answer no lower (the greedy gain here, +0.0097 with the reward stage's two
    # answers per safety prompt and +0.024 with one, is within the noise of one answer per prompt)
    assert sampled[1] > sampled[0] + 0.02, sampled
    assert after["x_helpfulness"] >= before["x_helpfulness"], (before["x_helpfulness"], after["x_helpfulness"])
    assert summary["ppo_kl_max"] <= cfg.max_kl


def test_gatt_raises_late_turn_adherence(mini):
    from llama2_pipeline.training.gatt import build_gatt_dialogues
    from llama2_pipeline.training.gatt_eval import evaluate_adherence
    from llama2_pipeline.training.sft import finetune

    gatt = mini.recipe.gatt
    records, stats = build_gatt_dialogues(mini.policy, mini.prompts, gatt.replace(dialogues=60, tries=4), SEED,
                                          reward_dir=mini.helpfulness, safety_dir=mini.safety)  # select: reward
    assert stats["gatt_safety_messages"] > 0  # gatt.safety_share: unsafe and borderline prompts among the messages
    ft = gatt.finetune.replace(val_fraction=0.0, epochs=3, train=gatt.finetune.train.replace(
        eval_every=0, checkpoint_every=0, lr=1e-3))
    finetune(mini.policy, mini.tokenizer, records, ft, mini.root / "gatt_run", hf_dir=mini.root / "gatt",
             progress=False)
    metrics, _, _ = evaluate_adherence(mini.policy, mini.root / "gatt", mini.world.prompts("eval"), mini.world,
                                       gatt.replace(eval=gatt.eval.replace(dialogues=24)), SEED)
    print({k: round(v, 3) for k, v in metrics.items() if "turn" in k or "helpfulness" in k or "instructed" in k})
    assert metrics["gatt_after_adherence_turn4plus"] > metrics["gatt_before_adherence_turn4plus"] + 0.2
