#!/usr/bin/env bash
# Build one real WebUI host from ../shared/hosts once per machine and print its directory.
#
#   bash tools/hosts/build.sh a1111|forge|sdnext
#
# The build goes to $DEEPCACHE_HOSTS_DIR (default ~/sd-webui-deepcache-hosts)/HOST-KEY,
# outside the clone (no dot in the path: gradio refuses to serve the page scripts from a hidden
# folder); KEY is a checksum of the host's recipe folder and the build flags, so a
# rerun on the same machine reuses a finished build and a changed recipe builds anew. Then
# tools/hosts/HOST-extras.sh (this project's additions: extra checkpoints, test extensions), if
# there is one, runs once per version of it and of the make_*.py scripts beside it. Only the last line of stdout is the
# directory; the logs go to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
host="${1:?usage: build.sh a1111|forge|sdnext}"
shared="${DEEPCACHE_SHARED_DIR:-$root/../shared}/hosts"
case "$host" in
  a1111) flags=(--full --with-aria) ;;
  forge) flags=(--with-anchor) ;;
  sdnext) flags=(--no-smoke) ;;
  *) echo "unknown host: $host" >&2; exit 2 ;;
esac
[ -d "$shared/$host" ] || { echo "no recipe at $shared/$host" >&2; exit 1; }
key=$( { (cd "$shared/$host" && find . -type f -print0 | sort -z | xargs -0 sha256sum);
         echo "${flags[*]}"; } | sha256sum | cut -c1-12)
base="${DEEPCACHE_HOSTS_DIR:-$HOME/sd-webui-deepcache-hosts}"
target="$base/$host-$key"
if [ ! -f "$target/.deepcache-built" ]; then
  mkdir -p "$base"
  start=$(date +%s)
  python="${PYTHON:-$(command -v python3.11 || command -v python3)}"
  PYTHON="$python" bash "$shared/$host/build.sh" "$target" "${flags[@]}" >&2
  echo "$(( $(date +%s) - start ))" > "$target/.deepcache-built"
  echo "built $host in $(cat "$target/.deepcache-built") s: $target" >&2
fi
extras="$here/$host-extras.sh"
if [ -f "$extras" ]; then
  # once per version of the extras and of the scripts beside it (make_*.py)
  version=$(cd "$here" && cat "$host-extras.sh" make_*.py 2>/dev/null | sha256sum | cut -c1-12)
  stamp="$target/.deepcache-extras-$version"
  if [ ! -f "$stamp" ]; then
    bash "$extras" "$target" "$shared/$host" >&2
    touch "$stamp"
  fi
fi
echo "$target"
