#!/usr/bin/env bash
# The base install, for real: a throw-away venv with the pinned torch and `pip install .` (no extras), then the
# core commands. tests/test_base_install.py hides the optional modules from one interpreter; this catches
# what it cannot: a package the core imports that pyproject.toml's dependencies leave out (the dev extra
# would install it for `make test`, and the suite would never notice).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$PYTHON -m venv "$tmp/venv"
pip=("$tmp/venv/bin/pip" install --quiet)
"${pip[@]}" torch==2.13.0                  # first, as the Makefile does: the local CPU wheel, not a CUDA build
# from a copy of the files git would ship (tracked and new, not ignored): setuptools' build/ in the work
# tree would otherwise keep files since deleted from src/ and install them
mkdir "$tmp/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -C "$tmp/src" -xf -
"${pip[@]}" "$tmp/src"
qkv="$tmp/venv/bin/qkv"
py="$tmp/venv/bin/python"

# the extras really are absent here, so the commands below run as a base install runs them
for module in fastapi uvicorn pydantic llguidance prometheus_client gguf PIL matplotlib tensorboard sacrebleu \
              seqeval rouge_score transformers; do
    if "$py" -c "import $module" 2>/dev/null; then echo "base install: $module is installed"; exit 1; fi
done

cd "$tmp"                                   # the installed qkv, not the source tree's
"$qkv" --version
"$qkv" --help >/dev/null
"$qkv" serve --help >/dev/null
"$qkv" train --preset tiny --max-iters 4 --eval-interval 2 --max-len 32 --out-dir run
"$qkv" generate run --prompt "ROMEO:" --max-new-tokens 16 --seed 0
"$qkv" info run >/dev/null
"$qkv" next run --text "ROMEO" >/dev/null
# a command that needs an extra: one line naming it, status 2
status=0
"$qkv" serve run 2>err.txt || status=$?
if [ "$status" != 2 ] || [ "$(wc -l <err.txt)" != 1 ] || ! grep -q "pip install 'qkv\[serve\]'" err.txt; then
    echo "base install: qkv serve exited $status instead of naming the serve extra (status 2):"; cat err.txt
    exit 1
fi
echo "base install: core commands ran; $(cat err.txt)"
