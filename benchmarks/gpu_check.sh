#!/usr/bin/env bash
# The GPU figures of the model/pretraining benchmarks in one call on a CUDA machine that has torch
# and transformers but no deepspeed (run from the repository root, with .whl/ holding the wheels
# from ../shared/gpu/fetch_wheels.sh). Results (JSON + logs) go to $OUT (default /tmp/gpu_out).
#   1. pretraining step, 1b shape, seq 2048, micro-batch 8, bf16, DeepSpeed ZeRO-1:
#      ours vs transformers' LlamaForCausalLM plain PyTorch and under DeepSpeed (tokens/s, MFU)
#   2. generation, 1b bf16: ours vs transformers' generate
#   3. ours under torch.compile vs ours (if time is left)
#   0. first: PPO and a round evaluation on the GPU (benchmarks/gpu_rlhf_check.py, seconds), then PPO at
#      the 1b shape with the gpu profile's rollout settings (five 1.1B models on one GPU, bf16 autocast)
# `bash benchmarks/gpu_check.sh rlhf` runs step 0 alone.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
if ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import deepspeed, torch, transformers; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
start=$SECONDS
timeout 60 python3 benchmarks/gpu_rlhf_check.py --out "$OUT/rlhf_device.json" > "$OUT/rlhf_device.log" 2>&1
echo "rlhf device check rc=$? after $((SECONDS - start)) s"; grep -v -i warn "$OUT/rlhf_device.log" | tail -6
ppo_1b() {  # name, timeout, extra args: PPO at the 1b shape, answers up to 256 tokens, micro-batches of 8
  timeout "$2" python3 benchmarks/gpu_rlhf_check.py --preset 1b --minibatch 64 --micro-batch 8 --max-new-tokens 256 \
    --precision bf16 --eval-prompts 64 "${@:3}" --out "$OUT/rlhf_$1.json" > "$OUT/rlhf_$1.log" 2>&1
  echo "rlhf $1 rc=$? after $((SECONDS - start)) s"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in ('ppo_config', 'ppo_step_seconds', \
    'ppo_answer_tokens', 'ppo_peak_mib', 'cuda_after_ppo_mib', 'eval_seconds', 'eval_peak_mib')})" "$OUT/rlhf_$1.json" 2>/dev/null \
    || grep -v -i warn "$OUT/rlhf_$1.log" | tail -5
}
ppo_1b 1b_r512 200 --rollouts 512 --steps 2                    # the gpu profile's PPO step
ppo_1b 1b_r512_ckpt 150 --rollouts 512 --steps 1 --checkpointing  # the same with activation checkpointing
[ "${1:-all}" = rlhf ] && exit 0
timeout 240 python3 benchmarks/bench_pretrain.py --preset 1b --device cuda --dtype bf16 --batch 8 --seq-len 2048 \
  --zero-stage 1 --steps 6 --breakdown-steps 2 --impls ours,hf,hf_ds --out "$OUT/pretrain_1b.json" \
  > "$OUT/pretrain_1b.log" 2>&1
echo "pretrain rc=$? after $((SECONDS - start)) s"; grep -v -i warn "$OUT/pretrain_1b.log" | tail -12
timeout 100 python3 benchmarks/bench_model.py --preset 1b --device cuda --dtype bf16 --batch 1 --seq-len 256 \
  --train-steps 1 --rounds 3 --gen-batch 8 --prompt-len 32 --max-new-tokens 128 --out "$OUT/generate_1b.json" \
  > "$OUT/generate_1b.log" 2>&1
echo "generate rc=$? after $((SECONDS - start)) s"; grep -v -i warn "$OUT/generate_1b.log" | tail -4
left=$(( ${GPU_CHECK_BUDGET_S:-480} - (SECONDS - start) ))
if [ "$left" -gt 90 ]; then
  timeout "$left" python3 benchmarks/bench_pretrain.py --preset 1b --device cuda --dtype bf16 --batch 8 \
    --seq-len 2048 --zero-stage 1 --steps 6 --breakdown-steps 1 --impls ours,ours_compile \
    --out "$OUT/pretrain_1b_compile.json" > "$OUT/pretrain_1b_compile.log" 2>&1
  echo "compile rc=$? after $((SECONDS - start)) s"; grep -v -i warn "$OUT/pretrain_1b_compile.log" | tail -8
fi
