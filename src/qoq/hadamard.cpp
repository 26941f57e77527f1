// Hadamard matrices (Sylvester, Paley I and II) and the rotation R = kron(A_k, S_2^m) / sqrt(n).
#include "qoq/hadamard.h"

#include <cmath>
#include <string>

#include "core/error.h"
#include "core/thread_pool.h"

namespace qserve::qoq {

namespace {

bool is_pow2(int64_t n) {
  return n > 0 && (n & (n - 1)) == 0;
}

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t d = 2; d * d <= q; ++d) {
    if (q % d == 0) return false;
  }
  return true;
}

// Legendre symbol of a modulo the odd prime q: 0, 1 (square) or -1.
int legendre(int64_t a, int64_t q) {
  a %= q;
  if (a < 0) a += q;
  if (a == 0) return 0;
  for (int64_t x = 1; x < q; ++x) {
    if ((x * x) % q == a) return 1;
  }
  return -1;
}

// Paley I: q prime, q = 3 mod 4, order q + 1. H = I + S with S = [[0, 1^T], [-1, Q]], Q the
// (skew-symmetric) Jacobsthal matrix Q_ij = legendre(j - i).
std::vector<int8_t> paley1(int64_t q) {
  const int64_t n = q + 1;
  std::vector<int8_t> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int s;
      if (i == 0) {
        s = j == 0 ? 0 : 1;
      } else if (j == 0) {
        s = -1;
      } else {
        s = legendre(j - i, q);
      }
      h[static_cast<size_t>(i * n + j)] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  }
  return h;
}

// Paley II: q prime, q = 1 mod 4, order 2(q + 1). The symmetric conference matrix
// C = [[0, 1^T], [1, Q]] with every 0 replaced by [[1, -1], [-1, -1]] and every +-1 by
// +-[[1, 1], [1, -1]].
std::vector<int8_t> paley2(int64_t q) {
  const int64_t c = q + 1, n = 2 * c;
  std::vector<int8_t> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < c; ++i) {
    for (int64_t j = 0; j < c; ++j) {
      int e;
      if (i == 0 || j == 0) {
        e = (i == j) ? 0 : 1;
      } else {
        e = legendre(j - i, q);
      }
      const int blk[2][2] = {{e == 0 ? 1 : e, e == 0 ? -1 : e},
                             {e == 0 ? -1 : e, e == 0 ? -1 : -e}};
      for (int a = 0; a < 2; ++a) {
        for (int b = 0; b < 2; ++b) {
          h[static_cast<size_t>((2 * i + a) * n + 2 * j + b)] = static_cast<int8_t>(blk[a][b]);
        }
      }
    }
  }
  return h;
}

std::vector<int8_t> sylvester(int64_t n) {
  std::vector<int8_t> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      h[static_cast<size_t>(i * n + j)] =
          (__builtin_popcountll(static_cast<uint64_t>(i & j)) & 1) ? -1 : 1;
    }
  }
  return h;
}

// The Paley factor orders we can build, in DeepCompressor's search order (52, 156, 172 omitted).
constexpr int64_t kPaleyOrders[] = {140, 108, 60, 36, 28, 20, 12};

bool paley_buildable(int64_t k) {
  return (is_prime(k - 1) && (k - 1) % 4 == 3) ||
         (k % 2 == 0 && is_prime(k / 2 - 1) && (k / 2 - 1) % 4 == 1);
}

void check_hadamard(const std::vector<int8_t>& h, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) {
      int64_t dot = 0;
      for (int64_t t = 0; t < n; ++t) {
        dot += h[static_cast<size_t>(i * n + t)] * h[static_cast<size_t>(j * n + t)];
      }
      check(dot == (i == j ? n : 0),
            "internal error: the Hadamard construction of order " + std::to_string(n) + " failed");
    }
  }
}

// n = k * 2^m with k from kPaleyOrders (or 1); returns k, or 0 when none fits.
int64_t paley_factor(int64_t n) {
  if (is_pow2(n)) return 1;
  for (int64_t k : kPaleyOrders) {
    if (n % k == 0 && is_pow2(n / k)) return k;
  }
  return 0;
}

void fwht(double* x, int64_t n) {
  for (int64_t len = 1; len < n; len <<= 1) {
    for (int64_t i = 0; i < n; i += 2 * len) {
      for (int64_t j = i; j < i + len; ++j) {
        const double a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
    }
  }
}

}  // namespace

std::vector<int8_t> hadamard_matrix(int64_t k) {
  if (is_pow2(k)) return sylvester(k);
  check(k > 0 && k % 4 == 0 && paley_buildable(k),
        "no Hadamard matrix of order " + std::to_string(k) +
            " is available (supported: powers of two and the Paley orders 12, 20, 28, 36, 60, 108, "
            "140)");
  std::vector<int8_t> h = (is_prime(k - 1) && (k - 1) % 4 == 3) ? paley1(k - 1) : paley2(k / 2 - 1);
  check_hadamard(h, k);
  return h;
}

bool has_hadamard(int64_t n) {
  return n > 0 && paley_factor(n) != 0;
}

HadamardRotation::HadamardRotation(int64_t n) : n_(n) {
  k_ = n > 0 ? paley_factor(n) : 0;
  check(k_ != 0, "no Hadamard rotation of order " + std::to_string(n) +
                     ": the size must be k * 2^m with k in {1, 12, 20, 28, 36, 60, 108, 140}");
  m_ = n / k_;
  a_ = hadamard_matrix(k_);
}

void HadamardRotation::right_one(double* x) const {
  // x R with x viewed as [k][m]: y[a] = sum_i A[i][a] * (x[i] S) / sqrt(n); S is symmetric so
  // x[i] S is the fast Walsh-Hadamard transform of the chunk.
  for (int64_t i = 0; i < k_; ++i) fwht(x + i * m_, m_);
  const double inv = 1.0 / std::sqrt(static_cast<double>(n_));
  if (k_ == 1) {
    for (int64_t j = 0; j < n_; ++j) x[j] *= inv;
    return;
  }
  std::vector<double> y(static_cast<size_t>(n_), 0.0);
  for (int64_t i = 0; i < k_; ++i) {
    for (int64_t a = 0; a < k_; ++a) {
      const double s = a_[static_cast<size_t>(i * k_ + a)] * inv;
      for (int64_t j = 0; j < m_; ++j) y[static_cast<size_t>(a * m_ + j)] += s * x[i * m_ + j];
    }
  }
  for (int64_t j = 0; j < n_; ++j) x[j] = y[static_cast<size_t>(j)];
}

void HadamardRotation::apply_right(float* x, int64_t rows) const {
  ThreadPool::global().parallel_for(rows, 16, [&](int64_t b, int64_t e) {
    std::vector<double> row(static_cast<size_t>(n_));
    for (int64_t r = b; r < e; ++r) {
      float* p = x + r * n_;
      for (int64_t j = 0; j < n_; ++j) row[static_cast<size_t>(j)] = p[j];
      right_one(row.data());
      for (int64_t j = 0; j < n_; ++j) p[j] = static_cast<float>(row[static_cast<size_t>(j)]);
    }
  });
}

void HadamardRotation::apply_left_transposed(float* w, int64_t cols) const {
  // Column c of W maps to R^T c, i.e. (c^T R)^T: the row operation on the columns.
  ThreadPool::global().parallel_for(cols, 16, [&](int64_t b, int64_t e) {
    std::vector<double> col(static_cast<size_t>(n_));
    for (int64_t c = b; c < e; ++c) {
      for (int64_t j = 0; j < n_; ++j) col[static_cast<size_t>(j)] = w[j * cols + c];
      right_one(col.data());
      for (int64_t j = 0; j < n_; ++j)
        w[j * cols + c] = static_cast<float>(col[static_cast<size_t>(j)]);
    }
  });
}

std::vector<double> HadamardRotation::dense() const {
  std::vector<double> r(static_cast<size_t>(n_ * n_), 0.0);
  for (int64_t i = 0; i < n_; ++i) {
    r[static_cast<size_t>(i * n_ + i)] = 1.0;
    right_one(&r[static_cast<size_t>(i * n_)]);  // row i of I R = row i of R
  }
  return r;
}

}  // namespace qserve::qoq
