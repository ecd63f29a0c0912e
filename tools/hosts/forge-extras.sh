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

# --- SDXL (issue 23: SDXL and checkpoint switches in every host) -------------------------------
# A single-file SDXL checkpoint that Forge's detection takes for SDXL (sdxl-random-narrow: SDXL's
# blocks, depths and attention at 320 channels on every level; the text encoders and VAE at full
# size, as Forge builds them from its own SDXL configs; 1184 M parameters, 2.3 GB fp16, seeded,
# the same bytes on every build; made once, about a minute), by tools/hosts/make_forge_sdxl.py.
# And the SDXL live-preview decoder that Forge, like A1111, would download before every SDXL
# generation (offline: HTTP 500, URLError): seeded random weights, written by the same function
# as A1111's (tools/hosts/make_sdxl_ckpt.py write_vae_approx); it only draws the previews.
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" "$here/make_forge_sdxl.py" \
  "$target/webui" "$target/data/models/Stable-diffusion/sdxl-random-narrow.safetensors"
approx="$target/data/models/VAE-approx"
if [ ! -f "$approx/vaeapprox-sdxl.pt" ]; then
  mkdir -p "$approx"
  CUDA_VISIBLE_DEVICES= "$target/venv/bin/python" -c 'import sys
sys.path.insert(0, sys.argv[1])
from make_sdxl_ckpt import write_vae_approx
write_vae_approx(sys.argv[2], 20240101)' "$here" "$approx/vaeapprox-sdxl.pt"
fi

# ---- SD3.5 (MMDiT) for tests/e2e/test_forge_sd3.py (tools/hosts/make_forge_sd3.py explains it)
# Forge's T5 tokenizer (SD3, Flux and Chroma load it) is converted from its sentencepiece model
# on load, and the sentencepiece pip resolves (0.2.3) needs protobuf >= 5 while Forge pins
# protobuf 3.20.0: every such model fails to load ("cannot import name 'runtime_version' from
# 'google.protobuf'"). sentencepiece 0.2.0 works with Forge's protobuf.
"$target/venv/bin/python" -m pip --disable-pip-version-check install -q --no-deps \
  "sentencepiece==0.2.0"
sd3="$target/data/models/Stable-diffusion/sd35-random-small.safetensors"
CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 "$target/venv/bin/python" "$here/make_forge_sd3.py" \
  "$target/webui" "$sd3" --vae-approx-dir "$target/data/models/VAE-approx"
