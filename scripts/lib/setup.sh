# Sourced by scripts/demo and scripts/test: a project virtualenv with ormb installed.
# Usage: source scripts/lib/setup.sh [EXTRAS]   (EXTRAS e.g. "test")
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${ORMB_VENV:-$ROOT/.venv}"

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

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  python3 -m venv "$VENV"
fi
spec="$ROOT"
[ -n "${1:-}" ] && spec="$ROOT[$1]"
echo "==> installing ormb${1:+ with [$1]} into $VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -e "$spec" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import ormb" || { echo "ormb did not install" >&2; exit 1; }
export PATH="$VENV/bin:$PATH"
