//===- EmitCABI.cpp - Wrap entry functions in the saec C ABI --------------===//
//
// Models runtime/include/sae/runtime/abi.h one to one: MLIRGen produces
// tensor-level entry functions; this pass gives each a C signature of plain
// integers and pointers, builds row-major memref descriptors from the
// pointers, and inlines the tensor body between them.
//
//===----------------------------------------------------------------------===//
#include "sae/Transforms/Passes.h"

#include "mlir/Dialect/Arith/IR/Arith.h"
#include "mlir/Dialect/Bufferization/IR/Bufferization.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/Dialect/LLVMIR/LLVMDialect.h"
#include "mlir/Dialect/MemRef/IR/MemRef.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "llvm/ADT/StringSet.h"

#include <map>

namespace mlir::sae {
#define GEN_PASS_DEF_EMITCABI
#include "sae/Transforms/Passes.h.inc"
} // namespace mlir::sae

using namespace mlir;

namespace {

/// Must equal SAE_ABI_VERSION in runtime/include/sae/runtime/abi.h.
constexpr int32_t kAbiVersion = 3;

constexpr StringLiteral kEntryAttr = "sae.entry";
constexpr StringLiteral kDescribeAttr = "sae.describe";
/// Arguments or results carrying one of these attributes are passed as one
/// C array: of pointers for tensors, of values for scalars. A result group
/// that is also an argument group is written back through the argument's
/// array (in-place updates: the parameters and moments of sae_train_step).
constexpr StringLiteral kGroupAttrs[] = {
    "sae.input",  "sae.param", "sae.loss",   "sae.grad",
    "sae.adam_m", "sae.adam_v", "sae.hyper", "sae.metric"};
/// On a tensor whose leading dimension is dynamic: that dimension is
/// batch * this (e.g. k for the B*k entries of batch-layout codes).
constexpr StringLiteral kBatchScaleAttr = "sae.batch_scale";

/// Where each C argument of a wrapper comes from.
struct AbiSlot {
  enum Kind { Batch, Arg, ArgGroup, Result, ResultGroup } kind;
  unsigned index = 0; // Arg, Result: position in the function type
  StringRef group;    // ArgGroup, ResultGroup: the attribute name
};

bool hasDynamicDim(Type t) {
  auto shaped = dyn_cast<RankedTensorType>(t);
  return shaped && !shaped.hasStaticShape();
}

/// The group attribute of an argument or result, if any.
StringRef groupOf(DictionaryAttr attrs) {
  if (attrs)
    for (StringRef g : kGroupAttrs)
      if (attrs.get(g))
        return g;
  return {};
}

/// Builds a row-major memref over `ptr`. Only the leading dimension may be
/// dynamic; it is `rows`.
Value buildMemRef(OpBuilder &b, Location loc, Value ptr, RankedTensorType type,
                  Value rows) {
  MLIRContext *ctx = b.getContext();
  Type i64 = b.getI64Type();
  int64_t rank = type.getRank();
  auto ptrTy = LLVM::LLVMPointerType::get(ctx);
  SmallVector<Type> fields = {ptrTy, ptrTy, i64};
  if (rank > 0) {
    fields.push_back(LLVM::LLVMArrayType::get(i64, rank));
    fields.push_back(LLVM::LLVMArrayType::get(i64, rank));
  }
  auto structTy = LLVM::LLVMStructType::getLiteral(ctx, fields);
  auto cst = [&](int64_t v) -> Value {
    return LLVM::ConstantOp::create(b, loc, i64, b.getI64IntegerAttr(v));
  };
  Value desc = LLVM::PoisonOp::create(b, loc, structTy);
  desc = LLVM::InsertValueOp::create(b, loc, desc, ptr, ArrayRef<int64_t>{0});
  desc = LLVM::InsertValueOp::create(b, loc, desc, ptr, ArrayRef<int64_t>{1});
  desc =
      LLVM::InsertValueOp::create(b, loc, desc, cst(0), ArrayRef<int64_t>{2});
  int64_t stride = 1;
  for (int64_t d = rank - 1; d >= 0; --d) {
    int64_t size = type.getDimSize(d);
    Value sizeV = ShapedType::isDynamic(size) ? rows : cst(size);
    desc = LLVM::InsertValueOp::create(b, loc, desc, sizeV,
                                       ArrayRef<int64_t>{3, d});
    desc = LLVM::InsertValueOp::create(b, loc, desc, cst(stride),
                                       ArrayRef<int64_t>{4, d});
    stride *= ShapedType::isDynamic(size) ? 1 : size;
  }
  auto memrefTy = MemRefType::get(type.getShape(), type.getElementType());
  return UnrealizedConversionCastOp::create(b, loc, TypeRange{memrefTy},
                                            ValueRange{desc})
      .getResult(0);
}

struct EmitCABIPass : public sae::impl::EmitCABIBase<EmitCABIPass> {
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto describe = module->getAttrOfType<StringAttr>(kDescribeAttr);
    if (!describe) {
      module.emitError() << "module has no '" << kDescribeAttr
                         << "' attribute; it is set by saec's MLIRGen";
      return signalPassFailure();
    }
    SmallVector<func::FuncOp> entries;
    for (auto func : module.getOps<func::FuncOp>())
      if (func->hasAttr(kEntryAttr))
        entries.push_back(func);
    for (func::FuncOp func : entries) {
      if (failed(wrap(func)))
        return signalPassFailure();
      func.erase();
    }
    emitQueries(module, describe.getValue());
  }

  /// Classifies the arguments and results of `func` into C ABI slots, in
  /// order; the batch size comes right before the first slot that needs it.
  LogicalResult classify(func::FuncOp func, SmallVectorImpl<AbiSlot> &slots) {
    FunctionType type = func.getFunctionType();
    bool haveBatch = false;
    llvm::StringSet<> seenArgGroups, seenResultGroups;
    auto check = [&](Type t, bool isArg) -> LogicalResult {
      if (auto tensor = dyn_cast<RankedTensorType>(t)) {
        for (int64_t d = 1; d < tensor.getRank(); ++d)
          if (tensor.isDynamicDim(d))
            return func.emitError()
                   << "only the leading (batch) dimension may be dynamic in "
                      "an entry point, got "
                   << t;
        return success();
      }
      if (t.isIntOrFloat())
        return success();
      return func.emitError() << "entry " << (isArg ? "argument" : "result")
                              << " of unsupported type " << t;
    };
    auto needBatch = [&](Type t) {
      if (!haveBatch && hasDynamicDim(t)) {
        slots.push_back({AbiSlot::Batch});
        haveBatch = true;
      }
    };
    for (auto [i, t] : llvm::enumerate(type.getInputs())) {
      if (failed(check(t, true)))
        return failure();
      needBatch(t);
      StringRef g = groupOf(func.getArgAttrDict(i));
      if (g.empty())
        slots.push_back({AbiSlot::Arg, unsigned(i)});
      else if (seenArgGroups.insert(g).second)
        slots.push_back({AbiSlot::ArgGroup, 0, g});
    }
    for (auto [i, t] : llvm::enumerate(type.getResults())) {
      if (failed(check(t, false)))
        return failure();
      needBatch(t);
      StringRef g = groupOf(func.getResultAttrDict(i));
      if (g.empty())
        slots.push_back({AbiSlot::Result, unsigned(i)});
      else if (!seenArgGroups.contains(g) && seenResultGroups.insert(g).second)
        slots.push_back({AbiSlot::ResultGroup, 0, g});
    }
    return success();
  }

  LogicalResult wrap(func::FuncOp func) {
    SmallVector<AbiSlot> slots;
    if (failed(classify(func, slots)))
      return failure();
    MLIRContext *ctx = func.getContext();
    Location loc = func.getLoc();
    FunctionType type = func.getFunctionType();
    Type ptrTy = LLVM::LLVMPointerType::get(ctx);
    Type i64 = IntegerType::get(ctx, 64);

    SmallVector<Type> abiInputs;
    for (const AbiSlot &slot : slots) {
      if (slot.kind == AbiSlot::Batch)
        abiInputs.push_back(i64);
      else if (slot.kind == AbiSlot::Arg &&
               !isa<RankedTensorType>(type.getInput(slot.index)))
        abiInputs.push_back(type.getInput(slot.index));
      else
        abiInputs.push_back(ptrTy);
    }
    std::string name =
        ("sae_" + func->getAttrOfType<StringAttr>(kEntryAttr).getValue()).str();
    OpBuilder b(func);
    auto wrapper = func::FuncOp::create(
        b, loc, name,
        FunctionType::get(ctx, abiInputs, {IntegerType::get(ctx, 32)}));
    Block *block = wrapper.addEntryBlock();
    b.setInsertionPointToStart(block);

    Value batch;
    IRMapping mapping;
    llvm::StringMap<Value> argArrays; // group -> its C array argument
    // Results are written after the body; remember their destinations.
    SmallVector<Value> resultDest(type.getNumResults());
    auto element = [&](Value array, unsigned i, Type elementType) -> Value {
      return LLVM::GEPOp::create(b, loc, ptrTy, elementType, array,
                                 ArrayRef<LLVM::GEPArg>{int32_t(i)});
    };
    auto load = [&](Value array, unsigned i) -> Value {
      return LLVM::LoadOp::create(b, loc, ptrTy, element(array, i, ptrTy));
    };
    auto rowsOf = [&](DictionaryAttr attrs) -> Value {
      auto scale =
          attrs ? attrs.getAs<IntegerAttr>(kBatchScaleAttr) : IntegerAttr();
      if (!scale || !batch)
        return batch;
      Value s = LLVM::ConstantOp::create(b, loc, i64, scale);
      return LLVM::MulOp::create(b, loc, batch, s);
    };
    // Argument groups whose arrays also receive results: their buffers are
    // updated in place, so one-shot bufferization may write them.
    llvm::StringSet<> writtenGroups;
    for (unsigned i = 0; i < type.getNumResults(); ++i)
      writtenGroups.insert(groupOf(func.getResultAttrDict(i)));
    // The memref of each member of such a group, by (group, member): the
    // result written back there reuses it, so that bufferization sees one
    // buffer and updates it without a copy.
    std::map<std::pair<std::string, unsigned>, Value> groupMemRefs;
    auto inputTensor = [&](Value ptr, unsigned argNo, StringRef group,
                           unsigned member) -> Value {
      auto tensor = cast<RankedTensorType>(type.getInput(argNo));
      Value m =
          buildMemRef(b, loc, ptr, tensor, rowsOf(func.getArgAttrDict(argNo)));
      bool written = !group.empty() && writtenGroups.contains(group);
      if (written)
        groupMemRefs[{group.str(), member}] = m;
      return bufferization::ToTensorOp::create(b, loc, tensor, m,
                                               /*restrict=*/true,
                                               /*writable=*/written);
    };
    auto mapArg = [&](unsigned argNo, Value ptrOrValue, StringRef group = {},
                      unsigned member = 0) {
      if (isa<RankedTensorType>(type.getInput(argNo)))
        mapping.map(func.getArgument(argNo),
                    inputTensor(ptrOrValue, argNo, group, member));
      else
        mapping.map(func.getArgument(argNo), ptrOrValue);
    };
    for (auto [slot, arg] : llvm::zip(slots, block->getArguments())) {
      switch (slot.kind) {
      case AbiSlot::Batch:
        batch = arg;
        break;
      case AbiSlot::Arg:
        mapArg(slot.index, arg);
        break;
      case AbiSlot::ArgGroup: {
        argArrays[slot.group] = arg;
        unsigned member = 0;
        for (unsigned i = 0; i < type.getNumInputs(); ++i) {
          if (groupOf(func.getArgAttrDict(i)) != slot.group)
            continue;
          Type t = type.getInput(i);
          if (isa<RankedTensorType>(t)) {
            mapArg(i, load(arg, member), slot.group, member);
            ++member;
          } else
            mapArg(i, LLVM::LoadOp::create(b, loc, t,
                                           element(arg, member++, t)));
        }
        break;
      }
      case AbiSlot::Result:
        resultDest[slot.index] = arg;
        break;
      case AbiSlot::ResultGroup: {
        unsigned member = 0;
        for (unsigned i = 0; i < type.getNumResults(); ++i) {
          if (groupOf(func.getResultAttrDict(i)) != slot.group)
            continue;
          Type t = type.getResult(i);
          resultDest[i] = isa<RankedTensorType>(t) ? load(arg, member++)
                                                   : element(arg, member++, t);
        }
        break;
      }
      }
    }

    // Result groups written back through an argument group's array; a
    // tensor of the argument's type goes to the argument's memref itself.
    SmallVector<Value> resultMemRef(type.getNumResults());
    for (auto &entry : argArrays) {
      unsigned member = 0;
      for (unsigned i = 0; i < type.getNumResults(); ++i) {
        if (groupOf(func.getResultAttrDict(i)) != entry.getKey())
          continue;
        auto it = groupMemRefs.find({entry.getKey().str(), member});
        if (it != groupMemRefs.end() &&
            cast<MemRefType>(it->second.getType()).getShape() ==
                cast<RankedTensorType>(type.getResult(i)).getShape())
          resultMemRef[i] = it->second;
        else
          resultDest[i] = load(entry.getValue(), member);
        ++member;
      }
    }

    Block &body = func.getBody().front();
    for (Operation &op : body.without_terminator())
      b.clone(op, mapping);
    Operation *ret = body.getTerminator();
    for (auto [i, operand] : llvm::enumerate(ret->getOperands())) {
      Value v = mapping.lookupOrDefault(operand);
      if (auto tensor = dyn_cast<RankedTensorType>(v.getType())) {
        Value dest = resultMemRef[i]
                         ? resultMemRef[i]
                         : buildMemRef(b, loc, resultDest[i], tensor,
                                       rowsOf(func.getResultAttrDict(i)));
        // Into an argument's own buffer (already held by its `to_tensor
        // restrict`), `restrict` would be a lie.
        bufferization::MaterializeInDestinationOp::create(
            b, loc, TypeRange{}, v, dest, /*restrict=*/!resultMemRef[i],
            /*writable=*/true);
      } else {
        LLVM::StoreOp::create(b, loc, v, resultDest[i]);
      }
    }
    Value ok = arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(0));
    func::ReturnOp::create(b, loc, ok);
    return success();
  }

  /// sae_abi_version() and sae_model_describe().
  void emitQueries(ModuleOp module, StringRef json) {
    MLIRContext *ctx = module.getContext();
    Location loc = module.getLoc();
    OpBuilder b = OpBuilder::atBlockEnd(module.getBody());
    std::string text = json.str();
    text.push_back('\0');
    auto arrayTy =
        LLVM::LLVMArrayType::get(IntegerType::get(ctx, 8), text.size());
    auto global = LLVM::GlobalOp::create(
        b, loc, arrayTy, /*isConstant=*/true, LLVM::Linkage::Internal,
        "__sae_model_describe", b.getStringAttr(text));
    Type ptrTy = LLVM::LLVMPointerType::get(ctx);
    auto describe = func::FuncOp::create(b, loc, "sae_model_describe",
                                         FunctionType::get(ctx, {}, {ptrTy}));
    {
      OpBuilder::InsertionGuard guard(b);
      b.setInsertionPointToStart(describe.addEntryBlock());
      Value addr = LLVM::AddressOfOp::create(b, loc, global);
      func::ReturnOp::create(b, loc, addr);
    }
    Type i32 = IntegerType::get(ctx, 32);
    auto version = func::FuncOp::create(b, loc, "sae_abi_version",
                                        FunctionType::get(ctx, {}, {i32}));
    b.setInsertionPointToStart(version.addEntryBlock());
    Value v =
        arith::ConstantOp::create(b, loc, b.getI32IntegerAttr(kAbiVersion));
    func::ReturnOp::create(b, loc, v);
  }
};

} // namespace
