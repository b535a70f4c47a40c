// bench/scan_bench: selective scan and causal conv1d on the GPU at Mamba-2.8B layer shapes
// (B 1, Di 5120, S 16, W 4, bf16), T = 2k, 8k, 32k, 128k by default. Prints one table: µs per
// token per layer for forward and forward+backward, and the bandwidth that the minimum bytes
// (each input read once, each output written once) would need at that time, against the
// measured device-to-device copy bandwidth. CUDA events, warm-up, median of --reps runs, random
// inputs. --json FILE also writes the rows as JSON. Every (batch, T) pair of the two lists runs;
// --bt pairs them one to one instead (--bt 4x2048,1x8192: the trainer's shapes).
//
//   scan_bench [--t 2048,8192,32768,131072] [--batch 1,4] [--bt 4x2048,1x8192] [--di 5120]
//              [--reps 20] [--chunks 0,4,8] [--variants 1,4] [--ops scan,conv] [--json out.json]
//              [--trainer-io] [--cold]
// --trainer-io lays the scan's tensors out as the trainer does: z and dz halves of an in_proj row
// (token stride 2·Di), the scan output handed back by the backward, initial and final states and
// their gradients, and a reset at the first token of every row. --cold writes 512 MB (untimed)
// before every timed call, so that no input is left in L2 from the call before (as in training,
// where the rest of the network runs between a layer's forward and backward).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/scan_tuning.h"
#include "scan_kernels/selective_scan.h"

namespace {

using rwr::scan::DType;

#define CHECK_CUDA(call)                                                             \
  do {                                                                               \
    cudaError_t e_ = (call);                                                         \
    if (e_ != cudaSuccess) {                                                         \
      std::fprintf(stderr, "%s failed: %s\n", #call, cudaGetErrorString(e_));        \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)
#define CHECK_OK(expr)                                                               \
  do {                                                                               \
    absl::Status s_ = (expr);                                                        \
    if (!s_.ok()) {                                                                  \
      std::fprintf(stderr, "%s failed: %s\n", #expr, std::string(s_.message()).c_str()); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

__device__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
  return static_cast<uint32_t>(x >> 32);
}
// Uniform in [lo, hi).
__global__ void FillBf16(__nv_bfloat16* p, int64_t n, float lo, float hi, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = __float2bfloat16(lo + (hi - lo) * (Hash(i, seed) * 2.3283064e-10f));
  }
}
__global__ void FillF32(float* p, int64_t n, float lo, float hi, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    p[i] = lo + (hi - lo) * (Hash(i, seed) * 2.3283064e-10f);
  }
}

// Throughput probes: 8 independent chains per thread of ex2.approx (MUFU) or FFMA.
__global__ void Ex2Probe(float* out, int iters) {
  float v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = -0.001f * (threadIdx.x + k);
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = exp2f(v[k]) - 1.0001f;
  }
  float s = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) s += v[k];
  if (s == 12345.f) out[0] = s;
}
__global__ void FfmaProbe(float* out, int iters) {
  float v[8];
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = 0.001f * (threadIdx.x + k);
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = v[k] * 0.9999f + 0.0001f;
  }
  float s = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) s += v[k];
  if (s == 12345.f) out[0] = s;
}

template <typename T>
T* Alloc(int64_t n) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, std::max<int64_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}

std::vector<int64_t> ParseList(const char* s) {
  std::vector<int64_t> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    v.push_back(std::strtoll(p, &end, 10));
    p = *end == ',' ? end + 1 : end;
    if (end == p && *p) break;
  }
  return v;
}

// Median milliseconds of `reps` runs of fn, after 3 warm-up runs; `prep` (untimed) runs before
// each.
double MedianMs(const std::function<void()>& fn, int reps,
                const std::function<void()>& prep = nullptr) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    if (prep) prep();
    CHECK_CUDA(cudaEventRecord(a));
    fn();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  CHECK_CUDA(cudaGetLastError());
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

// "4x2048,1x8192" → {{4, 2048}, {1, 8192}}.
std::vector<std::pair<int64_t, int64_t>> ParsePairs(const char* s) {
  std::vector<std::pair<int64_t, int64_t>> v;
  for (const char* p = s; *p;) {
    char* end = nullptr;
    const int64_t b = std::strtoll(p, &end, 10);
    if (*end != 'x') break;
    const int64_t t = std::strtoll(end + 1, &end, 10);
    v.emplace_back(b, t);
    p = *end == ',' ? end + 1 : end;
  }
  return v;
}

struct Row {
  std::string op;
  int64_t batch, T;
  int chunks, chunks_bwd;
  double fwd_us_tok, fwdbwd_us_tok, fwd_gbs, fwdbwd_gbs, fwd_floor_us, fwdbwd_floor_us;
  int chains = 0;  // the backward's chunks hand their gradient on in this many chains ("c<n>")
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> Ts = {2048, 8192, 32768, 131072};
  std::vector<int64_t> chunk_list = {0};
  std::vector<int64_t> variants = {1};
  bool run_scan = true, run_conv = true;
  bool trainer_io = false, cold = false;
  std::vector<int64_t> batches = {1};
  std::vector<std::pair<int64_t, int64_t>> shapes;  // (batch, T); from --bt or the two lists
  int64_t Di = 5120;
  int reps = 20;
  std::string json;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value (see --help)\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--t") Ts = ParseList(next());
    else if (a == "--di") Di = std::atoll(next());
    else if (a == "--batch") batches = ParseList(next());
    else if (a == "--bt") shapes = ParsePairs(next());
    else if (a == "--reps") reps = std::atoi(next());
    else if (a == "--chunks") chunk_list = ParseList(next());
    else if (a == "--json") json = next();
    else if (a == "--variants") variants = ParseList(next());
    else if (a == "--trainer-io") trainer_io = true;
    else if (a == "--cold") cold = true;
    else if (a == "--ops") {
      const std::string ops = next();
      run_scan = ops.find("scan") != std::string::npos;
      run_conv = ops.find("conv") != std::string::npos;
    }
    else {
      std::printf(
          "scan_bench: selective scan + causal conv1d timings at Mamba-2.8B layer shapes\n"
          "  --t LIST       sequence lengths (default 2048,8192,32768,131072)\n"
          "  --di N         inner channels (default 5120)\n"
          "  --batch LIST   batch sizes (default 1)\n"
          "  --bt LIST      (batch)x(T) pairs instead of --batch x --t, e.g. 4x2048,1x8192\n"
          "  --reps N       timed runs, median reported (default 20)\n"
          "  --chunks LIST  scan chunk counts K to try, 0 = automatic (default 0)\n"
          "  --variants LIST  kernel variants (scan_tuning.h), default 1\n"
          "  --ops LIST     which ops to time: scan, conv or both (default scan,conv)\n"
          "  --json FILE    also write the rows as JSON\n"
          "  --trainer-io   the trainer's layout: z in the in_proj row, output handed back by\n"
          "                 the backward, states in and out, a reset at every row's start\n"
          "  --cold         write 512 MB (untimed) before each timed call: nothing left in L2\n");
      return a == "--help" ? 0 : 2;
    }
  }
  constexpr int64_t S = 16, R = 160, W = 4;
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));

  // Copy bandwidth (read + write bytes), 1 GiB buffers.
  const int64_t copy_bytes = int64_t(1) << 30;
  char* c0 = Alloc<char>(copy_bytes);
  char* c1 = Alloc<char>(copy_bytes);
  const double copy_ms = MedianMs([&] { CHECK_CUDA(cudaMemcpyAsync(c1, c0, copy_bytes, cudaMemcpyDeviceToDevice)); }, 10);
  const double copy_gbs = 2.0 * copy_bytes / (copy_ms * 1e-3) / 1e9;
  CHECK_CUDA(cudaFree(c0));
  CHECK_CUDA(cudaFree(c1));
  std::printf("device: %s, %d SMs; copy bandwidth %.0f GB/s (read+write)\n", prop.name,
              prop.multiProcessorCount, copy_gbs);
  {
    float* sink = Alloc<float>(1);
    const int iters = 4096, blocks = prop.multiProcessorCount * 8;
    const double n = double(blocks) * 256 * iters * 8;
    const double ex2_ms = MedianMs([&] { Ex2Probe<<<blocks, 256>>>(sink, iters); }, 5);
    const double ffma_ms = MedianMs([&] { FfmaProbe<<<blocks, 256>>>(sink, iters); }, 5);
    std::printf("ex2: %.2f T/s (%.1f per SM per ns); ffma: %.2f T/s (%.1f per SM per ns)\n",
                n / (ex2_ms * 1e-3) / 1e12, n / (ex2_ms * 1e6) / prop.multiProcessorCount,
                n / (ffma_ms * 1e-3) / 1e12, n / (ffma_ms * 1e6) / prop.multiProcessorCount);
    CHECK_CUDA(cudaFree(sink));
  }

  const int64_t flush_bytes = int64_t(512) << 20;
  char* flush = cold ? Alloc<char>(flush_bytes) : nullptr;
  std::function<void()> flush_l2;
  if (cold) flush_l2 = [&] { CHECK_CUDA(cudaMemsetAsync(flush, 1, flush_bytes)); };
  if (shapes.empty()) {
    for (int64_t b : batches) {
      for (int64_t T : Ts) shapes.emplace_back(b, T);
    }
  }
  std::vector<Row> rows;
  for (const auto& shape : shapes) {
    const int64_t batch = shape.first, T = shape.second;
    const int64_t n = batch * T * Di, nrow = batch * T * (R + 2 * S);
    auto* x = Alloc<__nv_bfloat16>(n);
    auto* delta = Alloc<__nv_bfloat16>(n);
    // Trainer layout: z and dz are the second halves of (B, T, 2·Di) rows.
    auto* z = Alloc<__nv_bfloat16>(trainer_io ? 2 * n : n);
    auto* out = Alloc<__nv_bfloat16>(n);
    auto* dout = Alloc<__nv_bfloat16>(n);
    auto* dx = Alloc<__nv_bfloat16>(n);
    auto* ddelta = Alloc<__nv_bfloat16>(n);
    auto* dz = Alloc<__nv_bfloat16>(trainer_io ? 2 * n : n);
    auto* y = Alloc<__nv_bfloat16>(n);
    const int64_t nstate = batch * Di * S;
    float* states = Alloc<float>(4 * nstate);  // initial, final, their gradients
    uint8_t* resets = Alloc<uint8_t>(batch * T);
    auto* xproj = Alloc<__nv_bfloat16>(nrow);
    auto* dxproj = Alloc<__nv_bfloat16>(nrow);
    float* A = Alloc<float>(Di * S);
    float* D = Alloc<float>(Di);
    float* bias = Alloc<float>(Di);
    float* dA = Alloc<float>(Di * S);
    float* dD = Alloc<float>(Di);
    float* dbias = Alloc<float>(Di);
    float* cw = Alloc<float>(Di * W);
    float* cb = Alloc<float>(Di);
    float* dcw = Alloc<float>(Di * W);
    float* dcb = Alloc<float>(Di);
    FillBf16<<<1024, 256>>>(x, n, -1.f, 1.f, 1);
    FillBf16<<<1024, 256>>>(delta, n, -5.f, -1.f, 2);
    FillBf16<<<1024, 256>>>(z, trainer_io ? 2 * n : n, -2.f, 2.f, 3);
    FillF32<<<256, 256>>>(states, 4 * nstate, -0.5f, 0.5f, 11);
    CHECK_CUDA(cudaMemset(resets, 0, batch * T));
    for (int64_t b = 0; b < batch; ++b) CHECK_CUDA(cudaMemset(resets + b * T, 1, 1));
    FillBf16<<<1024, 256>>>(dout, n, -1.f, 1.f, 4);
    FillBf16<<<1024, 256>>>(xproj, nrow, -1.f, 1.f, 5);
    FillF32<<<64, 256>>>(A, Di * S, -16.f, -1.f, 6);
    FillF32<<<64, 256>>>(D, Di, 0.5f, 1.5f, 7);
    FillF32<<<64, 256>>>(bias, Di, -4.f, -2.f, 8);
    FillF32<<<64, 256>>>(cw, Di * W, -0.5f, 0.5f, 9);
    FillF32<<<64, 256>>>(cb, Di, -0.1f, 0.1f, 10);
    CHECK_CUDA(cudaGetLastError());

    rwr::scan::SelectiveScanParams p;
    p.batch = batch; p.seqlen = T; p.dim = Di; p.dstate = S; p.dtype = DType::kBF16;
    const rwr::scan::TokenStrides tok{T * Di, Di}, row{T * (R + 2 * S), R + 2 * S};
    p.x = x; p.x_strides = tok;
    p.delta = delta; p.delta_strides = tok;
    p.A = A;
    p.B = xproj + R; p.B_strides = row;
    p.C = xproj + R + S; p.C_strides = row;
    p.D = D;
    p.z = z; p.z_strides = tok;
    p.delta_bias = bias; p.delta_softplus = true;
    p.out = out; p.out_strides = tok;
    rwr::scan::SelectiveScanGrads g;
    g.dout = dout; g.dout_strides = tok;
    g.dx = dx; g.dx_strides = tok;
    g.ddelta = ddelta; g.ddelta_strides = tok;
    g.dA = dA;
    g.dB = dxproj + R; g.dB_strides = row;
    g.dC = dxproj + R + S; g.dC_strides = row;
    g.dD = dD; g.dz = dz; g.dz_strides = tok; g.ddelta_bias = dbias;
    if (trainer_io) {
      const rwr::scan::TokenStrides xz_row{T * 2 * Di, 2 * Di};
      p.z = z + Di; p.z_strides = xz_row;
      g.dz = dz + Di; g.dz_strides = xz_row;
      g.out = y; g.out_strides = tok;
      p.initial_state = states;
      p.final_state = states + nstate;
      g.dfinal_state = states + 2 * nstate;
      g.dinitial_state = states + 3 * nstate;
      p.resets = resets;
      p.resets_batch_stride = T;
    }

    const double tokens = double(batch) * T;
    // Minimum bytes: each input read once, each output written once.
    const double fwd_bytes = tokens * (4 * Di * 2 + 2 * S * 2);
    const double bwd_bytes = tokens * (7 * Di * 2 + 4 * S * 2);
    for (int64_t variant : run_scan ? variants : std::vector<int64_t>{})
    for (int64_t k : chunk_list) {
      rwr::scan::SetScanVariant(static_cast<int>(variant));
      rwr::scan::SetScanChunksOverride(static_cast<int>(k));
      // Forward K 0: the one-pass forward (no chunks) runs for this shape.
      const int chunks = rwr::scan::ScanForwardChunks(p);
      const int chunks_bwd = rwr::scan::ScanChunks(batch, T, Di, /*backward=*/true);
      const int chains = rwr::scan::ScanBackwardChains(p);
      const int64_t ws_bytes = rwr::scan::WorkspaceBytes(p);
      void* ws = Alloc<char>(ws_bytes);
      p.workspace = ws;
      const double fwd_ms =
          MedianMs([&] { CHECK_OK(rwr::scan::Forward(p, nullptr)); }, reps, flush_l2);
      // Cold: the backward timed alone after a flush (the forward before it untimed), and
      // forward + backward reported as the sum.
      const double fb_ms =
          cold ? fwd_ms + MedianMs([&] { CHECK_OK(rwr::scan::Backward(p, g, nullptr)); }, reps,
                                   [&] {
                                     CHECK_OK(rwr::scan::Forward(p, nullptr));
                                     flush_l2();
                                   })
               : MedianMs([&] {
                   CHECK_OK(rwr::scan::Forward(p, nullptr));
                   CHECK_OK(rwr::scan::Backward(p, g, nullptr));
                 }, reps);
      CHECK_CUDA(cudaFree(ws));
      Row r{variant == 1 ? "scan" : fmt::format("scan.v{}", variant),
            batch,
            T,
            chunks,
            chunks_bwd,
            fwd_ms * 1e3 / tokens,
            fb_ms * 1e3 / tokens,
            fwd_bytes / (fwd_ms * 1e-3) / 1e9,
            (fwd_bytes + bwd_bytes) / (fb_ms * 1e-3) / 1e9,
            fwd_bytes / (copy_gbs * 1e9) * 1e6 / tokens,
            (fwd_bytes + bwd_bytes) / (copy_gbs * 1e9) * 1e6 / tokens,
            chains};
      rows.push_back(r);
      std::fprintf(stderr, "%s B=%lld T=%lld K=%d/%d: fwd %.4f us/tok, fwd+bwd %.4f us/tok (workspace %.2f GB)\n",
                   r.op.c_str(), (long long)batch, (long long)T, chunks, chunks_bwd, r.fwd_us_tok,
                   r.fwdbwd_us_tok, ws_bytes / 1e9);
    }
    rwr::scan::SetScanChunksOverride(0);
    rwr::scan::SetScanVariant(1);

    if (run_conv) {  // causal conv1d, width 4, bias + SiLU
      rwr::scan::CausalConv1dParams cp;
      cp.batch = batch; cp.seqlen = T; cp.dim = Di; cp.width = W; cp.dtype = DType::kBF16;
      cp.x = x; cp.x_strides = tok;
      cp.weight = cw; cp.bias = cb; cp.silu = true;
      cp.out = out; cp.out_strides = tok;
      void* ws = Alloc<char>(rwr::scan::ConvWorkspaceBytes(cp));
      cp.workspace = ws;
      rwr::scan::CausalConv1dGrads cg;
      cg.dout = dout; cg.dout_strides = tok;
      cg.dx = dx; cg.dx_strides = tok;
      cg.dweight = dcw; cg.dbias = dcb;
      const double fwd_ms = MedianMs([&] { CHECK_OK(rwr::scan::Forward(cp, nullptr)); }, reps);
      const double fb_ms = MedianMs([&] {
        CHECK_OK(rwr::scan::Forward(cp, nullptr));
        CHECK_OK(rwr::scan::Backward(cp, cg, nullptr));
      }, reps);
      CHECK_CUDA(cudaFree(ws));
      const double cf = tokens * 2 * Di * 2, cb_bytes = tokens * 3 * Di * 2;
      rows.push_back(Row{"conv1d", batch, T, 0, 0, fwd_ms * 1e3 / tokens, fb_ms * 1e3 / tokens,
                         cf / (fwd_ms * 1e-3) / 1e9, (cf + cb_bytes) / (fb_ms * 1e-3) / 1e9,
                         cf / (copy_gbs * 1e9) * 1e6 / tokens,
                         (cf + cb_bytes) / (copy_gbs * 1e9) * 1e6 / tokens});
    }
    for (void* ptr : std::initializer_list<void*>{x, delta, z, out, dout, dx, ddelta, dz, y, states,
                                                 resets, xproj, dxproj, A, D, bias, dA, dD, dbias,
                                                 cw, cb, dcw, dcb}) {
      CHECK_CUDA(cudaFree(ptr));
    }
  }

  if (flush != nullptr) CHECK_CUDA(cudaFree(flush));
  std::printf("\n%-8s %2s %7s %8s | %10s %8s %9s | %10s %8s %9s | %8s\n", "op", "B", "T", "K",
              "fwd us/tok", "fwd GB/s", "fwd floor", "f+b us/tok", "f+b GB/s", "f+b floor", "bwd");
  for (const Row& r : rows) {
    const std::string chains = r.chains > 0 ? "c" + std::to_string(r.chains) : "";
    std::printf("%-8s %2lld %7lld %2d/%-2d%-3s | %10.4f %8.0f %9.4f | %10.4f %8.0f %9.4f | %8.4f\n",
                r.op.c_str(), (long long)r.batch, (long long)r.T, r.chunks, r.chunks_bwd,
                chains.c_str(), r.fwd_us_tok, r.fwd_gbs, r.fwd_floor_us, r.fwdbwd_us_tok,
                r.fwdbwd_gbs, r.fwdbwd_floor_us, r.fwdbwd_us_tok - r.fwd_us_tok);
  }
  std::printf(
      "(Di %lld, S 16, bf16; us per token per layer; K = chunks forward/backward, forward "
      "0 = the one-pass forward, backward c<n> = chunks chained in n chains; GB/s = minimum bytes "
      "/ "
      "time; floor = minimum bytes at the copy bandwidth; bwd = f+b - fwd)\n",
      (long long)Di);
  if (!json.empty()) {
    FILE* f = std::fopen(json.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "cannot write %s\n", json.c_str());
      return 1;
    }
    std::fprintf(f, "{\"device\": \"%s\", \"copy_gbs\": %.1f, \"rows\": [\n", prop.name, copy_gbs);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::fprintf(f,
                   "  {\"op\": \"%s\", \"batch\": %lld, \"T\": %lld, \"chunks\": %d, "
                   "\"chunks_bwd\": %d, \"bwd_chains\": %d, \"fwd_us_per_token\": %.5f, "
                   "\"fwd_bwd_us_per_token\": %.5f, \"fwd_gbs\": %.1f, \"fwd_bwd_gbs\": %.1f}%s\n",
                   r.op.c_str(), (long long)r.batch, (long long)r.T, r.chunks, r.chunks_bwd,
                   r.chains, r.fwd_us_tok, r.fwdbwd_us_tok, r.fwd_gbs, r.fwdbwd_gbs,
                   i + 1 < rows.size() ? "," : "");
    }
    std::fprintf(f, "]}\n");
    std::fclose(f);
  }
  return 0;
}
