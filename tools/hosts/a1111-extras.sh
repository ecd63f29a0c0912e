#!/usr/bin/env bash
# This project's additions to the A1111 host build (run once by tools/hosts/build.sh):
# refiner checkpoints drawn with another seed: a tiny one with a .yaml of its own (A1111 builds
# a new model object for it) and a full-size SD1.5 one without (it shares the v1-inference
# config with sd15-random-fp16, so A1111 loads its weights into the same model object); a
# tiny SDXL-layout checkpoint for the SDXL scenario; and sd-webui-controlnet, parked, with its
# requirements and a random SD 1.5 ControlNet (it runs beside sd15-random-fp16 only).
#   bash tools/hosts/a1111-extras.sh TARGET RECIPE_DIR
set -euo pipefail
target="$1" recipe="$2"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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
  HF_HOME="$target/hf-home" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
    "$target/venv/bin/python" "$here/make_sdxl_ckpt.py" "$target/webui" "$models" \
    --vae-approx-dir "$approx"
fi
# sd-webui-controlnet (../extensions/, GPL-3.0: a test dependency only, none of its code is ours)
# for the ControlNet scenarios. It is unpacked PARKED, in TARGET/parked-extensions, so that every
# other scenario runs without it; a test moves it into data/extensions/ and back (as
# tests/e2e/extensions.py place_other_extension does for aria1th's extension). Its requirements
# go into the venv now: hosts start with --skip-install, so its install.py never runs.
# requirements.txt as pip reads it gives what that install.py would (timm<=0.9.5 -> 0.9.5,
# pydantic<=1.10.17 -> 1.10.17, albumentations 1.4.3, the rest only when missing); every package
# already in the venv that the file does not name is held at its version (torch above all).
# mediapipe is the exception: the newest (what pip picks) has no `mp.solutions`, which
# controlnet_aux uses at import, so controlnet.py fails to load ("AttributeError: module
# 'mediapipe' has no attribute 'solutions'"). 0.10.14 (current when this extension commit was
# made) has it but requires protobuf>=4.25.3 and jax, while A1111 pins protobuf 3.20.0 (and its
# launcher puts 3.20.0 back at every start without --skip-install, so users run that pair too):
# it goes in with --no-deps, its other requirements with the rest. `pip check` then names
# mediapipe's protobuf and jax; controlnet_aux and the extension import fine.
# Left out: the onnxruntime and the wheels from GitHub that its install.py adds (preprocessors
# only; the scenarios send module "none").
cn_name=sd-webui-controlnet
cn_tar="$recipe/../extensions/sd-webui-controlnet-56cec5b2.tar.gz"
cn_parked="$target/parked-extensions/$cn_name"
cn_active="$target/data/extensions/$cn_name"
if [ -d "$cn_active" ] && [ -d "$cn_parked" ]; then
  echo "both $cn_active and $cn_parked exist; remove one" >&2
  exit 1
fi
cn_dir="$cn_parked"
[ -d "$cn_active" ] && cn_dir="$cn_active"
if [ "$(cat "$cn_dir/.deepcache-source" 2>/dev/null)" != "$(basename "$cn_tar")" ]; then
  tmp="$target/parked-extensions/.$cn_name.tmp"
  rm -rf "$tmp" "$cn_dir" && mkdir -p "$tmp"
  tar -xzf "$cn_tar" -C "$tmp"
  basename "$cn_tar" > "$tmp/$cn_name/.deepcache-source"
  mv "$tmp/$cn_name" "$cn_dir"
  rm -rf "$tmp"
fi
cn_reqs="$cn_dir/requirements.txt"
cn_mediapipe=(mediapipe==0.10.14 absl-py "attrs>=19.1.0" "flatbuffers>=2.0" opencv-contrib-python
              "sounddevice>=0.4.4")
cn_stamp="$target/venv/.deepcache-controlnet-$( { cat "$cn_reqs"; echo "${cn_mediapipe[*]}"; } \
  | sha256sum | cut -c1-12)"
if [ ! -f "$cn_stamp" ]; then
  held="$target/run/controlnet-constraints.txt"
  reqs="$target/run/controlnet-requirements.txt"
  mkdir -p "$target/run"
  grep -v -i -E '^\s*mediapipe\b' "$cn_reqs" > "$reqs"
  "$target/venv/bin/python" - "$cn_reqs" > "$held" <<'PY'
import re
import subprocess
import sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

named = {norm(re.split(r"[<>=!~;\[ @]", line.strip(), maxsplit=1)[0])
         for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True,
                        check=True).stdout.splitlines()
for line in freeze:
    if "==" in line and norm(line.split("==")[0]) not in named:
        print(line)
PY
  "$target/venv/bin/python" -m pip install -r "$reqs" "${cn_mediapipe[@]:1}" -c "$held"
  "$target/venv/bin/python" -m pip install --no-deps "${cn_mediapipe[0]}"
  "$target/venv/bin/python" -m pip check || true
  "$target/venv/bin/python" -c 'import mediapipe as mp; mp.solutions.drawing_utils'
  rm -f "$held" "$reqs"
  touch "$cn_stamp"
fi
# A random SD 1.5 ControlNet, full width to fit sd15-random-fp16, where the extension reads
# models (data/models/ControlNet); tools/hosts/make_controlnet.py explains its layout. A file
# that exists is kept (723 MB, ~10 s to write).
CUDA_VISIBLE_DEVICES= "$target/venv/bin/python" "$here/make_controlnet.py" \
  "$models/sd15-random-fp16.safetensors" "$target/data/models/ControlNet/control_sd15_random.safetensors"
