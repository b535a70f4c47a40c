// Mamba-1 LM on CUDA; see mamba_cuda.h. Structure mirrors mamba_cpu.cc (read that first): a
// Runner per call, chunk pass 1 keeps boundary states, pass 2 recomputes each chunk with
// activations and runs its backward, last chunk first.
#include "trainer/mamba_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/call_status_cuda.h"
#include "common/status.h"
#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/selective_scan.h"
#include "trainer/mamba_cuda_kernels.h"

namespace rwr::trainer {
namespace {

// ---- device buffers ---------------------------------------------------------------------------

struct DeviceArena;

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  int64_t count = 0;
  DeviceArena* arena = nullptr;
};

struct DeviceArena {
  int64_t bytes = 0, peak = 0;
  std::vector<void*> all;
  template <typename T>
  absl::Status Alloc(DeviceBuffer<T>* b, int64_t count) {
    if (b->count >= count && b->ptr != nullptr) return absl::OkStatus();
    if (b->ptr != nullptr) {
      cudaFree(b->ptr);
      bytes -= b->count * static_cast<int64_t>(sizeof(T));
      all.erase(std::find(all.begin(), all.end(), static_cast<void*>(b->ptr)));
    }
    void* p = nullptr;
    const int64_t n = std::max<int64_t>(count, 1) * sizeof(T);
    RWR_CUDA(cudaMalloc(&p, n));
    all.push_back(p);
    bytes += n;
    peak = std::max(peak, bytes);
    b->ptr = static_cast<T*>(p);
    b->count = count;
    return absl::OkStatus();
  }
  ~DeviceArena() {
    for (void* p : all) cudaFree(p);
  }
};

// ---- kernels ----------------------------------------------------------------------------------

}  // namespace

// ---- implementation state ---------------------------------------------------------------------

struct LayerActsDev {
  DeviceBuffer<float> h_in, rstd, xn, xz, uc, xdbl, dtraw, y;
  DeviceBuffer<char> scan_ws;
};

struct MambaCuda::Impl {
  MambaConfig c;
  GemmPrecision precision;
  DeviceArena arena;
  cublasHandle_t cublas = nullptr;
  cudaStream_t stream = nullptr;
  DeviceBuffer<float> params, grads, exp_avg, exp_avg_sq, A;  // A: per layer (Di, S)
  DeviceBuffer<uint8_t> decay;
  int64_t adam_step = 0;
  // per-call
  DeviceBuffer<int32_t> tokens, targets, rows;
  DeviceBuffer<uint8_t> reset, row_weight;
  DeviceBuffer<int32_t> row_targets;
  std::vector<LayerActsDev> acts;
  LayerActsDev scratch_acts;
  DeviceBuffer<float> h, dh, dtmp_d, dy, duc, ddtraw, dxdbl, dxz, dxn, dA, dD, ddt_bias, dconv_w,
      dconv_b, out_scratch, hn, rstd_f, dhn, block_in, block_logits, block_dh, row_loss;
  DeviceBuffer<float> states;                 // [chunk][layer] conv + ssm
  DeviceBuffer<float> dstates, dstates_next;  // [layer] conv + ssm
  DeviceBuffer<char> conv_ws;
  DeviceBuffer<double> norm_acc;

  ~Impl() {
    if (cublas) cublasDestroy(cublas);
    if (stream) cudaStreamDestroy(stream);
  }

  int64_t StateFloats(int64_t B) const { return B * c.d_inner * (c.d_conv - 1 + c.d_state); }
  int64_t ConvStateFloats(int64_t B) const { return B * c.d_inner * (c.d_conv - 1); }

  // Y(M, N) = X(M, K)·W(N, K)ᵀ (row-major), see mamba_cpu.cc for the CPU twin.
  absl::Status Linear(const float* X, int64_t ldx, const float* W, float* Y, int64_t ldy, int64_t M,
                      int64_t N, int64_t K) {
    const float one = 1.f, zero = 0.f;
    RWR_CUBLAS(cublasGemmEx(cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, W, CUDA_R_32F, K, X,
                            CUDA_R_32F, ldx, &zero, Y, CUDA_R_32F, ldy, Compute(),
                            CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  // dX(M, K) (=|+=) dY(M, N)·W(N, K)
  absl::Status LinearDx(const float* dY, int64_t lddy, const float* W, float* dX, int64_t lddx,
                        int64_t M, int64_t N, int64_t K, bool accumulate) {
    const float one = 1.f, beta = accumulate ? 1.f : 0.f;
    RWR_CUBLAS(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_N, K, M, N, &one, W, CUDA_R_32F, K, dY,
                            CUDA_R_32F, lddy, &beta, dX, CUDA_R_32F, lddx, Compute(),
                            CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  // dW(N, K) += dY(M, N)ᵀ·X(M, K)
  absl::Status LinearDw(const float* dY, int64_t lddy, const float* X, int64_t ldx, float* dW,
                        int64_t M, int64_t N, int64_t K) {
    const float one = 1.f;
    RWR_CUBLAS(cublasGemmEx(cublas, CUBLAS_OP_N, CUBLAS_OP_T, K, N, M, &one, X, CUDA_R_32F, ldx, dY,
                            CUDA_R_32F, lddy, &one, dW, CUDA_R_32F, K, Compute(),
                            CUBLAS_GEMM_DEFAULT));
    return absl::OkStatus();
  }
  cublasComputeType_t Compute() const {
    return precision == GemmPrecision::kBf16 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
  }
};

namespace {

struct ChunkDims {
  int64_t B, T, Tc, t0, D, Di, S, R, W, X, V;
  int64_t M() const { return B * Tc; }
};

class CudaRunner {
 public:
  CudaRunner(MambaCuda::Impl& m, const ParamLayout& layout, const TokenBatch& batch)
      : m_(m), c_(m.c), layout_(layout), batch_(batch) {}

  ChunkDims Dims(int64_t t0, int64_t Tc) const {
    return {batch_.batch, batch_.seq_len, Tc,           t0,
            c_.d_model,   c_.d_inner,     c_.d_state,   c_.dt_rank,
            c_.d_conv,    c_.xdbl_dim(),  c_.vocab_size};
  }
  const float* P(int64_t offset) const { return m_.params.ptr + offset; }
  float* G(int64_t offset) const { return m_.grads.ptr + offset; }
  float* State(int64_t chunk, int64_t layer) const {
    return m_.states.ptr + (chunk * c_.n_layer + layer) * m_.StateFloats(batch_.batch);
  }

  absl::Status Alloc(LayerActsDev& a, const ChunkDims& d, bool workspace) {
    const int64_t M = d.M();
    DeviceArena& ar = m_.arena;
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.h_in, M * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.rstd, M));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.xn, M * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.xz, M * 2 * d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.uc, M * d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.xdbl, M * d.X));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.dtraw, M * d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.y, M * d.Di));
    if (workspace) {
      scan::SelectiveScanParams probe;
      probe.batch = d.B;
      probe.seqlen = d.Tc;
      probe.dim = d.Di;
      probe.dstate = d.S;
      RWR_RETURN_IF_ERROR(ar.Alloc(&a.scan_ws, scan::WorkspaceBytes(probe) + 256));
    }
    return absl::OkStatus();
  }

  scan::CausalConv1dParams Conv(const ChunkDims& d, const LayerOffsets& o, const float* in,
                                float* out_state, LayerActsDev& a) const {
    scan::CausalConv1dParams p;
    p.batch = d.B;
    p.seqlen = d.Tc;
    p.dim = d.Di;
    p.width = d.W;
    p.x = a.xz.ptr;
    p.x_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    p.weight = P(o.conv_weight);
    p.bias = P(o.conv_bias);
    p.silu = true;
    p.resets = m_.reset.ptr + d.t0;
    p.resets_batch_stride = d.T;
    p.initial_state = in;
    p.final_state = out_state;
    p.out = a.uc.ptr;
    p.out_strides = {d.Tc * d.Di, d.Di};
    return p;
  }

  scan::SelectiveScanParams Scan(int64_t l, const ChunkDims& d, const LayerOffsets& o,
                                 const float* in, float* out_state, LayerActsDev& a) const {
    scan::SelectiveScanParams p;
    p.batch = d.B;
    p.seqlen = d.Tc;
    p.dim = d.Di;
    p.dstate = d.S;
    p.x = a.uc.ptr;
    p.x_strides = {d.Tc * d.Di, d.Di};
    p.delta = a.dtraw.ptr;
    p.delta_strides = {d.Tc * d.Di, d.Di};
    p.A = m_.A.ptr + l * d.Di * d.S;
    p.B = a.xdbl.ptr + d.R;
    p.B_strides = {d.Tc * d.X, d.X};
    p.C = a.xdbl.ptr + d.R + d.S;
    p.C_strides = {d.Tc * d.X, d.X};
    p.D = P(o.D);
    p.z = a.xz.ptr + d.Di;
    p.z_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    p.delta_bias = P(o.dt_proj_bias);
    p.delta_softplus = true;
    p.resets = m_.reset.ptr + d.t0;
    p.resets_batch_stride = d.T;
    p.initial_state = in;
    p.final_state = out_state;
    p.out = a.y.ptr;
    p.out_strides = {d.Tc * d.Di, d.Di};
    p.workspace = a.scan_ws.ptr;
    return p;
  }

  // h (M, D) in place; states: in (conv | ssm), out (may be null).
  absl::Status LayerForward(int64_t l, const ChunkDims& d, const float* state_in, float* state_out,
                            LayerActsDev& a) {
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M();
    cudaStream_t s = m_.stream;
    RWR_CUDA(cudaMemcpyAsync(a.h_in.ptr, m_.h.ptr, M * d.D * 4, cudaMemcpyDeviceToDevice, s));
    RWR_RETURN_IF_ERROR(
        cuda::RmsNorm(m_.h.ptr, P(o.norm), a.xn.ptr, a.rstd.ptr, M, d.D, c_.norm_eps, s));
    RWR_RETURN_IF_ERROR(
        m_.Linear(a.xn.ptr, d.D, P(o.in_proj), a.xz.ptr, 2 * d.Di, M, 2 * d.Di, d.D));
    const int64_t conv_floats = m_.ConvStateFloats(d.B);
    RWR_RETURN_IF_ERROR(scan::Forward(Conv(d, o, state_in, state_out ? state_out : nullptr, a), s));
    RWR_RETURN_IF_ERROR(m_.Linear(a.uc.ptr, d.Di, P(o.x_proj), a.xdbl.ptr, d.X, M, d.X, d.Di));
    RWR_RETURN_IF_ERROR(
        m_.Linear(a.xdbl.ptr, d.X, P(o.dt_proj_weight), a.dtraw.ptr, d.Di, M, d.Di, d.R));
    RWR_RETURN_IF_ERROR(scan::Forward(
        Scan(l, d, o, state_in + conv_floats, state_out ? state_out + conv_floats : nullptr, a),
        s));
    RWR_RETURN_IF_ERROR(m_.Linear(a.y.ptr, d.Di, P(o.out_proj), m_.dtmp_d.ptr, d.D, M, d.D, d.Di));
    RWR_RETURN_IF_ERROR(cuda::Add(m_.h.ptr, m_.dtmp_d.ptr, M * d.D, s));
    return absl::OkStatus();
  }

  // dh (M, D): gradient of the layer output → of its input. dstate (conv | ssm) of the state
  // leaving the chunk → dstate_next of the state entering it.
  absl::Status LayerBackward(int64_t l, const ChunkDims& d, LayerActsDev& a, const float* state_in,
                             const float* dstate, float* dstate_next) {
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M();
    cudaStream_t s = m_.stream;
    const int64_t conv_floats = m_.ConvStateFloats(d.B);
    RWR_RETURN_IF_ERROR(m_.LinearDw(m_.dh.ptr, d.D, a.y.ptr, d.Di, G(o.out_proj), M, d.D, d.Di));
    RWR_RETURN_IF_ERROR(
        m_.LinearDx(m_.dh.ptr, d.D, P(o.out_proj), m_.dy.ptr, d.Di, M, d.D, d.Di, false));

    scan::SelectiveScanParams sp = Scan(l, d, o, state_in + conv_floats, nullptr, a);
    sp.out = m_.out_scratch.ptr;
    scan::SelectiveScanGrads sg;
    sg.dout = m_.dy.ptr;
    sg.dout_strides = {d.Tc * d.Di, d.Di};
    sg.dfinal_state = dstate + conv_floats;
    sg.dx = m_.duc.ptr;
    sg.dx_strides = {d.Tc * d.Di, d.Di};
    sg.ddelta = m_.ddtraw.ptr;
    sg.ddelta_strides = {d.Tc * d.Di, d.Di};
    sg.dA = m_.dA.ptr;
    sg.dB = m_.dxdbl.ptr + d.R;
    sg.dB_strides = {d.Tc * d.X, d.X};
    sg.dC = m_.dxdbl.ptr + d.R + d.S;
    sg.dC_strides = {d.Tc * d.X, d.X};
    sg.dD = m_.dD.ptr;
    sg.dz = m_.dxz.ptr + d.Di;
    sg.dz_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    sg.ddelta_bias = m_.ddt_bias.ptr;
    sg.dinitial_state = dstate_next + conv_floats;
    RWR_RETURN_IF_ERROR(scan::Backward(sp, sg, s));
    RWR_RETURN_IF_ERROR(
        cuda::ALogGrad(m_.dA.ptr, m_.A.ptr + l * d.Di * d.S, G(o.A_log), d.Di * d.S, s));
    RWR_RETURN_IF_ERROR(cuda::Add(G(o.D), m_.dD.ptr, d.Di, s));
    RWR_RETURN_IF_ERROR(cuda::Add(G(o.dt_proj_bias), m_.ddt_bias.ptr, d.Di, s));

    RWR_RETURN_IF_ERROR(
        m_.LinearDw(m_.ddtraw.ptr, d.Di, a.xdbl.ptr, d.X, G(o.dt_proj_weight), M, d.Di, d.R));
    RWR_RETURN_IF_ERROR(m_.LinearDx(m_.ddtraw.ptr, d.Di, P(o.dt_proj_weight), m_.dxdbl.ptr, d.X, M,
                                    d.Di, d.R, false));
    RWR_RETURN_IF_ERROR(m_.LinearDw(m_.dxdbl.ptr, d.X, a.uc.ptr, d.Di, G(o.x_proj), M, d.X, d.Di));
    RWR_RETURN_IF_ERROR(
        m_.LinearDx(m_.dxdbl.ptr, d.X, P(o.x_proj), m_.duc.ptr, d.Di, M, d.X, d.Di, true));

    scan::CausalConv1dParams cp = Conv(d, o, state_in, nullptr, a);
    cp.out = m_.out_scratch.ptr;
    cp.workspace = m_.conv_ws.ptr;
    scan::CausalConv1dGrads cg;
    cg.dout = m_.duc.ptr;
    cg.dout_strides = {d.Tc * d.Di, d.Di};
    cg.dfinal_state = dstate;
    cg.dx = m_.dxz.ptr;
    cg.dx_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    cg.dweight = m_.dconv_w.ptr;
    cg.dbias = m_.dconv_b.ptr;
    cg.dinitial_state = dstate_next;
    RWR_RETURN_IF_ERROR(scan::Backward(cp, cg, s));
    RWR_RETURN_IF_ERROR(cuda::Add(G(o.conv_weight), m_.dconv_w.ptr, d.Di * d.W, s));
    RWR_RETURN_IF_ERROR(cuda::Add(G(o.conv_bias), m_.dconv_b.ptr, d.Di, s));

    RWR_RETURN_IF_ERROR(
        m_.LinearDw(m_.dxz.ptr, 2 * d.Di, a.xn.ptr, d.D, G(o.in_proj), M, 2 * d.Di, d.D));
    RWR_RETURN_IF_ERROR(
        m_.LinearDx(m_.dxz.ptr, 2 * d.Di, P(o.in_proj), m_.dxn.ptr, d.D, M, 2 * d.Di, d.D, false));
    RWR_RETURN_IF_ERROR(cuda::RmsNormBackward(a.h_in.ptr, P(o.norm), a.rstd.ptr, m_.dxn.ptr,
                                              m_.dh.ptr, G(o.norm), M, d.D, s));
    return absl::OkStatus();
  }

  // Final norm, head, cross-entropy over the chunk's loss rows (all rows with logits).
  absl::StatusOr<LossSum> Head(const ChunkDims& d, float* host_logits, float loss_scale,
                               bool grad) {
    cudaStream_t s = m_.stream;
    const int64_t M = d.M();
    RWR_RETURN_IF_ERROR(cuda::RmsNorm(m_.h.ptr, P(layout_.norm_f()), m_.hn.ptr, m_.rstd_f.ptr, M,
                                      d.D, c_.norm_eps, s));
    std::vector<int32_t> rows, targets;
    std::vector<uint8_t> weights;
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.Tc; ++t) {
        const int64_t i = b * d.T + d.t0 + t;
        if (host_logits != nullptr || batch_.loss_mask[i]) {
          rows.push_back(static_cast<int32_t>(b * d.Tc + t));
          targets.push_back(batch_.targets[i]);
          weights.push_back(batch_.loss_mask[i] ? 1 : 0);
        }
      }
    }
    if (grad) RWR_CUDA(cudaMemsetAsync(m_.dhn.ptr, 0, M * d.D * 4, s));
    LossSum result;
    const int64_t kBlock = std::max<int64_t>(1, std::min<int64_t>(4096, (int64_t(1) << 28) / d.V));
    DeviceArena& ar = m_.arena;
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.rows, std::max<size_t>(rows.size(), 1)));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.row_targets, std::max<size_t>(rows.size(), 1)));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.row_weight, std::max<size_t>(rows.size(), 1)));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.block_in, kBlock * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.block_dh, kBlock * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.block_logits, kBlock * d.V));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.row_loss, kBlock));
    if (rows.empty()) goto norm_backward;
    RWR_CUDA(cudaMemcpyAsync(m_.rows.ptr, rows.data(), rows.size() * 4, cudaMemcpyHostToDevice, s));
    RWR_CUDA(cudaMemcpyAsync(m_.row_targets.ptr, targets.data(), targets.size() * 4,
                             cudaMemcpyHostToDevice, s));
    RWR_CUDA(cudaMemcpyAsync(m_.row_weight.ptr, weights.data(), weights.size(),
                             cudaMemcpyHostToDevice, s));
    for (size_t r0 = 0; r0 < rows.size(); r0 += kBlock) {
      const int64_t nr = std::min<int64_t>(kBlock, rows.size() - r0);
      RWR_RETURN_IF_ERROR(
          cuda::GatherRows(m_.hn.ptr, m_.rows.ptr + r0, m_.block_in.ptr, nr, d.D, s));
      RWR_RETURN_IF_ERROR(m_.Linear(m_.block_in.ptr, d.D, P(layout_.embedding()),
                                    m_.block_logits.ptr, d.V, nr, d.V, d.D));
      if (host_logits != nullptr) {
        std::vector<float> block(nr * d.V);
        RWR_CUDA(cudaMemcpyAsync(block.data(), m_.block_logits.ptr, nr * d.V * 4,
                                 cudaMemcpyDeviceToHost, s));
        RWR_CUDA(cudaStreamSynchronize(s));
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t row = rows[r0 + r];
          const int64_t i = (row / d.Tc) * d.T + d.t0 + row % d.Tc;
          std::copy(block.begin() + r * d.V, block.begin() + (r + 1) * d.V, host_logits + i * d.V);
        }
      }
      RWR_RETURN_IF_ERROR(cuda::CrossEntropy(m_.block_logits.ptr, nr, d.V, m_.row_targets.ptr + r0,
                                             m_.row_weight.ptr + r0, m_.row_loss.ptr, loss_scale,
                                             grad, s));
      std::vector<float> losses(nr);
      RWR_CUDA(cudaMemcpyAsync(losses.data(), m_.row_loss.ptr, nr * 4, cudaMemcpyDeviceToHost, s));
      if (grad) {
        RWR_RETURN_IF_ERROR(m_.LinearDx(m_.block_logits.ptr, d.V, P(layout_.embedding()),
                                        m_.block_dh.ptr, d.D, nr, d.V, d.D, false));
        RWR_RETURN_IF_ERROR(
            cuda::ScatterRows(m_.block_dh.ptr, m_.rows.ptr + r0, m_.dhn.ptr, nr, d.D, s));
        RWR_RETURN_IF_ERROR(m_.LinearDw(m_.block_logits.ptr, d.V, m_.block_in.ptr, d.D,
                                        G(layout_.embedding()), nr, d.V, d.D));
      }
      RWR_CUDA(cudaStreamSynchronize(s));
      for (int64_t r = 0; r < nr; ++r) {
        if (weights[r0 + r]) {
          result.loss_sum += losses[r];
          result.tokens += 1;
        }
      }
    }
  norm_backward:
    if (grad) {
      RWR_CUDA(cudaMemsetAsync(m_.dh.ptr, 0, M * d.D * 4, s));
      RWR_RETURN_IF_ERROR(cuda::RmsNormBackward(m_.h.ptr, P(layout_.norm_f()), m_.rstd_f.ptr,
                                                m_.dhn.ptr, m_.dh.ptr, G(layout_.norm_f()), M, d.D,
                                                s));
    }
    return result;
  }

  absl::Status Embed(const ChunkDims& d) {
    return cuda::Embed(m_.tokens.ptr, d.T, d.t0, d.Tc, d.M(), P(layout_.embedding()), m_.h.ptr, d.D,
                       m_.stream);
  }
  absl::Status EmbedBackward(const ChunkDims& d) {
    return cuda::EmbedBackward(m_.tokens.ptr, d.T, d.t0, d.Tc, d.M(), m_.dh.ptr,
                               G(layout_.embedding()), d.D, m_.stream);
  }

  // Uploads the batch and sizes every per-chunk buffer.
  absl::Status Prepare(int64_t chunk_len, int64_t num_chunks, bool grad) {
    DeviceArena& ar = m_.arena;
    const int64_t B = batch_.batch, T = batch_.seq_len, n = B * T;
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.tokens, n));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.reset, n));
    RWR_CUDA(
        cudaMemcpyAsync(m_.tokens.ptr, batch_.tokens, n * 4, cudaMemcpyHostToDevice, m_.stream));
    std::vector<uint8_t> reset(n, 0);
    if (batch_.reset != nullptr) std::copy(batch_.reset, batch_.reset + n, reset.begin());
    for (int64_t b = 0; b < B; ++b) reset[b * T] = 1;
    RWR_CUDA(cudaMemcpyAsync(m_.reset.ptr, reset.data(), n, cudaMemcpyHostToDevice, m_.stream));
    const ChunkDims d = Dims(0, chunk_len);
    const int64_t M = d.M();
    for (auto* b : {&m_.h, &m_.dh, &m_.dtmp_d, &m_.hn, &m_.dhn, &m_.dxn})
      RWR_RETURN_IF_ERROR(ar.Alloc(b, M * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.rstd_f, M));
    for (auto* b : {&m_.dy, &m_.duc, &m_.ddtraw, &m_.out_scratch})
      RWR_RETURN_IF_ERROR(ar.Alloc(b, M * d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dxdbl, M * d.X));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dxz, M * 2 * d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dA, d.Di * d.S));
    for (auto* b : {&m_.dD, &m_.ddt_bias, &m_.dconv_b}) RWR_RETURN_IF_ERROR(ar.Alloc(b, d.Di));
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dconv_w, d.Di * d.W));
    scan::CausalConv1dParams probe;
    probe.batch = B;
    probe.seqlen = chunk_len;
    probe.dim = d.Di;
    probe.width = d.W;
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.conv_ws, scan::ConvWorkspaceBytes(probe) + 256));
    const int64_t sf = m_.StateFloats(B);
    RWR_RETURN_IF_ERROR(ar.Alloc(&m_.states, (num_chunks + 1) * c_.n_layer * sf));
    RWR_CUDA(cudaMemsetAsync(m_.states.ptr, 0, c_.n_layer * sf * 4, m_.stream));  // chunk 0 in
    if (grad) {
      RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dstates, c_.n_layer * sf));
      RWR_RETURN_IF_ERROR(ar.Alloc(&m_.dstates_next, c_.n_layer * sf));
      RWR_CUDA(cudaMemsetAsync(m_.dstates.ptr, 0, c_.n_layer * sf * 4, m_.stream));
      m_.acts.resize(c_.n_layer);
      for (auto& a : m_.acts) RWR_RETURN_IF_ERROR(Alloc(a, d, true));
    }
    RWR_RETURN_IF_ERROR(Alloc(m_.scratch_acts, d, true));
    // A = −exp(A_log), per layer.
    for (int64_t l = 0; l < c_.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(cuda::NegExp(P(layout_.layer(l).A_log), m_.A.ptr + l * d.Di * d.S,
                                       d.Di * d.S, m_.stream));
    }
    return absl::OkStatus();
  }

 private:
  MambaCuda::Impl& m_;
  const MambaConfig& c_;
  const ParamLayout& layout_;
  const TokenBatch& batch_;
};

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<std::unique_ptr<MambaCuda>> MambaCuda::Create(const MambaConfig& config,
                                                             GemmPrecision precision) {
  if (!CudaDeviceAvailable()) return absl::UnavailableError("no CUDA device");
  if (config.d_state != 16) {
    return absl::UnimplementedError(
        fmt::format("CUDA path needs state_size 16 (the scan kernels), got {}", config.d_state));
  }
  std::unique_ptr<MambaCuda> model(new MambaCuda());
  model->layout_ = ParamLayout::ForMamba(config);
  model->impl_ = std::make_unique<Impl>();
  Impl& m = *model->impl_;
  m.c = config;
  m.precision = precision;
  RWR_CUDA(cudaStreamCreate(&m.stream));
  RWR_CUBLAS(cublasCreate(&m.cublas));
  RWR_CUBLAS(cublasSetStream(m.cublas, m.stream));
  const int64_t n = model->layout_.total();
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.params, n));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.grads, n));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.A, config.n_layer * config.d_inner * config.d_state));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.norm_acc, 1));
  RWR_CUDA(cudaMemset(m.params.ptr, 0, n * 4));
  RWR_CUDA(cudaMemset(m.grads.ptr, 0, n * 4));
  return model;
}

MambaCuda::~MambaCuda() = default;

absl::Status MambaCuda::UploadParams(std::span<const float> params) {
  if (static_cast<int64_t>(params.size()) != layout_.total())
    return absl::InvalidArgumentError("UploadParams: size mismatch");
  RWR_CUDA(cudaMemcpy(impl_->params.ptr, params.data(), params.size() * 4, cudaMemcpyHostToDevice));
  return absl::OkStatus();
}
absl::Status MambaCuda::DownloadParams(std::span<float> params) const {
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(params.data(), impl_->params.ptr, params.size() * 4, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}
absl::Status MambaCuda::DownloadGrads(std::span<float> grads) const {
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(grads.data(), impl_->grads.ptr, grads.size() * 4, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}
absl::Status MambaCuda::ZeroGrads() {
  RWR_CUDA(cudaMemsetAsync(impl_->grads.ptr, 0, layout_.total() * 4, impl_->stream));
  return absl::OkStatus();
}
int64_t MambaCuda::peak_bytes() const { return impl_->arena.peak; }

absl::StatusOr<LossSum> MambaCuda::Forward(const TokenBatch& batch, int64_t chunk_len,
                                           float* host_logits) {
  const int64_t T = batch.seq_len;
  if (chunk_len <= 0 || chunk_len > T) chunk_len = T;
  const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
  CudaRunner run(*impl_, layout_, batch);
  RWR_RETURN_IF_ERROR(run.Prepare(chunk_len, 1, false));
  LossSum total;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const ChunkDims d = run.Dims(c * chunk_len, std::min(chunk_len, T - c * chunk_len));
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < impl_->c.n_layer; ++l) {
      // states slot (c % 2) in, (c + 1) % 2 out
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, run.State(c % 2, l), run.State((c + 1) % 2, l),
                                           impl_->scratch_acts));
    }
    RWR_ASSIGN_OR_RETURN(LossSum part, run.Head(d, host_logits, 0.f, false));
    total.loss_sum += part.loss_sum;
    total.tokens += part.tokens;
  }
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  return total;
}

absl::StatusOr<LossSum> MambaCuda::ForwardBackward(const TokenBatch& batch, int64_t chunk_len,
                                                   float loss_scale) {
  const int64_t T = batch.seq_len;
  if (chunk_len <= 0 || chunk_len > T) chunk_len = T;
  const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
  CudaRunner run(*impl_, layout_, batch);
  Impl& m = *impl_;
  RWR_RETURN_IF_ERROR(run.Prepare(chunk_len, num_chunks, true));
  for (int64_t c = 0; c + 1 < num_chunks; ++c) {
    const ChunkDims d = run.Dims(c * chunk_len, chunk_len);
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < m.c.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(
          run.LayerForward(l, d, run.State(c, l), run.State(c + 1, l), m.scratch_acts));
    }
  }
  LossSum total;
  const int64_t sf = m.StateFloats(batch.batch);
  for (int64_t c = num_chunks - 1; c >= 0; --c) {
    const ChunkDims d = run.Dims(c * chunk_len, std::min(chunk_len, T - c * chunk_len));
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < m.c.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, run.State(c, l), nullptr, m.acts[l]));
    }
    RWR_ASSIGN_OR_RETURN(LossSum part, run.Head(d, nullptr, loss_scale, true));
    total.loss_sum += part.loss_sum;
    total.tokens += part.tokens;
    for (int64_t l = m.c.n_layer - 1; l >= 0; --l) {
      RWR_RETURN_IF_ERROR(run.LayerBackward(l, d, m.acts[l], run.State(c, l),
                                            m.dstates.ptr + l * sf, m.dstates_next.ptr + l * sf));
    }
    std::swap(m.dstates, m.dstates_next);
    RWR_RETURN_IF_ERROR(run.EmbedBackward(d));
  }
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  return total;
}

namespace {

absl::Status EnsureOptimizer(MambaCuda::Impl& m, const ParamLayout& layout) {
  const int64_t n = layout.total();
  if (m.exp_avg.ptr == nullptr) {
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.exp_avg, n));
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.exp_avg_sq, n));
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.decay, n));
    RWR_CUDA(cudaMemset(m.exp_avg.ptr, 0, n * 4));
    RWR_CUDA(cudaMemset(m.exp_avg_sq.ptr, 0, n * 4));
    std::vector<uint8_t> decay(n, 0);
    for (const ParamSpec& spec : layout.specs()) {
      if (spec.weight_decay)
        std::fill(decay.begin() + spec.offset, decay.begin() + spec.offset + spec.size, 1);
    }
    RWR_CUDA(cudaMemcpy(m.decay.ptr, decay.data(), n, cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status MambaCuda::DownloadOptimizer(std::vector<float>* exp_avg,
                                          std::vector<float>* exp_avg_sq, int64_t* step) const {
  const int64_t n = layout_.total();
  exp_avg->assign(n, 0.f);
  exp_avg_sq->assign(n, 0.f);
  *step = impl_->adam_step;
  if (impl_->exp_avg.ptr == nullptr) return absl::OkStatus();
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(exp_avg->data(), impl_->exp_avg.ptr, n * 4, cudaMemcpyDeviceToHost));
  RWR_CUDA(cudaMemcpy(exp_avg_sq->data(), impl_->exp_avg_sq.ptr, n * 4, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status MambaCuda::UploadOptimizer(std::span<const float> exp_avg,
                                        std::span<const float> exp_avg_sq, int64_t step) {
  const int64_t n = layout_.total();
  if (static_cast<int64_t>(exp_avg.size()) != n || static_cast<int64_t>(exp_avg_sq.size()) != n) {
    return absl::InvalidArgumentError("UploadOptimizer: moment sizes differ from the layout");
  }
  RWR_RETURN_IF_ERROR(EnsureOptimizer(*impl_, layout_));
  RWR_CUDA(cudaMemcpy(impl_->exp_avg.ptr, exp_avg.data(), n * 4, cudaMemcpyHostToDevice));
  RWR_CUDA(cudaMemcpy(impl_->exp_avg_sq.ptr, exp_avg_sq.data(), n * 4, cudaMemcpyHostToDevice));
  impl_->adam_step = step;
  return absl::OkStatus();
}

absl::StatusOr<double> MambaCuda::ClipAndStep(double clip_norm, double lr, const AdamWOptions& o) {
  Impl& m = *impl_;
  const int64_t n = layout_.total();
  RWR_RETURN_IF_ERROR(EnsureOptimizer(m, layout_));
  RWR_CUDA(cudaMemsetAsync(m.norm_acc.ptr, 0, 8, m.stream));
  RWR_RETURN_IF_ERROR(cuda::SumSquares(m.grads.ptr, n, m.norm_acc.ptr, m.stream));
  double sumsq = 0;
  RWR_CUDA(cudaMemcpyAsync(&sumsq, m.norm_acc.ptr, 8, cudaMemcpyDeviceToHost, m.stream));
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  const double norm = std::sqrt(sumsq);
  if (!std::isfinite(norm)) return norm;
  const double coef = clip_norm > 0 ? std::min(1.0, clip_norm / (norm + 1e-6)) : 1.0;
  ++m.adam_step;
  const double bc1 = 1 - std::pow(o.beta1, double(m.adam_step));
  const double bc2 = 1 - std::pow(o.beta2, double(m.adam_step));
  RWR_RETURN_IF_ERROR(cuda::AdamW(m.params.ptr, m.grads.ptr, m.exp_avg.ptr, m.exp_avg_sq.ptr,
                                  m.decay.ptr, n, o.beta1, o.beta2, static_cast<float>(lr / bc1),
                                  static_cast<float>(1 - lr * o.weight_decay),
                                  static_cast<float>(1 / std::sqrt(bc2)), static_cast<float>(o.eps),
                                  static_cast<float>(coef), m.stream));
  // Refresh A = −exp(A_log) lazily: Prepare recomputes it on every call.
  return norm;
}

}  // namespace rwr::trainer
