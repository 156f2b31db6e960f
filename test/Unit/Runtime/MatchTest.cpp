//===- MatchTest.cpp - Tests of the Hungarian matching and recovery -------===//
//
// sae_rt_match_max_weight against known optima and against brute force
// over every injection (square and rectangular), and
// sae_rt_feature_recovery on dictionaries with known answers.
//
//===----------------------------------------------------------------------===//

#include "TestUtil.h"

#include <cmath>
#include <functional>

using namespace saetest;

namespace {

/// The best total over all injections of the smaller side into the larger.
double bruteForce(int64_t rows, int64_t cols, const std::vector<double> &w) {
  bool transpose = rows > cols;
  int64_t small = transpose ? cols : rows, large = transpose ? rows : cols;
  auto weight = [&](int64_t i, int64_t j) {
    return transpose ? w[j * cols + i] : w[i * cols + j];
  };
  std::vector<bool> used(static_cast<size_t>(large), false);
  double best = -INFINITY;
  std::function<void(int64_t, double)> search = [&](int64_t i, double sum) {
    if (i == small) {
      best = std::max(best, sum);
      return;
    }
    for (int64_t j = 0; j < large; ++j)
      if (!used[j]) {
        used[j] = true;
        search(i + 1, sum + weight(i, j));
        used[j] = false;
      }
  };
  search(0, 0.0);
  return small == 0 ? 0.0 : best;
}

/// Checks that `match` is a valid matching of min(rows, cols) pairs whose
/// total is `total`, and returns that total.
double checkMatching(int64_t rows, int64_t cols, const std::vector<double> &w,
                     const std::vector<int64_t> &match, double total) {
  std::vector<bool> used(static_cast<size_t>(cols), false);
  int64_t pairs = 0;
  double sum = 0;
  for (int64_t i = 0; i < rows; ++i) {
    int64_t j = match[static_cast<size_t>(i)];
    if (j < 0) {
      EXPECT_EQ(j, -1);
      continue;
    }
    EXPECT_LT(j, cols);
    EXPECT_FALSE(used[j]) << "column " << j << " used twice";
    used[j] = true;
    ++pairs;
    sum += w[i * cols + j];
  }
  EXPECT_EQ(pairs, std::min(rows, cols));
  EXPECT_NEAR(sum, total, 1e-9);
  return sum;
}

TEST(MatchTest, KnownSquareOptimum) {
  // The greedy choice (row 0 -> column 0, weight 9) is not optimal:
  // 8 + 8 + 5 = 21 beats 9 + 1 + 5 = 15, the best total that uses it.
  std::vector<double> w = {9, 8, 1,  //
                           8, 1, 1,  //
                           1, 1, 5}; //
  std::vector<int64_t> match(3);
  double total = 0;
  ASSERT_EQ(sae_rt_match_max_weight(3, 3, w.data(), match.data(), &total),
            SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_DOUBLE_EQ(total, 21.0);
  EXPECT_EQ(match, (std::vector<int64_t>{1, 0, 2}));
}

TEST(MatchTest, IdentityAndPermutation) {
  // A permutation matrix plus small noise is matched to the permutation.
  const int64_t n = 7;
  const int64_t perm[n] = {3, 0, 6, 1, 5, 2, 4};
  std::vector<double> w(n * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      w[i * n + j] = (perm[i] == j ? 1.0 : 0.0) + 0.01 * ((i * 7 + j * 3) % 5);
  std::vector<int64_t> match(n);
  ASSERT_EQ(sae_rt_match_max_weight(n, n, w.data(), match.data(), nullptr),
            SAE_RT_OK);
  for (int64_t i = 0; i < n; ++i)
    EXPECT_EQ(match[i], perm[i]);
}

TEST(MatchTest, RectangularMoreColumns) {
  // 2 rows, 4 columns: both rows want column 1; row 0 gives way.
  std::vector<double> w = {5, 6, 0, 0,  //
                           0, 10, 0, 2}; //
  std::vector<int64_t> match(2);
  double total = 0;
  ASSERT_EQ(sae_rt_match_max_weight(2, 4, w.data(), match.data(), &total),
            SAE_RT_OK);
  EXPECT_DOUBLE_EQ(total, 15.0);
  EXPECT_EQ(match, (std::vector<int64_t>{0, 1}));
}

TEST(MatchTest, RectangularMoreRowsLeavesRowsOut) {
  // 4 rows, 2 columns: 2 pairs; the other rows get -1.
  std::vector<double> w = {1, 0,  //
                           9, 8,  //
                           7, 1,  //
                           0, 2}; //
  std::vector<int64_t> match(4);
  double total = 0;
  ASSERT_EQ(sae_rt_match_max_weight(4, 2, w.data(), match.data(), &total),
            SAE_RT_OK);
  EXPECT_DOUBLE_EQ(total, 15.0); // row 1 -> column 1, row 2 -> column 0
  EXPECT_EQ(match, (std::vector<int64_t>{-1, 1, 0, -1}));
}

TEST(MatchTest, AgreesWithBruteForceOnRandomMatrices) {
  uint64_t state = 12345;
  auto next = [&] {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(state >> 11) * 0x1.0p-53;
  };
  const std::pair<int64_t, int64_t> sizes[] = {
      {1, 1}, {1, 5}, {5, 1}, {2, 2}, {3, 3}, {4, 4}, {5, 5}, {6, 6},
      {7, 7}, {3, 6}, {6, 3}, {2, 7}, {7, 2}, {4, 6}, {6, 4}, {5, 7}};
  for (const auto &size : sizes)
    for (int trial = 0; trial < 20; ++trial) {
      int64_t rows = size.first, cols = size.second;
      std::vector<double> w(static_cast<size_t>(rows * cols));
      for (double &value : w) {
        value = next();
        // Some trials with ties and negative weights.
        if (trial % 3 == 1)
          value = std::floor(value * 3);
        if (trial % 3 == 2)
          value -= 0.5;
      }
      std::vector<int64_t> match(static_cast<size_t>(rows));
      double total = NAN;
      ASSERT_EQ(sae_rt_match_max_weight(rows, cols, w.data(), match.data(),
                                        &total),
                SAE_RT_OK);
      checkMatching(rows, cols, w, match, total);
      EXPECT_NEAR(total, bruteForce(rows, cols, w), 1e-9)
          << rows << " x " << cols << " trial " << trial;
    }
}

TEST(MatchTest, LargerInstanceIsAValidMatching) {
  // 120 x 200: not brute-forced, but the result must be a matching whose
  // total is at least the greedy one's.
  const int64_t rows = 120, cols = 200;
  std::vector<double> w(rows * cols);
  uint64_t state = 99;
  for (double &value : w) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    value = static_cast<double>(state >> 11) * 0x1.0p-53;
  }
  std::vector<int64_t> match(rows);
  double total = 0;
  ASSERT_EQ(sae_rt_match_max_weight(rows, cols, w.data(), match.data(), &total),
            SAE_RT_OK);
  checkMatching(rows, cols, w, match, total);
  std::vector<bool> used(cols, false);
  double greedy = 0;
  for (int64_t i = 0; i < rows; ++i) {
    int64_t best = -1;
    for (int64_t j = 0; j < cols; ++j)
      if (!used[j] && (best < 0 || w[i * cols + j] > w[i * cols + best]))
        best = j;
    used[best] = true;
    greedy += w[i * cols + best];
  }
  EXPECT_GE(total, greedy - 1e-9);
}

TEST(MatchTest, EmptyAndInvalidArguments) {
  double total = 7;
  EXPECT_EQ(sae_rt_match_max_weight(0, 3, nullptr, nullptr, &total),
            SAE_RT_OK);
  EXPECT_EQ(total, 0.0);
  std::vector<int64_t> match(2, 5);
  EXPECT_EQ(sae_rt_match_max_weight(2, 0, nullptr, match.data(), &total),
            SAE_RT_OK);
  EXPECT_EQ(match, (std::vector<int64_t>{-1, -1}));
  std::vector<double> w = {1, NAN, 2, 3};
  expectError(sae_rt_match_max_weight(2, 2, w.data(), match.data(), nullptr),
              SAE_RT_ERR_ARG, {"weight (0, 1) is not finite"});
  w[1] = INFINITY;
  expectError(sae_rt_match_max_weight(2, 2, w.data(), match.data(), nullptr),
              SAE_RT_ERR_ARG, {"not finite"});
  expectError(sae_rt_match_max_weight(-1, 2, w.data(), match.data(), nullptr),
              SAE_RT_ERR_ARG, {"negative size"});
  expectError(sae_rt_match_max_weight(2, 2, nullptr, match.data(), nullptr),
              SAE_RT_ERR_ARG, {"NULL"});
  expectError(sae_rt_match_max_weight(2, 2, w.data(), nullptr, nullptr),
              SAE_RT_ERR_ARG, {"NULL"});
}

TEST(FeatureRecoveryTest, PermutedScaledAndFlippedRowsAreRecovered) {
  // truth: 3 rows of d = 4; learned: the same directions, permuted, scaled
  // and negated, plus one unrelated row.
  std::vector<float> truth = {1, 0, 0, 0,  //
                              0, 1, 1, 0,  //
                              0, 0, 0, 2}; //
  std::vector<float> learned = {0, -3, -3, 0,   //
                                0.5f, 0.5f, 0.5f, 0.5f, //
                                0, 0, 0, 0.1f, //
                                -2, 0, 0, 0};  //
  double meanMax = 0, mcc = 0;
  ASSERT_EQ(sae_rt_feature_recovery(3, 4, 4, truth.data(), learned.data(),
                                    &meanMax, &mcc),
            SAE_RT_OK)
      << sae_rt_last_error();
  EXPECT_NEAR(meanMax, 1.0, 1e-12);
  EXPECT_NEAR(mcc, 1.0, 1e-12);
}

TEST(FeatureRecoveryTest, MatchingIsOneToOneUnlikeMaxCos) {
  // Two true features both closest to learned row 0; the matching must give
  // one of them the worse row 1.
  std::vector<float> truth = {1, 0,   //
                              1, 1};  //
  std::vector<float> learned = {1, 0.2f, //
                                0, 1};   //
  auto cosine = [](float a0, float a1, float b0, float b1) {
    return std::fabs(double(a0) * b0 + double(a1) * b1) /
           (std::sqrt(double(a0) * a0 + double(a1) * a1) *
            std::sqrt(double(b0) * b0 + double(b1) * b1));
  };
  double c00 = cosine(1, 0, 1, 0.2f), c01 = cosine(1, 0, 0, 1);
  double c10 = cosine(1, 1, 1, 0.2f), c11 = cosine(1, 1, 0, 1);
  double meanMax = 0, mcc = 0;
  ASSERT_EQ(sae_rt_feature_recovery(2, 2, 2, truth.data(), learned.data(),
                                    &meanMax, &mcc),
            SAE_RT_OK);
  EXPECT_NEAR(meanMax, (std::max(c00, c01) + std::max(c10, c11)) / 2, 1e-12);
  EXPECT_NEAR(mcc, std::max(c00 + c11, c01 + c10) / 2, 1e-12);
  EXPECT_LT(mcc, meanMax);
}

TEST(FeatureRecoveryTest, RectangularAndZeroRows) {
  // More true features than latents: min(F, n) = 2 pairs. A zero learned
  // row has cosine 0 with everything.
  std::vector<float> truth = {1, 0, 0,  //
                              0, 1, 0,  //
                              0, 0, 1}; //
  std::vector<float> learned = {0, 0, 5, //
                                0, 0, 0};
  double meanMax = 0, mcc = 0;
  ASSERT_EQ(sae_rt_feature_recovery(3, 2, 3, truth.data(), learned.data(),
                                    &meanMax, &mcc),
            SAE_RT_OK);
  EXPECT_NEAR(meanMax, 1.0 / 3.0, 1e-12);
  EXPECT_NEAR(mcc, 0.5, 1e-12); // (1 + 0) / 2
  // Fewer true features than latents.
  ASSERT_EQ(sae_rt_feature_recovery(1, 2, 3, truth.data() + 6, learned.data(),
                                    &meanMax, &mcc),
            SAE_RT_OK);
  EXPECT_NEAR(meanMax, 1.0, 1e-12);
  EXPECT_NEAR(mcc, 1.0, 1e-12);
}

TEST(FeatureRecoveryTest, InvalidArguments) {
  float one = 1;
  double value = 0;
  expectError(sae_rt_feature_recovery(0, 1, 1, &one, &one, &value, &value),
              SAE_RT_ERR_ARG, {"sizes must be positive"});
  expectError(sae_rt_feature_recovery(1, 1, 0, &one, &one, &value, &value),
              SAE_RT_ERR_ARG, {"sizes must be positive"});
  expectError(sae_rt_feature_recovery(1, 1, 1, nullptr, &one, &value, &value),
              SAE_RT_ERR_ARG, {"NULL"});
  expectError(sae_rt_feature_recovery(int64_t(1) << 40, int64_t(1) << 40, 1,
                                      &one, &one, &value, &value),
              SAE_RT_ERR_NOMEM, {"overflow"});
}

} // namespace
