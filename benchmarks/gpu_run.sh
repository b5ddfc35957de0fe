#!/usr/bin/env bash
# The prepared GPU run of issue 7, for a CUDA machine whose Python already has torch and
# transformers (nothing is downloaded): about 10 minutes on one H100. Each part writes its
# JSON (and the profile's Chrome traces) and its log under $OUT (default runs/gpu/<time>).
#   1. gpu_profile.py, batch 64: where the fm-only and SA-GR steps' host time goes, syncs, CUDA runtime calls
#   1b. the same at Qwen2.5-VL-3B's shapes, batch 16, chain 8 (part profile_large): whether the separate
#       target pass's host time hides behind the GPU's queue, as its 4% of the FLOPs would allow
#   2. gpu_check.py, batch 64, chain 8, world modules in CUDA graphs: (a) at batch 64
#   2a. the same with only the world predictor and drift in CUDA graphs (part graphs_fixed, REPEAT processes):
#       the trainer's framework.action_model.compile_world "graphs" (the anchor's shapes follow the prompt)
#   2b. part 2 eager, in processes of their own (REPEAT of them, default 1): how far processes'
#       ratios differ (a bias lasting a whole process leaves the per-round quartiles tight)
#   3. gpu_check.py --config large, chain 8: (a) at Qwen2.5-VL-3B's shapes, where the GPU should set the
#      step time (step_cost.py: the separate target pass adds 4% of the FLOPs there)
#   3a. the same with compile_world "graphs" beside eager in one process (part large_graphs, REPEAT processes)
#   4. the CUDA-only tests (predict_action's CUDA graph, the trainer's one read per step) and the
#      backbone's equivalence tests
#   4b. the trainer with the world predictor and drift in CUDA graphs (part graphs_trainer), against eager
#   5. gpu_pool.py over every check's JSON: per-process medians and the pooled per-round ratios
#     bash benchmarks/gpu_run.sh    # LIMIT=<s> caps each part (default 200); PYTHON=<interpreter> (default python3)
#     PARTS="eager large tests" REPEAT=3 bash benchmarks/gpu_run.sh   # some parts (default: all), 2a, 2b, 3, 3a x3
# It writes about 25 files (REPEAT adds a folder per process); where fewer may come back, pack them:
#     cd "$OUT" && tar czf /tmp/gpu_run.tgz * && rm -rf -- * && mv /tmp/gpu_run.tgz .
# It ends with status 0 whatever its parts did: each part's exit status is printed and in its log.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1
OUT=${OUT:-runs/gpu/$(date +%Y%m%d_%H%M%S)}
export OUT
ALL="profile profile_large graphs graphs_fixed eager large large_graphs tests graphs_trainer"
for p in ${PARTS:-}; do
    [[ " $ALL " == *" $p "* ]] || { echo "PARTS: no part '$p' (parts: $ALL)" >&2; exit 2; }
done
PY=${PYTHON:-python3}
mkdir -p "$OUT"
part() {  # part NAME COMMAND...: run it under the time cap, log to $OUT/NAME.log, go on whatever its status
    local name=$1
    shift
    echo "== $name: $*"
    timeout "${LIMIT:-200}" "$@" > "$OUT/$name.log" 2>&1
    echo "   exit $? ($(tail -n 1 "$OUT/$name.log"))"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
want() { [[ " ${PARTS:-$ALL} " == *" $1 "* ]]; }
repeat() {  # repeat NAME COMMAND...: REPEAT processes of it, the i-th's JSON under $OUT/NAME_<i>/
    local name=$1 i
    shift
    for i in $(seq "${REPEAT:-1}"); do
        part "${name}_$i" "$@" --out "$OUT/${name}_$i"
    done
}
want profile && part profile_b64 "$PY" benchmarks/gpu_profile.py --batch-size 64 --trace
want profile_large && part profile_large_b16 "$PY" benchmarks/gpu_profile.py --config large --batch-size 16 \
    --chain-length 8 --trace
want graphs && part check_b64_graphs_chain8 "$PY" benchmarks/gpu_check.py --batch-size 64 --compile graphs --train-only --chain-length 8
want graphs_fixed && repeat check_b64_graphs_fixed_chain8 "$PY" benchmarks/gpu_check.py --batch-size 64 \
    --compile graphs_fixed --train-only --chain-length 8
want eager && repeat check_b64_eager_chain8 "$PY" benchmarks/gpu_check.py --batch-size 64 --compile none --train-only --chain-length 8
want large && repeat check_large_chain8 "$PY" benchmarks/gpu_check.py --config large --compile none --train-only --chain-length 8
want large_graphs && repeat check_large_graphs_fixed_chain8 "$PY" benchmarks/gpu_check.py --config large \
    --compile graphs_fixed --train-only --chain-length 8
want tests && part tests "$PY" -m pytest -q -p no:cacheprovider tests/model/test_cuda_graphs.py tests/model/test_qwen_vision.py tests/core/test_device.py \
    "tests/train/test_trainer.py::test_a_cuda_step_waits_for_the_gpu_only_to_read_its_metrics"
want graphs_trainer && part graphs_trainer "$PY" -m pytest -q -p no:cacheprovider tests/train/test_world_graphs.py
grep -h -A12 "(a) optimizer step" "$OUT"/check_*.log 2>/dev/null
if [[ -n $(find "$OUT" -name 'gpu_check_*.json' -print -quit) ]]; then
    find "$OUT" -name 'gpu_check_*.json' -print0 | xargs -0 "$PY" benchmarks/gpu_pool.py | tee "$OUT/pool.txt"
fi
grep -h -B1 -A5 "ms: forward" "$OUT"/profile_*.log 2>/dev/null
exit 0
