// The decode step's few-rows linear (trainer/few_rows_linear.h; device machine, skips without a
// GPU) against a host reference in double, at the Mamba-2.8B decode shapes and odd ones: 1–4
// rows, outputs not a multiple of the block's 4, k from one 16-byte chunk to 16,384 (one to 16
// warps, one pass and two), strided x and y rows, an fp32 y added into (beta 1) and a bf16 y.
// Twice: the same bits. Tolerance: |err| ≤ 1e-5·Σ|x·w| (fp32 sums of exact bf16 products); a bf16 y
// adds its rounding, 2⁻⁸·|y|. Its CPU twin is the CPU model's decode (generate_test).
#include "trainer/few_rows_linear.h"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "trainer/mamba_cuda.h"

namespace rwr::trainer::cuda {
namespace {

struct Shape {
  int64_t rows, n, k, ldx, ldy;
  bool y_f32;
  float beta;
};

std::vector<uint8_t> RunOnDevice(const Shape& s, const std::vector<__nv_bfloat16>& x,
                                 const std::vector<__nv_bfloat16>& w,
                                 const std::vector<uint8_t>& y0) {
  void *dx = nullptr, *dw = nullptr, *dy = nullptr;
  EXPECT_EQ(cudaMalloc(&dx, x.size() * 2), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dw, w.size() * 2), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dy, y0.size()), cudaSuccess);
  cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dy, y0.data(), y0.size(), cudaMemcpyHostToDevice);
  const FewRowsLinear p{.x = dx,
                        .ldx = s.ldx,
                        .w = dw,
                        .y = dy,
                        .ldy = s.ldy,
                        .y_f32 = s.y_f32,
                        .beta = s.beta,
                        .rows = s.rows,
                        .n = s.n,
                        .k = s.k};
  EXPECT_TRUE(FewRowsLinearApplies(p));
  const absl::Status st = RunFewRowsLinear(p, nullptr);
  EXPECT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  std::vector<uint8_t> y(y0.size());
  cudaMemcpy(y.data(), dy, y.size(), cudaMemcpyDeviceToHost);
  cudaFree(dx);
  cudaFree(dw);
  cudaFree(dy);
  return y;
}

TEST(FewRowsLinear, MatchesAHostReferenceAndRepeatsItsBits) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const Shape shapes[] = {
      {1, 10240, 2560, 2560, 10240, false, 0.f},  // in_proj, one row
      {4, 2560, 5120, 5120, 2560, true, 1.f},     // out_proj into the residual, four rows
      {3, 192, 5120, 5120, 192, false, 0.f},      // x_proj
      {2, 5120, 160, 192, 5120, false, 0.f},      // dt_proj: x is the start of an x_proj row
      {1, 37, 8, 8, 37, true, 0.f},               // one chunk, outputs not a multiple of 4
      {3, 1001, 1288, 1296, 1003, true, 1.f},     // 161 chunks (three warps), padded rows
      {2, 6, 2568, 2568, 6, false, 0.f},          // 321 chunks (six warps)
      {2, 40, 16384, 16384, 40, true, 0.f},       // 2048 chunks: 16 warps, two passes
  };
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (const Shape& s : shapes) {
    SCOPED_TRACE(::testing::Message() << "rows " << s.rows << " n " << s.n << " k " << s.k
                                      << (s.y_f32 ? " fp32 y" : " bf16 y") << " beta " << s.beta);
    std::vector<__nv_bfloat16> x(s.rows * s.ldx), w(s.n * s.k);
    for (auto& v : x) v = __float2bfloat16(u(rng));
    for (auto& v : w) v = __float2bfloat16(u(rng));
    const int64_t elem = s.y_f32 ? 4 : 2;
    std::vector<float> y0f(s.rows * s.ldy);
    for (auto& v : y0f) v = u(rng);
    std::vector<uint8_t> y0(y0f.size() * elem);
    if (s.y_f32) {
      std::memcpy(y0.data(), y0f.data(), y0.size());
    } else {
      for (size_t i = 0; i < y0f.size(); ++i) {
        const __nv_bfloat16 b = __float2bfloat16(y0f[i]);
        std::memcpy(y0.data() + 2 * i, &b, 2);
      }
    }
    const std::vector<uint8_t> y = RunOnDevice(s, x, w, y0);
    int64_t bad = 0;
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t o = 0; o < s.ldy; ++o) {
        const int64_t at = r * s.ldy + o;
        float got;
        if (s.y_f32) {
          std::memcpy(&got, y.data() + 4 * at, 4);
        } else {
          __nv_bfloat16 b;
          std::memcpy(&b, y.data() + 2 * at, 2);
          got = __bfloat162float(b);
        }
        if (o >= s.n) {  // past the outputs: untouched
          bad += std::memcmp(y.data() + elem * at, y0.data() + elem * at, elem) != 0;
          continue;
        }
        double want = s.y_f32 ? double(s.beta) * y0f[at] : 0.0, scale = 0;
        for (int64_t k = 0; k < s.k; ++k) {
          const double prod =
              double(__bfloat162float(x[r * s.ldx + k])) * __bfloat162float(w[o * s.k + k]);
          want += prod;
          scale += std::fabs(prod);
        }
        const double tol = 1e-5 * scale + (s.y_f32 ? 1e-6 : std::ldexp(std::fabs(want), -8));
        bad += std::fabs(got - want) > tol;
      }
    }
    EXPECT_EQ(bad, 0);
    EXPECT_TRUE(RunOnDevice(s, x, w, y0) == y) << "a second run gave other bits";
  }
}

// Two linears in a row, the second reading what the first wrote, on a stream of their own: with
// the first letting the second start early (its weight loads overlap the first's end) the second
// must still wait for the first's output. Each round a new x, and y1 poisoned with NaN before the
// early-started chain (on the chain's own stream, so the poison lands before it): a read of y1
// before the first linear wrote it would show as NaN, not the bits of the chain run one kernel
// after the other.
TEST(FewRowsLinear, AnEarlyStartedLinearReadsWhatTheOneBeforeWrote) {
  if (!CudaDeviceAvailable()) GTEST_SKIP() << "no CUDA device";
  const int64_t k = 2560, mid = 10240, n = 192;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  auto random_bf16 = [&](size_t count) {
    std::vector<__nv_bfloat16> v(count);
    for (auto& e : v) e = __float2bfloat16(u(rng));
    return v;
  };
  const std::vector<__nv_bfloat16> w1 = random_bf16(mid * k), w2 = random_bf16(n * mid);
  void *dx = nullptr, *dw1 = nullptr, *dw2 = nullptr, *dy1 = nullptr, *dy2 = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, k * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dw1, w1.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dw2, w2.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy1, mid * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dy2, n * 4), cudaSuccess);
  cudaMemcpy(dw1, w1.data(), w1.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(dw2, w2.data(), w2.size() * 2, cudaMemcpyHostToDevice);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  auto chain = [&](bool early) {
    const FewRowsLinear first{.x = dx,
                              .ldx = k,
                              .w = dw1,
                              .y = dy1,
                              .ldy = mid,
                              .rows = 1,
                              .n = mid,
                              .k = k,
                              .let_next_start = early};
    const FewRowsLinear second{.x = dy1,
                               .ldx = mid,
                               .w = dw2,
                               .y = dy2,
                               .ldy = n,
                               .y_f32 = true,
                               .rows = 1,
                               .n = n,
                               .k = mid};
    EXPECT_TRUE(RunFewRowsLinear(first, stream).ok());
    EXPECT_TRUE(RunFewRowsLinear(second, stream).ok());
    std::vector<float> y2(n);
    EXPECT_EQ(cudaMemcpyAsync(y2.data(), dy2, n * 4, cudaMemcpyDeviceToHost, stream), cudaSuccess);
    EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    return y2;
  };
  for (int round = 0; round < 20; ++round) {
    const std::vector<__nv_bfloat16> x = random_bf16(k);
    ASSERT_EQ(cudaMemcpyAsync(dx, x.data(), k * 2, cudaMemcpyHostToDevice, stream), cudaSuccess);
    const std::vector<float> serial = chain(false);
    ASSERT_EQ(cudaMemsetAsync(dy1, 0xff, mid * 2, stream), cudaSuccess);  // NaN
    EXPECT_TRUE(chain(true) == serial) << "round " << round;
  }
  cudaStreamDestroy(stream);
  for (void* p : {dx, dw1, dw2, dy1, dy2}) cudaFree(p);
}

TEST(FewRowsLinear, TakesOnlyWhatItCanLoad) {
  std::vector<__nv_bfloat16> buffer(64);
  FewRowsLinear p{.x = buffer.data(),
                  .ldx = 16,
                  .w = buffer.data(),
                  .y = buffer.data(),
                  .ldy = 4,
                  .y_f32 = true,
                  .beta = 0.f,
                  .rows = 2,
                  .n = 4,
                  .k = 16};
  if (reinterpret_cast<uintptr_t>(buffer.data()) % 16 != 0) GTEST_SKIP() << "unaligned buffer";
  EXPECT_TRUE(FewRowsLinearApplies(p));
  FewRowsLinear q = p;
  q.rows = kFewRowsMax + 1;  // the tensor cores' job
  EXPECT_FALSE(FewRowsLinearApplies(q));
  q = p;
  q.k = 12;  // not whole 16-byte chunks
  EXPECT_FALSE(FewRowsLinearApplies(q));
  q = p;
  q.ldx = 20;  // row 1 of x not 16-byte aligned
  EXPECT_FALSE(FewRowsLinearApplies(q));
  q = p;
  q.w = buffer.data() + 1;
  EXPECT_FALSE(FewRowsLinearApplies(q));
  q = p;
  q.y_f32 = false;
  q.beta = 1.f;  // adding into a bf16 y is not offered
  EXPECT_FALSE(FewRowsLinearApplies(q));
  q = p;
  q.ldx = 8;  // rows of x overlapping
  EXPECT_FALSE(FewRowsLinearApplies(q));
  // Refused with what it was given and what it takes.
  const absl::Status refused = RunFewRowsLinear(q, nullptr);
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(refused.message()).find("k 16 and x row stride 8"), std::string::npos)
      << refused;
}

}  // namespace
}  // namespace rwr::trainer::cuda
