// Safetensors read/write; see safetensors.h for the format.
#include "storage/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"
#include "storage/atomic_file.h"
#include "storage/mapped_pages.h"

namespace rwr::storage {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::DataLossError(fmt::format("safetensors {}: {}", path, what));
}

bool IsFloat(DType d) {
  return d == DType::kF64 || d == DType::kF32 || d == DType::kF16 || d == DType::kBF16;
}

}  // namespace

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF64:
      return "F64";
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kI16:
      return "I16";
    case DType::kI8:
      return "I8";
    case DType::kU8:
      return "U8";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name) {
  for (DType d : {DType::kF64, DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32,
                  DType::kI16, DType::kI8, DType::kU8, DType::kBool}) {
    if (DTypeName(d) == name) return d;
  }
  return absl::InvalidArgumentError(fmt::format(
      "dtype '{}' is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)", name));
}

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF64:
    case DType::kI64:
      return 8;
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kF16:
    case DType::kBF16:
    case DType::kI16:
      return 2;
    case DType::kI8:
    case DType::kU8:
    case DType::kBool:
      return 1;
  }
  return 0;
}

uint16_t FloatToBf16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu) != 0) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN
  }
  const uint32_t rounding = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bf16ToFloat(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, 4);
  return value;
}

uint16_t FloatToF16(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  const uint32_t sign = (bits >> 16) & 0x8000u;
  const uint32_t exponent = (bits >> 23) & 0xffu;
  uint32_t mantissa = bits & 0x7fffffu;
  if (exponent == 0xff) {  // inf / NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (mantissa ? 0x200u : 0u));
  }
  const int e = static_cast<int>(exponent) - 127 + 15;
  if (e >= 31) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (e <= 0) {                                               // subnormal or zero
    if (e < -10) return static_cast<uint16_t>(sign);
    mantissa |= 0x800000u;
    const int shift = 14 - e;
    uint32_t half = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t halfway = 1u << (shift - 1);
    if (rest > halfway || (rest == halfway && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(e) << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (half & 1u))) ++half;  // may carry into inf: right
  return static_cast<uint16_t>(half);
}

float F16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0) {
    if (mantissa == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mantissa <<= 1;
      } while ((mantissa & 0x400u) == 0);
      bits = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mantissa & 0x3ffu) << 13);
    }
  } else if (exponent == 31) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else {
    bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
  }
  float value;
  std::memcpy(&value, &bits, 4);
  return value;
}

int64_t TensorInfo::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// SafetensorsFile

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT)
      return absl::NotFoundError(fmt::format("safetensors {}: no such file", path));
    return absl::UnavailableError(fmt::format("safetensors {}: {}", path, std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::UnavailableError(fmt::format("safetensors {}: {}", path, std::strerror(errno)));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return FileError(
        path, fmt::format("truncated: {} bytes, shorter than the 8-byte header length", size));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) {
    return absl::UnavailableError(
        fmt::format("safetensors {}: mmap: {}", path, std::strerror(errno)));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = static_cast<const uint8_t*>(map);
  file->map_size_ = size;

  uint64_t header_len = 0;
  std::memcpy(&header_len, file->map_, 8);  // little-endian hosts only (x86-64, aarch64)
  if (header_len > kMaxHeaderBytes) {
    return FileError(path, fmt::format("bad header: header length {} is implausible (not a "
                                       "safetensors file?)",
                                       header_len));
  }
  if (8 + header_len > size) {
    return FileError(path, fmt::format("truncated: header says {} header bytes, file has {} bytes",
                                       header_len, size));
  }
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(file->map_ + 8),
                         reinterpret_cast<const char*>(file->map_ + 8 + header_len));
  } catch (const std::exception& e) {
    return FileError(path, fmt::format("bad header: not valid JSON ({})", e.what()));
  }
  if (!header.is_object()) return FileError(path, "bad header: JSON header is not an object");
  file->data_ = file->map_ + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object())
        return FileError(path, "bad header: __metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string()) {
          return FileError(path,
                           fmt::format("bad header: __metadata__.{} is not a string", m.key()));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const json& entry = it.value();
    TensorInfo info;
    info.name = it.key();
    try {
      auto dtype = ParseDType(entry.at("dtype").get<std::string>());
      if (!dtype.ok())
        return FileError(
            path, fmt::format("tensor '{}': {}", info.name, std::string(dtype.status().message())));
      info.dtype = *dtype;
      for (const json& d : entry.at("shape")) {
        const int64_t dim = d.get<int64_t>();
        if (dim < 0)
          return FileError(path, fmt::format("tensor '{}': negative dimension", info.name));
        info.shape.push_back(dim);
      }
      const json& offsets = entry.at("data_offsets");
      if (!offsets.is_array() || offsets.size() != 2) {
        return FileError(path,
                         fmt::format("tensor '{}': data_offsets must be [begin, end]", info.name));
      }
      info.begin = offsets[0].get<uint64_t>();
      info.end = offsets[1].get<uint64_t>();
    } catch (const std::exception& e) {
      return FileError(path, fmt::format("bad header: tensor '{}': {}", info.name, e.what()));
    }
    if (info.end < info.begin) {
      return FileError(path, fmt::format("tensor '{}': data_offsets end before begin", info.name));
    }
    const uint64_t expected = static_cast<uint64_t>(info.NumElements()) * DTypeSize(info.dtype);
    if (info.end - info.begin != expected) {
      return FileError(path, fmt::format("tensor '{}': {} {} needs {} bytes, data_offsets give {}",
                                         info.name, DTypeName(info.dtype), ShapeString(info.shape),
                                         expected, info.end - info.begin));
    }
    if (info.end > data_size) {
      return FileError(path,
                       fmt::format("truncated: tensor '{}' ends at data byte {}, the file holds "
                                   "{} data bytes",
                                   info.name, info.end, data_size));
    }
    file->tensors_.push_back(std::move(info));
  }
  std::sort(file->tensors_.begin(), file->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  uint64_t cursor = 0;
  for (const TensorInfo& t : file->tensors_) {
    if (t.begin < cursor) {
      return FileError(path, fmt::format("tensor '{}' overlaps the tensor before it", t.name));
    }
    cursor = t.end;
  }
  if (cursor != data_size) {
    return FileError(path, fmt::format("data buffer is {} bytes but the tensors end at byte {} "
                                       "(trailing bytes: corrupt file?)",
                                       data_size, cursor));
  }
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<uint8_t*>(map_), map_size_);
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::span<const uint8_t>> SafetensorsFile::Bytes(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(fmt::format("safetensors {}: no tensor '{}'", path_, name));
  }
  return std::span<const uint8_t>(data_ + info->begin, info->end - info->begin);
}

void SafetensorsFile::ReleasePages(const uint8_t* begin, const uint8_t* end) const {
  ReleaseMappedPages(map_, map_size_, begin, end);
}

void SafetensorsFile::CopyOut(std::span<const uint8_t> bytes, void* out) const {
  auto* dst = static_cast<uint8_t*>(out);
  for (size_t at = 0; at < bytes.size(); at += kReleaseBytes) {
    const size_t n = std::min<size_t>(kReleaseBytes, bytes.size() - at);
    std::memcpy(dst + at, bytes.data() + at, n);
    ReleasePages(bytes.data() + at, bytes.data() + at + n);
  }
}

absl::Status SafetensorsFile::ReadFloatInto(std::string_view name, std::span<float> out) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(fmt::format("safetensors {}: no tensor '{}'", path_, name));
  }
  if (!IsFloat(info->dtype)) {
    return absl::InvalidArgumentError(
        fmt::format("safetensors {}: tensor '{}' is {}, expected a "
                    "floating-point tensor",
                    path_, name, DTypeName(info->dtype)));
  }
  const int64_t n = info->NumElements();
  if (static_cast<int64_t>(out.size()) != n) {
    return absl::InvalidArgumentError(
        fmt::format("safetensors {}: tensor '{}' has {} elements, "
                    "expected {}",
                    path_, name, n, out.size()));
  }
  const uint8_t* src = data_ + info->begin;
  if (info->dtype == DType::kF32) {
    CopyOut(std::span<const uint8_t>(src, n * 4), out.data());
    return absl::OkStatus();
  }
  const int64_t width = DTypeSize(info->dtype);
  const int64_t piece = kReleaseBytes / width;  // elements converted between releases
  for (int64_t first = 0; first < n; first += piece) {
    const int64_t last = std::min(n, first + piece);
    for (int64_t i = first; i < last; ++i) {
      if (info->dtype == DType::kF64) {
        double v;
        std::memcpy(&v, src + 8 * i, 8);
        out[i] = static_cast<float>(v);
      } else {
        uint16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        out[i] = info->dtype == DType::kBF16 ? Bf16ToFloat(v) : F16ToFloat(v);
      }
    }
    ReleasePages(src + first * width, src + last * width);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> SafetensorsFile::ReadFloat(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(fmt::format("safetensors {}: no tensor '{}'", path_, name));
  }
  std::vector<float> out(info->NumElements());
  RWR_RETURN_IF_ERROR(ReadFloatInto(name, out));
  return out;
}

absl::StatusOr<std::vector<int64_t>> SafetensorsFile::ReadInt(std::string_view name) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(fmt::format("safetensors {}: no tensor '{}'", path_, name));
  }
  const int64_t n = info->NumElements();
  std::vector<int64_t> out(n);
  const uint8_t* src = data_ + info->begin;
  for (int64_t i = 0; i < n; ++i) {
    switch (info->dtype) {
      case DType::kI64:
        std::memcpy(&out[i], src + 8 * i, 8);
        break;
      case DType::kI32: {
        int32_t v;
        std::memcpy(&v, src + 4 * i, 4);
        out[i] = v;
        break;
      }
      case DType::kI16: {
        int16_t v;
        std::memcpy(&v, src + 2 * i, 2);
        out[i] = v;
        break;
      }
      case DType::kI8:
        out[i] = static_cast<int8_t>(src[i]);
        break;
      case DType::kU8:
      case DType::kBool:
        out[i] = src[i];
        break;
      default:
        return absl::InvalidArgumentError(
            fmt::format("safetensors {}: tensor '{}' is {}, expected "
                        "an integer tensor",
                        path_, name, DTypeName(info->dtype)));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter

absl::Status SafetensorsWriter::Add(Pending tensor) {
  TensorInfo& info = tensor.info;
  if (info.name.empty() || info.name == "__metadata__") {
    return absl::InvalidArgumentError(
        fmt::format("safetensors: invalid tensor name '{}'", info.name));
  }
  for (const Pending& t : tensors_) {
    if (t.info.name == info.name) {
      return absl::InvalidArgumentError(
          fmt::format("safetensors: tensor '{}' added twice", info.name));
    }
  }
  info.begin = data_bytes_;
  info.end = data_bytes_ + static_cast<uint64_t>(info.NumElements()) * DTypeSize(info.dtype);
  data_bytes_ = info.end;
  tensors_.push_back(std::move(tensor));
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddBytes(const std::string& name, DType dtype,
                                         std::vector<int64_t> shape,
                                         std::span<const uint8_t> bytes) {
  Pending t;
  t.info.name = name;
  t.info.dtype = dtype;
  t.info.shape = std::move(shape);
  const uint64_t expected = static_cast<uint64_t>(t.info.NumElements()) * DTypeSize(dtype);
  if (bytes.size() != expected) {
    return absl::InvalidArgumentError(
        fmt::format("safetensors: tensor '{}' {} {} needs {} bytes, "
                    "got {}",
                    name, DTypeName(dtype), ShapeString(t.info.shape), expected, bytes.size()));
  }
  t.bytes = bytes;
  return Add(std::move(t));
}

absl::Status SafetensorsWriter::AddFloat(const std::string& name, std::vector<int64_t> shape,
                                         std::span<const float> values, DType dtype) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  if (n != static_cast<int64_t>(values.size())) {
    return absl::InvalidArgumentError(
        fmt::format("safetensors: tensor '{}' shape {} holds {} "
                    "values, got {}",
                    name, ShapeString(shape), n, values.size()));
  }
  if (!IsFloat(dtype)) {
    return absl::InvalidArgumentError(
        fmt::format("safetensors: cannot store floats as {}", DTypeName(dtype)));
  }
  Pending t;
  t.info.name = name;
  t.info.dtype = dtype;
  t.info.shape = std::move(shape);
  if (dtype == DType::kF32) {  // the bytes as they are in memory (little-endian)
    t.bytes = {reinterpret_cast<const uint8_t*>(values.data()), values.size() * 4};
  } else {
    t.floats = values;
  }
  return Add(std::move(t));
}

absl::Status SafetensorsWriter::AddInt64(const std::string& name, std::vector<int64_t> shape,
                                         std::span<const int64_t> values) {
  return AddBytes(name, DType::kI64, std::move(shape),
                  {reinterpret_cast<const uint8_t*>(values.data()), values.size() * 8});
}

std::string SafetensorsWriter::Header() const {
  // nlohmann's ordered_json keeps insertion order, so the header lists tensors as added.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  for (const Pending& t : tensors_) {
    header[t.info.name] = {{"dtype", DTypeName(t.info.dtype)},
                           {"shape", t.info.shape},
                           {"data_offsets", {t.info.begin, t.info.end}}};
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0) text.push_back(' ');
  const uint64_t n = text.size();
  return std::string(reinterpret_cast<const char*>(&n), 8) + text;
}

absl::Status SafetensorsWriter::Emit(const ByteSink& sink) const {
  RWR_RETURN_IF_ERROR(sink(Header()));
  // Converted tensors go out through a bounded buffer (1 Mi elements); fp32 and raw tensors
  // straight from the caller's memory.
  constexpr size_t kChunk = size_t{1} << 20;  // elements
  std::vector<uint8_t> buffer;
  for (const Pending& t : tensors_) {
    if (t.floats.empty()) {
      RWR_RETURN_IF_ERROR(sink({reinterpret_cast<const char*>(t.bytes.data()), t.bytes.size()}));
      continue;
    }
    const size_t size = DTypeSize(t.info.dtype);
    for (size_t at = 0; at < t.floats.size(); at += kChunk) {
      const size_t n = std::min(kChunk, t.floats.size() - at);
      buffer.resize(n * size);
      for (size_t i = 0; i < n; ++i) {
        const float v = t.floats[at + i];
        if (t.info.dtype == DType::kF64) {
          const double d = v;
          std::memcpy(buffer.data() + 8 * i, &d, 8);
        } else {
          const uint16_t h = t.info.dtype == DType::kBF16 ? FloatToBf16(v) : FloatToF16(v);
          std::memcpy(buffer.data() + 2 * i, &h, 2);
        }
      }
      RWR_RETURN_IF_ERROR(sink({reinterpret_cast<const char*>(buffer.data()), buffer.size()}));
    }
  }
  return absl::OkStatus();
}

std::string SafetensorsWriter::Serialize() const {
  std::string out;
  const absl::Status ok = Emit([&out](std::string_view bytes) {
    out.append(bytes);
    return absl::OkStatus();
  });
  (void)ok;  // appending to a string does not fail
  return out;
}

absl::Status SafetensorsWriter::WriteFile(const std::string& path,
                                          const std::atomic<bool>* abandon) const {
  AtomicFile file(path);  // a failed write leaves no .tmp behind
  RWR_RETURN_IF_ERROR(file.Open());
  auto abandoned = [&] {
    return abandon != nullptr && abandon->load(std::memory_order_relaxed)
               ? absl::CancelledError(fmt::format("{}: write abandoned", path))
               : absl::OkStatus();
  };
  // The abandon flag is looked at every piece AtomicFile writes back (a tensor of moments is
  // 11 GB at 2.8B).
  constexpr size_t kPiece = AtomicFile::kPieceBytes;
  RWR_RETURN_IF_ERROR(Emit([&](std::string_view bytes) {
    for (size_t at = 0; at < bytes.size(); at += kPiece) {
      RWR_RETURN_IF_ERROR(abandoned());
      RWR_RETURN_IF_ERROR(file.Write(bytes.data() + at, std::min(kPiece, bytes.size() - at)));
    }
    return absl::OkStatus();
  }));
  RWR_RETURN_IF_ERROR(abandoned());  // before the flush
  return file.Commit();
}

// ---------------------------------------------------------------------------------------------
// SafetensorsModel

absl::StatusOr<std::unique_ptr<SafetensorsModel>> SafetensorsModel::Open(const std::string& dir) {
  namespace fs = std::filesystem;
  auto model = std::make_unique<SafetensorsModel>();
  model->dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";
  std::vector<std::string> files;
  if (fs::exists(index_path)) {
    std::ifstream in(index_path);
    json index;
    try {
      in >> index;
    } catch (const std::exception& e) {
      return absl::DataLossError(
          fmt::format("{}: not valid JSON ({})", index_path.string(), e.what()));
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
      return absl::DataLossError(fmt::format("{}: weight_map missing", index_path.string()));
    }
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      const std::string file = it.value().get<std::string>();
      if (std::find(files.begin(), files.end(), file) == files.end()) files.push_back(file);
    }
  } else if (fs::exists(single_path)) {
    files.push_back("model.safetensors");
  } else {
    return absl::NotFoundError(
        fmt::format("{}: neither model.safetensors nor "
                    "model.safetensors.index.json found",
                    dir));
  }
  for (const std::string& file : files) {
    RWR_ASSIGN_OR_RETURN(auto opened, SafetensorsFile::Open((fs::path(dir) / file).string()));
    for (const TensorInfo& t : opened->tensors()) {
      if (model->owner_.count(t.name)) {
        return absl::DataLossError(
            fmt::format("{}: tensor '{}' appears in two files", dir, t.name));
      }
      model->owner_[t.name] = model->files_.size();
    }
    model->files_.push_back(std::move(opened));
  }
  return model;
}

std::vector<std::string> SafetensorsModel::TensorNames() const {
  std::vector<std::string> names;
  for (const auto& [name, _] : owner_) names.push_back(name);
  return names;
}

const SafetensorsFile* SafetensorsModel::FileOf(std::string_view name) const {
  auto it = owner_.find(name);
  return it == owner_.end() ? nullptr : files_[it->second].get();
}

const TensorInfo* SafetensorsModel::Find(std::string_view name) const {
  const SafetensorsFile* file = FileOf(name);
  return file == nullptr ? nullptr : file->Find(name);
}

absl::Status SafetensorsModel::ReadFloatInto(std::string_view name, std::span<float> out) const {
  const SafetensorsFile* file = FileOf(name);
  if (file == nullptr) return absl::NotFoundError(fmt::format("{}: no tensor '{}'", dir_, name));
  return file->ReadFloatInto(name, out);
}

// ---------------------------------------------------------------------------------------------
// SaveModel

absl::StatusOr<std::vector<std::string>> SaveModel(const std::string& dir,
                                                   std::span<const NamedTensor> tensors,
                                                   const SaveModelOptions& options) {
  namespace fs = std::filesystem;
  const size_t elem = DTypeSize(options.dtype);
  uint64_t total = 0;
  for (const NamedTensor& t : tensors) total += t.values.size() * elem;

  // Group tensors into shards, in order.
  std::vector<std::vector<size_t>> groups(1);
  if (options.max_shard_bytes > 0 && total > options.max_shard_bytes) {
    uint64_t in_group = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      const uint64_t bytes = tensors[i].values.size() * elem;
      if (!groups.back().empty() && in_group + bytes > options.max_shard_bytes) {
        groups.emplace_back();
        in_group = 0;
      }
      groups.back().push_back(i);
      in_group += bytes;
    }
  } else {
    for (size_t i = 0; i < tensors.size(); ++i) groups[0].push_back(i);
  }

  std::vector<std::string> written;
  json weight_map = json::object();
  for (size_t g = 0; g < groups.size(); ++g) {
    const std::string name = groups.size() == 1 ? std::string("model.safetensors")
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors",
                                                              g + 1, groups.size());
    SafetensorsWriter writer;
    for (const auto& [k, v] : options.metadata) writer.SetMetadata(k, v);
    for (size_t i : groups[g]) {
      RWR_RETURN_IF_ERROR(
          writer.AddFloat(tensors[i].name, tensors[i].shape, tensors[i].values, options.dtype));
      weight_map[tensors[i].name] = name;
    }
    RWR_RETURN_IF_ERROR(writer.WriteFile((fs::path(dir) / name).string(), options.abandon));
    written.push_back(name);
  }
  if (groups.size() > 1) {
    json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
    RWR_RETURN_IF_ERROR(WriteFileAtomically(
        (fs::path(dir) / "model.safetensors.index.json").string(), index.dump(2) + "\n"));
    written.push_back("model.safetensors.index.json");
  }
  return written;
}

}  // namespace rwr::storage
