#!/usr/bin/env bash
# The README's first command (`make demo`): DemoNet from export to a validated slim model.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-out/demo}
BIN=$(dirname "$PY")
mkdir -p "$OUT"
step() { printf '\n== %s\n' "$*"; }

step "1/7 export DemoNet (OTOv2, 3x32x32) to ONNX"
"$PY" -m models.export --only demonet --exporter legacy --out "$OUT"

step "2/7 partition into zero-invariant groups"
"$BIN/onnxoto" partition "$OUT/demonet.onnx" -o "$OUT/partition.json"

step "3/7 one-shot magnitude mask: remove 50% of every prunable group"
"$BIN/onnxoto" mask "$OUT/demonet.onnx" --ratio 0.5 -o "$OUT/masks.npz"

step "4/7 shrink (validated against the full model with those channels zeroed)"
"$BIN/onnxoto" shrink "$OUT/demonet.onnx" --mask "$OUT/masks.npz" -o "$OUT/demonet.slim.onnx"

step "5/7 validate again, standalone"
"$BIN/onnxoto" validate "$OUT/demonet.onnx" "$OUT/demonet.slim.onnx" --mask "$OUT/masks.npz"

step "6/7 report: full vs slim, with onnxruntime CPU latency"
"$BIN/onnxoto" report "$OUT/demonet.onnx" "$OUT/demonet.slim.onnx" --latency --runs 30

step "7/7 train with DHSPG instead: MLPNet on Fashion-MNIST, groups driven to exact zeros, then shrunk"
"$PY" -m models.export --only mlpnet --exporter legacy --out "$OUT"
# --lam 0.1: OTOv2's default push (sgd 1e-3) needs far more than 3 epochs to zero a group.
"$BIN/onnxoto" train dhspg "$OUT/mlpnet.onnx" --data fashion-mnist --target 0.5 --epochs 3 \
    --lam 0.1 -o "$OUT/dhspg" --overwrite --quiet
