#!/usr/bin/env bash
# This project's additions to the A1111 host build (run once by tools/hosts/build.sh):
# a second tiny checkpoint of the default one's config, drawn with another seed, for the
# refiner scenario (A1111 loads a refiner of the same config into the same model object).
#   bash tools/hosts/a1111-extras.sh TARGET RECIPE_DIR
set -euo pipefail
target="$1" recipe="$2"
models="$target/data/models/Stable-diffusion"
if [ ! -f "$models/tiny-sd15-refiner.safetensors" ]; then
  tmp="$target/run/refiner-ckpt"
  rm -rf "$tmp" && mkdir -p "$tmp"
  HF_HOME="$target/hf-home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$target/venv/bin/python" "$recipe/make_ckpt.py" "$target/webui" "$tmp" --seed 7
  mv "$tmp/tiny-sd15-random.yaml" "$models/tiny-sd15-refiner.yaml"
  mv "$tmp/tiny-sd15-random.safetensors" "$models/tiny-sd15-refiner.safetensors"
  rm -rf "$tmp"
fi
