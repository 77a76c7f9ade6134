#!/usr/bin/env bash
# The Fashion-MNIST fine-tuning table (paper/fmnist_finetune.md): a non-private pretraining on the first
# half of the training set (examples 0:30000 in stored order), then private fine-tuning on the second
# half (30000:60000) at ε ∈ {1, 3, 8} with every parameter, with the convolutional and hidden layers
# frozen (only the last Linear trains), and with biases only (BiTFiT); plus a non-private fine-tuning
# of the same checkpoint as the ceiling. The test set (10000) is never trained on nor used to choose
# anything; no hyper-parameter was tuned (the same for the three modes).
#   scripts/fmnist_finetune_runs.sh OUT_DIR [CHECKPOINT_DIR]
# then: python scripts/fmnist_finetune_table.py OUT_DIR > paper/fmnist_finetune.md
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [CHECKPOINT_DIR]}
ckpt=${2:-$out/checkpoints}
mkdir -p "$out" "$ckpt"
dpbench() { python -m dpbench "$@"; }
common=(--model cnn_mnist --dataset fashion_mnist --threads 1 --seed 0 --no-progress --resume)

dpbench train "${common[@]}" --algorithm nonprivate --train-range 0:30000 --epochs 5 --batch-size 128 \
    --physical-batch-size 128 --sampling shuffle --optimizer adam --lr 0.001 \
    --out "$out/pretrain.json" --checkpoint "$ckpt/pretrain.ckpt.pt"

finetune=("${common[@]}" --train-range 30000:60000 --pretrained-file "$ckpt/pretrain.ckpt.pt")
dpbench train "${finetune[@]}" --algorithm nonprivate --epochs 3 --batch-size 128 --physical-batch-size 128 \
    --sampling shuffle --optimizer adam --lr 0.001 \
    --out "$out/nonprivate_full.json" --checkpoint "$ckpt/nonprivate_full.ckpt.pt"
private=(--algorithm bk_mixed --accountant prv --delta 1e-5 --epochs 3 --batch-size 1024 --physical-batch-size 512
         --sampling poisson --optimizer sgd --lr 2 --momentum 0.9 --max-grad-norm 0.1)
for eps in 1 3 8; do  # the three modes back to back at each ε, so that a change of load hits all three
    dpbench train "${finetune[@]}" "${private[@]}" --epsilon "$eps" \
        --out "$out/full_eps$eps.json" --checkpoint "$ckpt/full_eps$eps.ckpt.pt"
    dpbench train "${finetune[@]}" "${private[@]}" --epsilon "$eps" --train-only 'classifier.3.*' \
        --out "$out/frozen_backbone_eps$eps.json" --checkpoint "$ckpt/frozen_backbone_eps$eps.ckpt.pt"
    dpbench train "${finetune[@]}" "${private[@]}" --epsilon "$eps" --train-only '*.bias' \
        --out "$out/bitfit_eps$eps.json" --checkpoint "$ckpt/bitfit_eps$eps.ckpt.pt"
done
