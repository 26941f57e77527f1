// Turns off floating-point contraction (a*b+c -> fma) for the rest of the including .cpp file.
//
// The quantized numerics are a specification: every rounding step is spelled out, and an FMA
// is written as std::fma exactly where QServe's kernels use one. GCC contracts a*b+c in C++
// whenever the target has FMA (e.g. -march=native), and Clang does so within one expression,
// which would silently change results. Include this first in every quant .cpp that does
// arithmetic the contract covers.
#pragma once

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
