// Safetensors read and write: the published format (https://huggingface.co/docs/safetensors),
// our own implementation. Used for model weights (rwr model init, checkpoints, export) and the
// Hugging Face parity fixtures.
//
// File layout: uint64 little-endian N; N bytes of UTF-8 JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>"}}
// padded with spaces to a multiple of 8; then the data buffer, offsets relative to its start,
// tensors packed without holes, row-major, little-endian.
//
// Sharded models (Hugging Face convention): model-00001-of-0000K.safetensors files plus
// model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: file}}.
//
//   RWR_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open("model.safetensors"));
//   RWR_ASSIGN_OR_RETURN(std::vector<float> w, file->ReadFloat("backbone.norm_f.weight"));
//
//   SafetensorsWriter writer;
//   writer.AddFloat("w", {2, 3}, values, DType::kBF16);   // a view: converted on write
//   RWR_RETURN_IF_ERROR(writer.WriteFile("out/model.safetensors"));   // atomic
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rwr::storage {

enum class DType { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

std::string_view DTypeName(DType dtype);  // "F32", "BF16", ...
absl::StatusOr<DType> ParseDType(std::string_view name);
size_t DTypeSize(DType dtype);

// Conversions used on read and write; bf16 rounds to nearest even, NaN stays NaN.
uint16_t FloatToBf16(float value);
float Bf16ToFloat(uint16_t bits);
uint16_t FloatToF16(float value);
float F16ToFloat(uint16_t bits);

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets in the data buffer
  uint64_t end = 0;

  int64_t NumElements() const;
};

std::string ShapeString(std::span<const int64_t> shape);  // "[2, 3]"

// One .safetensors file, memory-mapped read-only. Every error names the file.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in file order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorInfo* Find(std::string_view name) const;  // nullptr if absent

  // The tensor's bytes as stored.
  absl::StatusOr<std::span<const uint8_t>> Bytes(std::string_view name) const;
  // F64/F32/F16/BF16 tensors converted to fp32 (NotFound if absent, InvalidArgument otherwise).
  absl::StatusOr<std::vector<float>> ReadFloat(std::string_view name) const;
  // Same, into `out`, whose size must equal the element count.
  absl::Status ReadFloatInto(std::string_view name, std::span<float> out) const;
  // Integer and bool tensors as int64.
  absl::StatusOr<std::vector<int64_t>> ReadInt(std::string_view name) const;
  // Copies `bytes`, a part of this file (from Bytes), to `out`. Like ReadFloatInto, it copies a
  // piece at a time and lets each piece's mapped pages leave the process's resident set once
  // copied (they are read from the file again if touched): a loader that copies a checkpoint out
  // holds it once in the RSS a scheduler watches (Slurm's memory accounting), not twice.
  void CopyOut(std::span<const uint8_t> bytes, void* out) const;

 private:
  SafetensorsFile() = default;
  void ReleasePages(const uint8_t* begin, const uint8_t* end) const;  // mapped_pages.h

  std::string path_;
  const uint8_t* map_ = nullptr;
  uint64_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data buffer
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Lays out a file (tensors in the order added) and writes it atomically, streaming: the tensors
// are views of the caller's memory, which must stay unchanged until WriteFile or Serialize, and
// are written from there (fp32 and raw bytes as they are, conversions through a buffer of 1 Mi
// elements) —
// a checkpoint's 33 GB of weights and moments at 2.8B are never copied on the host.
class SafetensorsWriter {
 public:
  // `values` stored as `dtype` (F32, BF16, F16 or F64), converted on write. Shape product must
  // match.
  absl::Status AddFloat(const std::string& name, std::vector<int64_t> shape,
                        std::span<const float> values, DType dtype = DType::kF32);
  // Raw bytes already in `dtype`'s encoding.
  absl::Status AddBytes(const std::string& name, DType dtype, std::vector<int64_t> shape,
                        std::span<const uint8_t> bytes);
  absl::Status AddInt64(const std::string& name, std::vector<int64_t> shape,
                        std::span<const int64_t> values);
  void SetMetadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  uint64_t data_bytes() const { return data_bytes_; }
  size_t num_tensors() const { return tensors_.size(); }
  std::string Serialize() const;                          // the whole file, in memory
  // path.tmp, fsync, rename. With `abandon`, looked at every 64 MiB and before the fsync: once it
  // is set the write stops with Cancelled and leaves nothing (a checkpoint given up for a newer
  // one); an fsync under way is not interrupted.
  absl::Status WriteFile(const std::string& path, const std::atomic<bool>* abandon = nullptr) const;

  // Where Emit puts the file's bytes, in order.
  using ByteSink = std::function<absl::Status(std::string_view)>;

 private:
  struct Pending {
    TensorInfo info;
    std::span<const uint8_t> bytes;  // written as they are, or
    std::span<const float> floats;   // converted to info.dtype
  };
  absl::Status Add(Pending tensor);
  std::string Header() const;  // the length, the JSON, its padding
  absl::Status Emit(const ByteSink& sink) const;

  std::vector<Pending> tensors_;
  uint64_t data_bytes_ = 0;
  std::map<std::string, std::string> metadata_;
};

// A model's weights in a directory: model.safetensors, or shards listed by
// model.safetensors.index.json. Tensor lookups go to the file holding the tensor.
class SafetensorsModel {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsModel>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  std::vector<std::string> TensorNames() const;  // sorted
  const TensorInfo* Find(std::string_view name) const;
  const SafetensorsFile* FileOf(std::string_view name) const;
  absl::Status ReadFloatInto(std::string_view name, std::span<float> out) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> owner_;  // tensor name -> files_ index
};

// One named fp32 tensor to save.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> values;
};

struct SaveModelOptions {
  DType dtype = DType::kF32;
  // Above this many data bytes the weights are split into model-0000i-of-0000K.safetensors
  // files of at most this size each (a tensor larger than the limit gets a file of its own),
  // plus model.safetensors.index.json. 0: never shard.
  uint64_t max_shard_bytes = 0;
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  const std::atomic<bool>* abandon = nullptr;  // SafetensorsWriter::WriteFile's
};

// Writes `tensors` into `dir` (which must exist) in the Hugging Face layout. Returns the names of
// the files written.
absl::StatusOr<std::vector<std::string>> SaveModel(const std::string& dir,
                                                   std::span<const NamedTensor> tensors,
                                                   const SaveModelOptions& options = {});

}  // namespace rwr::storage
