//===- idx.cpp - Reading IDX files (MNIST, Fashion-MNIST) -----------------===//
//
// The IDX format: two zero bytes, a type byte, the number of dimensions, then
// big-endian 32-bit sizes and the data, big-endian. Debian ships
// Fashion-MNIST gzip-compressed; zlib's gz* functions read compressed and
// plain files alike. Every element becomes a float32; unsigned bytes (pixels)
// are scaled to [0, 1].
//
//===----------------------------------------------------------------------===//
#include "internal.h"

#include <zlib.h>

#include <cstring>

using namespace sae::rt;

namespace {

/// Closes a gzFile on scope exit.
struct GzFile {
  gzFile file = nullptr;
  ~GzFile() {
    if (file)
      gzclose(file);
  }
};

/// Reads exactly `n` bytes or fails naming the file.
void readExactly(GzFile &f, const std::string &path, void *dst, size_t n,
                 const char *what) {
  char *out = static_cast<char *>(dst);
  while (n > 0) {
    unsigned chunk = n > (1u << 30) ? (1u << 30) : static_cast<unsigned>(n);
    int got = gzread(f.file, out, chunk);
    if (got < 0) {
      int err = 0;
      const char *msg = gzerror(f.file, &err);
      fail(SAE_RT_ERR_FORMAT,
           path + ": cannot read " + what + ": " + (msg ? msg : "zlib error"));
    }
    if (got == 0)
      fail(SAE_RT_ERR_FORMAT, path + ": truncated: the file ends inside the " +
                                  std::string(what));
    out += got;
    n -= static_cast<size_t>(got);
  }
}

uint32_t bigEndian32(const unsigned char *p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) |
         (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

} // namespace

extern "C" sae_rt_status sae_rt_idx_read(const char *path, sae_rt_array *out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_idx_read: NULL argument");
    std::string p = path;
    GzFile f;
    f.file = gzopen(path, "rb");
    if (!f.file)
      fail(SAE_RT_ERR_IO, p + ": " + errnoText());
    unsigned char magic[4];
    readExactly(f, p, magic, 4, "header");
    if (magic[0] != 0 || magic[1] != 0)
      fail(SAE_RT_ERR_FORMAT, p + ": not an IDX file (bad magic)");
    unsigned type = magic[2], ndim = magic[3];
    size_t elemSize;
    switch (type) {
    case 0x08: // unsigned byte
    case 0x09: // signed byte
      elemSize = 1;
      break;
    case 0x0B: // short
      elemSize = 2;
      break;
    case 0x0C: // int
    case 0x0D: // float
      elemSize = 4;
      break;
    case 0x0E: // double
      elemSize = 8;
      break;
    default:
      fail(SAE_RT_ERR_FORMAT,
           p + ": unknown IDX element type 0x" + std::to_string(type));
    }
    if (ndim < 1 || ndim > SAE_RT_MAX_NDIM)
      fail(SAE_RT_ERR_FORMAT, p + ": IDX rank " + std::to_string(ndim) +
                                  " is not in [1, " +
                                  std::to_string(SAE_RT_MAX_NDIM) + "]");
    std::vector<unsigned char> dims(4 * ndim);
    readExactly(f, p, dims.data(), dims.size(), "header");
    // One row per entry of the first dimension, the rest flattened.
    int64_t rows = bigEndian32(&dims[0]);
    uint64_t width = 1;
    for (unsigned i = 1; i < ndim; ++i)
      width = checkedMul(width, bigEndian32(&dims[4 * i]), p + ": IDX shape");
    uint64_t count = checkedMul(uint64_t(rows), width, p + ": IDX shape");
    uint64_t bytes = checkedMul(count, elemSize, p + ": IDX shape");

    std::vector<unsigned char> raw(bytes);
    readExactly(f, p, raw.data(), raw.size(), "data");

    OwnedArray array;
    int64_t shape[2] = {rows, int64_t(width)};
    array.allocate(SAE_RT_DTYPE_FLOAT32, ndim == 1 ? 1 : 2, shape, p);
    float *dst = static_cast<float *>(array.get().data);
    const unsigned char *src = raw.data();
    for (uint64_t i = 0; i < count; ++i, src += elemSize) {
      switch (type) {
      case 0x08:
        dst[i] = float(src[0]) / 255.0f;
        break;
      case 0x09:
        dst[i] = float(int8_t(src[0]));
        break;
      case 0x0B:
        dst[i] = float(int16_t((src[0] << 8) | src[1]));
        break;
      case 0x0C:
        dst[i] = float(int32_t(bigEndian32(src)));
        break;
      case 0x0D: {
        uint32_t bits = bigEndian32(src);
        std::memcpy(&dst[i], &bits, 4);
        break;
      }
      default: { // 0x0E
        uint64_t bits = (uint64_t(bigEndian32(src)) << 32) |
                        bigEndian32(src + 4);
        double d;
        std::memcpy(&d, &bits, 8);
        dst[i] = float(d);
        break;
      }
      }
    }
    *out = array.release();
  });
}
