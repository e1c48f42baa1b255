#!/usr/bin/env bash
# Every GPU benchmark in one go, for a GPU machine lent for a few minutes:
#   bash bench/gpu_checks.sh OUT_DIR      (PYTHON=... to pick the interpreter; default python3)
# Needs the project's requirements; bench_gpu.py and the detectron2 evaluation also need detectron2
# (skipped, with the reason, where it cannot be imported). Each step has its own time limit, so one
# that hangs leaves the others' results; logs and JSON go to OUT_DIR.
set -uo pipefail
out=${1:?usage: bash bench/gpu_checks.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
step loop_paper 150 "$py" bench/bench_loop.py --scale paper --gpus 1 --iters 30 --repeats 1
if "$py" -c "import detectron2" 2>/dev/null; then
    step train_speed 330 "$py" bench/bench_gpu.py --iters 25 --out "$out/train_speed.json"  # x2 rounds (bench_gpu)
    step eval_cost 200 "$py" bench/bench_eval.py --scale paper --gpus 1 --engine detectron2 --counts 100 500 --iters 20
else
    echo "== detectron2 cannot be imported: train_speed skipped; eval_cost with the torchvision engine"
    step eval_cost 200 "$py" bench/bench_eval.py --scale paper --gpus 1 --engine torchvision --counts 100 500 --iters 20
fi
