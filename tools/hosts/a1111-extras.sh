#!/usr/bin/env bash
# This project's additions to the A1111 host build (run once by tools/hosts/build.sh):
# refiner checkpoints drawn with another seed: a tiny one with a .yaml of its own (A1111 builds
# a new model object for it) and a full-size SD1.5 one without (it shares the v1-inference
# config with sd15-random-fp16, so A1111 loads its weights into the same model object); and a
# tiny SDXL-layout checkpoint for the SDXL scenario.
#   bash tools/hosts/a1111-extras.sh TARGET RECIPE_DIR
set -euo pipefail
target="$1" recipe="$2"
models="$target/data/models/Stable-diffusion"
if [ ! -f "$models/tiny-sd15-refiner.safetensors" ] || [ ! -f "$models/sd15-refiner-fp16.safetensors" ]; then
  tmp="$target/run/refiner-ckpt"
  rm -rf "$tmp" && mkdir -p "$tmp"
  HF_HOME="$target/hf-home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$target/venv/bin/python" "$recipe/make_ckpt.py" "$target/webui" "$tmp" --full --seed 7
  mv "$tmp/tiny-sd15-random.yaml" "$models/tiny-sd15-refiner.yaml"
  mv "$tmp/tiny-sd15-random.safetensors" "$models/tiny-sd15-refiner.safetensors"
  mv "$tmp/sd15-random-fp16.safetensors" "$models/sd15-refiner-fp16.safetensors"
  rm -rf "$tmp"
fi
# A tiny checkpoint in the SDXL layout (sgm DiffusionEngine, two text encoders, 9+9-block UNet)
# for the SDXL scenario, and the SDXL live-preview decoder that A1111 would otherwise download
# (HTTP 500 offline); tools/hosts/make_sdxl_ckpt.py explains both. It skips files that exist.
approx="$target/data/models/VAE-approx"
if [ ! -f "$models/tiny-sdxl-random.safetensors" ] || [ ! -f "$models/tiny-sdxl-random.yaml" ] \
    || [ ! -f "$approx/vaeapprox-sdxl.pt" ]; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  HF_HOME="$target/hf-home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$target/venv/bin/python" "$here/make_sdxl_ckpt.py" "$target/webui" "$models" \
    --vae-approx-dir "$approx"
fi
