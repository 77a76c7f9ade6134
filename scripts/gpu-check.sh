#!/usr/bin/env bash
# One short GPU check (run on a CUDA machine from the repository root): the engine's CUDA tests, then
# `dpbench bench` side by side on a few GPU configurations, summarised as ratios to non-private.
# Usage: OUT=results/gpu-check scripts/gpu-check.sh   (wheels in .whl/ are installed to /tmp/site first)
set -u
OUT=${OUT:-results/gpu-check}
mkdir -p "$OUT" /tmp/gpu-bench
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_clipping_contract.py -k cuda 2>&1 | tail -4
bench() {  # model image-size batch algorithms...
  local model=$1 size=$2 batch=$3; shift 3
  for alg in "$@"; do
    timeout 60 python3 -m dpbench bench --device cuda --model "$model" --image-size "$size" \
      --batch-size "$batch" --steps 8 --warmup 3 --algorithm "$alg" \
      --out "/tmp/gpu-bench/${model}_${size}_${batch}_${alg}.json" 2>&1 | tail -1
  done
}
ALL="nonprivate bk_mixed mixed_ghost bk_ghost ghost fastgradclip opacus_ghost opacus"
# summarise after each model, so that a run cut short still returns what it measured
bench resnet18 32 256 $ALL; python3 scripts/summarise_bench.py /tmp/gpu-bench "$OUT/gpu_bench" >/dev/null
bench vgg16 32 256 $ALL; python3 scripts/summarise_bench.py /tmp/gpu-bench "$OUT/gpu_bench" >/dev/null
for alg in nonprivate mixed_ghost bk_mixed; do  # where the GPU time goes (CNN performance targets): torch.profiler, CUDA ops
  timeout 60 python3 -m dpbench profile --device cuda --model resnet18 --image-size 32 --batch-size 256 \
    --warmup 3 --algorithm "$alg" --out "$OUT/profile_resnet18_b256_${alg}.json" 2>&1 | tail -12
done
# the conv routes per layer on CUDA (the rules in dpbench/clipping/layers/conv.py were set on CPU)
timeout 90 python3 scripts/conv_routes.py --device cuda --batch-size 256 --repeats 3 2>&1 | tee "$OUT/conv_routes.txt"
# the vision transformers' GPU table (paper/vit_performance.md has the CPU one): DeiT-small and BEiT-base at
# batch 32 (Opacus fails on BEiT's buffers: one line each)
VIT="nonprivate mixed_ghost bk_mixed opacus opacus_ghost"
bench deit_small_patch16_224 224 32 $VIT; bench beit_base_patch16_224 224 32 $VIT
python3 scripts/summarise_bench.py /tmp/gpu-bench "$OUT/gpu_bench" >/dev/null
bench vit_small_patch16_224 224 256 nonprivate bk_mixed mixed_ghost opacus_ghost
python3 scripts/summarise_bench.py /tmp/gpu-bench "$OUT/gpu_bench"
