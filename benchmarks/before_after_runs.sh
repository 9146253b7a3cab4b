#!/bin/bash
# The main job, a sweep and a plan, run from one checkout into an empty folder with its own cache, for
# benchmarks/compare_runs.py (docs/testing.md, "Refactors keep verdicts: before/after check"):
#     benchmarks/before_after_runs.sh CHECKOUT OUT_DIR      (PYTHON=... picks the interpreter)
# Small settings (60 items per task, two tiny bench levels), so both sides finish in minutes on 2 cores.
set -u
checkout=$(cd "$1" && pwd)
out=$2
[ -e "$out" ] && { echo "$out exists: give a new folder (each side needs its own empty cache)" >&2; exit 2; }
python=${PYTHON:-python}
mkdir -p "$out" && echo "$checkout" >"$out/checkout"  # compare_runs.py reads paths inside it as <checkout>/...
export PYTHONPATH=$checkout HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
small=(tracking=off eval.limit=60 "bench.batch_sizes=[1,2]" bench.requests_per_level=2 bench.repeats=2
       bench.warmup_requests=1 bench.output_tokens=8 bench.input_tokens=16)
run() {  # run FOLDER ARGS...: the command's exit code goes to FOLDER/exit_code
    mkdir -p "$out/$1" && (cd "$out/$1" && "$python" -m pipelines.run "${@:2}" >stdout.txt 2>stderr.txt
                            echo $? >exit_code)
}
run main "${small[@]}"
run sweep -m quant=none,gptq "${small[@]}"
run plan model=llama3-70b quant=awq plan=true
