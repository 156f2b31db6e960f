//===- safetensors.cpp - The safetensors format: validated read, write ----===//
//
// A safetensors file is an 8-byte little-endian header length, a JSON header
// mapping tensor names to {dtype, shape, data_offsets} (plus an optional
// "__metadata__" of strings), then the raw little-endian tensor data. The
// reader validates the whole header before any tensor is read.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <memory>

using namespace sae::rt;

namespace {

/// Headers larger than this are refused (the reference implementation uses
/// the same bound).
constexpr uint64_t kMaxHeaderSize = uint64_t(100) << 20;

/// Element size of every dtype the format defines; 0 for unknown names.
size_t safetensorsDtypeSize(const std::string &name) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  auto it = sizes.find(name);
  return it == sizes.end() ? 0 : it->second;
}

bool toRuntimeDtype(const std::string &name, sae_rt_dtype &dtype) {
  if (name == "F32")
    dtype = SAE_RT_DTYPE_FLOAT32;
  else if (name == "I32")
    dtype = SAE_RT_DTYPE_INT32;
  else if (name == "F16")
    dtype = SAE_RT_DTYPE_FLOAT16;
  else if (name == "BF16")
    dtype = SAE_RT_DTYPE_BFLOAT16;
  else
    return false;
  return true;
}

const char *safetensorsDtypeName(sae_rt_dtype dtype) {
  switch (dtype) {
  case SAE_RT_DTYPE_FLOAT32:
    return "F32";
  case SAE_RT_DTYPE_INT32:
    return "I32";
  case SAE_RT_DTYPE_FLOAT16:
    return "F16";
  case SAE_RT_DTYPE_BFLOAT16:
    return "BF16";
  default:
    return nullptr;
  }
}

struct TensorEntry {
  std::string name;
  std::string dtype;
  int32_t ndim = 0;
  int64_t shape[SAE_RT_MAX_NDIM] = {};
  uint64_t begin = 0;
  uint64_t end = 0;
};

/// A JSON value as a non-negative 64-bit integer, or fails.
uint64_t getUnsigned(const nlohmann::json &value, const std::string &what) {
  if (value.is_number_unsigned())
    return value.get<uint64_t>();
  if (value.is_number_integer() && value.get<int64_t>() >= 0)
    return static_cast<uint64_t>(value.get<int64_t>());
  fail(SAE_RT_ERR_FORMAT,
       what + " is not a non-negative integer: " + value.dump());
}

} // namespace

struct sae_rt_safetensors {
  explicit sae_rt_safetensors(const std::string &path) : file(path) {}
  InputFile file;
  uint64_t dataStart = 0;
  std::vector<TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
};

namespace {

std::unique_ptr<sae_rt_safetensors> openSafetensors(const std::string &path) {
  auto st = std::make_unique<sae_rt_safetensors>(path);
  const InputFile &file = st->file;
  uint64_t fileSize = file.getSize();
  if (fileSize < 8)
    fail(SAE_RT_ERR_FORMAT, path + ": not a safetensors file (only " +
                                std::to_string(fileSize) +
                                " bytes, less than the 8-byte header length)");
  unsigned char lengthBytes[8];
  file.readAt(0, lengthBytes, 8);
  uint64_t headerLength = getLE64(lengthBytes);
  if (headerLength > fileSize - 8)
    fail(SAE_RT_ERR_FORMAT, path + ": header length " +
                                std::to_string(headerLength) +
                                " is beyond the end of the file (" +
                                std::to_string(fileSize) + " bytes)");
  if (headerLength > kMaxHeaderSize)
    fail(SAE_RT_ERR_FORMAT, path + ": header length " +
                                std::to_string(headerLength) +
                                " exceeds the 100 MiB limit");
  std::string text = file.readString(8, static_cast<size_t>(headerLength));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception &error) {
    fail(SAE_RT_ERR_FORMAT,
         path + ": invalid JSON header: " + std::string(error.what()));
  }
  if (!header.is_object())
    fail(SAE_RT_ERR_FORMAT, path + ": the JSON header is not an object");

  st->dataStart = 8 + headerLength;
  uint64_t dataSize = fileSize - st->dataStart;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string &name = it.key();
    const nlohmann::json &value = it.value();
    if (name == "__metadata__") {
      if (!value.is_object())
        fail(SAE_RT_ERR_FORMAT, path + ": __metadata__ is not an object");
      for (auto m = value.begin(); m != value.end(); ++m) {
        if (!m.value().is_string())
          fail(SAE_RT_ERR_FORMAT, path + ": __metadata__ value of " +
                                      quote(m.key()) + " is not a string");
        st->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    std::string what = path + ": tensor " + quote(name);
    if (!value.is_object())
      fail(SAE_RT_ERR_FORMAT, what + ": entry is not an object");
    TensorEntry entry;
    entry.name = name;
    auto dtype = value.find("dtype");
    if (dtype == value.end() || !dtype->is_string())
      fail(SAE_RT_ERR_FORMAT, what + ": missing or non-string 'dtype'");
    entry.dtype = dtype->get<std::string>();
    size_t elementSize = safetensorsDtypeSize(entry.dtype);
    if (elementSize == 0)
      fail(SAE_RT_ERR_FORMAT, what + ": unknown dtype " + quote(entry.dtype));
    auto shape = value.find("shape");
    if (shape == value.end() || !shape->is_array())
      fail(SAE_RT_ERR_FORMAT, what + ": missing or non-array 'shape'");
    if (shape->size() > SAE_RT_MAX_NDIM)
      fail(SAE_RT_ERR_FORMAT, what + ": " + std::to_string(shape->size()) +
                                  " dimensions (at most " +
                                  std::to_string(SAE_RT_MAX_NDIM) +
                                  " are supported)");
    entry.ndim = static_cast<int32_t>(shape->size());
    uint64_t numel = 1;
    for (int32_t i = 0; i < entry.ndim; ++i) {
      uint64_t dim = getUnsigned((*shape)[i], what + ": shape entry");
      if (dim > static_cast<uint64_t>(INT64_MAX))
        fail(SAE_RT_ERR_FORMAT, what + ": dimension too large");
      entry.shape[i] = static_cast<int64_t>(dim);
      if (__builtin_mul_overflow(numel, dim, &numel))
        fail(SAE_RT_ERR_FORMAT, what + ": shape is too large");
    }
    uint64_t expected;
    if (__builtin_mul_overflow(numel, elementSize, &expected))
      fail(SAE_RT_ERR_FORMAT, what + ": shape is too large");
    auto offsets = value.find("data_offsets");
    if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2)
      fail(SAE_RT_ERR_FORMAT,
           what + ": 'data_offsets' must be an array of two integers");
    entry.begin = getUnsigned((*offsets)[0], what + ": data_offsets");
    entry.end = getUnsigned((*offsets)[1], what + ": data_offsets");
    std::string range = "[" + std::to_string(entry.begin) + ", " +
                        std::to_string(entry.end) + "]";
    if (entry.begin > entry.end || entry.end > dataSize)
      fail(SAE_RT_ERR_FORMAT, what + ": data_offsets " + range +
                                  " are out of range (the data section has " +
                                  std::to_string(dataSize) + " bytes)");
    if (entry.end - entry.begin != expected)
      fail(SAE_RT_ERR_FORMAT,
           what + ": data_offsets " + range + " span " +
               std::to_string(entry.end - entry.begin) + " bytes but shape " +
               formatShape(entry.ndim, entry.shape) + " " + entry.dtype +
               " needs " + std::to_string(expected));
    st->tensors.push_back(std::move(entry));
  }

  std::stable_sort(st->tensors.begin(), st->tensors.end(),
                   [](const TensorEntry &a, const TensorEntry &b) {
                     return a.begin < b.begin;
                   });
  const TensorEntry *previous = nullptr;
  for (const TensorEntry &entry : st->tensors) {
    if (entry.begin == entry.end)
      continue; // empty tensors occupy no bytes
    if (previous && previous->end > entry.begin)
      fail(SAE_RT_ERR_FORMAT, path + ": tensors " + quote(previous->name) +
                                  " and " + quote(entry.name) +
                                  " overlap in the data section");
    previous = &entry;
  }
  return st;
}

} // namespace

void sae::rt::writeSafetensors(const std::string &path, size_t count,
                               const char *const *names,
                               const sae_rt_array *arrays, size_t metadataCount,
                               const char *const *keys,
                               const char *const *values) {
  if (count && (!names || !arrays))
    fail(SAE_RT_ERR_ARG, path + ": names or arrays is NULL");
  if (metadataCount && (!keys || !values))
    fail(SAE_RT_ERR_ARG, path + ": metadata keys or values is NULL");

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (metadataCount) {
    nlohmann::ordered_json metadata = nlohmann::ordered_json::object();
    for (size_t i = 0; i < metadataCount; ++i) {
      if (!keys[i] || !values[i])
        fail(SAE_RT_ERR_ARG,
             path + ": metadata entry " + std::to_string(i) + " is NULL");
      metadata[keys[i]] = values[i];
    }
    header["__metadata__"] = std::move(metadata);
  }
  std::vector<size_t> sizes(count);
  uint64_t offset = 0;
  for (size_t i = 0; i < count; ++i) {
    if (!names[i] || !*names[i])
      fail(SAE_RT_ERR_ARG,
           path + ": tensor " + std::to_string(i) + " has an empty name");
    std::string name = names[i];
    std::string what = path + ": tensor " + quote(name);
    if (name == "__metadata__" || header.contains(name))
      fail(SAE_RT_ERR_ARG, what + ": duplicate or reserved name");
    const sae_rt_array &array = arrays[i];
    uint64_t bytes = checkedNbytes(array.dtype, array.ndim, array.shape, what,
                                   SAE_RT_ERR_ARG);
    if (bytes && !array.data)
      fail(SAE_RT_ERR_ARG, what + ": array data is NULL");
    sizes[i] = toSize(bytes, what);
    nlohmann::ordered_json shape = nlohmann::ordered_json::array();
    for (int32_t d = 0; d < array.ndim; ++d)
      shape.push_back(array.shape[d]);
    uint64_t end = checkedAdd(offset, bytes, what);
    header[name] = {{"dtype", safetensorsDtypeName(array.dtype)},
                    {"shape", std::move(shape)},
                    {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception &error) {
    fail(SAE_RT_ERR_ARG, path +
                             ": cannot encode the header (names and "
                             "metadata must be UTF-8): " +
                             std::string(error.what()));
  }
  // Pad so the data section starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');

  OutputFile out(path);
  std::string length;
  putLE64(length, text.size());
  out.write(length);
  out.write(text);
  for (size_t i = 0; i < count; ++i)
    out.write(arrays[i].data, sizes[i]);
  out.commit();
}

void sae::rt::readSafetensorsInto(const sae_rt_safetensors *st, size_t index,
                                  void *dst, size_t bytes) {
  const TensorEntry &entry = st->tensors.at(index);
  if (entry.end - entry.begin != bytes)
    fail(SAE_RT_ERR_ARG, st->file.getPath() + ": tensor " + quote(entry.name) +
                             ": buffer size mismatch");
  if (bytes)
    st->file.readAt(st->dataStart + entry.begin, dst, bytes);
}

uint64_t sae::rt::safetensorsDataOffset(const sae_rt_safetensors *st,
                                        size_t index) {
  return st->dataStart + st->tensors.at(index).begin;
}

extern "C" {

sae_rt_status sae_rt_safetensors_write(const char *path, size_t count,
                                       const char *const *names,
                                       const sae_rt_array *arrays,
                                       size_t metadata_count,
                                       const char *const *metadata_keys,
                                       const char *const *metadata_values) {
  return guard([&] {
    if (!path)
      fail(SAE_RT_ERR_ARG, "sae_rt_safetensors_write: path is NULL");
    writeSafetensors(path, count, names, arrays, metadata_count, metadata_keys,
                     metadata_values);
  });
}

sae_rt_status sae_rt_safetensors_open(const char *path,
                                      sae_rt_safetensors **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_safetensors_open: NULL argument");
    *out = openSafetensors(path).release();
  });
}

size_t sae_rt_safetensors_count(const sae_rt_safetensors *st) {
  return st ? st->tensors.size() : 0;
}

const char *sae_rt_safetensors_name(const sae_rt_safetensors *st,
                                    size_t index) {
  if (!st || index >= st->tensors.size())
    return nullptr;
  return st->tensors[index].name.c_str();
}

int64_t sae_rt_safetensors_find(const sae_rt_safetensors *st,
                                const char *name) {
  if (!st || !name)
    return -1;
  for (size_t i = 0; i < st->tensors.size(); ++i)
    if (st->tensors[i].name == name)
      return static_cast<int64_t>(i);
  return -1;
}

const char *sae_rt_safetensors_dtype_name(const sae_rt_safetensors *st,
                                          size_t index) {
  if (!st || index >= st->tensors.size())
    return nullptr;
  return st->tensors[index].dtype.c_str();
}

const int64_t *sae_rt_safetensors_shape(const sae_rt_safetensors *st,
                                        size_t index, int32_t *ndim) {
  if (!st || index >= st->tensors.size())
    return nullptr;
  if (ndim)
    *ndim = st->tensors[index].ndim;
  return st->tensors[index].shape;
}

sae_rt_status sae_rt_safetensors_read(sae_rt_safetensors *st, const char *name,
                                      sae_rt_array *out) {
  return guard([&] {
    if (!st || !name || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_safetensors_read: NULL argument");
    const std::string &path = st->file.getPath();
    int64_t index = sae_rt_safetensors_find(st, name);
    if (index < 0)
      fail(SAE_RT_ERR_ARG, path + ": no tensor " + quote(name));
    const TensorEntry &entry = st->tensors[static_cast<size_t>(index)];
    std::string what = path + ": tensor " + quote(name);
    sae_rt_dtype dtype;
    if (!toRuntimeDtype(entry.dtype, dtype))
      fail(SAE_RT_ERR_FORMAT, what + " has dtype " + entry.dtype +
                                  ", which is not supported (supported: F32, "
                                  "I32, F16, BF16)");
    OwnedArray array;
    array.allocate(dtype, entry.ndim, entry.shape, what);
    size_t bytes = toSize(entry.end - entry.begin, what);
    if (bytes)
      st->file.readAt(st->dataStart + entry.begin, array.get().data, bytes);
    *out = array.release();
  });
}

const char *sae_rt_safetensors_metadata(const sae_rt_safetensors *st,
                                        const char *key) {
  if (!st || !key)
    return nullptr;
  auto it = st->metadata.find(key);
  return it == st->metadata.end() ? nullptr : it->second.c_str();
}

void sae_rt_safetensors_close(sae_rt_safetensors *st) { delete st; }

} // extern "C"
