//===- npy.cpp - NumPy .npy files: header codec, read, write, streaming ---===//
//
// Implements the .npy format (versions 1.0, 2.0 and 3.0) for the dtypes
// '<f4', '<i4' and '<f2' in C order. The header is a Python dict literal,
// parsed here by a small dedicated parser that rejects anything else.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <cctype>
#include <cstring>
#include <limits>
#include <memory>

namespace sae {
namespace rt {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicSize = 6;
/// Larger headers are refused: real ones are well under 1 KiB.
constexpr uint64_t kMaxHeaderSize = uint64_t(1) << 20;

const char *const kSupportedDtypes =
    "'<f4' (float32), '<i4' (int32), '<f2' (float16)";

/// One value of the header dict.
struct PyValue {
  enum Kind { String, Bool, Tuple, Other } kind = Other;
  std::string text;          ///< String contents, or raw text for Other.
  bool boolean = false;      ///< For Bool.
  std::vector<int64_t> ints; ///< For Tuple.
};

/// Parses the Python literal dict of a .npy header.
class HeaderParser {
public:
  HeaderParser(const std::string &text, const std::string &what)
      : text(text), what(what) {}

  std::vector<std::pair<std::string, PyValue>> parse() {
    std::vector<std::pair<std::string, PyValue>> entries;
    skipSpace();
    expect('{', "'{' opening the header dict");
    while (true) {
      skipSpace();
      if (peek() == '}') {
        ++pos;
        break;
      }
      if (peek() != '\'' && peek() != '"')
        error("expected a quoted key");
      std::string key = parseString();
      skipSpace();
      expect(':', "':' after key '" + key + "'");
      skipSpace();
      PyValue value = parseValue();
      entries.emplace_back(std::move(key), std::move(value));
      skipSpace();
      if (peek() == ',') {
        ++pos;
        continue;
      }
      if (peek() == '}') {
        ++pos;
        break;
      }
      error("expected ',' or '}'");
    }
    skipSpace();
    if (pos != text.size())
      error("unexpected text after the closing '}'");
    return entries;
  }

private:
  char peek() const { return pos < text.size() ? text[pos] : '\0'; }

  void skipSpace() {
    while (pos < text.size() && (text[pos] == ' ' || text[pos] == '\t' ||
                                 text[pos] == '\n' || text[pos] == '\r'))
      ++pos;
  }

  [[noreturn]] void error(const std::string &problem) {
    std::string shown = text.size() > 200 ? text.substr(0, 200) + "..." : text;
    // Keep the message printable.
    for (char &c : shown)
      if (static_cast<unsigned char>(c) < 0x20)
        c = ' ';
    fail(SAE_RT_ERR_FORMAT, what + ": unparsable header dict: " + problem +
                                " at offset " + std::to_string(pos) + " in " +
                                shown);
  }

  void expect(char c, const std::string &description) {
    if (peek() != c)
      error("expected " + description);
    ++pos;
  }

  std::string parseString() {
    char quoteChar = text[pos++];
    std::string value;
    while (true) {
      if (pos >= text.size())
        error("unterminated string");
      char c = text[pos++];
      if (c == quoteChar)
        break;
      if (c == '\\') {
        if (pos >= text.size())
          error("unterminated string");
        c = text[pos++];
      }
      value.push_back(c);
    }
    return value;
  }

  bool matchWord(const char *word) {
    size_t length = std::strlen(word);
    if (text.compare(pos, length, word) != 0)
      return false;
    char after = pos + length < text.size() ? text[pos + length] : '\0';
    if (std::isalnum(static_cast<unsigned char>(after)) || after == '_')
      return false;
    pos += length;
    return true;
  }

  int64_t parseInt() {
    if (!std::isdigit(static_cast<unsigned char>(peek())))
      error("expected a non-negative integer");
    uint64_t value = 0;
    while (std::isdigit(static_cast<unsigned char>(peek()))) {
      uint64_t digit = static_cast<uint64_t>(text[pos++] - '0');
      if (value >
          (static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - digit) /
              10)
        error("integer too large");
      value = value * 10 + digit;
    }
    if (peek() == 'L' || peek() == 'l') // Python 2 longs.
      ++pos;
    return static_cast<int64_t>(value);
  }

  /// Skips a bracketed Python literal (used for structured dtypes).
  void skipBracketed() {
    size_t start = pos;
    int depth = 0;
    while (pos < text.size()) {
      char c = text[pos];
      if (c == '\'' || c == '"') {
        parseString();
        continue;
      }
      ++pos;
      if (c == '[' || c == '(' || c == '{')
        ++depth;
      else if (c == ']' || c == ')' || c == '}') {
        if (--depth == 0)
          return;
      }
    }
    pos = start;
    error("unbalanced brackets");
  }

  PyValue parseValue() {
    PyValue value;
    char c = peek();
    if (c == '\'' || c == '"') {
      value.kind = PyValue::String;
      value.text = parseString();
    } else if (matchWord("True")) {
      value.kind = PyValue::Bool;
      value.boolean = true;
    } else if (matchWord("False")) {
      value.kind = PyValue::Bool;
      value.boolean = false;
    } else if (c == '(') {
      value.kind = PyValue::Tuple;
      ++pos;
      while (true) {
        skipSpace();
        if (peek() == ')') {
          ++pos;
          break;
        }
        if (value.ints.size() > 64)
          error("tuple too long");
        value.ints.push_back(parseInt());
        skipSpace();
        if (peek() == ',') {
          ++pos;
          continue;
        }
        if (peek() == ')') {
          ++pos;
          break;
        }
        error("expected ',' or ')' in a tuple");
      }
    } else if (c == '[') {
      size_t start = pos;
      skipBracketed();
      value.kind = PyValue::Other;
      value.text = text.substr(start, pos - start);
    } else {
      error("expected a string, True, False or a tuple");
    }
    return value;
  }

  const std::string &text;
  const std::string &what;
  size_t pos = 0;
};

std::string readPrefix(const InputFile &file, uint64_t base, uint64_t length,
                       size_t count) {
  size_t available = length < count ? static_cast<size_t>(length) : count;
  return file.readString(base, available);
}

} // namespace

NpyHeader parseNpyHeader(const InputFile &file, uint64_t base, uint64_t length,
                         const std::string &what) {
  std::string prefix = readPrefix(file, base, length, 12);
  if (prefix.size() < kMagicSize ||
      std::memcmp(prefix.data(), kMagic, kMagicSize) != 0)
    fail(SAE_RT_ERR_FORMAT,
         what + ": not a .npy file (bad magic: expected \\x93NUMPY)");
  if (prefix.size() < 10)
    fail(SAE_RT_ERR_FORMAT, what + ": truncated .npy preamble (" +
                                std::to_string(prefix.size()) + " bytes)");
  unsigned major = static_cast<unsigned char>(prefix[6]);
  unsigned minor = static_cast<unsigned char>(prefix[7]);
  const unsigned char *bytes =
      reinterpret_cast<const unsigned char *>(prefix.data());
  uint64_t headerStart, headerLength;
  if (major == 1) {
    headerStart = 10;
    headerLength = getLE16(bytes + 8);
  } else if (major == 2 || major == 3) {
    if (prefix.size() < 12)
      fail(SAE_RT_ERR_FORMAT, what + ": truncated .npy preamble (" +
                                  std::to_string(prefix.size()) + " bytes)");
    headerStart = 12;
    headerLength = getLE32(bytes + 8);
  } else {
    fail(SAE_RT_ERR_FORMAT,
         what + ": unsupported .npy format version " + std::to_string(major) +
             "." + std::to_string(minor) + " (supported: 1.0, 2.0, 3.0)");
  }
  if (headerLength > kMaxHeaderSize)
    fail(SAE_RT_ERR_FORMAT, what + ": header length " +
                                std::to_string(headerLength) +
                                " is implausibly large");
  if (headerStart + headerLength > length)
    fail(SAE_RT_ERR_FORMAT,
         what + ": truncated header: it says " + std::to_string(headerLength) +
             " bytes but only " + std::to_string(length - headerStart) +
             " follow");
  std::string dictText =
      file.readString(base + headerStart, static_cast<size_t>(headerLength));

  HeaderParser parser(dictText, what);
  auto entries = parser.parse();
  const PyValue *descr = nullptr, *fortran = nullptr, *shape = nullptr;
  for (const auto &entry : entries) {
    if (entry.first == "descr")
      descr = &entry.second;
    else if (entry.first == "fortran_order")
      fortran = &entry.second;
    else if (entry.first == "shape")
      shape = &entry.second;
  }
  const std::pair<const char *, const PyValue *> required[] = {
      {"descr", descr}, {"fortran_order", fortran}, {"shape", shape}};
  for (const auto &key : required)
    if (!key.second)
      fail(SAE_RT_ERR_FORMAT,
           what + ": unparsable header dict: no '" + key.first + "' key");

  NpyHeader header;
  if (descr->kind != PyValue::String)
    fail(SAE_RT_ERR_FORMAT, what + ": unsupported dtype " + descr->text +
                                " (structured arrays are not supported); "
                                "supported: " +
                                kSupportedDtypes);
  if (descr->text == "<f4")
    header.dtype = SAE_RT_DTYPE_FLOAT32;
  else if (descr->text == "<i4")
    header.dtype = SAE_RT_DTYPE_INT32;
  else if (descr->text == "<f2")
    header.dtype = SAE_RT_DTYPE_FLOAT16;
  else
    fail(SAE_RT_ERR_FORMAT, what + ": unsupported dtype '" + descr->text +
                                "'; supported: " + kSupportedDtypes +
                                " (convert with a.astype(numpy.float32))");

  if (fortran->kind != PyValue::Bool)
    fail(SAE_RT_ERR_FORMAT,
         what + ": unparsable header dict: 'fortran_order' is not a bool");
  if (fortran->boolean)
    fail(SAE_RT_ERR_FORMAT,
         what + ": fortran_order is True (column-major data); only C-order "
                "arrays are supported (save numpy.ascontiguousarray(a))");

  if (shape->kind != PyValue::Tuple)
    fail(SAE_RT_ERR_FORMAT,
         what + ": unparsable header dict: 'shape' is not a tuple");
  if (shape->ints.size() > SAE_RT_MAX_NDIM)
    fail(SAE_RT_ERR_FORMAT, what + ": " + std::to_string(shape->ints.size()) +
                                " dimensions (at most " +
                                std::to_string(SAE_RT_MAX_NDIM) +
                                " are supported)");
  header.ndim = static_cast<int32_t>(shape->ints.size());
  for (int32_t i = 0; i < header.ndim; ++i)
    header.shape[i] = shape->ints[i];

  header.dataOffset = headerStart + headerLength;
  header.dataBytes = checkedNbytes(header.dtype, header.ndim, header.shape,
                                   what, SAE_RT_ERR_FORMAT);
  uint64_t available = length - header.dataOffset;
  if (available < header.dataBytes)
    fail(SAE_RT_ERR_FORMAT,
         what + ": truncated: header says " +
             formatShapeX(header.ndim, header.shape) + " " +
             sae_rt_dtype_name(header.dtype) + " (" +
             std::to_string(header.dataBytes) + " bytes) but only " +
             std::to_string(available) + " bytes of data follow");
  return header;
}

std::string makeNpyHeader(sae_rt_dtype dtype, int32_t ndim,
                          const int64_t *shape, const std::string &what) {
  const char *descr = nullptr;
  switch (dtype) {
  case SAE_RT_DTYPE_FLOAT32:
    descr = "<f4";
    break;
  case SAE_RT_DTYPE_INT32:
    descr = "<i4";
    break;
  case SAE_RT_DTYPE_FLOAT16:
    descr = "<f2";
    break;
  default:
    fail(SAE_RT_ERR_ARG, what + ": dtype " +
                             std::string(sae_rt_dtype_name(dtype)) +
                             " cannot be stored in a .npy file");
  }
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': False, 'shape': (";
  for (int32_t i = 0; i < ndim; ++i) {
    dict += std::to_string(shape[i]);
    if (ndim == 1 || i + 1 < ndim)
      dict += ",";
    if (i + 1 < ndim)
      dict += " ";
  }
  dict += "), }";
  // Pad with spaces so that magic + version + length + dict + '\n' is a
  // multiple of 64 bytes.
  size_t prefixSize = 10;
  size_t total = prefixSize + dict.size() + 1;
  size_t padded = (total + 63) / 64 * 64;
  if (padded - prefixSize > 0xffff) {
    prefixSize = 12;
    total = prefixSize + dict.size() + 1;
    padded = (total + 63) / 64 * 64;
  }
  dict.append(padded - total, ' ');
  dict.push_back('\n');

  std::string out(kMagic, kMagicSize);
  if (prefixSize == 10) {
    out.push_back('\x01');
    out.push_back('\x00');
    putLE16(out, static_cast<uint16_t>(dict.size()));
  } else {
    out.push_back('\x02');
    out.push_back('\x00');
    putLE32(out, static_cast<uint32_t>(dict.size()));
  }
  return out + dict;
}

} // namespace rt
} // namespace sae

using namespace sae::rt;

struct sae_rt_npy_reader {
  sae_rt_npy_reader(const std::string &path)
      : file(path), header(parseNpyHeader(file, 0, file.getSize(), path)) {
    uint64_t rowElements = 1;
    if (header.ndim >= 1) {
      rows = header.shape[0];
      for (int32_t i = 1; i < header.ndim; ++i)
        rowElements = checkedMul(rowElements,
                                 static_cast<uint64_t>(header.shape[i]), path);
    } else {
      rows = 1;
    }
    rowBytes = checkedMul(rowElements, sae_rt_dtype_size(header.dtype), path);
  }

  InputFile file;
  NpyHeader header;
  int64_t rows = 0;
  uint64_t rowBytes = 0;
};

struct sae_rt_npy_writer {
  sae_rt_npy_writer(const std::string &path, sae_rt_dtype dtype, int32_t ndim,
                    const int64_t *shape)
      : out(path) {
    expected = checkedNbytes(dtype, ndim, shape, path, SAE_RT_ERR_ARG);
    out.write(makeNpyHeader(dtype, ndim, shape, path));
  }

  OutputFile out;
  uint64_t expected = 0;
  uint64_t written = 0;
  bool committed = false;
};

extern "C" {

sae_rt_status sae_rt_npy_read(const char *path, sae_rt_array *out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_read: NULL argument");
    InputFile file(path);
    NpyHeader header = parseNpyHeader(file, 0, file.getSize(), path);
    OwnedArray array;
    array.allocate(header.dtype, header.ndim, header.shape, path);
    if (header.dataBytes)
      file.readAt(header.dataOffset, array.get().data,
                  toSize(header.dataBytes, path));
    *out = array.release();
  });
}

sae_rt_status sae_rt_npy_write(const char *path, const sae_rt_array *array) {
  return guard([&] {
    if (!path || !array)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_write: NULL argument");
    uint64_t bytes = checkedNbytes(array->dtype, array->ndim, array->shape,
                                   path, SAE_RT_ERR_ARG);
    if (bytes && !array->data)
      fail(SAE_RT_ERR_ARG, std::string(path) + ": array data is NULL");
    sae_rt_npy_writer writer(path, array->dtype, array->ndim, array->shape);
    writer.out.write(array->data, toSize(bytes, path));
    writer.out.commit();
  });
}

sae_rt_status sae_rt_npy_reader_open(const char *path,
                                     sae_rt_npy_reader **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_reader_open: NULL argument");
    *out = new sae_rt_npy_reader(path);
  });
}

sae_rt_dtype sae_rt_npy_reader_dtype(const sae_rt_npy_reader *r) {
  return r ? r->header.dtype : SAE_RT_DTYPE_FLOAT32;
}

int32_t sae_rt_npy_reader_ndim(const sae_rt_npy_reader *r) {
  return r ? r->header.ndim : 0;
}

const int64_t *sae_rt_npy_reader_shape(const sae_rt_npy_reader *r) {
  return r ? r->header.shape : nullptr;
}

sae_rt_status sae_rt_npy_reader_read_rows(sae_rt_npy_reader *r, int64_t first,
                                          int64_t count, void *dst) {
  return guard([&] {
    if (!r)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_reader_read_rows: NULL reader");
    const std::string &path = r->file.getPath();
    if (first < 0 || count < 0 || first > r->rows || count > r->rows - first)
      fail(SAE_RT_ERR_ARG, path + ": rows [" + std::to_string(first) + ", " +
                               std::to_string(first + count) +
                               ") are out of range (the array has " +
                               std::to_string(r->rows) + " rows)");
    if (count == 0)
      return;
    if (!dst)
      fail(SAE_RT_ERR_ARG, path + ": destination buffer is NULL");
    uint64_t offset = checkedAdd(
        r->header.dataOffset,
        checkedMul(static_cast<uint64_t>(first), r->rowBytes, path), path);
    uint64_t bytes =
        checkedMul(static_cast<uint64_t>(count), r->rowBytes, path);
    r->file.readAt(offset, dst, toSize(bytes, path));
  });
}

void sae_rt_npy_reader_close(sae_rt_npy_reader *r) { delete r; }

sae_rt_status sae_rt_npy_writer_open(const char *path, sae_rt_dtype dtype,
                                     int32_t ndim, const int64_t *shape,
                                     sae_rt_npy_writer **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_writer_open: NULL argument");
    *out = new sae_rt_npy_writer(path, dtype, ndim, shape);
  });
}

sae_rt_status sae_rt_npy_writer_append(sae_rt_npy_writer *w, const void *data,
                                       size_t nbytes) {
  return guard([&] {
    if (!w)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_writer_append: NULL writer");
    const std::string &path = w->out.getPath();
    if (w->committed)
      fail(SAE_RT_ERR_ARG, path + ": append after commit");
    if (nbytes == 0)
      return;
    if (!data)
      fail(SAE_RT_ERR_ARG, path + ": data is NULL");
    if (nbytes > w->expected - w->written)
      fail(SAE_RT_ERR_ARG, path + ": appending " + std::to_string(nbytes) +
                               " bytes exceeds the declared shape (" +
                               std::to_string(w->expected - w->written) +
                               " bytes left)");
    w->out.write(data, nbytes);
    w->written += nbytes;
  });
}

sae_rt_status sae_rt_npy_writer_commit(sae_rt_npy_writer *w) {
  return guard([&] {
    if (!w)
      fail(SAE_RT_ERR_ARG, "sae_rt_npy_writer_commit: NULL writer");
    const std::string &path = w->out.getPath();
    if (w->committed)
      fail(SAE_RT_ERR_ARG, path + ": committed twice");
    if (w->written != w->expected)
      fail(SAE_RT_ERR_ARG, path + ": only " + std::to_string(w->written) +
                               " of the " + std::to_string(w->expected) +
                               " data bytes were written");
    w->out.commit();
    w->committed = true;
  });
}

void sae_rt_npy_writer_close(sae_rt_npy_writer *w) { delete w; }

} // extern "C"
