#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter: $PYTHON, then python3.12/3.13 on PATH, then pyenv's.
set -u
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
candidates+=(python3.12 python3.13 python3)
for root in "${PYENV_ROOT:-$HOME/.pyenv}/versions" /usr/local/bin /opt/python; do
  for p in "$root"/3.12*/bin/python3 "$root"/3.13*/bin/python3; do [ -x "$p" ] && candidates+=("$p"); done
done
for c in "${candidates[@]}"; do
  path=$(command -v "$c" 2>/dev/null) || continue
  if "$path" -c 'import sys, venv; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    echo "$path"; exit 0
  fi
done
echo "No Python >= 3.12 found. Install one (e.g. 'pyenv install 3.12') or set PYTHON=/path/to/python3.12." >&2
exit 1
