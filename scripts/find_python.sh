#!/usr/bin/env bash
# Print the path of a Python >= 3.12 interpreter: $PYTHON if set, else python3.12,
# python3.13, python3 (if new enough), else a pyenv-installed 3.12/3.13.
set -u
ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
real() { "$@" -c 'import sys; print(sys.executable)'; }
if [ -n "${PYTHON:-}" ]; then
  if ok "$PYTHON"; then real "$PYTHON"; exit 0; fi
  echo "PYTHON=$PYTHON is not a working Python >= 3.12" >&2; exit 1
fi
for cand in python3.12 python3.13 python3; do
  if command -v "$cand" >/dev/null 2>&1 && ok "$cand"; then real "$cand"; exit 0; fi
done
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.1[2-9]' | sort -V); do
    if ok env PYENV_VERSION="$v" pyenv exec python; then PYENV_VERSION="$v" pyenv exec python -c 'import sys; print(sys.executable)'; exit 0; fi
  done
fi
echo "no Python >= 3.12 found: install python3.12, or run with PYTHON=/path/to/python3.12" >&2
exit 1
