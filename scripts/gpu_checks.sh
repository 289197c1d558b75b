#!/usr/bin/env bash
# The GPU tests and every GPU benchmark of docs/benchmarks.md, in one go on a CUDA machine.
#
#     scripts/gpu_checks.sh [OUT_DIR]        # default OUT_DIR: docs/results
#
# Writes the JSON figures where docs/benchmarks.md reads them from, plus one log per step in
# OUT_DIR/gpu_checks_logs/. A step that fails is reported and the others still run; the exit code
# is the number of failed steps. STEPS="tests sb3 throughput" runs a subset (names below).
set -u
cd "$(dirname "$0")/.."
out="${1:-docs/results}"
logs="$out/gpu_checks_logs"
steps="${STEPS:-tests sb3 combiners solve throughput throughput_async throughput_mt50 faults}"

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: no CUDA device visible to torch; these checks need one" >&2
    exit 2
fi
mkdir -p "$logs"
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$logs/device.txt"

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

run tests python -m pytest -m gpu -q -rs
run sb3 python scripts/bench_sb3_update.py --device cuda --json "$out/sb3_update_cuda.json"
run combiners python scripts/bench_combiners.py --device cuda --repeats 30 --budget 4 \
    --json "$out/bench-combiners-cuda.json"
run solve python scripts/bench_fairgrad_solve.py --device cuda --repeats 100 --json "$out/bench-solve-cuda.json"
run throughput python scripts/bench_throughput.py --device cuda --overlap --cuda-graph \
    --json "$out/throughput_cuda_sync.json"
run throughput_async python scripts/bench_throughput.py --device cuda --overlap --cuda-graph \
    --vector-strategy async --json "$out/throughput_cuda_async.json"
run throughput_mt50 python scripts/bench_throughput.py --device cuda --benchmark MT50 --combiners mean fairgrad \
    --overlap --cuda-graph --vector-strategy async --no-sb3 --no-paper --json "$out/throughput_mt50_cuda.json"

# SIGKILLs on the fast GPU path (CUDA graph, overlapped env steps, async envs), a second process on
# the live run, a resume after each kill; 4 minutes at most.
run faults timeout 240 python scripts/fault_injection.py --mode gpu --kills 4 --contenders 1 --min-delay 8 \
    --max-delay 20 --no-bad-inputs --json "$out/fault_injection_gpu.json"

echo "$failed step(s) failed; logs in $logs"
exit "$failed"
