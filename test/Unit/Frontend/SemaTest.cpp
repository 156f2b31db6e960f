//===- SemaTest.cpp - Semantic analysis -----------------------------------===//
#include "FrontendTestUtil.h"

using namespace sae;
using namespace saetest;

namespace {

const char *kTopK = R"(sae t {
  dims d = 16, n = 64;
  input x : [d];
  param W_enc : [d, n] = kaiming_uniform;
  param W_dec : [n, d] = normalize_rows(transpose(W_enc));
  param b_enc : [n];
  let pre = x @ W_enc + b_enc;
  encode z = topk(relu(pre), k = n / 8);
  decode xhat = z @ W_dec;
  loss = fvu(xhat, x);
}
)";

TEST(SemaTest, TopKModelIsTypedAndDescribed) {
  Frontend f(kTopK, /*check=*/true);
  ASSERT_TRUE(f.model) << (f.errors.empty() ? "" : f.errors[0]);
  const CheckedModel &m = *f.model;
  EXPECT_EQ(m.inputDim, 16);
  ASSERT_EQ(m.params.size(), 3u);
  EXPECT_EQ(m.params[1].first->getName(), "W_dec");
  EXPECT_EQ(m.params[1].second, (std::vector<int64_t>{64, 16}));
  EXPECT_EQ(m.codesType.kind, ValueType::Codes);
  EXPECT_EQ(m.codesType.k, 8); // k = n / 8
  EXPECT_EQ(m.encoderOp, "topk");
  EXPECT_EQ(m.encoderParams.at("k"), 8);
  EXPECT_EQ(m.lossKind, "fvu");
  const ValueType &pre = m.types.lookup(m.symbols.lookup("pre"));
  EXPECT_EQ(pre.kind, ValueType::Tensor);
  EXPECT_TRUE(pre.batched);
  EXPECT_EQ(pre.shape, std::vector<int64_t>{64});
  const ValueType &xhat = m.types.lookup(m.decode);
  EXPECT_EQ(xhat.shape, std::vector<int64_t>{16});
}

TEST(SemaTest, OverridesReplaceDimensionsEverywhere) {
  Frontend f(kTopK, /*check=*/true, {{"n", 128}});
  ASSERT_TRUE(f.model);
  EXPECT_EQ(f.model->getDim("n"), 128);
  EXPECT_EQ(f.model->params[0].second, (std::vector<int64_t>{16, 128}));
  EXPECT_EQ(f.model->codesType.k, 16);
}

TEST(SemaTest, UnknownOverrideIsAnError) {
  Frontend f(kTopK, /*check=*/true, {{"q", 3}});
  EXPECT_FALSE(f.model);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_NE(f.errors[0].find("has no dimension named 'q'"), std::string::npos);
}

TEST(SemaTest, OneMistakeGivesOneError) {
  // The undeclared name makes `pre`, `z`, `xhat` and the loss invalid too,
  // but only the root cause is reported.
  std::string text = kTopK;
  text.replace(text.find("+ b_enc"), 7, "+ b_xxx");
  Frontend f(text, /*check=*/true);
  EXPECT_FALSE(f.model);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0], "7:25: use of undeclared name 'b_xxx'");
}

TEST(SemaTest, ReluModelHasDenseCodes) {
  Frontend f(R"(sae r {
    dims d = 4, n = 8;
    input x : [d];
    param W : [d, n] = ones;
    encode z = relu(x @ W);
    decode xhat = z @ transpose(W);
    loss = mse(xhat, x) / d;
  })",
             /*check=*/true);
  ASSERT_TRUE(f.model) << (f.errors.empty() ? "" : f.errors[0]);
  EXPECT_EQ(f.model->codesType.kind, ValueType::Tensor);
  EXPECT_EQ(f.model->encoderOp, "relu");
  EXPECT_EQ(f.model->lossKind, "expression");
}

TEST(SemaTest, UseBeforeDeclarationIsUndeclared) {
  Frontend f(R"(sae r {
    dims d = 4;
    input x : [d];
    encode z = relu(x - b);
    param b : [d];
    decode xhat = z;
    loss = mse(xhat, x);
  })",
             /*check=*/true);
  EXPECT_FALSE(f.model);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0], "4:25: use of undeclared name 'b'");
}

} // namespace
