//===- SaeDialect.h - The sae dialect -----------------------------*- C++
//-*-===//
#ifndef SAE_DIALECT_SAE_IR_SAEDIALECT_H
#define SAE_DIALECT_SAE_IR_SAEDIALECT_H

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Tensor/IR/Tensor.h"
#include "mlir/IR/Dialect.h"

#include "sae/Dialect/Sae/IR/SaeOpsDialect.h.inc"

#endif // SAE_DIALECT_SAE_IR_SAEDIALECT_H
