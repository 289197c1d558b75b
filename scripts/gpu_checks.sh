#!/usr/bin/env bash
# The GPU tests and the GPU figures of docs/benchmarks.md, in one go on a CUDA machine (about 8 minutes
# on one H100/H200 with 16 cores for the default steps).
#
#     scripts/gpu_checks.sh [OUT_DIR]        # default OUT_DIR: docs/results
#
# Writes the JSON figures where docs/benchmarks.md reads them from, plus one log per step in
# OUT_DIR/gpu_checks_logs/. A step that fails is reported and the others still run; the exit code
# is the number of failed steps. STEPS="tests cli_mt10" runs a subset (names below); the optional
# steps (not in the default list) are named in OPTIONAL_STEPS.
set -u
cd "$(dirname "$0")/.."
out="${1:-docs/results}"
logs="$out/gpu_checks_logs"
steps="${STEPS:-tests cli_mt10 throughput throughput_mt50 combiners env_floor faults pack}"
# tf32: MT10 throughput with agent.matmul_precision=high beside highest; tf32_learning: the easy
# subset learned with highest and high side by side (about 5 minutes more); solve: the solvers alone.
OPTIONAL_STEPS="tf32 tf32_learning solve"

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to torch; these checks need one" >&2
    exit 2
fi
mkdir -p "$logs"
python -c "import os, torch; print(torch.__version__, torch.cuda.get_device_name(0), os.cpu_count(), 'cores')" \
    | tee "$logs/device.txt"

failed=0
run() {
    local name="$1"
    shift
    case " $steps " in *" $name "*) ;; *) return 0 ;; esac
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" >"$logs/$name.log" 2>&1; then
        echo "   ok ($((SECONDS - start)) s)"
    else
        echo "   FAILED ($((SECONDS - start)) s), last lines of $logs/$name.log:"
        tail -n 15 "$logs/$name.log" | sed 's/^/   | /'
        failed=$((failed + 1))
    fi
}

# The plain command's rate after warm-up (the defaults: graph, overlap, async envs, 1 torch thread).
cli_mt10() {
    rm -rf "$out/cli_mt10_fairgrad"
    mtrl-fair train benchmark=mt10 combiner=fairgrad steps=10000 agent.warmup_steps=1000 log_every=500 \
        eval_every=0 final_eval_episodes=1 checkpoint_every=100000 progress=false \
        hydra.run.dir="$out/cli_mt10_fairgrad" &&
        python scripts/run_rate.py "$out/cli_mt10_fairgrad" --after 2000 --json "$out/cli_mt10_fairgrad_rate.json"
}

# The easy subset learned with full float32 and with TF32 matmuls, both runs at once on the GPU.
tf32_learning() {
    local common=("benchmark.tasks=[reach-v3,drawer-close-v3,button-press-topdown-v3]" steps=40000
        eval_every=10000 eval_episodes=10 final_eval_episodes=20 checkpoint_every=100000 progress=false)
    rm -rf "$out/tf32_learning"
    mtrl-fair train "${common[@]}" agent.matmul_precision=highest hydra.run.dir="$out/tf32_learning/highest" &
    mtrl-fair train "${common[@]}" agent.matmul_precision=high hydra.run.dir="$out/tf32_learning/high" &
    wait && mtrl-fair report "$out/tf32_learning" --out "$out/tf32_learning/report"
}

run tests python -m pytest -m gpu -q -rs
run cli_mt10 cli_mt10
run throughput python scripts/bench_throughput.py --device cuda --combiners mean fairgrad --overlap --cuda-graph \
    --defaults --no-sb3 --json "$out/throughput_cuda.json"
run throughput_mt50 python scripts/bench_throughput.py --device cuda --benchmark MT50 --combiners mean fairgrad \
    --vector-strategy async --defaults --iterations 20 --no-sb3 --no-paper --json "$out/throughput_mt50_cuda.json"
run combiners python scripts/bench_combiners.py --device cuda --repeats 20 --budget 3 --what backward --vmap \
    --methods mean fairgrad --json "$out/bench-combiners-cuda.json"
run env_floor python scripts/bench_env_floor.py --lean-info --json "$out/env_floor_gpu_machine.json"
run pack python scripts/bench_pack.py --pack 4 --device cuda --benchmark MT10 --iterations 300 --warmup 60 \
    --json "$out/pack_cuda.json"
run tf32 python scripts/bench_throughput.py --device cuda --combiners mean fairgrad --defaults --no-sb3 --no-paper \
    --matmul-precision high --json "$out/throughput_cuda_tf32.json"
run tf32_learning tf32_learning
run solve python scripts/bench_fairgrad_solve.py --device cuda --repeats 100 --json "$out/bench-solve-cuda.json"

# SIGKILLs on the fast GPU path (CUDA graph, overlapped env steps, async envs), a second process on
# the live run, a resume after each kill; 4 minutes at most.
run faults timeout 240 python scripts/fault_injection.py --mode gpu --kills 4 --contenders 1 --min-delay 8 \
    --max-delay 20 --no-bad-inputs --json "$out/fault_injection_gpu.json"

echo "$failed step(s) failed; logs in $logs"
exit "$failed"
