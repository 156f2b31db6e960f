//===- npz.cpp - NumPy .npz archives: stored (uncompressed) ZIP of .npy ---===//
//
// Writes the archives numpy.savez writes (method "stored", CRC-32, ZIP64
// records when a size or offset needs them) and reads stored archives,
// including the ZIP64 ones numpy itself produces. Compressed members
// (numpy.savez_compressed) are reported as unsupported.
//
//===----------------------------------------------------------------------===//

#include "internal.h"

#include <map>
#include <memory>

namespace sae {
namespace rt {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kMax32 = 0xffffffffu;
constexpr uint16_t kDosDate = (0 << 9) | (1 << 5) | 1; // 1980-01-01
constexpr uint16_t kDosTime = 0;

struct CrcTable {
  uint32_t entries[256];
  CrcTable() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k)
        c = (c & 1) ? 0xedb88320u ^ (c >> 1) : c >> 1;
      entries[i] = c;
    }
  }
};

const char *methodName(uint16_t method) {
  switch (method) {
  case 8:
    return "deflate";
  case 12:
    return "bzip2";
  case 14:
    return "lzma";
  case 93:
    return "zstd";
  default:
    return "unknown";
  }
}

struct WrittenEntry {
  std::string name;
  uint32_t crc;
  uint64_t size;
  uint64_t offset;
};

bool endsWith(const std::string &text, const std::string &suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

} // namespace

uint32_t crc32Update(uint32_t crc, const void *data, size_t count) {
  static const CrcTable table;
  const unsigned char *p = static_cast<const unsigned char *>(data);
  crc = ~crc;
  for (size_t i = 0; i < count; ++i)
    crc = table.entries[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

} // namespace rt
} // namespace sae

using namespace sae::rt;

struct sae_rt_npz {
  std::vector<std::string> names;
  std::vector<OwnedArray> arrays;
};

namespace {

void writeNpz(const std::string &path, size_t count, const char *const *names,
              const sae_rt_array *arrays) {
  if (count && (!names || !arrays))
    fail(SAE_RT_ERR_ARG, path + ": names or arrays is NULL");
  // Tests lower the ZIP64 threshold to exercise those records cheaply.
  const uint64_t limit = faultArmed("npz.force_zip64") ? 0 : kMax32;

  std::vector<std::string> memberNames;
  for (size_t i = 0; i < count; ++i) {
    if (!names[i] || !*names[i])
      fail(SAE_RT_ERR_ARG,
           path + ": member " + std::to_string(i) + " has an empty name");
    std::string name = std::string(names[i]) + ".npy";
    if (name.size() > 0xffff)
      fail(SAE_RT_ERR_ARG, path + ": member name too long");
    for (const std::string &other : memberNames)
      if (other == name)
        fail(SAE_RT_ERR_ARG, path + ": duplicate member " + quote(names[i]));
    memberNames.push_back(name);
  }

  OutputFile out(path);
  std::vector<WrittenEntry> entries;
  for (size_t i = 0; i < count; ++i) {
    const sae_rt_array &array = arrays[i];
    std::string what = path + ": member " + quote(memberNames[i]);
    uint64_t dataBytes = checkedNbytes(array.dtype, array.ndim, array.shape,
                                       what, SAE_RT_ERR_ARG);
    if (dataBytes && !array.data)
      fail(SAE_RT_ERR_ARG, what + ": array data is NULL");
    std::string npyHeader =
        makeNpyHeader(array.dtype, array.ndim, array.shape, what);
    size_t dataSize = toSize(dataBytes, what);
    uint64_t size = checkedAdd(npyHeader.size(), dataBytes, what);
    uint32_t crc = crc32Update(0, npyHeader.data(), npyHeader.size());
    crc = crc32Update(crc, array.data, dataSize);
    uint64_t offset = out.getOffset();
    bool zip64 = size >= limit;

    std::string local;
    putLE32(local, kLocalSig);
    putLE16(local, zip64 ? 45 : 20);
    putLE16(local, 0); // flags
    putLE16(local, 0); // stored
    putLE16(local, kDosTime);
    putLE16(local, kDosDate);
    putLE32(local, crc);
    putLE32(local, zip64 ? kMax32 : static_cast<uint32_t>(size));
    putLE32(local, zip64 ? kMax32 : static_cast<uint32_t>(size));
    putLE16(local, static_cast<uint16_t>(memberNames[i].size()));
    putLE16(local, zip64 ? 20 : 0);
    local += memberNames[i];
    if (zip64) {
      putLE16(local, 0x0001);
      putLE16(local, 16);
      putLE64(local, size);
      putLE64(local, size);
    }
    out.write(local);
    out.write(npyHeader);
    out.write(array.data, dataSize);
    entries.push_back({memberNames[i], crc, size, offset});
  }

  uint64_t centralOffset = out.getOffset();
  bool anyZip64 = false;
  std::string central;
  for (const WrittenEntry &entry : entries) {
    bool bigSize = entry.size >= limit;
    bool bigOffset = entry.offset >= limit;
    std::string extra;
    if (bigSize || bigOffset) {
      std::string fields;
      if (bigSize) {
        putLE64(fields, entry.size);
        putLE64(fields, entry.size);
      }
      if (bigOffset)
        putLE64(fields, entry.offset);
      putLE16(extra, 0x0001);
      putLE16(extra, static_cast<uint16_t>(fields.size()));
      extra += fields;
      anyZip64 = true;
    }
    uint16_t version = extra.empty() ? 20 : 45;
    putLE32(central, kCentralSig);
    putLE16(central, static_cast<uint16_t>((3 << 8) | version)); // made by unix
    putLE16(central, version);
    putLE16(central, 0);
    putLE16(central, 0);
    putLE16(central, kDosTime);
    putLE16(central, kDosDate);
    putLE32(central, entry.crc);
    putLE32(central, bigSize ? kMax32 : static_cast<uint32_t>(entry.size));
    putLE32(central, bigSize ? kMax32 : static_cast<uint32_t>(entry.size));
    putLE16(central, static_cast<uint16_t>(entry.name.size()));
    putLE16(central, static_cast<uint16_t>(extra.size()));
    putLE16(central, 0);              // comment
    putLE16(central, 0);              // disk
    putLE16(central, 0);              // internal attributes
    putLE32(central, 0100644u << 16); // external: regular file, rw-r--r--
    putLE32(central, bigOffset ? kMax32 : static_cast<uint32_t>(entry.offset));
    central += entry.name;
    central += extra;
  }
  out.write(central);
  uint64_t centralSize = central.size();
  uint64_t entryCount = entries.size();

  bool needZip64End = anyZip64 || entryCount >= 0xffff ||
                      centralOffset >= limit || centralSize >= limit;
  if (needZip64End) {
    uint64_t zip64EndOffset = out.getOffset();
    std::string record;
    putLE32(record, kZip64EndSig);
    putLE64(record, 44); // size of the remaining record
    putLE16(record, (3 << 8) | 45);
    putLE16(record, 45);
    putLE32(record, 0);
    putLE32(record, 0);
    putLE64(record, entryCount);
    putLE64(record, entryCount);
    putLE64(record, centralSize);
    putLE64(record, centralOffset);
    putLE32(record, kZip64LocatorSig);
    putLE32(record, 0);
    putLE64(record, zip64EndOffset);
    putLE32(record, 1);
    out.write(record);
  }
  std::string end;
  putLE32(end, kEndSig);
  putLE16(end, 0);
  putLE16(end, 0);
  uint16_t shortCount =
      entryCount >= 0xffff ? 0xffff : static_cast<uint16_t>(entryCount);
  putLE16(end, shortCount);
  putLE16(end, shortCount);
  putLE32(end,
          centralSize >= limit ? kMax32 : static_cast<uint32_t>(centralSize));
  putLE32(end, centralOffset >= limit ? kMax32
                                      : static_cast<uint32_t>(centralOffset));
  putLE16(end, 0);
  out.write(end);
  out.commit();
}

/// CRC-32 of [offset, offset + count) of `file`, read in bounded chunks.
uint32_t crcOfRange(const InputFile &file, uint64_t offset, uint64_t count,
                    uint32_t crc) {
  std::vector<char> chunk(count < (1u << 20) ? static_cast<size_t>(count)
                                             : (1u << 20));
  while (count > 0) {
    size_t take =
        count < chunk.size() ? static_cast<size_t>(count) : chunk.size();
    file.readAt(offset, chunk.data(), take);
    crc = crc32Update(crc, chunk.data(), take);
    offset += take;
    count -= take;
  }
  return crc;
}

std::unique_ptr<sae_rt_npz> readNpz(const std::string &path) {
  InputFile file(path);
  const uint64_t fileSize = file.getSize();
  if (fileSize < 22)
    fail(SAE_RT_ERR_FORMAT, path +
                                ": not a .npz file (too small for a ZIP "
                                "archive: " +
                                std::to_string(fileSize) + " bytes)");

  // Find the end-of-central-directory record, scanning back over a possible
  // archive comment (at most 65535 bytes).
  uint64_t tailSize = fileSize < 22 + 65535 ? fileSize : 22 + 65535;
  uint64_t tailStart = fileSize - tailSize;
  std::string tail = file.readString(tailStart, static_cast<size_t>(tailSize));
  const unsigned char *t = reinterpret_cast<const unsigned char *>(tail.data());
  int64_t endPos = -1;
  for (int64_t i = static_cast<int64_t>(tail.size()) - 22; i >= 0; --i) {
    if (getLE32(t + i) == kEndSig &&
        static_cast<uint64_t>(i) + 22 + getLE16(t + i + 20) <= tail.size()) {
      endPos = i;
      break;
    }
  }
  if (endPos < 0)
    fail(SAE_RT_ERR_FORMAT, path + ": not a .npz file (no ZIP end of central "
                                   "directory record)");
  const unsigned char *end = t + endPos;
  uint64_t endOffset = tailStart + static_cast<uint64_t>(endPos);
  uint64_t entryCount = getLE16(end + 10);
  uint64_t centralSize = getLE32(end + 12);
  uint64_t centralOffset = getLE32(end + 16);
  if (getLE16(end + 4) != 0 || getLE16(end + 6) != 0)
    fail(SAE_RT_ERR_FORMAT, path + ": multi-disk ZIP archives are not "
                                   "supported");

  // ZIP64: a locator right before the record points at the ZIP64 record.
  if (endOffset >= 20) {
    unsigned char locator[20];
    file.readAt(endOffset - 20, locator, sizeof(locator));
    if (getLE32(locator) == kZip64LocatorSig) {
      uint64_t recordOffset = getLE64(locator + 8);
      if (recordOffset > endOffset - 20 || endOffset - 20 - recordOffset < 56)
        fail(SAE_RT_ERR_FORMAT,
             path + ": corrupt ZIP64 end of central directory locator");
      unsigned char record[56];
      file.readAt(recordOffset, record, sizeof(record));
      if (getLE32(record) != kZip64EndSig)
        fail(SAE_RT_ERR_FORMAT,
             path + ": corrupt ZIP64 end of central directory record");
      entryCount = getLE64(record + 32);
      centralSize = getLE64(record + 40);
      centralOffset = getLE64(record + 48);
      endOffset = recordOffset;
    }
  }
  if (centralOffset > endOffset || centralSize > endOffset - centralOffset)
    fail(SAE_RT_ERR_FORMAT, path + ": corrupt ZIP central directory (offset " +
                                std::to_string(centralOffset) + ", size " +
                                std::to_string(centralSize) +
                                ", beyond the archive)");
  if (entryCount > centralSize / 46)
    fail(SAE_RT_ERR_FORMAT, path + ": corrupt ZIP central directory (" +
                                std::to_string(entryCount) +
                                " entries cannot fit in " +
                                std::to_string(centralSize) + " bytes)");

  std::string central =
      file.readString(centralOffset, toSize(centralSize, path));
  const unsigned char *c =
      reinterpret_cast<const unsigned char *>(central.data());
  auto npz = std::make_unique<sae_rt_npz>();
  std::map<std::string, bool> seen;
  size_t pos = 0;
  for (uint64_t e = 0; e < entryCount; ++e) {
    if (central.size() - pos < 46 || getLE32(c + pos) != kCentralSig)
      fail(SAE_RT_ERR_FORMAT,
           path + ": corrupt ZIP central directory entry " + std::to_string(e));
    const unsigned char *h = c + pos;
    uint16_t flags = getLE16(h + 8);
    uint16_t method = getLE16(h + 10);
    uint32_t crc = getLE32(h + 16);
    uint64_t compressedSize = getLE32(h + 20);
    uint64_t size = getLE32(h + 24);
    size_t nameLength = getLE16(h + 28);
    size_t extraLength = getLE16(h + 30);
    size_t commentLength = getLE16(h + 32);
    uint64_t localOffset = getLE32(h + 42);
    if (central.size() - pos - 46 < nameLength + extraLength + commentLength)
      fail(SAE_RT_ERR_FORMAT,
           path + ": corrupt ZIP central directory entry " + std::to_string(e));
    std::string name(central, pos + 46, nameLength);
    // ZIP64 extended information: the 64-bit values of the fields that are
    // saturated, in this order.
    size_t extraPos = pos + 46 + nameLength;
    size_t extraEnd = extraPos + extraLength;
    while (extraEnd - extraPos >= 4) {
      uint16_t id = getLE16(c + extraPos);
      size_t length = getLE16(c + extraPos + 2);
      if (extraEnd - extraPos - 4 < length)
        break;
      if (id == 0x0001) {
        const unsigned char *field = c + extraPos + 4;
        size_t left = length;
        auto take = [&](uint64_t &value) {
          if (value != kMax32)
            return;
          if (left < 8)
            fail(SAE_RT_ERR_FORMAT, path + ": member " + quote(name) +
                                        ": corrupt ZIP64 extra field");
          value = getLE64(field);
          field += 8;
          left -= 8;
        };
        take(size);
        take(compressedSize);
        take(localOffset);
      }
      extraPos += 4 + length;
    }
    pos += 46 + nameLength + extraLength + commentLength;

    if (!name.empty() && name.back() == '/')
      continue; // directory entry
    std::string what = path + ": member " + quote(name);
    if (flags & 1)
      fail(SAE_RT_ERR_FORMAT, what + " is encrypted; not supported");
    if (method != 0)
      fail(SAE_RT_ERR_FORMAT,
           what + " is compressed (method " + std::to_string(method) + ", " +
               methodName(method) +
               "); only uncompressed .npz files are supported (write them "
               "with numpy.savez, not numpy.savez_compressed)");
    if (compressedSize != size)
      fail(SAE_RT_ERR_FORMAT, what + ": stored member with different "
                                     "compressed and uncompressed sizes");
    if (!endsWith(name, ".npy"))
      continue;

    // The local header repeats the name; its extra field may differ.
    if (localOffset > fileSize || fileSize - localOffset < 30)
      fail(SAE_RT_ERR_FORMAT, what + ": local header offset " +
                                  std::to_string(localOffset) +
                                  " is beyond the archive");
    unsigned char local[30];
    file.readAt(localOffset, local, sizeof(local));
    if (getLE32(local) != kLocalSig)
      fail(SAE_RT_ERR_FORMAT, what + ": bad local header signature");
    uint64_t dataStart =
        localOffset + 30 + getLE16(local + 26) + getLE16(local + 28);
    if (dataStart > fileSize || fileSize - dataStart < size)
      fail(SAE_RT_ERR_FORMAT, what +
                                  ": truncated: the archive ends before "
                                  "the member's " +
                                  std::to_string(size) + " bytes");

    std::string shortName = name.substr(0, name.size() - 4);
    if (seen.count(shortName))
      fail(SAE_RT_ERR_FORMAT, what + ": duplicate member");
    seen[shortName] = true;

    NpyHeader header = parseNpyHeader(file, dataStart, size, what);
    OwnedArray array;
    array.allocate(header.dtype, header.ndim, header.shape, what);
    size_t dataBytes = toSize(header.dataBytes, what);
    if (dataBytes)
      file.readAt(dataStart + header.dataOffset, array.get().data, dataBytes);
    uint32_t actual = crcOfRange(file, dataStart, header.dataOffset, 0);
    actual = crc32Update(actual, array.get().data, dataBytes);
    actual = crcOfRange(file, dataStart + header.dataOffset + dataBytes,
                        size - header.dataOffset - dataBytes, actual);
    if (actual != crc)
      fail(SAE_RT_ERR_FORMAT, what + ": CRC-32 mismatch (the archive is "
                                     "corrupt)");
    npz->names.push_back(shortName);
    npz->arrays.push_back(std::move(array));
  }
  return npz;
}

} // namespace

extern "C" {

sae_rt_status sae_rt_npz_write(const char *path, size_t count,
                               const char *const *names,
                               const sae_rt_array *arrays) {
  return guard([&] {
    if (!path)
      fail(SAE_RT_ERR_ARG, "sae_rt_npz_write: path is NULL");
    writeNpz(path, count, names, arrays);
  });
}

sae_rt_status sae_rt_npz_open(const char *path, sae_rt_npz **out) {
  return guard([&] {
    if (!path || !out)
      fail(SAE_RT_ERR_ARG, "sae_rt_npz_open: NULL argument");
    *out = readNpz(path).release();
  });
}

size_t sae_rt_npz_count(const sae_rt_npz *npz) {
  return npz ? npz->names.size() : 0;
}

const char *sae_rt_npz_name(const sae_rt_npz *npz, size_t index) {
  if (!npz || index >= npz->names.size())
    return nullptr;
  return npz->names[index].c_str();
}

const sae_rt_array *sae_rt_npz_array(const sae_rt_npz *npz, size_t index) {
  if (!npz || index >= npz->arrays.size())
    return nullptr;
  return &npz->arrays[index].get();
}

const sae_rt_array *sae_rt_npz_find(const sae_rt_npz *npz, const char *name) {
  if (!npz || !name)
    return nullptr;
  for (size_t i = 0; i < npz->names.size(); ++i)
    if (npz->names[i] == name)
      return &npz->arrays[i].get();
  return nullptr;
}

void sae_rt_npz_close(sae_rt_npz *npz) { delete npz; }

} // extern "C"
