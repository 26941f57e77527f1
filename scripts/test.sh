#!/usr/bin/env bash
# The test command (README; .ci/run calls it): install dependencies, build everything (CUDA
# compile-only when there is no GPU), build the fuzz targets, run the parsers' tests under
# ASan/UBSan, then run every CPU test with CTest (last, so its summary closes the output).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh

# libFuzzer targets (clang): built, not run, here.
CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja -DQSERVE_CUDA=OFF -DQSERVE_FUZZ=ON \
  -DQSERVE_TESTS=OFF -DQSERVE_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
targets=()
for f in fuzz/*.cpp; do targets+=("fuzz_$(basename "$f" .cpp)"); done
cmake --build build-fuzz -j "$(nproc)" --target "${targets[@]}"
echo "fuzz targets built: ${targets[*]}"

# The parsers, core and quantized numerics again under AddressSanitizer + UndefinedBehaviorSanitizer.
sanitized=(test_core test_formats test_tokenizer test_quant test_jinja)
cmake -S . -B build-asan -G Ninja -DQSERVE_CUDA=OFF -DQSERVE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  > /dev/null
cmake --build build-asan -j "$(nproc)" --target "${sanitized[@]}" test_engine
for t in "${sanitized[@]}"; do
  echo "ASan/UBSan: $t"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 "build-asan/$t" --gtest_brief=1
done
# The engine's pure logic (pages, scheduler, sampling, stops, templates, datasets) under the
# sanitizers too; the model-driven engine tests are too slow in a Debug+ASan build.
echo "ASan/UBSan: test_engine (model-free tests)"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 build-asan/test_engine --gtest_brief=1 \
  --gtest_filter='BlockManager*:Scheduler*:EngineFake*:StopChecker*:ChatTemplate*:Dataset*:Sampling*' 

cd build && ctest --output-on-failure -L cpu -j "$(nproc)" --timeout 1500
