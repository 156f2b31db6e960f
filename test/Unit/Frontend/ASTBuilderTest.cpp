//===- ASTBuilderTest.cpp - The parse tree to AST conversion --------------===//
#include "FrontendTestUtil.h"

using namespace sae;
using namespace saetest;

namespace {

const char *kSpec = R"(sae m {
  dims d = 8, n = 32;
  input x : [d];
  param W : [d, n] = uniform(-1, high = 1);
  let p = -x @ W + 2 * x @ W / 4;
  encode z = topk(relu(p), k = 4);
  decode xhat = z @ transpose(W);
  loss = mse(xhat, x);
}
)";

TEST(ASTBuilderTest, DeclarationsInSourceOrderWithNamesAndRanges) {
  Frontend f(kSpec);
  ASSERT_TRUE(f.ast) << (f.errors.empty() ? "" : f.errors[0]);
  EXPECT_EQ(f.ast->getName(), "m");
  const auto &decls = f.ast->getDecls();
  ASSERT_EQ(decls.size(), 8u); // two dims count as two declarations
  std::vector<std::pair<DeclAST::DeclKind, std::string>> expected = {
      {DeclAST::Dim, "d"},    {DeclAST::Dim, "n"},      {DeclAST::Input, "x"},
      {DeclAST::Param, "W"},  {DeclAST::Let, "p"},      {DeclAST::Encode, "z"},
      {DeclAST::Decode, "xhat"}, {DeclAST::Loss, ""}};
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(decls[i]->getKind(), expected[i].first) << i;
    EXPECT_EQ(decls[i]->getName(), expected[i].second) << i;
  }
  auto *n = llvm::dyn_cast<DimDeclAST>(decls[1].get());
  ASSERT_TRUE(n);
  EXPECT_EQ(n->getValue(), 32);
  EXPECT_EQ(n->getRange().begin.line, 2u);
  EXPECT_EQ(n->getRange().begin.col, 15u);
  EXPECT_EQ(n->getRange().end.col, 21u);
  auto *w = llvm::dyn_cast<TensorDeclAST>(decls[3].get());
  ASSERT_TRUE(w);
  ASSERT_EQ(w->getShape().size(), 2u);
  EXPECT_EQ(w->getShape()[1].name, "n");
  EXPECT_EQ(w->getShape()[1].loc.col, 17u);
}

TEST(ASTBuilderTest, PrecedenceFollowsPython) {
  Frontend f(kSpec);
  ASSERT_TRUE(f.ast);
  // let p = -x @ W + 2 * x @ W / 4  ==  ((-x) @ W) + (((2 * x) @ W) / 4)
  auto *let = llvm::cast<BindingDeclAST>(f.ast->getDecls()[4].get());
  auto *sum = llvm::dyn_cast<BinaryExprAST>(&let->getValue());
  ASSERT_TRUE(sum);
  EXPECT_EQ(sum->getOp(), '+');
  auto *left = llvm::dyn_cast<BinaryExprAST>(&sum->getLHS());
  ASSERT_TRUE(left);
  EXPECT_EQ(left->getOp(), '@');
  EXPECT_TRUE(llvm::isa<UnaryExprAST>(left->getLHS()));
  auto *right = llvm::dyn_cast<BinaryExprAST>(&sum->getRHS());
  ASSERT_TRUE(right);
  EXPECT_EQ(right->getOp(), '/');
  auto *matmul = llvm::dyn_cast<BinaryExprAST>(&right->getLHS());
  ASSERT_TRUE(matmul);
  EXPECT_EQ(matmul->getOp(), '@');
  auto *times = llvm::dyn_cast<BinaryExprAST>(&matmul->getLHS());
  ASSERT_TRUE(times);
  EXPECT_EQ(times->getOp(), '*');
  EXPECT_EQ(sum->getOpLoc().col, 18u);
}

TEST(ASTBuilderTest, CallsKeepPositionalAndNamedArguments) {
  Frontend f(kSpec);
  ASSERT_TRUE(f.ast);
  auto *w = llvm::cast<TensorDeclAST>(f.ast->getDecls()[3].get());
  auto *call = llvm::dyn_cast<CallExprAST>(w->getInit());
  ASSERT_TRUE(call);
  EXPECT_EQ(call->getCallee(), "uniform");
  ASSERT_EQ(call->getArgs().size(), 2u);
  EXPECT_FALSE(call->getArgs()[0].name.has_value());
  ASSERT_TRUE(call->getArgs()[1].name.has_value());
  EXPECT_EQ(*call->getArgs()[1].name, "high");
  auto *one = llvm::dyn_cast<NumberExprAST>(call->getArgs()[1].value.get());
  ASSERT_TRUE(one);
  EXPECT_EQ(one->getValue(), 1.0);
  EXPECT_TRUE(one->isInteger());
}

TEST(ASTBuilderTest, EverySyntaxErrorIsReportedAndNoASTIsBuilt) {
  Frontend f("sae m {\n  dims d = ;\n  input x : [d]\n  loss = ;\n}\n");
  EXPECT_FALSE(f.ast);
  ASSERT_EQ(f.errors.size(), 3u);
  EXPECT_EQ(f.errors[0].rfind("2:12: ", 0), 0u) << f.errors[0];
  EXPECT_EQ(f.errors[1].rfind("4:3: ", 0), 0u) << f.errors[1];
  EXPECT_EQ(f.errors[2].rfind("4:10: ", 0), 0u) << f.errors[2];
}

TEST(ASTBuilderTest, BinaryInputIsRefusedWithItsPosition) {
  std::string text("sae m {\n  \xff\n}", 13);
  Frontend f(text);
  EXPECT_FALSE(f.ast);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0],
            "2:3: 'test.sae' is not a text file: invalid UTF-8 at byte 10");
}

TEST(ASTBuilderTest, EmptyInputIsOneError) {
  Frontend f("  \n\t\n");
  EXPECT_FALSE(f.ast);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0], "1:1: empty spec: expected 'sae NAME { ... }'");
}

TEST(ASTBuilderTest, ManySyntaxErrorsAreCapped) {
  std::string text = "sae m {\n";
  for (int i = 0; i < 50; ++i)
    text += "  $\n";
  text += "}\n";
  Frontend f(text);
  EXPECT_FALSE(f.ast);
  // 20 reported, then one line saying how many there were.
  ASSERT_EQ(f.errors.size(), 21u);
  EXPECT_NE(f.errors.back().find("too many syntax errors (50)"),
            std::string::npos)
      << f.errors.back();
}

} // namespace
