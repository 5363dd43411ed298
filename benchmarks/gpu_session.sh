#!/usr/bin/env bash
# Every GPU check of benchmarks/README.md in one go, for a lent GPU machine with little time on it:
# the gpu-marked tests (fast paths vs plain ones on the device), then the GPU figures of issue 8, then the
# packed step of issue 27 (gpu_pack.py: N = 1, 3, 5 runs per step, Table 3 projected with --pack).
# Each step has its own time limit and a failed step does not stop the next; logs and JSON go to
# $OUT (default ./gpu-out). About 7 minutes on an H200 (the compiles are most of it), plus up to 4 for
# gpu-pack. The paper
# profile's train.compile (reduce-overhead) is what throughput / table-eta time; add --compile off to
# them for the eager figures.
#
#   bash benchmarks/gpu_session.sh            # from the repository root, on the GPU machine
#
# Where kdcicam's dependencies are missing (a bare image), put wheels in .whl/ first; they are
# installed into /tmp/site (no index, no network). The repository itself is imported from here.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
log="$OUT/gpu.log"

step() {  # step LIMIT_S NAME COMMAND...
  local limit=$1 name=$2 start rc
  shift 2
  echo "== $name: $*" | tee -a "$log"
  start=$(date +%s)
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  echo "== $name: rc=$rc, $(( $(date +%s) - start )) s" | tee -a "$log"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv; nproc
  python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$log"

step ${LIMIT_TESTS:-100} gpu-tests python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_paths.py \
  tests/test_packed.py
step ${LIMIT_STEP:-200} gpu-step python3 benchmarks/gpu_step.py --roles student loc_teacher distilled --profile \
  --compile --json "$OUT/gpu_step.json"
step ${LIMIT_THROUGHPUT:-130} throughput python3 benchmarks/train_throughput.py --device cuda --repeats 1 --steps 40 \
  --json "$OUT/throughput.json"
step ${LIMIT_ETA:-125} table-eta python3 benchmarks/table_eta.py --device cuda --steps 20 --threads 8 \
  --json "$OUT/table_eta.json"
step ${LIMIT_QUICK:-150} quick-table3 python3 benchmarks/quick_table3.py --device cuda --epochs 2 --jobs 3 \
  --json "$OUT/quick_table3.json"
step ${LIMIT_PACK:-240} gpu-pack python3 benchmarks/gpu_pack.py --device cuda --steps 10 --json "$OUT/gpu_pack.json"
tail -n 40 "$log"
