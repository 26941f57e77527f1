#!/usr/bin/env bash
# The test command (README; .ci/run calls it): install dependencies, build everything (CUDA
# compile-only when there is no GPU), run every CPU test, and build the fuzz targets.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh
(cd build && ctest --output-on-failure -L cpu -j "$(nproc)" --timeout 1500)
# libFuzzer targets (clang): built, not run, in CI.
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DQSERVE_CUDA=OFF -DQSERVE_FUZZ=ON \
  -DQSERVE_TESTS=OFF -DQSERVE_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
targets=()
for f in fuzz/*.cpp; do targets+=("fuzz_$(basename "$f" .cpp)"); done
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"
echo "fuzz targets built: ${targets[*]}"
