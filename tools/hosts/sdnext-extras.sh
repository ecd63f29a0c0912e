#!/usr/bin/env bash
# This project's additions to the SD.Next host build (run once per version by tools/hosts/build.sh):
# a random diffusers ControlNet for the e2e model, for SD.Next's Control tab
# (models/control/controlnet/deepcache-test-cn: 1.7 M parameters, 7 MB), made from the model's
# own UNet by tools/hosts/make_diffusers_controlnet.py, the same bytes on every build.
#   bash tools/hosts/sdnext-extras.sh TARGET RECIPE_DIR
set -euo pipefail
target="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
models="$target/sdnext/models"
rm -rf "$models/control/controlnet/deepcache-test-cn"
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" \
  "$here/make_diffusers_controlnet.py" "$models/Diffusers/tiny-sd15" \
  "$models/control/controlnet/deepcache-test-cn"

# --- transformer models (issue 21) -------------------------------------------------------------
# Small seeded random Flux, SD3 and Chroma pipelines (models/Diffusers/tiny-flux, tiny-sd3,
# tiny-chroma: 2.9 M, 5.7 M and 1.2 M parameters, 16, 28 and 6 MB, mostly the text encoders'
# vocabularies and the tokenizers), made from SD.Next's own configs/flux, configs/sd3 and
# configs/chroma by tools/hosts/make_sdnext_transformers.py, the same bytes on every build
# (15 s of CPU, under a minute). SD.Next loads them only with its setting te_shared_te off,
# which the e2e tests set through the options API (tests/e2e/transformers.py).
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" \
  "$here/make_sdnext_transformers.py" "$target/sdnext" "$models/Diffusers"

# --- SDXL (issue 23: SDXL and checkpoint switches in every host) -------------------------------
# A tiny seeded random SDXL pipeline (models/Diffusers/tiny-sdxl: diffusers' SDXL layout, 9 input
# / 9 output skip units, two text encoders, 51 M parameters, 200 MB), written by
# tools/hosts/make_sdnext_sdxl.py with SD.Next's own CLIP tokenizer files, the same weights on
# every build. SD.Next tells it by its model_index.json (StableDiffusionXLPipeline); its second
# text encoder is wider than 768, which SD.Next needs to compute the pooled embedding.
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" \
  "$here/make_sdnext_sdxl.py" "$models/Diffusers/tiny-sdxl" \
  --tokenizer "$target/sdnext/configs/sd15/tokenizer"
