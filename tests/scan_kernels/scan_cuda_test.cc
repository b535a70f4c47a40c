// CUDA selective scan and causal conv1d against the CPU reference on random inputs (never
// zeros), across shapes (T = 1, odd T, T not a multiple of the 16-token tile, several chunks,
// B > 1, resets at random positions, Di not a multiple of the block or of 8, T = 128k), fp32 and
// bf16, every kernel variant; chunked equivalence with carried state; determinism (two runs
// bitwise equal). Outputs are poisoned (NaN) before every run, so an unwritten element fails.
// Skips without a GPU.
//
// Tolerances, relative L2 error per tensor against the fp64-accumulating reference on the same
// (bf16-rounded where bf16) inputs: fp32 tensors 2e-4 (fast-math exp2), bf16 tensors 1.5e-2
// (outputs rounded to bf16, 8 bits of mantissa).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "fmt/format.h"
#include "gtest/gtest.h"
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/scan_tuning.h"
#include "scan_kernels/selective_scan.h"

namespace rwr::scan {
namespace {

bool HaveGpu() {
  int n = 0;
  return HaveCuda() && cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

#define SKIP_WITHOUT_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA GPU (or CUDA not built): GPU test skipped"

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

float RoundBf16(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

// Device buffer holding either fp32 or bf16 elements, made from / read back as floats.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  ~DeviceTensor() {
    if (ptr_ != nullptr) cudaFree(ptr_);
  }
  void Allocate(size_t n, DType dtype) {
    n_ = n;
    dtype_ = dtype;
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = nullptr;
    ASSERT_EQ(cudaMalloc(&ptr_, std::max<size_t>(Bytes(), 16)), cudaSuccess);
    Poison();
  }
  void Upload(const std::vector<float>& v, DType dtype) {
    Allocate(v.size(), dtype);
    if (dtype == DType::kF32) {
      ASSERT_EQ(cudaMemcpy(ptr_, v.data(), Bytes(), cudaMemcpyHostToDevice), cudaSuccess);
    } else {
      std::vector<__nv_bfloat16> h(v.size());
      for (size_t i = 0; i < v.size(); ++i) h[i] = __float2bfloat16_rn(v[i]);
      ASSERT_EQ(cudaMemcpy(ptr_, h.data(), Bytes(), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  std::vector<float> Download() const {
    std::vector<float> out(n_);
    if (dtype_ == DType::kF32) {
      EXPECT_EQ(cudaMemcpy(out.data(), ptr_, Bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    } else {
      std::vector<__nv_bfloat16> h(n_);
      EXPECT_EQ(cudaMemcpy(h.data(), ptr_, Bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
      for (size_t i = 0; i < n_; ++i) out[i] = __bfloat162float(h[i]);
    }
    return out;
  }
  std::vector<uint8_t> Bytes_() const {
    std::vector<uint8_t> out(Bytes());
    EXPECT_EQ(cudaMemcpy(out.data(), ptr_, Bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return out;
  }
  void Poison() { ASSERT_EQ(cudaMemset(ptr_, 0xff, Bytes()), cudaSuccess); }  // NaN in both
  template <typename T = void>
  T* get() const {
    return static_cast<T*>(ptr_);
  }
  size_t Bytes() const { return n_ * (dtype_ == DType::kF32 ? 4 : 2); }

 private:
  void* ptr_ = nullptr;
  size_t n_ = 0;
  DType dtype_ = DType::kF32;
};

// ‖a − b‖ / ‖b‖ over finite values; NaN anywhere in a (an unwritten output) gives +inf.
double RelL2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

struct ScanCase {
  int64_t B = 1, T = 1, Di = 64;
  bool gate = true, skip = true, bias_softplus = true, resets = true, state = true;
  DType dtype = DType::kBF16;
  int chunks = 0;  // 0 = automatic
  uint32_t seed = 1;
  // B and C sit at columns R and R + S of an x_proj row of R + 2S: R = 8 keeps their rows
  // 16-byte aligned (the one-pass forward's cp.async copies), R = 5 does not (its fallback).
  int64_t rank = 8;
  std::string Name() const {
    return fmt::format("B{}_T{}_Di{}{}{}{}{}{}_{}_K{}_R{}", B, T, Di, gate ? "_z" : "",
                       skip ? "_D" : "", bias_softplus ? "_bias" : "", resets ? "_resets" : "",
                       state ? "_state" : "", dtype == DType::kBF16 ? "bf16" : "f32", chunks,
                       rank);
  }
};

// Host copies of one problem; B and C are strided slices of an x_proj-like row (R + 2S).
struct HostScan {
  static constexpr int64_t S = 16;
  ScanCase c;
  int64_t R = c.rank;
  std::vector<float> x, delta, A, xproj, D, z, bias, init, dout, dfinal;
  std::vector<uint8_t> resets;
  explicit HostScan(const ScanCase& cs) : c(cs) {
    std::mt19937 rng(c.seed);
    auto fill = [&](std::vector<float>& v, size_t n, float lo, float hi, bool round) {
      std::uniform_real_distribution<float> u(lo, hi);
      v.resize(n);
      for (float& e : v) e = round && c.dtype == DType::kBF16 ? RoundBf16(u(rng)) : u(rng);
    };
    const int64_t n = c.B * c.T * c.Di;
    fill(x, n, -1.f, 1.f, true);
    if (c.bias_softplus) {
      fill(delta, n, -4.f, 0.f, true);
    } else {
      fill(delta, n, 0.001f, 0.1f, true);
    }
    fill(A, c.Di * S, -8.f, -0.5f, false);
    fill(xproj, c.B * c.T * (R + 2 * S), -1.f, 1.f, true);
    fill(D, c.Di, -1.f, 1.f, false);
    fill(z, n, -3.f, 3.f, true);
    fill(bias, c.Di, -1.f, 0.5f, false);
    fill(init, c.B * c.Di * S, -1.f, 1.f, false);
    fill(dout, n, -1.f, 1.f, true);
    fill(dfinal, c.B * c.Di * S, -1.f, 1.f, false);
    resets.assign(c.B * c.T, 0);
    if (c.resets) {
      std::uniform_int_distribution<int64_t> pos(0, c.T - 1);
      const int64_t count = std::max<int64_t>(1, c.T / 50);
      for (int64_t b = 0; b < c.B; ++b) {
        for (int64_t k = 0; k < count; ++k) resets[b * c.T + pos(rng)] = 1;
      }
    }
  }
  // Fills pointers of params/grads given element pointers (host or device).
  SelectiveScanParams Params(const void* px, const void* pdelta, const float* pA,
                             const void* pxproj, const float* pD, const void* pz,
                             const float* pbias, const uint8_t* presets, const float* pinit,
                             float* pfinal, void* pout, size_t elem) const {
    SelectiveScanParams p;
    p.batch = c.B; p.seqlen = c.T; p.dim = c.Di; p.dstate = S; p.dtype = c.dtype;
    const TokenStrides tok{c.T * c.Di, c.Di}, row{c.T * (R + 2 * S), R + 2 * S};
    p.x = px; p.x_strides = tok;
    p.delta = pdelta; p.delta_strides = tok;
    p.A = pA;
    p.B = static_cast<const char*>(pxproj) + R * elem; p.B_strides = row;
    p.C = static_cast<const char*>(pxproj) + (R + S) * elem; p.C_strides = row;
    if (c.skip) p.D = pD;
    if (c.gate) { p.z = pz; p.z_strides = tok; }
    if (c.bias_softplus) { p.delta_bias = pbias; p.delta_softplus = true; }
    if (c.resets) { p.resets = presets; p.resets_batch_stride = c.T; }
    if (c.state) { p.initial_state = pinit; p.final_state = pfinal; }
    p.out = pout; p.out_strides = tok;
    return p;
  }
};

struct ScanResults {
  std::vector<float> out, final_state, dx, ddelta, dA, dxproj, dD, dz, dbias, dinit;
  std::vector<float> backward_out;  // the forward output as the backward recomputes it (GPU)
  std::vector<std::vector<uint8_t>> raw;  // every output's bytes (determinism)
};

ScanResults RunCpu(const HostScan& h) {
  const ScanCase& c = h.c;
  const int64_t n = c.B * c.T * c.Di, S = HostScan::S, row = h.R + 2 * S;
  ScanResults r;
  r.out.assign(n, NAN);
  r.final_state.assign(c.B * c.Di * S, NAN);
  SelectiveScanParams p = h.Params(h.x.data(), h.delta.data(), h.A.data(), h.xproj.data(),
                                   h.D.data(), h.z.data(), h.bias.data(), h.resets.data(),
                                   h.init.data(), r.final_state.data(), r.out.data(), 4);
  p.dtype = DType::kF32;  // the reference runs on the (bf16-rounded) values as fp32
  EXPECT_TRUE(ForwardCpu(p).ok());
  r.dx.assign(n, NAN); r.ddelta.assign(n, NAN); r.dz.assign(n, NAN);
  r.dA.assign(c.Di * S, NAN); r.dD.assign(c.Di, NAN); r.dbias.assign(c.Di, NAN);
  r.dxproj.assign(c.B * c.T * row, 0.f);
  r.dinit.assign(c.B * c.Di * S, NAN);
  SelectiveScanGrads g;
  const TokenStrides tok{c.T * c.Di, c.Di}, rows{c.T * row, row};
  g.dout = h.dout.data(); g.dout_strides = tok;
  if (c.state) g.dfinal_state = h.dfinal.data();
  g.dx = r.dx.data(); g.dx_strides = tok;
  g.ddelta = r.ddelta.data(); g.ddelta_strides = tok;
  g.dA = r.dA.data();
  g.dB = r.dxproj.data() + h.R; g.dB_strides = rows;
  g.dC = r.dxproj.data() + h.R + S; g.dC_strides = rows;
  g.dD = r.dD.data(); g.dz = r.dz.data(); g.dz_strides = tok;
  g.ddelta_bias = r.dbias.data();
  g.dinitial_state = r.dinit.data();
  EXPECT_TRUE(BackwardCpu(p, g).ok());
  return r;
}

// Runs forward + backward on the GPU. With `separate_scratch` the workspace holds only the
// checkpoints and a scratch buffer, overwritten between the two calls, holds the rest.
void RunGpu(const HostScan& h, ScanResults* r, bool separate_scratch = false) {
  const ScanCase& c = h.c;
  const int64_t n = c.B * c.T * c.Di, S = HostScan::S, row = h.R + 2 * S;
  const size_t elem = c.dtype == DType::kF32 ? 4 : 2;
  SetScanChunksOverride(c.chunks);
  DeviceTensor x, delta, A, xproj, D, z, bias, init, fin, out, dout, dfinal, dx, ddelta, dA,
      dxproj, dD, dz, dbias, dinit, resets, ws, scratch, bout;
  x.Upload(h.x, c.dtype); delta.Upload(h.delta, c.dtype); xproj.Upload(h.xproj, c.dtype);
  z.Upload(h.z, c.dtype); dout.Upload(h.dout, c.dtype);
  A.Upload(h.A, DType::kF32); D.Upload(h.D, DType::kF32); bias.Upload(h.bias, DType::kF32);
  init.Upload(h.init, DType::kF32); dfinal.Upload(h.dfinal, DType::kF32);
  resets.Allocate((h.resets.size() + 3) / 4, DType::kF32);
  ASSERT_EQ(cudaMemcpy(resets.get(), h.resets.data(), h.resets.size(), cudaMemcpyHostToDevice),
            cudaSuccess);
  fin.Allocate(c.B * c.Di * S, DType::kF32);
  out.Allocate(n, c.dtype);
  SelectiveScanParams p = h.Params(x.get(), delta.get(), A.get<float>(), xproj.get(), D.get<float>(),
                                   z.get(), bias.get<float>(), resets.get<uint8_t>(),
                                   init.get<float>(), fin.get<float>(), out.get(), elem);
  if (separate_scratch) {
    ws.Allocate((CheckpointBytes(p) + 3) / 4, DType::kF32);
    scratch.Allocate((ScratchBytes(p) + 3) / 4, DType::kF32);
    p.scratch = scratch.get();
  } else {
    ws.Allocate((WorkspaceBytes(p) + 3) / 4, DType::kF32);
  }
  p.workspace = ws.get();
  const absl::Status fs = Forward(p, nullptr);
  ASSERT_TRUE(fs.ok()) << fs.message();
  if (separate_scratch) CUDA_OK(cudaMemset(scratch.get(), 0xff, ScratchBytes(p)));
  dx.Allocate(n, c.dtype); ddelta.Allocate(n, c.dtype); dz.Allocate(n, c.dtype);
  dxproj.Allocate(c.B * c.T * row, c.dtype);
  dA.Allocate(c.Di * S, DType::kF32); dD.Allocate(c.Di, DType::kF32);
  dbias.Allocate(c.Di, DType::kF32); dinit.Allocate(c.B * c.Di * S, DType::kF32);
  SelectiveScanGrads g;
  const TokenStrides tok{c.T * c.Di, c.Di}, rows{c.T * row, row};
  g.dout = dout.get(); g.dout_strides = tok;
  if (c.state) g.dfinal_state = dfinal.get<float>();
  g.dx = dx.get(); g.dx_strides = tok;
  g.ddelta = ddelta.get(); g.ddelta_strides = tok;
  g.dA = dA.get<float>();
  g.dB = static_cast<char*>(dxproj.get()) + h.R * elem; g.dB_strides = rows;
  g.dC = static_cast<char*>(dxproj.get()) + (h.R + S) * elem; g.dC_strides = rows;
  g.dD = dD.get<float>(); g.dz = dz.get(); g.dz_strides = tok;
  g.ddelta_bias = dbias.get<float>();
  g.dinitial_state = dinit.get<float>();
  bout.Allocate(n, c.dtype);
  g.out = bout.get();
  g.out_strides = tok;
  const absl::Status bs = Backward(p, g, nullptr);
  ASSERT_TRUE(bs.ok()) << bs.message();
  CUDA_OK(cudaDeviceSynchronize());
  SetScanChunksOverride(0);
  r->out = out.Download();
  r->final_state = fin.Download();
  r->dx = dx.Download(); r->ddelta = ddelta.Download(); r->dz = dz.Download();
  r->dA = dA.Download(); r->dD = dD.Download(); r->dbias = dbias.Download();
  r->dinit = dinit.Download();
  r->backward_out = bout.Download();
  r->dxproj = dxproj.Download();
  // The R leading columns of the x_proj gradient are not the scan's: zero them as on the CPU.
  for (int64_t i = 0; i < c.B * c.T; ++i) {
    for (int64_t k = 0; k < h.R; ++k) r->dxproj[i * row + k] = 0.f;
  }
  r->raw.clear();
  for (const DeviceTensor* t :
       {&out, &fin, &dx, &ddelta, &dz, &dA, &dD, &dbias, &dinit, &dxproj, &bout}) {
    r->raw.push_back(t->Bytes_());
  }
}

void ExpectClose(const ScanCase& c, const ScanResults& gpu, const ScanResults& cpu) {
  const double tol_e = c.dtype == DType::kBF16 ? 1.5e-2 : 2e-4;  // per-token tensors
  const double tol_f = c.dtype == DType::kBF16 ? 1e-2 : 2e-4;    // fp32 tensors
  EXPECT_LE(RelL2(gpu.out, cpu.out), tol_e) << "out";
  if (!gpu.backward_out.empty()) {
    EXPECT_LE(RelL2(gpu.backward_out, cpu.out), tol_e) << "out recomputed by the backward";
  }
  EXPECT_LE(RelL2(gpu.dx, cpu.dx), tol_e) << "dx";
  EXPECT_LE(RelL2(gpu.ddelta, cpu.ddelta), tol_e) << "ddelta";
  EXPECT_LE(RelL2(gpu.dxproj, cpu.dxproj), tol_e) << "dB/dC";
  EXPECT_LE(RelL2(gpu.dA, cpu.dA), tol_f) << "dA";
  if (c.state) {
    EXPECT_LE(RelL2(gpu.final_state, cpu.final_state), tol_f) << "final_state";
    EXPECT_LE(RelL2(gpu.dinit, cpu.dinit), tol_f) << "dinitial_state";
  }
  if (c.skip) EXPECT_LE(RelL2(gpu.dD, cpu.dD), tol_f) << "dD";
  if (c.gate) EXPECT_LE(RelL2(gpu.dz, cpu.dz), tol_e) << "dz";
  if (c.bias_softplus) EXPECT_LE(RelL2(gpu.dbias, cpu.dbias), tol_f) << "ddelta_bias";
}

class ScanCudaVsCpu : public ::testing::TestWithParam<ScanCase> {};

TEST_P(ScanCudaVsCpu, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const ScanCase c = GetParam();
  HostScan h(c);
  const ScanResults cpu = RunCpu(h);
  ScanResults gpu;
  RunGpu(h, &gpu);
  ExpectClose(c, gpu, cpu);
}

std::vector<ScanCase> Cases() {
  std::vector<ScanCase> v;
  auto add = [&](int64_t B, int64_t T, int64_t Di, DType dt, int chunks, bool all_flags,
                 int64_t rank = 8) {
    ScanCase c;
    c.B = B; c.T = T; c.Di = Di; c.dtype = dt; c.chunks = chunks; c.rank = rank;
    c.seed = static_cast<uint32_t>(v.size() + 17);
    if (!all_flags) c.gate = c.skip = c.bias_softplus = c.resets = c.state = false;
    v.push_back(c);
  };
  for (DType dt : {DType::kF32, DType::kBF16}) {
    add(1, 1, 64, dt, 0, true);      // T = 1
    add(2, 7, 80, dt, 0, true);      // odd T, B > 1, Di not a multiple of the block
    add(1, 37, 64, dt, 0, false);    // no flags, T not a multiple of the tile
    add(3, 1000, 96, dt, 0, true);   // B > 1, resets, automatic chunks
    add(1, 999, 64, dt, 7, true);    // forced 7 chunks, ragged last chunk
    add(2, 300, 64, dt, 1, true);    // one chunk
    add(2, 300, 70, dt, 0, true);    // rows not 16-byte aligned: per-lane loads, not cp.async
    add(2, 300, 64, dt, 0, true, 5);  // B, C rows not aligned: the chunked forward
    add(4, 100, 3200, dt, 0, true);   // channels fill an H100: the one-pass forward
    add(8, 50, 3200, dt, 0, true);    // ... even at 8 states per lane
    add(1, 1200, 2560, dt, 0, true);  // 40 channel blocks: the backward's 15 chunks chain in 5
                                      // segments (on 132 multiprocessors)
  }
  add(1, 131072, 64, DType::kBF16, 0, true);  // T = 128k
  add(1, 131072, 32, DType::kF32, 0, true);
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ScanCudaVsCpu, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<ScanCase>& info) {
                           return info.param.Name();
                         });

// The benchmark's kernel variants (scan_tuning.h) compute the same function, in fp32 to the fp32
// tolerance (the polynomial 2^x of the FMA-pipe variants too), with one and several chunks.
TEST(ScanCuda, EveryKernelVariantMatchesReference) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kBF16, DType::kF32}) {
    for (int chunks : {0, 1}) {
      ScanCase c;
      c.B = 2; c.T = 1000; c.Di = 96; c.dtype = dt; c.chunks = chunks;
      HostScan h(c);
      const ScanResults cpu = RunCpu(h);
      for (int variant : kScanVariants) {
        SetScanVariant(variant);
        ScanResults gpu;
        RunGpu(h, &gpu);
        SCOPED_TRACE(::testing::Message() << "variant " << variant << " " << c.Name());
        ExpectClose(c, gpu, cpu);
      }
      SetScanVariant(1);
    }
  }
}

// A problem of the layout tests below: every optional input on (or off: all_flags false), and
// with resets, documents starting at tile starts (whose flags are read a tile ahead), just after
// one, and at the start of the second chunk of each chunk count in `chunk_starts`.
struct LayoutShape {
  int64_t B, T, Di;
  bool all_flags;
  int64_t rank;
};
HostScan LayoutCase(const LayoutShape& s, DType dt, int chunks,
                    std::initializer_list<int> chunk_starts) {
  ScanCase c;
  c.B = s.B;
  c.T = s.T;
  c.Di = s.Di;
  c.dtype = dt;
  c.rank = s.rank;
  c.chunks = chunks;
  if (!s.all_flags) c.gate = c.skip = c.bias_softplus = c.resets = c.state = false;
  HostScan h(c);
  if (c.resets && c.T > 48) {
    const int64_t tiles = (c.T + 15) / 16;
    for (int64_t b = 0; b < c.B; ++b) {
      h.resets[b * c.T + 16] = h.resets[b * c.T + 32] = h.resets[b * c.T + 33] = 1;
      for (int k : chunk_starts) {
        const int64_t start = (tiles + k - 1) / k * 16;
        if (start < c.T) h.resets[b * c.T + start] = 1;
      }
    }
  }
  return h;
}

// The one-pass forward at every layout (variants 15, 16, 28 force it wherever the rows are aligned)
// on the shapes the default rule keeps from it on a test-sized problem: channel blocks only partly
// inside Di (72 and 80 channels at 4 states per lane, blocks of 32; fp32 76 at 2 states, blocks of
// 8), T = 1 and T not a multiple of the tile, every optional input off, B > 1 with resets (also at
// tile starts, whose flags are read a tile ahead) and state; and rows it cannot copy (x rows of 70
// bf16, B/C slices at column 5) where the forced variants fall back to the chunked forward.
TEST(ScanCuda, OnePassForwardMatchesReferenceAtEveryLayout) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kBF16, DType::kF32}) {
    for (const LayoutShape& s : {LayoutShape{2, 7, 80, true, 8}, LayoutShape{1, 1, 72, true, 8},
                                 LayoutShape{1, 37, 72, false, 8}, LayoutShape{3, 515, 80, true, 8},
                                 LayoutShape{2, 40, 76, true, 8}, LayoutShape{2, 300, 70, true, 8},
                                 LayoutShape{2, 300, 64, true, 5}}) {
      const HostScan h = LayoutCase(s, dt, 0, {});
      const ScanCase& c = h.c;
      const ScanResults cpu = RunCpu(h);
      const bool aligned = s.rank == 8 && (s.Di * (dt == DType::kBF16 ? 2 : 4)) % 16 == 0;
      for (int variant : {15, 16, 28}) {
        SetScanVariant(variant);
        SCOPED_TRACE(::testing::Message() << "variant " << variant << " " << c.Name());
        ScanResults gpu;
        RunGpu(h, &gpu);
        ExpectClose(c, gpu, cpu);
        // The same tensors at 256-byte-aligned bases, as cudaMalloc gives them (not read).
        const auto at = [](uintptr_t address) { return reinterpret_cast<void*>(address); };
        const SelectiveScanParams p =
            h.Params(at(1 << 20), at(2 << 20), nullptr, at(3 << 20), nullptr, at(4 << 20),
                     nullptr, nullptr, nullptr, nullptr, at(5 << 20), dt == DType::kBF16 ? 2 : 4);
        EXPECT_EQ(ScanForwardIsOnePass(p), aligned);
      }
      SetScanVariant(1);
    }
  }
}

// The wide chunked forward (a lane per channel, all 16 states; variant 26 forces it wherever the
// rows are aligned, as the default rule does at these sizes) on every kind of shape: channel
// blocks partly inside Di (72, 80 and 200 channels against blocks of 128), T = 1 and T not
// a multiple of the tile, every optional input off, B > 1 with resets (at tile starts, whose flags
// are read a tile ahead, and at the chunk starts of 3 and 7 chunks) and state; automatic, one, 3
// and 7 chunks (ragged last chunk). The backward reads its checkpoints, so the gradients check
// them. Rows it cannot copy (x rows of 70 bf16, B/C at column 5) fall back to the 4-lane kernels.
TEST(ScanCuda, WideForwardMatchesReferenceAtEveryLayout) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::kBF16, DType::kF32}) {
    for (const LayoutShape& s :
         {LayoutShape{2, 7, 80, true, 8}, LayoutShape{1, 1, 72, true, 8},
          LayoutShape{1, 37, 72, false, 8}, LayoutShape{3, 515, 200, true, 8},
          LayoutShape{1, 999, 64, true, 8}, LayoutShape{2, 300, 70, true, 8},
          LayoutShape{2, 300, 64, true, 5}}) {
      for (int chunks : {0, 1, 3, 7}) {
        const HostScan h = LayoutCase(s, dt, chunks, {3, 7});
        const ScanCase& c = h.c;
        const ScanResults cpu = RunCpu(h);
        SetScanVariant(26);
        SCOPED_TRACE(::testing::Message() << c.Name());
        ScanResults gpu;
        RunGpu(h, &gpu);
        ExpectClose(c, gpu, cpu);
        SetScanVariant(1);
      }
    }
  }
}

TEST(ScanCuda, TwoRunsAreBitwiseEqual) {
  SKIP_WITHOUT_GPU();
  ScanCase c;
  c.B = 2; c.T = 5000; c.Di = 256; c.dtype = DType::kBF16; c.chunks = 0;
  HostScan h(c);
  // The default (wide forward, two-pass backward here), the one-pass and 4-lane forwards, the
  // backward in one chain and in segmented chains.
  for (int variant : {1, 16, 25, 23, 29}) {
    SetScanVariant(variant);
    ScanResults a, b;
    RunGpu(h, &a);
    RunGpu(h, &b);
    ASSERT_EQ(a.raw.size(), b.raw.size());
    for (size_t i = 0; i < a.raw.size(); ++i) {
      EXPECT_TRUE(a.raw[i] == b.raw[i]) << "variant " << variant << " output " << i;
    }
  }
  SetScanVariant(1);
}

// The trainer keeps each layer's checkpoints and shares one scratch: same bytes as one workspace.
TEST(ScanCuda, SeparateScratchGivesTheSameBytes) {
  SKIP_WITHOUT_GPU();
  ScanCase c;
  c.B = 2; c.T = 3000; c.Di = 192; c.dtype = DType::kBF16; c.chunks = 0;
  HostScan h(c);
  ScanResults a, b;
  RunGpu(h, &a);
  RunGpu(h, &b, /*separate_scratch=*/true);
  ASSERT_EQ(a.raw.size(), b.raw.size());
  for (size_t i = 0; i < a.raw.size(); ++i) EXPECT_TRUE(a.raw[i] == b.raw[i]) << "output " << i;
}

TEST(ScanCuda, ChunkCountDoesNotChangeResultsBeyondRounding) {
  SKIP_WITHOUT_GPU();
  ScanCase c;
  c.B = 1; c.T = 4096; c.Di = 128; c.dtype = DType::kF32;
  HostScan h(c);
  ScanResults one, many;
  h.c.chunks = 1;
  RunGpu(h, &one);
  h.c.chunks = 16;
  RunGpu(h, &many);
  EXPECT_LE(RelL2(many.out, one.out), 1e-5);
  EXPECT_LE(RelL2(many.dx, one.dx), 1e-5);
  EXPECT_LE(RelL2(many.dA, one.dA), 1e-5);
  EXPECT_LE(RelL2(many.dinit, one.dinit), 1e-5);
}

// Long sample processed in 3 calls with the state carried, against one call (CUDA).
TEST(ScanCuda, ChunkedCallsWithCarriedStateEqualOnePass) {
  SKIP_WITHOUT_GPU();
  ScanCase c;
  c.B = 2; c.T = 3000; c.Di = 64; c.dtype = DType::kF32;
  HostScan h(c);
  ScanResults full;
  RunGpu(h, &full);
  const std::vector<int64_t> cuts = {0, 1000, 1001, 3000};
  const int64_t S = HostScan::S, row = h.R + 2 * S;
  // Forward chunk by chunk (host slices re-uploaded per chunk).
  std::vector<float> state = h.init, out(full.out.size(), NAN);
  std::vector<std::vector<float>> states = {state};
  auto slice = [&](const std::vector<float>& v, int64_t width, int64_t t0, int64_t len) {
    std::vector<float> s(c.B * len * width);
    for (int64_t b = 0; b < c.B; ++b) {
      std::memcpy(&s[b * len * width], &v[(b * c.T + t0) * width], len * width * 4);
    }
    return s;
  };
  std::vector<float> dx(full.dx.size(), NAN);
  std::vector<HostScan> hs;
  for (size_t k = 0; k + 1 < cuts.size(); ++k) {
    const int64_t t0 = cuts[k], len = cuts[k + 1] - t0;
    HostScan part = h;
    part.c.T = len;
    part.x = slice(h.x, c.Di, t0, len);
    part.delta = slice(h.delta, c.Di, t0, len);
    part.z = slice(h.z, c.Di, t0, len);
    part.dout = slice(h.dout, c.Di, t0, len);
    part.xproj = slice(h.xproj, row, t0, len);
    part.resets.assign(c.B * len, 0);
    for (int64_t b = 0; b < c.B; ++b) {
      for (int64_t t = 0; t < len; ++t) part.resets[b * len + t] = h.resets[b * c.T + t0 + t];
    }
    part.init = states.back();
    ScanResults r;
    RunGpu(part, &r);
    states.push_back(r.final_state);
    for (int64_t b = 0; b < c.B; ++b) {
      std::memcpy(&out[(b * c.T + t0) * c.Di], &r.out[b * len * c.Di], len * c.Di * 4);
    }
    hs.push_back(part);
  }
  EXPECT_LE(RelL2(out, full.out), 1e-5);
  EXPECT_LE(RelL2(states.back(), full.final_state), 1e-5);
  // Backward last chunk first, carrying the state gradient.
  std::vector<float> dstate = h.dfinal, dA(c.Di * S, 0.f);
  for (int k = static_cast<int>(hs.size()) - 1; k >= 0; --k) {
    HostScan part = hs[k];
    part.dfinal = dstate;
    ScanResults r;
    RunGpu(part, &r);
    const int64_t t0 = cuts[k], len = cuts[k + 1] - t0;
    for (int64_t b = 0; b < c.B; ++b) {
      std::memcpy(&dx[(b * c.T + t0) * c.Di], &r.dx[b * len * c.Di], len * c.Di * 4);
    }
    for (int64_t i = 0; i < c.Di * S; ++i) dA[i] += r.dA[i];
    dstate = r.dinit;
  }
  EXPECT_LE(RelL2(dx, full.dx), 1e-5);
  EXPECT_LE(RelL2(dA, full.dA), 1e-5);
  EXPECT_LE(RelL2(dstate, full.dinit), 1e-5);
}

// The step kernel (one token per row, the state updated in place) against the CPU reference,
// with every option and with none, at a channel count that leaves a block part-full; two rows
// start a document (their state is zeroed first), the others continue. Twice: the same bits.
TEST(ScanCuda, StepMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (bool options : {true, false}) {
      ScanCase c;
      c.B = 5;
      c.T = 1;
      c.Di = 200;
      c.dtype = dtype;
      c.seed = options ? 3 : 4;
      c.gate = c.skip = c.bias_softplus = c.resets = options;
      SCOPED_TRACE(c.Name());
      HostScan h(c);
      if (options) h.resets = {1, 0, 0, 1, 0};
      const ScanResults cpu = RunCpu(h);
      DeviceTensor x, delta, A, xproj, D, z, bias, state, out, resets;
      x.Upload(h.x, c.dtype);
      delta.Upload(h.delta, c.dtype);
      xproj.Upload(h.xproj, c.dtype);
      z.Upload(h.z, c.dtype);
      A.Upload(h.A, DType::kF32);
      D.Upload(h.D, DType::kF32);
      bias.Upload(h.bias, DType::kF32);
      resets.Allocate(2, DType::kF32);
      CUDA_OK(cudaMemcpy(resets.get(), h.resets.data(), h.resets.size(), cudaMemcpyHostToDevice));
      out.Allocate(c.B * c.Di, c.dtype);
      const size_t elem = c.dtype == DType::kBF16 ? 2 : 4;
      std::vector<std::vector<uint8_t>> bits;
      for (int run = 0; run < 2; ++run) {
        state.Upload(h.init, DType::kF32);
        out.Poison();
        SelectiveScanParams p =
            h.Params(x.get(), delta.get(), A.get<float>(), xproj.get(), D.get<float>(), z.get(),
                     bias.get<float>(), resets.get<uint8_t>(), state.get<float>(),
                     state.get<float>(), out.get(), elem);
        const absl::Status st = Step(p, nullptr);
        ASSERT_TRUE(st.ok()) << st.message();
        CUDA_OK(cudaDeviceSynchronize());
        EXPECT_LE(RelL2(out.Download(), cpu.out), dtype == DType::kBF16 ? 1e-2 : 1e-5);
        EXPECT_LE(RelL2(state.Download(), cpu.final_state), 1e-5);
        bits.push_back(out.Bytes_());
        bits.push_back(state.Bytes_());
      }
      EXPECT_TRUE(bits[0] == bits[2] && bits[1] == bits[3]);
    }
  }
}

// Which forward the default picks, from the sizes and the rows' alignment alone (no GPU needed:
// without one the rule assumes an H100's 132 multiprocessors). B 4 at Di 5120 fills an H100 at 4
// states per lane (2560 warps); B 1 does not and takes the wide chunked forward; unaligned B/C
// slices or x rows take neither.
TEST(ScanCuda, DefaultForwardIsOnePassWhereTheChannelsFillTheGpu) {
  SetScanVariant(1);
  const auto at = [](uintptr_t address) { return reinterpret_cast<const void*>(address); };
  SelectiveScanParams p;
  p.seqlen = 2048; p.dim = 5120; p.dstate = 16; p.dtype = DType::kBF16;
  p.x = at(1 << 20); p.x_strides = {2048 * 5120, 5120};
  p.delta = at(2 << 20); p.delta_strides = p.x_strides;
  p.z = at(3 << 20); p.z_strides = {2048 * 10240, 10240};
  p.B = at((4 << 20) + 160 * 2); p.B_strides = {2048 * 192, 192};  // x_proj row: R 160 + 2S
  p.C = at((4 << 20) + 176 * 2); p.C_strides = p.B_strides;
  p.batch = 4;
  EXPECT_TRUE(ScanForwardIsOnePass(p));
  EXPECT_FALSE(ScanForwardIsWide(p));
  EXPECT_EQ(ScanForwardChunks(p), 0);
  p.batch = 1;  // the wide chunked forward, in two waves of 4 blocks per multiprocessor
  EXPECT_FALSE(ScanForwardIsOnePass(p));
  EXPECT_TRUE(ScanForwardIsWide(p));
  const int sms = ScanChunks(1, 1 << 20, 64) / 16;  // 16 per SM at one channel block
  // Two waves of 40 blocks of 128 channels, at most 128 / 10 chunks (10 tiles each), none empty.
  const int wide = std::min(2 * 4 * sms / 40, 128 / 10), per = (128 + wide - 1) / wide;
  EXPECT_EQ(ScanForwardChunks(p), (128 + per - 1) / per);
  SetScanVariant(25);  // the 4-lane chunked forward there
  EXPECT_FALSE(ScanForwardIsWide(p));
  const int k = ScanChunks(1, 2048, 5120), kper = (128 + k - 1) / k;  // 128 tiles, none empty
  EXPECT_EQ(ScanForwardChunks(p), (128 + kper - 1) / kper);
  SetScanVariant(16);  // forced
  EXPECT_TRUE(ScanForwardIsOnePass(p));
  EXPECT_FALSE(ScanForwardIsWide(p));
  SetScanVariant(12);  // the chunked forward everywhere
  p.batch = 4;
  EXPECT_FALSE(ScanForwardIsOnePass(p));
  EXPECT_FALSE(ScanForwardIsWide(p));
  SetScanVariant(26);  // the wide forward wherever the rows are aligned
  EXPECT_FALSE(ScanForwardIsOnePass(p));
  EXPECT_TRUE(ScanForwardIsWide(p));
  SetScanVariant(1);
  p.B = at((4 << 20) + 5 * 2);  // B/C at column 5 of the row: not 16-byte aligned
  EXPECT_FALSE(ScanForwardIsOnePass(p));
  EXPECT_FALSE(ScanForwardIsWide(p));
  p.batch = 1;
  EXPECT_FALSE(ScanForwardIsWide(p));
  p.B = at((4 << 20) + 160 * 2);
  p.dim = 5118;  // x rows of 10236 bytes
  EXPECT_FALSE(ScanForwardIsOnePass(p));
  EXPECT_FALSE(ScanForwardIsWide(p));
}

// The backward's chunks chain where B × channel blocks fill 2 blocks per multiprocessor (one
// chain: B 4 at Di 5120 on 132 multiprocessors, the H100's and H200's count, and the count
// assumed without a GPU), and chain in segments that fill them where they do not (B 1: 4 chains
// of 80 channel blocks, B 2: 2), as long as a segment has 2 chunks; never with one chunk.
// Variant 22 turns chains off (the two-pass backward), 23 forces one chain, 29 segments of 2.
TEST(ScanCuda, DefaultBackwardChainsInSegmentsThatFillTheGpu) {
  SetScanVariant(1);
  SelectiveScanParams p;
  p.seqlen = 2048; p.dim = 5120; p.dstate = 16; p.dtype = DType::kBF16;
  p.batch = 4;
  EXPECT_EQ(ScanBackwardChains(p), 1);
  p.batch = 2;
  EXPECT_EQ(ScanBackwardChains(p), 2);
  p.batch = 1;
  EXPECT_EQ(ScanBackwardChains(p), 4);
  p.dim = 2560;
  p.seqlen = 1200;  // 15 chunks; 7 segments asked for, so 3 chunks each: 5 segments
  EXPECT_EQ(ScanBackwardChains(p), 5);
  p.dim = 5120;
  p.seqlen = 400;  // 25 tiles, 6 chunks: under 2 a segment, the two-pass backward
  EXPECT_EQ(ScanBackwardChains(p), 0);
  SetScanVariant(23);
  EXPECT_EQ(ScanBackwardChains(p), 1);
  p.seqlen = 16;  // one tile: one chunk, nothing to chain
  EXPECT_EQ(ScanBackwardChains(p), 0);
  p.seqlen = 2048;
  SetScanVariant(29);
  EXPECT_EQ(ScanBackwardChains(p), 13);  // 26 chunks
  p.batch = 4;
  SetScanVariant(22);
  EXPECT_EQ(ScanBackwardChains(p), 0);
  SetScanVariant(1);
}

// ---- causal conv1d ----------------------------------------------------------------------------

struct ConvCase {
  int64_t B = 1, T = 1, Di = 64, W = 4;
  bool resets = true, state = true, bias = true, silu = true;
  DType dtype = DType::kBF16;
  // With resets: a document starts at a token with probability 1 / reset_one_in (dense: every
  // 64-token tile of the kernels holds some), or, with reset_one_in 0, only just around some
  // tiles' edges (at 64k − 3, 64k − 2, 64k + 64, 64k + 66 for a few k): in a tile's window
  // history, in the W − 1 tokens its backward walks past it, and nowhere near most tiles.
  int reset_one_in = 13;
  std::string Name() const {
    return fmt::format("B{}_T{}_Di{}_W{}{}{}{}{}{}_{}", B, T, Di, W, resets ? "_resets" : "",
                       resets && reset_one_in == 0 ? "AtTileEdges" : "", state ? "_state" : "",
                       bias ? "_bias" : "", silu ? "_silu" : "",
                       dtype == DType::kBF16 ? "bf16" : "f32");
  }
};

class ConvCudaVsCpu : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvCudaVsCpu, MatchesReference) {
  SKIP_WITHOUT_GPU();
  const ConvCase c = GetParam();
  std::mt19937 rng(static_cast<uint32_t>(c.T * 7 + c.W));
  auto rnd = [&](size_t n, bool round) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> v(n);
    for (float& e : v) e = round && c.dtype == DType::kBF16 ? RoundBf16(u(rng)) : u(rng);
    return v;
  };
  const int64_t n = c.B * c.T * c.Di, ns = c.B * c.Di * (c.W - 1);
  std::vector<float> x = rnd(n, true), w = rnd(c.Di * c.W, false), bias = rnd(c.Di, false),
                     init = rnd(ns, false), dout = rnd(n, true), dfinal = rnd(ns, false);
  std::vector<uint8_t> resets(c.B * c.T, 0);
  if (c.resets && c.reset_one_in > 0) {
    for (auto& r : resets) r = rng() % c.reset_one_in == 0;
  } else if (c.resets) {
    for (int64_t b = 0; b < c.B; ++b) {
      for (const int64_t t : {64 * 3 - 3, 64 * 5 - 2, 64 * 8 + 64, 64 * 11 + 66, 64 * 14 - 1}) {
        if (t < c.T) resets[b * c.T + t] = 1;
      }
    }
  }
  auto params = [&](const void* px, const float* pw, const float* pb, const uint8_t* pr,
                    const float* pinit, float* pfinal, void* pout) {
    CausalConv1dParams p;
    p.batch = c.B; p.seqlen = c.T; p.dim = c.Di; p.width = c.W; p.dtype = c.dtype;
    p.x = px; p.x_strides = {c.T * c.Di, c.Di};
    p.weight = pw;
    if (c.bias) p.bias = pb;
    p.silu = c.silu;
    if (c.resets) { p.resets = pr; p.resets_batch_stride = c.T; }
    if (c.state) { p.initial_state = pinit; p.final_state = pfinal; }
    p.out = pout; p.out_strides = {c.T * c.Di, c.Di};
    return p;
  };
  // Reference.
  std::vector<float> out(n), fin(ns), dx(n), dw(c.Di * c.W), db(c.Di), dinit(ns);
  CausalConv1dParams hp = params(x.data(), w.data(), bias.data(), resets.data(), init.data(),
                                 fin.data(), out.data());
  hp.dtype = DType::kF32;
  ASSERT_TRUE(ForwardCpu(hp).ok());
  CausalConv1dGrads hg{dout.data(), {c.T * c.Di, c.Di}, c.state ? dfinal.data() : nullptr,
                       dx.data(), {c.T * c.Di, c.Di}, dw.data(), db.data(), dinit.data()};
  ASSERT_TRUE(BackwardCpu(hp, hg).ok());
  // GPU.
  DeviceTensor gx, gw, gb, ginit, gfin, gout, gdout, gdfinal, gdx, gdw, gdb, gdinit, gres, ws;
  gx.Upload(x, c.dtype); gdout.Upload(dout, c.dtype);
  gw.Upload(w, DType::kF32); gb.Upload(bias, DType::kF32); ginit.Upload(init, DType::kF32);
  gdfinal.Upload(dfinal, DType::kF32);
  gres.Allocate((resets.size() + 3) / 4, DType::kF32);
  CUDA_OK(cudaMemcpy(gres.get(), resets.data(), resets.size(), cudaMemcpyHostToDevice));
  gfin.Allocate(ns, DType::kF32); gout.Allocate(n, c.dtype);
  CausalConv1dParams dp = params(gx.get(), gw.get<float>(), gb.get<float>(), gres.get<uint8_t>(),
                                 ginit.get<float>(), gfin.get<float>(), gout.get());
  ws.Allocate(ConvWorkspaceBytes(dp) / 4 + 1, DType::kF32);
  dp.workspace = ws.get();
  ASSERT_TRUE(Forward(dp, nullptr).ok());
  gdx.Allocate(n, c.dtype); gdw.Allocate(c.Di * c.W, DType::kF32); gdb.Allocate(c.Di, DType::kF32);
  gdinit.Allocate(ns, DType::kF32);
  CausalConv1dGrads dg{gdout.get(), {c.T * c.Di, c.Di}, c.state ? gdfinal.get<float>() : nullptr,
                       gdx.get(), {c.T * c.Di, c.Di}, gdw.get<float>(), gdb.get<float>(),
                       gdinit.get<float>()};
  const absl::Status bs = Backward(dp, dg, nullptr);
  ASSERT_TRUE(bs.ok()) << bs.message();
  CUDA_OK(cudaDeviceSynchronize());
  const double tol_e = c.dtype == DType::kBF16 ? 1e-2 : 1e-5, tol_f = c.dtype == DType::kBF16 ? 1e-3 : 1e-5;
  EXPECT_LE(RelL2(gout.Download(), out), tol_e) << "out";
  EXPECT_LE(RelL2(gdx.Download(), dx), tol_e) << "dx";
  EXPECT_LE(RelL2(gdw.Download(), dw), tol_f) << "dweight";
  if (c.bias) EXPECT_LE(RelL2(gdb.Download(), db), tol_f) << "dbias";
  EXPECT_LE(RelL2(gdinit.Download(), dinit), tol_f) << "dinitial_state";
  if (c.state) EXPECT_LE(RelL2(gfin.Download(), fin), 1e-6) << "final_state";
  // Determinism: backward again, bitwise equal.
  const std::vector<uint8_t> dw1 = gdw.Bytes_(), dx1 = gdx.Bytes_();
  gdw.Poison();
  gdx.Poison();
  ASSERT_TRUE(Backward(dp, dg, nullptr).ok());
  CUDA_OK(cudaDeviceSynchronize());
  EXPECT_TRUE(gdw.Bytes_() == dw1);
  EXPECT_TRUE(gdx.Bytes_() == dx1);
}

std::vector<ConvCase> ConvCases() {
  std::vector<ConvCase> v;
  for (DType dt : {DType::kF32, DType::kBF16}) {
    v.push_back({1, 1, 64, 4, false, true, true, true, dt});
    v.push_back({2, 7, 130, 4, true, true, true, true, dt});
    v.push_back({1, 2, 64, 4, false, true, false, false, dt});
    v.push_back({3, 333, 96, 3, true, true, true, true, dt});
    v.push_back({1, 1000, 64, 2, true, false, true, false, dt});
    v.push_back({1, 4097, 256, 4, true, true, true, true, dt});
    v.push_back({2, 300, 640, 4, true, true, true, true, dt});  // a partial channel block
  }
  v.push_back({1, 131072, 64, 4, true, true, true, true, DType::kBF16});
  // Most tiles without a document start: starts only around some tiles' edges; none, with the
  // final state's gradient entering at the last token the backward of the tile before the last
  // walks (T = 2·64 + 64 + 3); sparse starts at width 3.
  for (DType dt : {DType::kF32, DType::kBF16}) {
    ConvCase edges{2, 1500, 256, 4, true, true, true, true, dt};
    edges.reset_one_in = 0;
    v.push_back(edges);
    v.push_back({1, 195, 128, 4, false, true, true, true, dt});
    ConvCase sparse{1, 3000, 192, 3, true, true, false, true, dt};
    sparse.reset_one_in = 400;
    v.push_back(sparse);
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvCudaVsCpu, ::testing::ValuesIn(ConvCases()),
                         [](const ::testing::TestParamInfo<ConvCase>& info) {
                           return info.param.Name();
                         });

// The conv's step kernel against the CPU reference, for each width, with and without bias, SiLU
// and resets (rows 0 and 2 start a document), the state updated in place.
TEST(ConvCuda, StepMatchesTheCpuReference) {
  SKIP_WITHOUT_GPU();
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (int64_t W : {2, 3, 4}) {
      for (bool options : {true, false}) {
        const int64_t B = 3, Di = 200, ns = B * Di * (W - 1);
        SCOPED_TRACE(::testing::Message() << "W " << W << (options ? " options" : " plain")
                                          << (dtype == DType::kBF16 ? " bf16" : " f32"));
        std::mt19937 rng(static_cast<uint32_t>(W * 2 + options));
        auto rnd = [&](size_t n, bool round) {
          std::uniform_real_distribution<float> u(-1.f, 1.f);
          std::vector<float> v(n);
          for (float& e : v) e = round && dtype == DType::kBF16 ? RoundBf16(u(rng)) : u(rng);
          return v;
        };
        const std::vector<float> x = rnd(B * Di, true), w = rnd(Di * W, false),
                                 bias = rnd(Di, false), init = rnd(ns, false);
        const std::vector<uint8_t> resets = {1, 0, 1};
        auto params = [&](const void* px, const float* pw, const float* pb, const uint8_t* pr,
                          const float* pinit, float* pfinal, void* pout) {
          CausalConv1dParams p;
          p.batch = B;
          p.seqlen = 1;
          p.dim = Di;
          p.width = W;
          p.dtype = dtype;
          p.x = px;
          p.x_strides = {Di, Di};
          p.weight = pw;
          if (options) {
            p.bias = pb;
            p.resets = pr;
            p.resets_batch_stride = 1;
          }
          p.silu = options;
          p.initial_state = pinit;
          p.final_state = pfinal;
          p.out = pout;
          p.out_strides = {Di, Di};
          return p;
        };
        std::vector<float> out(B * Di), fin(ns);
        CausalConv1dParams hp = params(x.data(), w.data(), bias.data(), resets.data(), init.data(),
                                       fin.data(), out.data());
        hp.dtype = DType::kF32;
        ASSERT_TRUE(StepCpu(hp).ok());
        DeviceTensor gx, gw, gb, gstate, gout, gres;
        gx.Upload(x, dtype);
        gw.Upload(w, DType::kF32);
        gb.Upload(bias, DType::kF32);
        gstate.Upload(init, DType::kF32);
        gres.Allocate(1, DType::kF32);
        CUDA_OK(cudaMemcpy(gres.get(), resets.data(), resets.size(), cudaMemcpyHostToDevice));
        gout.Allocate(B * Di, dtype);
        const absl::Status st =
            Step(params(gx.get(), gw.get<float>(), gb.get<float>(), gres.get<uint8_t>(),
                        gstate.get<float>(), gstate.get<float>(), gout.get()),
                 nullptr);
        ASSERT_TRUE(st.ok()) << st.message();
        CUDA_OK(cudaDeviceSynchronize());
        EXPECT_LE(RelL2(gout.Download(), out), dtype == DType::kBF16 ? 1e-2 : 1e-6);
        EXPECT_LE(RelL2(gstate.Download(), fin), 1e-7);
      }
    }
  }
}

}  // namespace
}  // namespace rwr::scan
