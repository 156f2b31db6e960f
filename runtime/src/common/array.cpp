//===- array.cpp - sae_rt_array: allocation, sizes, dtype conversion ------===//
//
// The array type shared by all readers and writers, checked size arithmetic,
// and exact float16/bfloat16 -> float32 widening.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <cstdlib>
#include <cstring>
#include <limits>

namespace sae {
namespace rt {

uint64_t checkedMul(uint64_t a, uint64_t b, const std::string &what) {
  uint64_t result;
  if (__builtin_mul_overflow(a, b, &result))
    fail(SAE_RT_ERR_NOMEM, what + ": size overflow");
  return result;
}

uint64_t checkedAdd(uint64_t a, uint64_t b, const std::string &what) {
  uint64_t result;
  if (__builtin_add_overflow(a, b, &result))
    fail(SAE_RT_ERR_NOMEM, what + ": size overflow");
  return result;
}

size_t toSize(uint64_t value, const std::string &what) {
  if (value > std::numeric_limits<size_t>::max())
    fail(SAE_RT_ERR_NOMEM, what + ": size overflow");
  return static_cast<size_t>(value);
}

uint64_t checkedNumel(sae_rt_dtype dtype, int32_t ndim, const int64_t *shape,
                      const std::string &what, sae_rt_status status) {
  if (sae_rt_dtype_size(dtype) == 0)
    fail(status,
         what + ": invalid dtype " + std::to_string(static_cast<int>(dtype)));
  if (ndim < 0 || ndim > SAE_RT_MAX_NDIM)
    fail(status, what + ": invalid number of dimensions " +
                     std::to_string(ndim) + " (at most " +
                     std::to_string(SAE_RT_MAX_NDIM) + ")");
  if (ndim > 0 && !shape)
    fail(SAE_RT_ERR_ARG, what + ": shape is NULL");
  uint64_t numel = 1;
  for (int32_t i = 0; i < ndim; ++i) {
    if (shape[i] < 0)
      fail(status, what + ": negative dimension " + std::to_string(shape[i]));
    uint64_t next;
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(shape[i]), &next) ||
        next > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(status == SAE_RT_ERR_ARG ? SAE_RT_ERR_NOMEM : status,
           what + ": shape " + formatShape(ndim, shape) +
               " has too many elements");
    numel = next;
  }
  return numel;
}

uint64_t checkedNbytes(sae_rt_dtype dtype, int32_t ndim, const int64_t *shape,
                       const std::string &what, sae_rt_status status) {
  uint64_t numel = checkedNumel(dtype, ndim, shape, what, status);
  uint64_t bytes;
  if (__builtin_mul_overflow(numel, sae_rt_dtype_size(dtype), &bytes))
    fail(status == SAE_RT_ERR_ARG ? SAE_RT_ERR_NOMEM : status,
         what + ": shape " + formatShape(ndim, shape) + " is too large");
  return bytes;
}

std::string formatShape(int32_t ndim, const int64_t *shape) {
  std::string text = "[";
  for (int32_t i = 0; i < ndim; ++i) {
    if (i)
      text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

std::string formatShapeX(int32_t ndim, const int64_t *shape) {
  if (ndim == 0)
    return "scalar";
  std::string text;
  for (int32_t i = 0; i < ndim; ++i) {
    if (i)
      text += "x";
    text += std::to_string(shape[i]);
  }
  return text;
}

void *allocAligned(size_t bytes) {
  if (bytes == 0)
    bytes = 1;
  // Round up so the zeroing below never touches bytes past the request and
  // vectorised consumers may read whole 64-byte lines.
  size_t rounded = (bytes + 63) & ~static_cast<size_t>(63);
  if (rounded < bytes)
    throw std::bad_alloc();
  void *memory = nullptr;
  if (posix_memalign(&memory, 64, rounded) != 0 || !memory)
    throw std::bad_alloc();
  std::memset(memory, 0, rounded);
  return memory;
}

static void resetArray(sae_rt_array &array) {
  array.dtype = SAE_RT_DTYPE_FLOAT32;
  array.ndim = 0;
  for (int64_t &dim : array.shape)
    dim = 0;
  array.data = nullptr;
}

OwnedArray::OwnedArray() { resetArray(array); }
OwnedArray::~OwnedArray() { sae_rt_array_free(&array); }
OwnedArray::OwnedArray(OwnedArray &&other) noexcept : array(other.array) {
  resetArray(other.array);
}
OwnedArray &OwnedArray::operator=(OwnedArray &&other) noexcept {
  if (this != &other) {
    sae_rt_array_free(&array);
    array = other.array;
    resetArray(other.array);
  }
  return *this;
}

void OwnedArray::allocate(sae_rt_dtype dtype, int32_t ndim,
                          const int64_t *shape, const std::string &what) {
  uint64_t bytes = checkedNbytes(dtype, ndim, shape, what, SAE_RT_ERR_ARG);
  void *data = allocAligned(toSize(bytes, what));
  sae_rt_array_free(&array);
  array.dtype = dtype;
  array.ndim = ndim;
  for (int32_t i = 0; i < SAE_RT_MAX_NDIM; ++i)
    array.shape[i] = i < ndim ? shape[i] : 0;
  array.data = data;
}

sae_rt_array OwnedArray::release() {
  sae_rt_array result = array;
  resetArray(array);
  return result;
}

} // namespace rt
} // namespace sae

using namespace sae::rt;

extern "C" {

size_t sae_rt_dtype_size(sae_rt_dtype dtype) {
  switch (dtype) {
  case SAE_RT_DTYPE_FLOAT32:
  case SAE_RT_DTYPE_INT32:
    return 4;
  case SAE_RT_DTYPE_FLOAT16:
  case SAE_RT_DTYPE_BFLOAT16:
    return 2;
  default:
    return 0;
  }
}

const char *sae_rt_dtype_name(sae_rt_dtype dtype) {
  switch (dtype) {
  case SAE_RT_DTYPE_FLOAT32:
    return "float32";
  case SAE_RT_DTYPE_INT32:
    return "int32";
  case SAE_RT_DTYPE_FLOAT16:
    return "float16";
  case SAE_RT_DTYPE_BFLOAT16:
    return "bfloat16";
  default:
    return "invalid";
  }
}

sae_rt_status sae_rt_array_alloc(sae_rt_dtype dtype, int32_t ndim,
                                 const int64_t *shape, sae_rt_array *out) {
  return guard([&] {
    if (!out)
      fail(SAE_RT_ERR_ARG, "sae_rt_array_alloc: out is NULL");
    OwnedArray array;
    array.allocate(dtype, ndim, shape, "sae_rt_array_alloc");
    *out = array.release();
  });
}

void sae_rt_array_free(sae_rt_array *array) {
  if (!array)
    return;
  std::free(array->data);
  resetArray(*array);
}

int64_t sae_rt_array_numel(const sae_rt_array *array) {
  if (!array)
    return -1;
  try {
    return static_cast<int64_t>(checkedNumel(
        array->dtype, array->ndim, array->shape, "array", SAE_RT_ERR_ARG));
  } catch (...) {
    return -1;
  }
}

size_t sae_rt_array_nbytes(const sae_rt_array *array) {
  if (!array)
    return 0;
  try {
    return toSize(checkedNbytes(array->dtype, array->ndim, array->shape,
                                "array", SAE_RT_ERR_ARG),
                  "array");
  } catch (...) {
    return 0;
  }
}

float sae_rt_float16_to_float32(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  uint32_t result;
  if (exponent == 0) {
    if (mantissa == 0) {
      result = sign; // +-0
    } else {
      // Subnormal: normalise the mantissa into an ordinary float.
      uint32_t e = 113; // 127 - 15 + 1
      while (!(mantissa & 0x400u)) {
        mantissa <<= 1;
        --e;
      }
      mantissa &= 0x3ffu;
      result = sign | (e << 23) | (mantissa << 13);
    }
  } else if (exponent == 0x1f) {
    result = sign | 0x7f800000u | (mantissa << 13); // inf / NaN
  } else {
    result = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &result, sizeof(value));
  return value;
}

float sae_rt_bfloat16_to_float32(uint16_t bits) {
  uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &widened, sizeof(value));
  return value;
}

sae_rt_status sae_rt_array_to_float32(const sae_rt_array *in,
                                      sae_rt_array *out) {
  return guard([&] {
    if (!in || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_array_to_float32: NULL argument");
    uint64_t numel = checkedNumel(in->dtype, in->ndim, in->shape,
                                  "sae_rt_array_to_float32", SAE_RT_ERR_ARG);
    if (numel > 0 && !in->data)
      fail(SAE_RT_ERR_ARG, "sae_rt_array_to_float32: input data is NULL");
    OwnedArray result;
    result.allocate(SAE_RT_DTYPE_FLOAT32, in->ndim, in->shape,
                    "sae_rt_array_to_float32");
    float *dst = static_cast<float *>(result.get().data);
    size_t count = static_cast<size_t>(numel);
    switch (in->dtype) {
    case SAE_RT_DTYPE_FLOAT32:
      if (count)
        std::memcpy(dst, in->data, count * sizeof(float));
      break;
    case SAE_RT_DTYPE_INT32: {
      const int32_t *src = static_cast<const int32_t *>(in->data);
      for (size_t i = 0; i < count; ++i)
        dst[i] = static_cast<float>(src[i]);
      break;
    }
    case SAE_RT_DTYPE_FLOAT16: {
      const uint16_t *src = static_cast<const uint16_t *>(in->data);
      for (size_t i = 0; i < count; ++i)
        dst[i] = sae_rt_float16_to_float32(src[i]);
      break;
    }
    case SAE_RT_DTYPE_BFLOAT16: {
      const uint16_t *src = static_cast<const uint16_t *>(in->data);
      for (size_t i = 0; i < count; ++i)
        dst[i] = sae_rt_bfloat16_to_float32(src[i]);
      break;
    }
    default: // rejected by checkedNumel above
      break;
    }
    *out = result.release();
  });
}

} // extern "C"
