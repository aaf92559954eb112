# Sourced by the other scripts: create .venv at the repository root (once) and install the
# project with its pinned dependencies; a no-op when the install is already current.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
extras="${1:-}"
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-lock.txt -nt "$stamp" ]; then
  echo "installing scalpel-tvm and its pinned dependencies into .venv (log: .venv/install.log)"
  {
    .venv/bin/python -m pip install --upgrade pip &&
    .venv/bin/python -m pip install -c requirements-lock.txt -e ".${extras:+[$extras]}"
  } > .venv/install.log 2>&1 || { tail -40 .venv/install.log; exit 1; }
  touch "$stamp"
fi
