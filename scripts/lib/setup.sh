# Sourced by scripts/demo and scripts/test: a project virtualenv with ormb installed.
# Usage: source scripts/lib/setup.sh [EXTRAS]   (EXTRAS e.g. "test")
# Says what it does as it goes: creating the virtualenv, each package pip fetches, what it installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ORMB_VENV:-$ROOT/.venv}"

can_install_packages() {  # root, or sudo without a password prompt
  [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null
}

apt_install() {  # apt_install PACKAGE... : install the Debian packages that are missing
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "==> installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

create_venv() {
  local log
  log="$(mktemp)"
  if python3 -m venv "$VENV" >"$log" 2>&1; then
    rm -f "$log"
    return 0
  fi
  rm -rf "$VENV"
  # Debian and Ubuntu ship ensurepip, which venv needs, in a package of its own.
  if grep -q -e ensurepip -e python3-venv "$log"; then
    local versioned
    versioned="python3.$(python3 -c 'import sys; print(sys.version_info[1])')-venv"
    if ! can_install_packages; then
      echo "Error: python3 -m venv needs the Debian package $versioned (ensurepip is not installed)" \
           "(run: sudo apt-get install $versioned, then run this again)" >&2
      rm -f "$log"
      exit 1
    fi
    echo "==> python3 -m venv needs ensurepip, which Debian ships in $versioned"
    apt_install "$versioned"
    if python3 -m venv "$VENV" >"$log" 2>&1; then
      rm -f "$log"
      return 0
    fi
  fi
  echo "Error: could not create the virtualenv $VENV:" >&2
  sed 's/^/  /' "$log" >&2
  rm -f "$log"
  exit 1
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating the virtualenv $VENV"
  create_venv
fi
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
echo "==> installing ormb${1:+ with [$1]} into $VENV (the first time takes a minute or two; pip's steps follow)"
# Show what pip fetches and installs (not its hundreds of "already satisfied" lines); fail if pip fails.
if ! "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off -e "$spec" 2>&1 |
  while IFS= read -r line; do
    case "$line" in
      Collecting*|"Installing collected packages"*|Successfully*|ERROR*|error*) echo "    $line" ;;
    esac
  done; then
  echo "Error: pip could not install ormb${1:+[$1]} (its errors are above)" >&2
  exit 1
fi
"$VENV/bin/python" -c "import ormb" || { echo "Error: ormb did not install (see pip's output above)" >&2; exit 1; }
echo "==> ormb is installed: $VENV/bin/ormb"
export PATH="$VENV/bin:$PATH"
