#!/usr/bin/env bash
# The test containers' wheel cache: llmserve's pinned runtime dependencies (and
# theirs) as wheels in .cache/wheelhouse, which molecule/shared/create.yml mounts
# read-only at /opt/wheelhouse next to /opt/wheels (the CPU torch wheel), so that
# containers install them from disk instead of downloading each from PyPI.
#
#   tests/harness/wheelhouse.sh           build when the pins changed (cached by key)
#   tests/harness/wheelhouse.sh status    print "current PYTHON", "stale" or "missing"
#   FORCE=1 tests/harness/wheelhouse.sh   rebuild
#
# The key covers the runtime pins in pyproject.toml, this script, the host's Python
# (the containers' interpreter must match it for the compiled wheels) and the names
# of the local wheels. torch is never downloaded: a pinned torch must be a local
# build in TORCH_WHEELS (the +cpu wheel); without one the build fails rather than
# fetching a multi-GB CUDA build, and the containers use PyPI as before.
#
# Environment: TORCH_WHEELS (default /opt/wheels), PYTHON (default .venv/bin/python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
house="$root/.cache/wheelhouse"
local_wheels="${TORCH_WHEELS:-/opt/wheels}"
python="${PYTHON:-$root/.venv/bin/python}"
[[ -x "$python" ]] || python=python3

# Runtime requirements, one a line, as pyproject.toml pins them.
requirements() {
  "$python" - "$root/pyproject.toml" <<'PY'
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11
    from pip._vendor import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(sorted(d.strip() for d in deps)))
PY
}

python_version() {
  "$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])'
}

local_names() {
  [[ -d "$local_wheels" ]] && find "$local_wheels" -maxdepth 1 -name '*.whl' -printf '%f\n' | sort
  return 0
}

key() {
  { cat "${BASH_SOURCE[0]}"; requirements; python_version; uname -m; local_names; } | sha256sum | cut -c1-16
}

status() {
  if [[ ! -f "$house/.key" ]]; then
    echo missing
  elif [[ "$(cat "$house/.key")" == "$(key)" ]]; then
    echo "current $(cat "$house/.python")"
  else
    echo stale
  fi
}

tmp=""
build() {
  local want have
  want="$(key)"
  have="$(cat "$house/.key" 2>/dev/null || true)"
  if [[ -z "${FORCE:-}" && "$want" == "$have" ]]; then
    echo "wheelhouse: .cache/wheelhouse (cached, key $want)"
    return 0
  fi

  mkdir -p "$root/.cache"
  tmp="$(mktemp -d "$root/.cache/wheelhouse.new.XXXXXX")"
  trap '[[ -n "$tmp" ]] && rm -rf "$tmp"' EXIT
  requirements > "$tmp/.requirements.txt"
  : > "$tmp/.constraints.txt"

  # A pinned torch comes only from the local CPU build: its local version label
  # (+cpu) is not on PyPI, so the constraint keeps pip from taking PyPI's CUDA build.
  local torch_pin
  torch_pin="$(sed -n 's/^torch==\([^;[:space:]]*\).*/\1/p' "$tmp/.requirements.txt")"
  if grep -qiE '^torch([^a-z0-9_.-]|$)' "$tmp/.requirements.txt"; then
    local cpu
    cpu="$(local_names | sed -n "s/^torch-${torch_pin//./\\.}+\([a-z0-9]*\)-.*/\1/p" | head -n 1)"
    if [[ -z "$torch_pin" || -z "$cpu" ]]; then
      echo "wheelhouse: no local torch ${torch_pin:-(unpinned)} wheel in $local_wheels; not downloading a CUDA build" >&2
      return 1
    fi
    echo "torch==$torch_pin+$cpu" > "$tmp/.constraints.txt"
  fi

  echo "wheelhouse: building .cache/wheelhouse (key $want)" >&2
  local find_links=()
  [[ -d "$local_wheels" ]] && find_links=(--find-links "$local_wheels")
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip wheel --quiet --progress-bar off \
    -r "$tmp/.requirements.txt" -c "$tmp/.constraints.txt" "${find_links[@]}" -w "$tmp" >&2

  # The local wheels stay where they are (mounted on their own).
  local name
  while read -r name; do
    rm -f "$tmp/$name"
  done < <(local_names)
  # Nothing CUDA: no torch other than the local one, no nvidia-* or triton wheels.
  if compgen -G "$tmp/torch-*" >/dev/null || compgen -G "$tmp/nvidia_*" >/dev/null \
    || compgen -G "$tmp/triton-*" >/dev/null; then
    echo "wheelhouse: refusing CUDA wheels:" $(cd "$tmp" && ls torch-* nvidia_* triton-* 2>/dev/null) >&2
    return 1
  fi
  # Complete: the pins resolve from the wheelhouse and the local wheels alone.
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$python" -m pip install --quiet --dry-run --ignore-installed \
    --no-index --find-links "$tmp" "${find_links[@]}" \
    -r "$tmp/.requirements.txt" -c "$tmp/.constraints.txt" >&2

  python_version > "$tmp/.python"
  echo "$want" > "$tmp/.key"
  chmod 0755 "$tmp"
  rm -rf "$house"
  mv "$tmp" "$house"
  trap - EXIT
  echo "wheelhouse: .cache/wheelhouse (built, key $want): $(find "$house" -name '*.whl' | wc -l) wheels, $(du -sh "$house" | cut -f1)"
}

case "${1:-build}" in
  build) build ;;
  status) status ;;
  *) echo "usage: $0 [build|status]" >&2; exit 2 ;;
esac
