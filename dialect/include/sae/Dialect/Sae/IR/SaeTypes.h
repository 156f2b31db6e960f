//===- SaeTypes.h - Types of the sae dialect ----------------------*- C++
//-*-===//
#ifndef SAE_DIALECT_SAE_IR_SAETYPES_H
#define SAE_DIALECT_SAE_IR_SAETYPES_H

#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Types.h"

#define GET_TYPEDEF_CLASSES
#include "sae/Dialect/Sae/IR/SaeOpsTypes.h.inc"

#endif // SAE_DIALECT_SAE_IR_SAETYPES_H
