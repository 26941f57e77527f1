// Hadamard rotations for QoQ's offline transforms (qoq-algorithm.md §1.2): the residual-stream
// rotation R (H x H) and the per-head rotation R_d on V/O. Both are folded into weights, so any
// orthogonal matrix is exact; Hadamard matrices spread outlier channels evenly over all channels.
//
// Order n = k * 2^m: R = kron(A_k, S_{2^m}) / sqrt(n), S the Sylvester matrix (S_1 = [1],
// S_2n = [[S, S], [S, -S]]) and A_k a Hadamard matrix of order k from the Paley constructions
// (k in {12, 20, 28, 36, 60, 108, 140}; k = 1 when n is a power of two). DeepCompressor uses
// Sloane's tables for A_k, so our R differs from its R for non-powers of two (both orthogonal);
// for powers of two it is the same matrix. Orders 52, 156 and 172 (which DeepCompressor also
// accepts) have no Paley construction here and are refused.
#pragma once

#include <cstdint>
#include <vector>

namespace qserve::qoq {

// A Hadamard matrix of order k (entries +-1, A A^T = k I), row-major, for k = 1, 2^m, or a Paley
// order listed above (times a power of two). Throws qserve::Error naming k otherwise.
std::vector<int8_t> hadamard_matrix(int64_t k);

// Whether hadamard_rotation(n) exists.
bool has_hadamard(int64_t n);

class HadamardRotation {
 public:
  // Throws qserve::Error when n has no supported factorisation k * 2^m.
  explicit HadamardRotation(int64_t n);
  int64_t size() const { return n_; }
  // x <- x R for each of `rows` rows of length n (computed in double).
  void apply_right(float* x, int64_t rows) const;
  // W <- R^T W for W [n, cols] row-major (every column c is mapped to R^T c).
  void apply_left_transposed(float* w, int64_t cols) const;
  // R as a dense row-major n x n matrix (tests).
  std::vector<double> dense() const;

 private:
  void right_one(double* row) const;
  int64_t n_ = 0;
  int64_t k_ = 1;          // order of the Paley factor
  int64_t m_ = 1;          // 2^m, order of the Sylvester factor
  std::vector<int8_t> a_;  // A_k, row-major
};

}  // namespace qserve::qoq
