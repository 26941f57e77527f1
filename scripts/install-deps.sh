#!/usr/bin/env bash
# Installs the Debian packages qserve.cpp builds against (docs/dependencies.md says why each is
# here). Idempotent; skips apt-get when everything is already installed.
set -euo pipefail
pkgs=(cmake ninja-build g++ clang libclang-rt-14-dev pkg-config nlohmann-json3-dev libcli11-dev
      libpcre2-dev libsentencepiece-dev libgtest-dev libgmock-dev libcpp-httplib-dev curl)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# CUTLASS/CuTe C++ headers (header-only) for the sm_90a W8A8 GEMM, from PyPI; CMake finds them via
# python3 at configure time and skips that kernel if they are absent (docs/dependencies.md).
# --no-deps: only the headers are used, none of the package's Python code or dependencies.
if ! python3 -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('cutlass_library') else 1)" 2>/dev/null; then
  echo "installing: nvidia-cutlass==4.2.0.0 (pip, headers only)"
  python3 -m pip install -q --no-deps nvidia-cutlass==4.2.0.0 ||
    python3 -m pip install -q --no-deps --user --break-system-packages nvidia-cutlass==4.2.0.0 ||
    echo "warning: pip could not install nvidia-cutlass; the sm_90a W8A8 GEMM will not be built"
fi
# The official OpenAI Python client, for the black-box server test (tests/server/
# openai_client_test.py, CTest server_openai_client; it skips itself when the package is absent).
if ! python3 -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('openai') else 1)" 2>/dev/null; then
  echo "installing: openai (pip, for the server's client test)"
  python3 -m pip install -q openai ||
    python3 -m pip install -q --user --break-system-packages openai ||
    echo "warning: pip could not install openai; the server's Python client test will be skipped"
fi
