# Sourced by scripts/run.sh and scripts/test.sh: installs the Debian packages that are missing.
# `apt-get update` runs only when an install is needed and the package lists are stale.

sinkattn_install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  echo "== installing missing Debian packages: ${missing[*]}"
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null; then
    "${sudo[@]}" apt-get update </dev/null
    "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" </dev/null
  fi
}

# Everything the full tree needs: g++ brings libgomp (OpenMP) and the sanitizer runtimes.
SINKATTN_DEB_PACKAGES=(cmake g++ make libeigen3-dev libxsimd-dev libgtest-dev libbenchmark-dev)
