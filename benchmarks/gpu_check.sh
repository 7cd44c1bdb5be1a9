#!/bin/bash
# Issue #12, item 3: the one prepared run for a session that is lent the GPU machine (H200).
#
#   device run: bash benchmarks/gpu_check.sh        (about 6-9 minutes; timeout_s 600)
#   here, a CPU smoke run of the same steps:  TINY=1 DEVICE=cpu bash benchmarks/gpu_check.sh
#
# Llama-3-8B shapes (32 blocks, hidden 4096, intermediate 14336, 8 KV heads, vocab 128256) with
# random bf16 weights, written shard by shard on the GPU's host, then stream-pruned with each block
# on the GPU: Wanda 50% and SparseGPT 50% on 128 x 2048 calibration tokens. Each run's record
# (wall time, peak GPU memory, peak RSS, output check) lands in benchmarks/results/scale/ and is
# copied to $OUT so it comes back; `python benchmarks/report.py` puts it in BENCHMARKS.md.
# The device image has torch, transformers, safetensors, tqdm and pyyaml: prunekit runs from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
PY="${PY:-python3}"
DEVICE="${DEVICE:-cuda}"
OUTDIR="${OUT:-/tmp/prunekit-gpu-check}"
mkdir -p "$OUTDIR"
# the 16 GB checkpoint and its 16 GB output: in RAM (/dev/shm) where it has room, since a
# sandboxed disk can be slow; tmpfs pages are not the prune's RSS
if [ -z "${PRUNEKIT_SCALE_WORK:-}" ] && [ "$(df -k --output=avail /dev/shm 2>/dev/null | tail -n 1)" -gt 40000000 ] 2>/dev/null; then
  export PRUNEKIT_SCALE_WORK=/dev/shm/prunekit-scale
fi
echo "checkpoints under ${PRUNEKIT_SCALE_WORK:-.bench/work}"
if [ -n "${TINY:-}" ]; then
  SIZE=(--tiny --layers 2) CALIB=(--nsamples 4 --seqlen 64)
else
  SIZE=() CALIB=(--nsamples 128 --seqlen 2048)
fi
"$PY" - <<EOF
import torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())
if "$DEVICE".startswith("cuda"):
    assert torch.cuda.is_available(), "DEVICE=$DEVICE but torch sees no GPU"
    print(torch.cuda.get_device_name())
EOF
# a 2-block tiny run first: a wrong path fails in seconds, not after writing 16 GB
"$PY" benchmarks/scale.py --shape llama3-8b --tiny --layers 2 --device "$DEVICE" --method sparsegpt \
  --pattern unstructured --nsamples 4 --seqlen 64 --batch-size 4 | tail -n 3
rm -f benchmarks/results/scale/llama3-8b-shape-tiny-L2-*.json
for method in wanda sparsegpt; do
  keep=(--keep-input); [ "$method" = sparsegpt ] && keep=()
  "$PY" benchmarks/scale.py --shape llama3-8b "${SIZE[@]}" --device "$DEVICE" --method "$method" \
    --pattern unstructured "${CALIB[@]}" --batch-size 8 "${keep[@]}"
done
suffix=""; [ "$DEVICE" != cpu ] && suffix="-${DEVICE//:/}"
cp benchmarks/results/scale/llama3-8b-shape*"$suffix".json "$OUTDIR"/
ls -l "$OUTDIR"
