//===- rows.cpp - Memory-mapped row sources: .npy and safetensors tensors -===//
//
// sae_rt_rows gives read-only access to the rows of a [B, d] array stored in
// a .npy file ('<f4' or '<f2') or in a named tensor of a safetensors file
// (F32, F16 or BF16). The file is mapped, never read whole, so inputs larger
// than memory work; every read widens the requested rows to float32.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <cstring>
#include <memory>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace sae {
namespace rt {
namespace {

/// A whole file mapped read-only. The descriptor stays open so that reads
/// can check the file still covers what they touch (a file truncated under
/// a mapping would fault instead of failing cleanly).
class MappedFile {
public:
  explicit MappedFile(const std::string &path) : path(path) {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
      fail(SAE_RT_ERR_IO, path + ": cannot open: " + errnoText());
    try {
      map();
    } catch (...) {
      ::close(fd);
      throw;
    }
  }
  ~MappedFile() {
    if (base)
      ::munmap(const_cast<unsigned char *>(base), static_cast<size_t>(size));
    if (fd >= 0)
      ::close(fd);
  }
  MappedFile(const MappedFile &) = delete;
  MappedFile &operator=(const MappedFile &) = delete;

  uint64_t getSize() const { return size; }
  const unsigned char *data() const { return base; }

  /// Fails unless the file still has at least `end` bytes.
  void checkCovers(uint64_t end) const {
    struct stat info;
    if (::fstat(fd, &info) != 0)
      fail(SAE_RT_ERR_IO, path + ": cannot stat: " + errnoText());
    uint64_t now = info.st_size > 0 ? static_cast<uint64_t>(info.st_size) : 0;
    if (now < end)
      fail(SAE_RT_ERR_IO, path + ": the file shrank to " + std::to_string(now) +
                              " bytes while being read (it had " +
                              std::to_string(size) + ")");
  }

private:
  void map() {
    struct stat info;
    if (::fstat(fd, &info) != 0)
      fail(SAE_RT_ERR_IO, path + ": cannot stat: " + errnoText());
    if (S_ISDIR(info.st_mode))
      fail(SAE_RT_ERR_IO, path + ": is a directory, expected a file");
    size = info.st_size > 0 ? static_cast<uint64_t>(info.st_size) : 0;
    if (size == 0)
      return; // nothing to map; the format checks refuse such a file
    if (size > SIZE_MAX)
      fail(SAE_RT_ERR_NOMEM, path + ": too large to map");
    void *address = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ,
                           MAP_SHARED, fd, 0);
    if (address == MAP_FAILED)
      fail(SAE_RT_ERR_IO, path + ": cannot map the file: " + errnoText());
    base = static_cast<const unsigned char *>(address);
    // Rows are consumed front to back: read ahead, drop behind.
    ::madvise(address, static_cast<size_t>(size), MADV_SEQUENTIAL);
  }

  std::string path;
  int fd = -1;
  uint64_t size = 0;
  const unsigned char *base = nullptr;
};

/// float16 -> float32 for every bit pattern, built once.
const float *float16Table() {
  static const std::unique_ptr<float[]> table = [] {
    std::unique_ptr<float[]> values(new float[65536]);
    for (uint32_t bits = 0; bits < 65536; ++bits)
      values[bits] = sae_rt_float16_to_float32(static_cast<uint16_t>(bits));
    return values;
  }();
  return table.get();
}

bool hasNpyMagic(const unsigned char *bytes, uint64_t size) {
  return size >= 6 && std::memcmp(bytes, "\x93NUMPY", 6) == 0;
}

/// A plausible safetensors preamble: a header length that fits the file,
/// followed by '{'.
bool looksLikeSafetensors(const unsigned char *bytes, uint64_t size) {
  if (size < 9)
    return false;
  uint64_t length = getLE64(bytes);
  return length >= 2 && length <= size - 8 && bytes[8] == '{';
}

struct SafetensorsCloser {
  void operator()(sae_rt_safetensors *st) const {
    sae_rt_safetensors_close(st);
  }
};
using SafetensorsPtr = std::unique_ptr<sae_rt_safetensors, SafetensorsCloser>;

SafetensorsPtr openSafetensorsChecked(const std::string &path) {
  sae_rt_safetensors *raw = nullptr;
  check(sae_rt_safetensors_open(path.c_str(), &raw));
  return SafetensorsPtr(raw);
}

/// "'a' [100, 16] F16, 'b' [16] F32" (the first 16 tensors, then a count).
std::string listTensors(const sae_rt_safetensors *st) {
  size_t count = sae_rt_safetensors_count(st);
  if (count == 0)
    return "no tensors";
  std::string text;
  const size_t shown = count < 16 ? count : 16;
  for (size_t i = 0; i < shown; ++i) {
    int32_t ndim = 0;
    const int64_t *shape = sae_rt_safetensors_shape(st, i, &ndim);
    text += (i ? ", " : "") + quote(sae_rt_safetensors_name(st, i)) + " " +
            formatShape(ndim, shape) + " " +
            sae_rt_safetensors_dtype_name(st, i);
  }
  if (shown < count)
    text += " and " + std::to_string(count - shown) + " more";
  return text;
}

} // namespace
} // namespace rt
} // namespace sae

using namespace sae::rt;

struct sae_rt_rows {
  std::string what; ///< "X.npy" or "X.safetensors: tensor 'acts'"
  std::unique_ptr<MappedFile> map;
  sae_rt_dtype dtype = SAE_RT_DTYPE_FLOAT32;
  int32_t ndim = 0;
  int64_t shape[SAE_RT_MAX_NDIM] = {};
  int64_t rows = 0;
  int64_t width = 0;
  uint64_t dataOffset = 0;
  uint64_t rowBytes = 0;
};

namespace {

std::unique_ptr<sae_rt_rows> openNpyRows(const std::string &path) {
  auto rows = std::make_unique<sae_rt_rows>();
  rows->what = path;
  NpyHeader header;
  {
    InputFile file(path);
    header = parseNpyHeader(file, 0, file.getSize(), path);
  }
  if (header.dtype != SAE_RT_DTYPE_FLOAT32 &&
      header.dtype != SAE_RT_DTYPE_FLOAT16)
    fail(SAE_RT_ERR_SHAPE, path + ": dtype " +
                               sae_rt_dtype_name(header.dtype) +
                               ", expected float32 or float16");
  if (header.ndim != 1 && header.ndim != 2)
    fail(SAE_RT_ERR_SHAPE, path + ": shape " +
                               formatShape(header.ndim, header.shape) +
                               " is not [B, d] or [d]");
  rows->map = std::make_unique<MappedFile>(path);
  // Re-check against the mapping: the file may have changed in between.
  if (rows->map->getSize() < header.dataOffset + header.dataBytes)
    fail(SAE_RT_ERR_FORMAT, path + ": truncated: the file changed while "
                                   "being opened");
  rows->dtype = header.dtype;
  rows->ndim = header.ndim;
  for (int32_t i = 0; i < header.ndim; ++i)
    rows->shape[i] = header.shape[i];
  rows->rows = header.ndim == 2 ? header.shape[0] : 1;
  rows->width = header.shape[header.ndim - 1];
  rows->dataOffset = header.dataOffset;
  return rows;
}

std::unique_ptr<sae_rt_rows> openSafetensorsRows(const std::string &path,
                                                 const std::string &tensor) {
  SafetensorsPtr st = openSafetensorsChecked(path);
  int64_t index = sae_rt_safetensors_find(st.get(), tensor.c_str());
  if (index < 0)
    fail(SAE_RT_ERR_ARG, path + ": no tensor " + quote(tensor) +
                             "; the file holds " + listTensors(st.get()));
  size_t at = static_cast<size_t>(index);
  std::string what = path + ": tensor " + quote(tensor);
  std::string dtypeName = sae_rt_safetensors_dtype_name(st.get(), at);
  auto rows = std::make_unique<sae_rt_rows>();
  rows->what = what;
  if (dtypeName == "F32")
    rows->dtype = SAE_RT_DTYPE_FLOAT32;
  else if (dtypeName == "F16")
    rows->dtype = SAE_RT_DTYPE_FLOAT16;
  else if (dtypeName == "BF16")
    rows->dtype = SAE_RT_DTYPE_BFLOAT16;
  else
    fail(SAE_RT_ERR_SHAPE, what + " has dtype " + dtypeName +
                               ", expected F32, F16 or BF16");
  int32_t ndim = 0;
  const int64_t *shape = sae_rt_safetensors_shape(st.get(), at, &ndim);
  if (ndim != 2)
    fail(SAE_RT_ERR_SHAPE, what + " has shape " + formatShape(ndim, shape) +
                               ", expected a 2-D [B, d] tensor");
  rows->ndim = 2;
  rows->shape[0] = shape[0];
  rows->shape[1] = shape[1];
  rows->rows = shape[0];
  rows->width = shape[1];
  rows->dataOffset = safetensorsDataOffset(st.get(), at);
  uint64_t bytes = checkedNbytes(rows->dtype, 2, rows->shape, what,
                                 SAE_RT_ERR_FORMAT);
  st.reset();
  rows->map = std::make_unique<MappedFile>(path);
  if (rows->map->getSize() < rows->dataOffset + bytes)
    fail(SAE_RT_ERR_FORMAT, path + ": truncated: the file changed while "
                                   "being opened");
  return rows;
}

/// Reads just enough of `path` to tell the formats apart; `size` receives
/// the file's size.
std::string readPreamble(const std::string &path, uint64_t &size) {
  InputFile file(path);
  size = file.getSize();
  return file.readString(0, size < 16 ? static_cast<size_t>(size) : 16);
}

} // namespace

extern "C" {

sae_rt_status sae_rt_rows_open(const char *path, const char *tensor,
                               sae_rt_rows **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_rows_open: NULL argument");
    std::string file = path;
    uint64_t size = 0;
    std::string preamble = readPreamble(file, size);
    const unsigned char *bytes =
        reinterpret_cast<const unsigned char *>(preamble.data());
    bool npy = hasNpyMagic(bytes, preamble.size());
    std::unique_ptr<sae_rt_rows> rows;
    if (tensor) {
      if (npy)
        fail(SAE_RT_ERR_ARG, file + ": is a .npy file; a tensor name (" +
                                 quote(tensor) +
                                 ") applies to safetensors files only");
      rows = openSafetensorsRows(file, tensor);
    } else {
      if (!npy && preamble.size() >= 9 && looksLikeSafetensors(bytes, size)) {
        // Say what the file holds when it parses as safetensors; otherwise
        // report it as a broken .npy below.
        sae_rt_safetensors *raw = nullptr;
        if (sae_rt_safetensors_open(file.c_str(), &raw) == SAE_RT_OK) {
          SafetensorsPtr st(raw);
          fail(SAE_RT_ERR_ARG,
               file + ": is a safetensors file; name the tensor to read (" +
                   listTensors(st.get()) + ")");
        }
      }
      rows = openNpyRows(file);
    }
    rows->rowBytes =
        checkedMul(static_cast<uint64_t>(rows->width),
                   sae_rt_dtype_size(rows->dtype), rows->what);
    *out = rows.release();
  });
}

int64_t sae_rt_rows_count(const sae_rt_rows *rows) {
  return rows ? rows->rows : 0;
}

int64_t sae_rt_rows_width(const sae_rt_rows *rows) {
  return rows ? rows->width : 0;
}

sae_rt_dtype sae_rt_rows_dtype(const sae_rt_rows *rows) {
  return rows ? rows->dtype : SAE_RT_DTYPE_FLOAT32;
}

int32_t sae_rt_rows_ndim(const sae_rt_rows *rows) {
  return rows ? rows->ndim : 0;
}

const int64_t *sae_rt_rows_shape(const sae_rt_rows *rows) {
  return rows ? rows->shape : nullptr;
}

sae_rt_status sae_rt_rows_read(sae_rt_rows *rows, int64_t first, int64_t count,
                               float *dst) {
  return guard([&] {
    if (!rows)
      fail(SAE_RT_ERR_ARG, "sae_rt_rows_read: NULL rows");
    const std::string &what = rows->what;
    if (first < 0 || count < 0 || first > rows->rows ||
        count > rows->rows - first)
      fail(SAE_RT_ERR_ARG, what + ": rows [" + std::to_string(first) + ", " +
                               std::to_string(first + count) +
                               ") are out of range (the array has " +
                               std::to_string(rows->rows) + " rows)");
    if (count == 0 || rows->width == 0)
      return;
    if (!dst)
      fail(SAE_RT_ERR_ARG, what + ": destination buffer is NULL");
    uint64_t begin = checkedAdd(
        rows->dataOffset,
        checkedMul(static_cast<uint64_t>(first), rows->rowBytes, what), what);
    uint64_t bytes =
        checkedMul(static_cast<uint64_t>(count), rows->rowBytes, what);
    rows->map->checkCovers(checkedAdd(begin, bytes, what));
    size_t elements = toSize(
        checkedMul(static_cast<uint64_t>(count),
                   static_cast<uint64_t>(rows->width), what),
        what);
    const unsigned char *src = rows->map->data() + begin;
    switch (rows->dtype) {
    case SAE_RT_DTYPE_FLOAT32:
      std::memcpy(dst, src, elements * sizeof(float));
      break;
    case SAE_RT_DTYPE_FLOAT16: {
      const float *table = float16Table();
      for (size_t i = 0; i < elements; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        dst[i] = table[bits];
      }
      break;
    }
    case SAE_RT_DTYPE_BFLOAT16:
      for (size_t i = 0; i < elements; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        uint32_t wide = static_cast<uint32_t>(bits) << 16;
        std::memcpy(&dst[i], &wide, 4);
      }
      break;
    default:
      fail(SAE_RT_ERR_ARG, what + ": unsupported dtype");
    }
  });
}

void sae_rt_rows_close(sae_rt_rows *rows) { delete rows; }

} // extern "C"
