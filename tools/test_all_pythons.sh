#!/usr/bin/env bash
# Run the test suite on every Python 3.9-3.13 this machine has (pyenv), each in its own venv.
# Usage: tools/test_all_pythons.sh [3.9 3.10 ...]
set -u
cd "$(dirname "$0")/.."
versions=("${@:-3.9 3.10 3.11 3.12 3.13}")
status=0
for v in ${versions[@]}; do
  if ! prefix=$(pyenv prefix "$v" 2>/dev/null); then
    echo "== $v: not installed, skipped"; continue
  fi
  venv="/tmp/tracedmp-py$v"
  "$prefix/bin/python" -m venv "$venv" && "$venv/bin/pip" install -q '.[test]' \
    && "$venv/bin/python" -m pytest -q -p no:cacheprovider > "$venv.log" 2>&1
  rc=$?
  echo "== $v: $(tail -n 1 "$venv.log") (exit $rc; log $venv.log)"
  [ $rc -eq 0 ] || status=1
done
exit $status
