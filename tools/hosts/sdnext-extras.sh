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
