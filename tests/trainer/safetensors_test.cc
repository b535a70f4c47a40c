// Safetensors read/write: round trips in every float dtype, sharded models, clear errors for
// broken files, and a live round trip with the PyPI `safetensors` library (both directions).
#include "storage/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "fmt/format.h"
#include "tests/support/resident.h"
#include "tests/support/temp_dir.h"

namespace rwr::storage {
namespace {

namespace fs = std::filesystem;

fs::path TempDir(const std::string& name) { return rwr::testing::FreshTempDir("st", name); }

std::vector<float> RandomValues(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void WriteAll(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

TEST(Safetensors, RoundTripsEveryFloatDtype) {
  const fs::path dir = TempDir("dtypes");
  const std::vector<float> values = RandomValues(3 * 7, 1);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddFloat("f32", {3, 7}, values, DType::kF32).ok());
  ASSERT_TRUE(writer.AddFloat("bf16", {3, 7}, values, DType::kBF16).ok());
  ASSERT_TRUE(writer.AddFloat("f16", {21}, values, DType::kF16).ok());
  ASSERT_TRUE(writer.AddFloat("f64", {7, 3}, values, DType::kF64).ok());
  const std::vector<int64_t> ints = {1, -2, 1LL << 40};
  ASSERT_TRUE(writer.AddInt64("ids", {3}, ints).ok());
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.WriteFile((dir / "a.safetensors").string()).ok());
  EXPECT_FALSE(fs::exists(dir / "a.safetensors.tmp"));

  auto file = SafetensorsFile::Open((dir / "a.safetensors").string());
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  EXPECT_EQ((*file)->Find("bf16")->shape, (std::vector<int64_t>{3, 7}));
  auto f32 = (*file)->ReadFloat("f32");
  auto bf16 = (*file)->ReadFloat("bf16");
  auto f16 = (*file)->ReadFloat("f16");
  auto f64 = (*file)->ReadFloat("f64");
  ASSERT_TRUE(f32.ok() && bf16.ok() && f16.ok() && f64.ok());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ((*f32)[i], values[i]);
    EXPECT_EQ((*f64)[i], values[i]);
    EXPECT_NEAR((*bf16)[i], values[i], std::abs(values[i]) * (1.0 / 256) + 1e-30);
    EXPECT_NEAR((*f16)[i], values[i], std::abs(values[i]) * (1.0 / 2048) + 1e-7);
  }
  EXPECT_EQ(*(*file)->ReadInt("ids"), ints);
  EXPECT_EQ((*file)->ReadFloat("ids").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*file)->ReadFloat("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(Safetensors, HalfConversionsRoundToNearestEvenAndKeepSpecials) {
  EXPECT_EQ(FloatToBf16(1.0f), 0x3f80);
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 1.0f / 256)), 1.0f);               // tie → even
  EXPECT_EQ(Bf16ToFloat(FloatToBf16(1.0f + 3.0f / 256)), 1.0f + 4.0f / 256);  // tie → even (up)
  EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(NAN))));
  EXPECT_TRUE(std::isinf(Bf16ToFloat(FloatToBf16(INFINITY))));
  EXPECT_EQ(FloatToF16(1.0f), 0x3c00);
  EXPECT_EQ(F16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(F16ToFloat(FloatToF16(65504.f)), 65504.f);
  EXPECT_TRUE(std::isinf(F16ToFloat(FloatToF16(70000.f))));
  EXPECT_EQ(F16ToFloat(FloatToF16(5.960464477539063e-08f)),
            5.960464477539063e-08f);  // min subnormal
  EXPECT_EQ(F16ToFloat(0x0001), 5.960464477539063e-08f);
  EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(NAN))));
  // Every f16 bit pattern that is not NaN survives f16 → f32 → f16.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;
    ASSERT_EQ(FloatToF16(F16ToFloat(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(Safetensors, ShardedModelWritesIndexAndReadsBack) {
  const fs::path dir = TempDir("sharded");
  std::vector<std::vector<float>> data;
  std::vector<NamedTensor> tensors;
  for (int i = 0; i < 5; ++i) data.push_back(RandomValues(100, 10 + i));  // 400 bytes each
  for (int i = 0; i < 5; ++i) tensors.push_back({fmt::format("layer.{}.w", i), {10, 10}, data[i]});
  auto written = SaveModel(dir.string(), tensors, {.dtype = DType::kF32, .max_shard_bytes = 900});
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(written->size(), 4u);  // 3 shards (2+2+1 tensors) + index
  EXPECT_TRUE(fs::exists(dir / "model-00001-of-00003.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors"));
  auto model = SafetensorsModel::Open(dir.string());
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->TensorNames().size(), 5u);
  std::vector<float> out(100);
  ASSERT_TRUE((*model)->ReadFloatInto("layer.4.w", out).ok());
  EXPECT_EQ(out, data[4]);

  // Under the limit: one model.safetensors, no index.
  const fs::path one = TempDir("single");
  auto single =
      SaveModel(one.string(), tensors, {.dtype = DType::kBF16, .max_shard_bytes = 1 << 20});
  ASSERT_TRUE(single.ok());
  EXPECT_EQ(*single, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ((*SafetensorsModel::Open(one.string()))->Find("layer.0.w")->dtype, DType::kBF16);
}

class BrokenFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("broken");
    SafetensorsWriter writer;
    values_ = RandomValues(64, 3);
    ASSERT_TRUE(writer.AddFloat("w", {8, 8}, values_).ok());
    good_ = writer.Serialize();
  }
  absl::Status OpenBytes(const std::string& bytes) {
    WriteAll(dir_ / "x.safetensors", bytes);
    return SafetensorsFile::Open((dir_ / "x.safetensors").string()).status();
  }
  fs::path dir_;
  std::vector<float> values_;
  std::string good_;
};

TEST_F(BrokenFile, GoodBytesOpen) { EXPECT_TRUE(OpenBytes(good_).ok()); }

TEST_F(BrokenFile, TruncatedDataIsDataLossNamingTheTensor) {
  absl::Status s = OpenBytes(good_.substr(0, good_.size() - 5));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(s.message()).find("truncated"), std::string::npos) << s;
  EXPECT_NE(std::string(s.message()).find("'w'"), std::string::npos) << s;
}

TEST_F(BrokenFile, TruncatedHeaderAndTinyFile) {
  EXPECT_EQ(OpenBytes(good_.substr(0, 20)).code(), absl::StatusCode::kDataLoss);
  absl::Status s = OpenBytes("abc");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(s.message()).find("truncated"), std::string::npos) << s;
}

TEST_F(BrokenFile, BadJsonAndImplausibleLength) {
  std::string bad = good_;
  bad[8] = '[';  // header no longer an object / valid JSON
  bad[9] = '[';
  EXPECT_EQ(OpenBytes(bad).code(), absl::StatusCode::kDataLoss);
  std::string huge = good_;
  const uint64_t n = 1ULL << 50;
  std::memcpy(huge.data(), &n, 8);
  absl::Status s = OpenBytes(huge);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(s.message()).find("bad header"), std::string::npos) << s;
}

TEST_F(BrokenFile, ShapeThatDisagreesWithOffsetsIsAnError) {
  std::string bad = good_;
  const size_t at = bad.find("[8,8]");
  ASSERT_NE(at, std::string::npos);
  bad.replace(at, 5, "[8,9]");
  absl::Status s = OpenBytes(bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(s.message()).find("needs"), std::string::npos) << s;
}

// Reading a tensor out (fp32 as it is, bf16 converted, or a slice of bytes) leaves its mapped
// pages out of the resident set: a checkpoint being read counts once in a scheduler's RSS, not
// twice (mapped + copied).
TEST(Safetensors, ReadingATensorLeavesItsPagesOutOfTheResidentSet) {
  const fs::path dir = TempDir("rss");
  constexpr int64_t kN = int64_t{24} << 20;  // 96 MiB in fp32, 48 MiB in bf16
  const std::vector<float> values = RandomValues(kN, 7);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddFloat("f32", {kN}, values).ok());
  ASSERT_TRUE(writer.AddFloat("bf16", {kN}, values, DType::kBF16).ok());
  ASSERT_TRUE(writer.WriteFile((dir / "big.safetensors").string()).ok());
  auto file = SafetensorsFile::Open((dir / "big.safetensors").string());
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_GE(rwr::testing::ResidentFileBytes(), 0) << "no RssFile in /proc/self/status";
  std::vector<float> out(kN, 1.f);  // touched: its pages are anonymous, counted apart
  constexpr int64_t kSlack = int64_t{8} << 20;

  int64_t before = rwr::testing::ResidentFileBytes();
  ASSERT_TRUE((*file)->ReadFloatInto("f32", out).ok());
  EXPECT_LT(rwr::testing::ResidentFileBytes() - before, kSlack) << "fp32 read";
  EXPECT_EQ(out, values);

  before = rwr::testing::ResidentFileBytes();
  ASSERT_TRUE((*file)->ReadFloatInto("bf16", out).ok());
  EXPECT_LT(rwr::testing::ResidentFileBytes() - before, kSlack) << "bf16 read";
  EXPECT_NEAR(out[12345], values[12345], std::abs(values[12345]) / 128);

  auto bytes = (*file)->Bytes("f32");
  ASSERT_TRUE(bytes.ok());
  before = rwr::testing::ResidentFileBytes();
  (*file)->CopyOut(bytes->subspan(4 * 1000, 4 * (kN - 2000)), out.data());
  EXPECT_LT(rwr::testing::ResidentFileBytes() - before, kSlack) << "slice";
  EXPECT_EQ(out[0], values[1000]);
  EXPECT_EQ(out[kN - 2001], values[kN - 1001]);
  // Pages read again after their release are the file's, as before.
  EXPECT_EQ(std::memcmp(bytes->data(), values.data(), 4 * kN), 0);
  fs::remove_all(dir);
}

TEST(Safetensors, MissingFileIsNotFound) {
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(SafetensorsModel::Open("/nonexistent").status().code(), absl::StatusCode::kNotFound);
}

#ifdef RWR_TEST_VENV
// Live round trip with the PyPI library: Python reads what we wrote and writes a file we read.
TEST(Safetensors, PypiLibraryReadsOursAndWeReadTheirs) {
  const std::string python = std::string(RWR_TEST_VENV) + "/bin/python";
  if (!fs::exists(python)) GTEST_SKIP() << "no test venv at " << RWR_TEST_VENV;
  const fs::path dir = TempDir("pypi");
  const std::vector<float> values = RandomValues(6 * 5, 7);
  SafetensorsWriter writer;
  ASSERT_TRUE(writer.AddFloat("a.f32", {6, 5}, values, DType::kF32).ok());
  ASSERT_TRUE(writer.AddFloat("b.bf16", {30}, values, DType::kBF16).ok());
  ASSERT_TRUE(writer.AddFloat("c.f16", {5, 6}, values, DType::kF16).ok());
  writer.SetMetadata("format", "pt");
  ASSERT_TRUE(writer.WriteFile((dir / "ours.safetensors").string()).ok());
  {
    std::ofstream v(dir / "values.f32", std::ios::binary);
    v.write(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  }
  const std::string script = R"PY(
import sys, numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
d = sys.argv[1]
vals = np.fromfile(d + "/values.f32", dtype=np.float32)
with safe_open(d + "/ours.safetensors", framework="numpy") as f:
    assert f.metadata() == {"format": "pt"}, f.metadata()
    a = f.get_tensor("a.f32"); assert a.shape == (6, 5) and a.dtype == np.float32
    assert np.array_equal(a.reshape(-1), vals)
    c = f.get_tensor("c.f16"); assert c.dtype == np.float16 and c.shape == (5, 6)
    assert np.array_equal(c.reshape(-1), vals.astype(np.float16))
    assert sorted(f.keys()) == ["a.f32", "b.bf16", "c.f16"]
# bf16 has no numpy dtype: check its raw bits against round-to-nearest-even
raw = open(d + "/ours.safetensors", "rb").read()
import json, struct
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
b, e = h["b.bf16"]["data_offsets"]
bits = np.frombuffer(raw[8 + n + b:8 + n + e], dtype=np.uint16).astype(np.uint32)
u = vals.view(np.uint32)
expect = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
assert np.array_equal(bits, expect)
save_file({"theirs": (vals * 2).reshape(3, 10), "ints": np.arange(4, dtype=np.int64)},
          d + "/theirs.safetensors", metadata={"who": "pypi"})
print("ok")
)PY";
  WriteAll(dir / "check.py", script);
  const std::string command = fmt::format("{} {} {} > {} 2>&1", python, (dir / "check.py").string(),
                                          dir.string(), (dir / "log").string());
  ASSERT_EQ(std::system(command.c_str()), 0) << ReadAll(dir / "log");
  auto theirs = SafetensorsFile::Open((dir / "theirs.safetensors").string());
  ASSERT_TRUE(theirs.ok()) << theirs.status();
  EXPECT_EQ((*theirs)->metadata().at("who"), "pypi");
  auto t = (*theirs)->ReadFloat("theirs");
  ASSERT_TRUE(t.ok());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ((*t)[i], values[i] * 2);
  EXPECT_EQ(*(*theirs)->ReadInt("ints"), (std::vector<int64_t>{0, 1, 2, 3}));
}
#endif

}  // namespace
}  // namespace rwr::storage
