#!/usr/bin/env bash
# Run the test suite on every Python 3.9-3.15 this machine has, each in its own venv: 3.9-3.13
# from pyenv, 3.14 and 3.15 from pyenv too or else from Debian sid through tools/sid-python
# (root only).  Venvs and logs go to $TMPDIR (default /tmp).
# Usage: tools/test_all_pythons.sh [3.9 3.10 ...]
set -u
cd "$(dirname "$0")/.."
versions=("${@:-3.9 3.10 3.11 3.12 3.13 3.14 3.15}")
tmp=${TMPDIR:-/tmp}
status=0
for v in ${versions[@]}; do
  venv="$tmp/tracedmp-py$v"
  if prefix=$(pyenv prefix "$v" 2>/dev/null); then
    run=()
    base="$prefix/bin/python"
  elif [[ "$v" =~ ^3\.1[45]$ ]] && [ "$(id -u)" = 0 ] && tools/sid-python --has "$v"; then
    run=(tools/sid-python)   # the venv is made inside the sid root, and used there
    base="python$v"
  else
    echo "== $v: not installed, skipped"; continue
  fi
  rm -rf "$venv"
  "${run[@]}" "$base" -m venv "$venv" && "${run[@]}" "$venv/bin/pip" install -q '.[test]' \
    && "${run[@]}" "$venv/bin/python" -m pytest -q -p no:cacheprovider > "$venv.log" 2>&1
  rc=$?
  echo "== $v: $(tail -n 1 "$venv.log") (exit $rc; log $venv.log)"
  [ $rc -eq 0 ] || status=1
done
exit $status
