#!/usr/bin/env bash
# This project's additions to the Forge host build (run once per version by tools/hosts/build.sh):
# a random ControlNet shaped for the e2e checkpoint, for Forge's built-in ControlNet
# (extensions-builtin/sd_forge_controlnet reads TARGET/data/models/ControlNet). The checkpoint
# keeps 320 channels at every level, so the ControlNet does too (47.6 M parameters, 95 MB fp16);
# tools/hosts/make_controlnet.py explains the layout. It is drawn from a fixed seed into
# the same bytes on every build (API name "control_sd15_random_small [9e22f07b]"), rewritten
# each time this runs, and checked by loading it strictly into Forge's own ControlNet class.
# Also a full-width SD1.5 checkpoint (the recipe's own make_ckpt.py --size full, seed 1234,
# 2034 MiB) for Forge's FreeU, which scales only blocks of 2x and 4x the base channels: the e2e
# checkpoint keeps 320 at every level, so FreeU does nothing there. Made once (25 s).
#   bash tools/hosts/forge-extras.sh TARGET RECIPE_DIR
set -euo pipefail
target="$1"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" "$here/make_controlnet.py" \
  "$target/data/models/Stable-diffusion/sd15-random-small.safetensors" \
  "$target/data/models/ControlNet/control_sd15_random_small.safetensors" \
  --force --check-forge "$target/webui"
full="$target/data/models/Stable-diffusion/sd15-random-full.safetensors"
if [ ! -f "$full" ]; then
  CUDA_VISIBLE_DEVICES= "$target/venv/bin/python" "$2/make_ckpt.py" --forge-dir "$target/webui" \
    --size full --out "$full.partial"
  mv "$full.partial" "$full"
fi
