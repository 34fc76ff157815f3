#!/usr/bin/env bash
# The GPU checks and figures of the speed issues as one prepared run (sized for about
# 8 minutes on one H200): every bundled example on the GPU against the CPU (fp32 and bf16),
# E1-E6 of benchmarks/peers.py against the plain hook loop on the GPT-2-small shape (fp32
# and bf16), and exact patching of sampled edges plus `attribute * -> * using eap` against
# their loops (benchmarks/edges.py). Logs go to $OUT (or /tmp/gpu_check).
#
# The GPU machine has torch, transformers, pandas, networkx, matplotlib, safetensors,
# accelerate, rich, pygments and pytest, but not lark, pydantic or graphviz: carry those as
# wheels for its Python (3.12). Once, in the repository root here:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl lark pydantic pydantic-core annotated-types typing-inspection graphviz
# then run `bash benchmarks/gpu_check.sh` there with `.whl` carried.
set -uo pipefail
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir \
  --target /tmp/patchc . || exit 1
export PYTHONPATH=/tmp/patchc${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" \
  >> "$OUT/gpu.txt"
status=0
step() {  # name, command...: the command's output to $OUT/name.log; a failure is kept
  local name=$1; shift
  echo "== $name: $*"
  "$@" > "$OUT/$name.log" 2>&1 || { echo "   failed (exit $?)"; status=1; }
  tail -n 14 "$OUT/$name.log"
}
step agree_fp32 python3 benchmarks/gpu_agree.py --device cuda --dtype float32
step agree_bf16 python3 benchmarks/gpu_agree.py --device cuda --dtype bfloat16
step peers_fp32 python3 benchmarks/peers.py --model gpt2-small --device cuda \
  --dtype float32 --repeats 3 --tools "patchc,plain hooks" --no-write
step peers_bf16 python3 benchmarks/peers.py --model gpt2-small --device cuda \
  --dtype bfloat16 --repeats 3 --tools "patchc,plain hooks" --no-write
step edges_fp32 python3 benchmarks/edges.py --device cuda --repeats 3 --sample 1024 \
  --loop-sample 64
exit $status
