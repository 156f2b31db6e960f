//===- match.cpp - Maximum-weight matching and dictionary recovery --------===//
//
// The Hungarian algorithm (Kuhn-Munkres with row and column potentials,
// shortest augmenting paths; O(r^2 c) for r <= c) for a maximum-weight
// one-to-one matching of min(rows, cols) pairs, and the feature-recovery
// statistics built on it: how well the rows of a learned decoder recover a
// ground-truth dictionary.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

using namespace sae::rt;

namespace {

/// Assigns each of the `r` rows of the cost matrix cost(i, j) (r <= c) a
/// distinct column so that the total cost is minimal. Returns the column
/// of each row.
template <typename Cost>
std::vector<int64_t> hungarianMinCost(int64_t r, int64_t c, Cost cost) {
  const double inf = std::numeric_limits<double>::infinity();
  // 1-based: u[i] row potentials, v[j] column potentials, owner[j] the row
  // holding column j (0: none), via[j] the previous column on the path.
  std::vector<double> u(static_cast<size_t>(r) + 1, 0.0);
  std::vector<double> v(static_cast<size_t>(c) + 1, 0.0);
  std::vector<int64_t> owner(static_cast<size_t>(c) + 1, 0);
  std::vector<int64_t> via(static_cast<size_t>(c) + 1, 0);
  std::vector<double> slack(static_cast<size_t>(c) + 1);
  std::vector<char> visited(static_cast<size_t>(c) + 1);
  for (int64_t row = 1; row <= r; ++row) {
    owner[0] = row;
    int64_t column = 0;
    std::fill(slack.begin(), slack.end(), inf);
    std::fill(visited.begin(), visited.end(), 0);
    do {
      visited[column] = 1;
      int64_t current = owner[column];
      double delta = inf;
      int64_t next = 0;
      for (int64_t j = 1; j <= c; ++j) {
        if (visited[j])
          continue;
        double reduced = cost(current - 1, j - 1) - u[current] - v[j];
        if (reduced < slack[j]) {
          slack[j] = reduced;
          via[j] = column;
        }
        if (slack[j] < delta) {
          delta = slack[j];
          next = j;
        }
      }
      if (next == 0)
        fail(SAE_RT_ERR_EXEC, "matching: no augmenting path (internal error)");
      for (int64_t j = 0; j <= c; ++j) {
        if (visited[j]) {
          u[owner[j]] += delta;
          v[j] -= delta;
        } else {
          slack[j] -= delta;
        }
      }
      column = next;
    } while (owner[column] != 0);
    // Flip the augmenting path.
    do {
      int64_t previous = via[column];
      owner[column] = owner[previous];
      column = previous;
    } while (column != 0);
  }
  std::vector<int64_t> match(static_cast<size_t>(r), -1);
  for (int64_t j = 1; j <= c; ++j)
    if (owner[j] != 0)
      match[static_cast<size_t>(owner[j] - 1)] = j - 1;
  return match;
}

/// Fills rowMatch (rows entries) with the maximum-weight matching of
/// weight(i, j) and returns its total weight.
template <typename Weight>
double maxWeightMatching(int64_t rows, int64_t cols, Weight weight,
                         int64_t *rowMatch) {
  for (int64_t i = 0; i < rows; ++i)
    rowMatch[i] = -1;
  if (rows == 0 || cols == 0)
    return 0.0;
  if (rows <= cols) {
    std::vector<int64_t> match = hungarianMinCost(
        rows, cols, [&](int64_t i, int64_t j) { return -weight(i, j); });
    for (int64_t i = 0; i < rows; ++i)
      rowMatch[i] = match[static_cast<size_t>(i)];
  } else {
    // Match every column to a row instead.
    std::vector<int64_t> match = hungarianMinCost(
        cols, rows, [&](int64_t j, int64_t i) { return -weight(i, j); });
    for (int64_t j = 0; j < cols; ++j)
      rowMatch[match[static_cast<size_t>(j)]] = j;
  }
  double total = 0.0;
  for (int64_t i = 0; i < rows; ++i)
    if (rowMatch[i] >= 0)
      total += weight(i, rowMatch[i]);
  return total;
}

/// Euclidean norms of the `count` rows of `matrix` [count, d], in double.
std::vector<double> rowNorms(int64_t count, int64_t d, const float *matrix) {
  std::vector<double> norms(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    const float *row = matrix + i * d;
    double sum = 0.0;
    for (int64_t k = 0; k < d; ++k)
      sum += static_cast<double>(row[k]) * static_cast<double>(row[k]);
    norms[static_cast<size_t>(i)] = std::sqrt(sum);
  }
  return norms;
}

} // namespace

extern "C" {

sae_rt_status sae_rt_match_max_weight(int64_t rows, int64_t cols,
                                      const double *weights, int64_t *row_match,
                                      double *total) {
  return guard([&] {
    if (rows < 0 || cols < 0)
      fail(SAE_RT_ERR_ARG, "sae_rt_match_max_weight: negative size " +
                               std::to_string(rows) + " x " +
                               std::to_string(cols));
    uint64_t cells = checkedMul(static_cast<uint64_t>(rows),
                                static_cast<uint64_t>(cols),
                                "sae_rt_match_max_weight");
    if ((cells && !weights) || (rows && !row_match))
      fail(SAE_RT_ERR_ARG, "sae_rt_match_max_weight: NULL argument");
    for (uint64_t i = 0; i < cells; ++i)
      if (!std::isfinite(weights[i]))
        fail(SAE_RT_ERR_ARG,
             "sae_rt_match_max_weight: weight (" +
                 std::to_string(i / static_cast<uint64_t>(cols)) + ", " +
                 std::to_string(i % static_cast<uint64_t>(cols)) +
                 ") is not finite");
    std::vector<int64_t> match(static_cast<size_t>(rows));
    double sum = maxWeightMatching(
        rows, cols,
        [&](int64_t i, int64_t j) { return weights[i * cols + j]; },
        match.data());
    for (int64_t i = 0; i < rows; ++i)
      row_match[i] = match[static_cast<size_t>(i)];
    if (total)
      *total = sum;
  });
}

sae_rt_status sae_rt_feature_recovery(int64_t features, int64_t latents,
                                      int64_t d, const float *truth,
                                      const float *learned,
                                      double *mean_max_cos, double *mcc) {
  return guard([&] {
    const char *what = "sae_rt_feature_recovery";
    if (features < 1 || latents < 1 || d < 1)
      fail(SAE_RT_ERR_ARG, std::string(what) + ": sizes must be positive (" +
                               std::to_string(features) + " features, " +
                               std::to_string(latents) + " latents, d = " +
                               std::to_string(d) + ")");
    if (!truth || !learned)
      fail(SAE_RT_ERR_ARG, std::string(what) + ": NULL argument");
    size_t cells = toSize(checkedMul(static_cast<uint64_t>(features),
                                     static_cast<uint64_t>(latents), what),
                          what);
    checkedMul(cells, sizeof(double), what);
    std::vector<double> truthNorms = rowNorms(features, d, truth);
    std::vector<double> learnedNorms = rowNorms(latents, d, learned);
    // |cos| of every (true feature, decoder row) pair.
    std::vector<double> cosines(cells);
    double maxSum = 0.0;
    for (int64_t f = 0; f < features; ++f) {
      const float *a = truth + f * d;
      double best = 0.0;
      for (int64_t i = 0; i < latents; ++i) {
        double norms = truthNorms[static_cast<size_t>(f)] *
                       learnedNorms[static_cast<size_t>(i)];
        double value = 0.0;
        if (norms > 0.0) {
          const float *b = learned + i * d;
          double dot = 0.0;
          for (int64_t k = 0; k < d; ++k)
            dot += static_cast<double>(a[k]) * static_cast<double>(b[k]);
          value = std::fabs(dot) / norms;
          if (value > 1.0)
            value = 1.0; // rounding
        }
        cosines[static_cast<size_t>(f * latents + i)] = value;
        if (value > best)
          best = value;
      }
      maxSum += best;
    }
    std::vector<int64_t> match(static_cast<size_t>(features));
    double matched = maxWeightMatching(
        features, latents,
        [&](int64_t f, int64_t i) {
          return cosines[static_cast<size_t>(f * latents + i)];
        },
        match.data());
    int64_t pairs = features < latents ? features : latents;
    if (mean_max_cos)
      *mean_max_cos = maxSum / static_cast<double>(features);
    if (mcc)
      *mcc = matched / static_cast<double>(pairs);
  });
}

} // extern "C"
