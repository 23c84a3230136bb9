#!/usr/bin/env bash
# Every GPU figure of issue #22 that the scripts measure, in one call (run from the repository root on a
# CUDA machine with torch and transformers; deepspeed comes from .whl/ if missing, see
# ../shared/gpu/fetch_wheels.sh). JSON + logs go to $OUT (default /tmp/gpu_out); budget about 8 minutes
# on an H200 (each step has its own timeout; GPU_CHECK_BUDGET_S caps the optional last one).
#   1. pretraining, 1b, seq 2048, micro-batch 8, bf16, ZeRO-1 (tokens/s, MFU, fwd/bwd/opt, peak memory):
#      ours_fast (compile + fused AdamW + chunked loss), ours (plain), transformers plain, under our
#      DeepSpeed engine, and compiled (pretrain_1b.json)
#   2. pretraining, 160m, same settings: ours_fast vs ours (pretrain_160m.json)
#   3. generation, 1b bf16, batch 8 and 64: ours (a CUDA graph per decoding step) and ours eager vs
#      transformers' generate; greedy tokens of ours vs transformers in fp32 (generate_1b_b8/b64.json)
#   4. PPO and a round evaluation (gpu_rlhf_check.py, smoke shape), then one PPO step at 1b with 512
#      rollouts (rlhf_device.json, rlhf_1b_r512.json)
# DEVICE=cpu runs the same sequence at the tiny shape on the CPU (generation at batch 2, no 160m step, no 1b PPO):
# a test runs it, so the script is known to work before device time is spent.
#   5. every training stage at 160m through the library entry points (gpu_stages_check.py: pretraining,
#      SFT, both RMs, rejection sampling, PPO, GAtt; seconds, peak memory, loss first -> last; stages_160m.json)
#   6. the fast path trains the same model: 200 steps of ours and ours_fast at 160m from the same weights
#      and batches, 10-step window means within 0.02 nats (gpu_loss_curve.py; loss_curve_160m.json)
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if ! python3 -c "import deepspeed" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=src:${PYTHONPATH:-} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
  BIG=1b; MID=160m; DT=bf16; B=8; T=2048; Z=1; STEPS=6; BD=2; IMPLS=ours,ours_fast,hf,hf_ds,hf_compile; GBS="8 64"
  GEN="--prompt-len 32 --max-new-tokens 128 --rounds 3 --greedy-tokens 32"; T3=120; PPO="--preset 1b --minibatch 64 --micro-batch 8 \
    --max-new-tokens 256 --precision bf16 --eval-prompts 64 --rollouts 512 --steps 1"; RLHF="--steps 3"; T1=300; T2=90
  STAGES="--preset $MID --profile gpu --steps 8 --seq-len 1024 --micro-batch 8"
  CURVE="--preset $MID --device cuda --dtype bf16 --batch 8 --seq-len 1024 --steps 200"
else
  export DS_ACCELERATOR=cpu
  BIG=tiny; MID=tiny; DT=fp32; B=2; T=64; Z=0; STEPS=1; BD=1; IMPLS=ours,ours_fast,hf,hf_ds; GBS=2
  GEN="--prompt-len 8 --max-new-tokens 8 --rounds 1 --greedy-tokens 8"; T3=120; PPO="--steps 1 --rollouts 4 --minibatch 4"; RLHF="--steps 1"
  STAGES="--preset $MID --profile smoke --steps 9 --seq-len 128 --micro-batch 4 --learning report"
  CURVE="--preset $MID --steps 60 --window 10 --distinct-batches 2 --tolerance 1e-4"
  T1=120; T2=120
fi
python3 -c "import deepspeed, torch, transformers; print('deepspeed', deepspeed.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" 2>/dev/null | tee -a "$OUT/gpu.txt"
start=$SECONDS
step() {  # name, timeout, command...: run it, log to $OUT/name.log, print rc, time and the log's tail
  timeout "$2" "${@:3}" > "$OUT/$1.log" 2>&1
  echo "$1 rc=$? after $((SECONDS - start)) s"; grep -v -i warn "$OUT/$1.log" | tail -8
}
pretrain() {  # name, preset, timeout, impls
  step "$1" "$3" python3 benchmarks/bench_pretrain.py --preset "$2" --device "$DEVICE" --dtype $DT --batch $B --seq-len $T \
    --zero-stage $Z --steps $STEPS --breakdown-steps $BD --impls "$4" --no-memory --out "$OUT/$1.json"
}
pretrain pretrain_1b $BIG $T1 $IMPLS
[ "$DEVICE" = cuda ] && pretrain pretrain_160m $MID $T2 ours,ours_fast  # (on the CPU path the same tiny shape as above)
for gb in $GBS; do
  step generate_1b_b$gb $T3 python3 benchmarks/bench_model.py --preset $BIG --device "$DEVICE" --dtype $DT --batch 1 \
    --seq-len 64 --train-steps 1 --gen-batch $gb $GEN --out "$OUT/generate_1b_b$gb.json"
done
step rlhf_device 90 python3 benchmarks/gpu_rlhf_check.py $RLHF --out "$OUT/rlhf_device.json"
step stages_$MID 150 python3 benchmarks/gpu_stages_check.py $STAGES --out "$OUT/stages_$MID.json"
step loss_curve_$MID 150 python3 benchmarks/gpu_loss_curve.py $CURVE --out "$OUT/loss_curve_$MID.json"
left=$(( ${GPU_CHECK_BUDGET_S:-480} - (SECONDS - start) ))
[ "$DEVICE" = cuda ] && [ "$left" -gt 60 ] && step rlhf_1b_r512 "$left" python3 benchmarks/gpu_rlhf_check.py $PPO --out "$OUT/rlhf_1b_r512.json"
echo "gpu_check done after $((SECONDS - start)) s"
