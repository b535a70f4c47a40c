// Mamba-1 LM on CUDA; see mamba_cuda.h. Structure mirrors mamba_cpu.cc (read that first): a
// Runner per call; for a sample longer than one chunk, pass 1 runs the chunks but the last
// forward only, keeping the state at each chunk boundary; pass 2 takes the chunks last to first,
// re-runs each one's forward keeping its activations, and runs its backward.
//
// What a layer keeps from its forward for its backward (LayerActs): the residual stream entering
// it (fp32), the norm statistics, the in_proj output xz, the x_proj output, and the scan's state
// checkpoints. Everything else — the normed input, the conv output, Δ, the scan output (handed
// back by the scan's backward) — is recomputed in the backward, which costs little (no large
// GEMM is re-run, no extra scan pass). At Mamba-2.8B sizes in bf16 that is about 31 KB per token
// per layer, plus the scan's 20 KB of checkpoints.
#include "trainer/mamba_cuda.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <map>
#include <string_view>
#include <tuple>
#include <vector>

#include "common/call_status_cuda.h"
#include "common/fresh_memory.h"
#include "common/status.h"
#include "fmt/format.h"
#include "scan_kernels/causal_conv1d.h"
#include "scan_kernels/selective_scan.h"
#include "spdlog/spdlog.h"
#include "trainer/few_rows_linear.h"
#include "trainer/gemm_runner.h"
#include "trainer/mamba_cuda_kernels.h"
#include "trainer/nccl_collectives.h"

namespace rwr::trainer {
namespace {

using cuda::Act;

// ---- device buffers ---------------------------------------------------------------------------

template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  int64_t count = 0;
};

// Bytes of device memory a model holds now and at most so far, over all its arenas.
struct MemoryTally {
  int64_t bytes = 0, peak = 0;
  int64_t budget = 0;  // > 0: allocations past this many bytes fail as if the device were full
};

// Owns device allocations; a buffer grows (never shrinks) to the largest size asked of it. Freed
// all at once when the arena goes.
struct DeviceArena {
  explicit DeviceArena(MemoryTally* t) : tally(t) {}
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;
  MemoryTally* tally;
  std::vector<std::pair<void*, int64_t>> all;
  template <typename T>
  absl::Status Alloc(DeviceBuffer<T>* b, int64_t count) {
    if (b->count >= count && b->ptr != nullptr) return absl::OkStatus();
    if (b->ptr != nullptr) Free(b->ptr);
    b->ptr = nullptr;
    b->count = 0;
    void* p = nullptr;
    const int64_t n = std::max<int64_t>(count, 1) * sizeof(T);
    if (tally->budget > 0 && tally->bytes + n > tally->budget) {
      return absl::ResourceExhaustedError(
          fmt::format("device memory budget of {} MiB reached ({} MiB held, {} MiB asked)",
                      tally->budget >> 20, tally->bytes >> 20, n >> 20));
    }
    if (absl::Status s = RWR_CUDA_STATUS(cudaMalloc(&p, n)); !s.ok()) {
      cudaGetLastError();  // clear it, or the next launch check would report this failure
      return s;
    }
    all.emplace_back(p, n);
    tally->bytes += n;
    tally->peak = std::max(tally->peak, tally->bytes);
    b->ptr = static_cast<T*>(p);
    b->count = count;
    return absl::OkStatus();
  }
  void Free(void* p) {
    auto it = std::find_if(all.begin(), all.end(), [p](const auto& a) { return a.first == p; });
    cudaFree(p);
    tally->bytes -= it->second;
    all.erase(it);
  }
  ~DeviceArena() {
    for (const auto& [p, n] : all) {
      cudaFree(p);
      tally->bytes -= n;
    }
  }
};

// `elements` past p, for a buffer of activations of `es` bytes each.
inline void* At(void* p, int64_t elements, int64_t es) {
  return static_cast<char*>(p) + elements * es;
}
inline const void* At(const void* p, int64_t elements, int64_t es) {
  return static_cast<const char*>(p) + elements * es;
}

}  // namespace

// ---- implementation state ---------------------------------------------------------------------

// GPU time per kind of work when switched on (MambaCuda::SetPhaseTiming): a pool of CUDA events,
// two per timed call, read back by TakePhaseTimes. A call is timed under its kind ("gemm", "scan",
// ...) and, where it says one, a detail ("in_proj.dx"): the kinds add up to the timed GPU work,
// the details split a kind.
constexpr const char* kPhaseKinds[] = {"gemm", "scan",  "conv",     "norm",
                                       "head", "other", "optimizer"};
struct PhaseSpan {
  const char* kind;
  const char* what;  // or null
  const char* role;  // or null: fwd, dx, dw of a GEMM
  size_t start;      // index of the start event; the end event follows it
};

struct PhaseClock {
  bool on = false;
  std::vector<cudaEvent_t> events;
  size_t used = 0;
  std::vector<PhaseSpan> spans;
  ~PhaseClock() {
    for (cudaEvent_t e : events) cudaEventDestroy(e);
  }
  absl::StatusOr<cudaEvent_t> Next() {
    if (used == events.size()) {
      cudaEvent_t e = nullptr;
      RWR_CUDA(cudaEventCreate(&e));
      events.push_back(e);
    }
    return events[used++];
  }
};

// What one layer's forward keeps for its backward (see the top of this file).
struct LayerActs {
  DeviceBuffer<float> h_in, rstd;
  DeviceBuffer<char> xz, xdbl, ckpt;
  // Kept from the forward where memory allows (see KeptActs), else empty and recomputed by the
  // backward into the call's working buffers: the normed input, the conv output, Δraw.
  DeviceBuffer<char> xn, uc, dtraw;
};

// Which recomputable activations every layer keeps instead (decided once per call shape, from
// the memory the kept set leaves; the backward gives the same bits either way).
struct KeptActs {
  bool decided = false;
  bool xn = false, uc = false, dtraw = false;
};

// The buffers of one call, sized for its batch and chunk shape. They live in their own arena so
// that a shape that does not fit can be released whole and a smaller chunk tried.
struct CallBuffers {
  explicit CallBuffers(MemoryTally* tally) : arena(tally) {
    static std::atomic<int64_t> next_id{0};
    id = ++next_id;
  }
  int64_t id = 0;  // unique per process: a decode graph captured on these buffers names them
  DeviceArena arena;
  DeviceBuffer<int32_t> tokens, rows, row_targets, emb_ids, emb_offsets, emb_rows;
  DeviceBuffer<uint8_t> reset, row_weight;
  std::vector<LayerActs> acts;  // per layer, for the pass that runs the backward
  LayerActs pass_acts;          // one set reused by every layer in forward-only passes
  KeptActs kept;
  // One layer's working buffers (forward temporaries, backward recomputation and gradients).
  DeviceBuffer<char> xn, uc, dtraw, y, dh_act, dy, duc, ddtraw, dxdbl, dxz, hn, block_in,
      block_dlogits, scan_scratch, conv_ws;
  DeviceBuffer<float> h, dh, dxn, dA, dD, ddt_bias, dconv_w, dconv_b, rstd_f, dhn, block_logits,
      block_dh, row_loss, norm_scratch;
  DeviceBuffer<float> states;                 // [chunk][layer] conv + ssm
  DeviceBuffer<float> dstates, dstates_next;  // [layer] conv + ssm
};

// Which gradient tensors hold this accumulation's values. ZeroGrads only forgets them instead of
// clearing 4 bytes per parameter (3.4 ms of a 414 ms step at 2.8B, 2048 × 4): a tensor's first
// writer since then overwrites it, later writers add, and a tensor no writer reached reads as
// zeros (cleared before the optimizer reads it; zeros in a download).
class GradWrites {
 public:
  // Every tensor live: the gradients start cleared.
  void Init(const ParamLayout& layout) {
    for (const ParamSpec& spec : layout.specs()) {
      // An empty tensor shares its offset with the next one and has nothing to write.
      if (spec.size > 0) spans_.push_back({spec.offset, spec.size});
    }
    std::sort(spans_.begin(), spans_.end());
    live_.assign(spans_.size(), 1);
  }
  void Forget() { std::fill(live_.begin(), live_.end(), 0); }
  // Whether the writer of the tensor at `offset` adds to it; it is live afterwards.
  bool Add(int64_t offset) {
    uint8_t& live = live_[Index(offset)];
    const bool add = live != 0;
    live = 1;
    return add;
  }
  // (offset, size) of each tensor not written since Forget that starts in [lo, hi).
  std::vector<std::pair<int64_t, int64_t>> Unwritten(
      int64_t lo = 0, int64_t hi = std::numeric_limits<int64_t>::max()) const {
    std::vector<std::pair<int64_t, int64_t>> out;
    for (size_t i = 0; i < spans_.size(); ++i) {
      if (!live_[i] && spans_[i].first >= lo && spans_[i].first < hi) out.push_back(spans_[i]);
    }
    return out;
  }
  // Every tensor that starts in [lo, hi) counts as written.
  void MarkLive(int64_t lo, int64_t hi) {
    for (size_t i = 0; i < spans_.size(); ++i) {
      if (spans_[i].first >= lo && spans_[i].first < hi) live_[i] = 1;
    }
  }

 private:
  size_t Index(int64_t offset) const {
    const auto it = std::lower_bound(spans_.begin(), spans_.end(), std::pair{offset, int64_t{0}});
    if (it == spans_.end() || it->first != offset) {  // a writer's offset not from the layout
      std::fprintf(stderr, "GradWrites: no parameter at offset %lld\n", (long long)offset);
      std::abort();
    }
    return static_cast<size_t>(it - spans_.begin());
  }
  std::vector<std::pair<int64_t, int64_t>> spans_;  // (offset, size), by offset
  std::vector<uint8_t> live_;
};

// A gradient tensor to write and whether to add to it (false: overwrite, see GradWrites).
struct GradOut {
  float* ptr;
  bool add;
};

// cuBLASLt's scratch for the GEMMs (split-K partials): Hopper's fastest candidates want up to
// 32 MiB.
constexpr int64_t kGemmWorkspaceBytes = int64_t{32} << 20;
// Device memory left free after a call's buffers, for what is allocated on first use (lazily
// loaded kernels, the GEMM tuning's events).
constexpr size_t kHeadroomBytes = size_t{512} << 20;

namespace {

// A forward GEMM, Y(m, n) = X(m, k)·W(n, k)ᵀ + beta·Y (MambaCuda::Impl::Linear): X and W are
// activations, Y fp32 where y_f32 says so, else an activation; `what` names the weight for phase
// timing. Described once, so that the question "does it run as a few-rows linear" (TakesFewRows)
// is asked of the very call that runs.
struct LinearCall {
  const char* what;
  const void* x;
  int64_t ldx;
  const void* w;
  void* y;
  bool y_f32;
  int64_t ldy;
  int64_t m, n, k;
  float beta = 0.f;   // 1: adds into Y (the residual stream)
  bool timed = true;  // false: a shape that changes from call to call (GemmProblem::timed)
};

// The optional parts of an input-gradient GEMM (MambaCuda::Impl::LinearDx).
struct GradOptions {
  float beta = 0.f;   // dX = dY·W + beta·dX
  bool timed = true;  // as LinearCall::timed
};

}  // namespace

struct MambaCuda::Impl {
  MambaConfig c;
  Act act = Act::kF32;  // activations and GEMM operands
  MemoryTally tally;
  DeviceArena arena{&tally};  // weights, gradients, optimizer state
  cudaStream_t stream = nullptr;
  DeviceBuffer<char> gemm_workspace;
  std::unique_ptr<GemmRunner> gemms;
  DeviceBuffer<float> params, grads, exp_avg, exp_avg_sq, A;  // A: per layer (Di, S)
  DeviceBuffer<char> params16;  // bf16 copy of params (kBf16): the GEMMs' weights
  // A bf16 model made for inference keeps in `params` only the tensors its kernels read in fp32
  // (embedding, norms, conv, Δ bias, A_log, D: 5% of Mamba-2.8B), packed one after another; the
  // GEMM weights live in params16 alone. Empty: `params` holds the whole layout.
  struct Fp32Span {
    int64_t offset, packed, size;  // in the layout, in `params`, elements
  };
  std::vector<Fp32Span> fp32_spans;  // by layout offset
  DeviceBuffer<uint32_t> decay;      // bit i: parameter i takes weight decay
  int64_t adam_step = 0;
  // Data parallelism (ZeRO-1): params, grads and params16 hold ShardRange::Padded elements (world
  // equal ranges, zero past the layout); the moments cover `shard`, this rank's range, and
  // owners[r] is rank r's.
  DeviceCollectives* dp = nullptr;
  ShardRange shard;
  std::vector<ShardRange> owners;
  int64_t padded = 0;
  // The gradient accumulation ZeroGrads started: the ForwardBackward calls it announced (0: not
  // said) and those made so far, and whether the last one summed the gradients over the ranks
  // (SumBucket) so that ClipAndStep need not.
  int64_t accumulation = 0, accumulated = 0;
  bool grads_summed = false;
  bool sums_queued = false;  // SumBucket queued sums the main stream has not waited for
  // The updated parameters reach the next call's forward bucket by bucket — the embedding, each
  // layer, the final norm, in the order the forward reads them — on a second stream (comm_stream):
  // with data parallelism the owners' broadcasts (the all-gather), on one GPU AdamW itself.
  // ClipAndStep records bucket_ready[k] once bucket k is there; the forward waits for a bucket's
  // event before it reads the bucket, and computes that layer's A then (a_fresh). bucket_begin has
  // one more entry than bucket_ready. A model for inference has no buckets (comm_stream null).
  cudaStream_t comm_stream = nullptr;
  cudaEvent_t main_mark = nullptr, comm_mark = nullptr;
  std::vector<int64_t> bucket_begin;
  std::vector<cudaEvent_t> bucket_ready;
  std::vector<char> a_fresh;
  bool overlap_gather = true;     // SetOverlapParamGather
  bool overlap_optimizer = true;  // SetOverlapOptimizer
  bool overlap_reduce = true;     // SetOverlapGradReduce

  absl::Status SetUpBuckets(const ParamLayout& layout) {
    // With collectives the highest priority: their blocks take multiprocessors as the compute
    // kernels' blocks finish, instead of waiting behind a whole kernel's grid. One GPU's AdamW
    // the lowest: the forward's kernels go first and the update fills what they leave (the
    // highest measured the same, docs/benchmarks.md).
    int least = 0, greatest = 0;
    RWR_CUDA(cudaDeviceGetStreamPriorityRange(&least, &greatest));
    RWR_CUDA(cudaStreamCreateWithPriority(&comm_stream, cudaStreamNonBlocking,
                                          dp != nullptr ? greatest : least));
    RWR_CUDA(cudaEventCreateWithFlags(&main_mark, cudaEventDisableTiming));
    RWR_CUDA(cudaEventCreateWithFlags(&comm_mark, cudaEventDisableTiming));
    bucket_begin = {0};
    for (int64_t l = 0; l < c.n_layer; ++l) bucket_begin.push_back(layout.layer(l).norm);
    bucket_begin.push_back(layout.norm_f());
    bucket_begin.push_back(padded);
    bucket_ready.resize(bucket_begin.size() - 1);
    for (cudaEvent_t& e : bucket_ready) {
      RWR_CUDA(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      RWR_CUDA(cudaEventRecord(e, comm_stream));  // nothing pending yet
    }
    a_fresh.assign(c.n_layer, 0);
    return absl::OkStatus();
  }
  // `to` waits for what `from` has queued so far.
  absl::Status Follow(cudaStream_t to, cudaStream_t from, cudaEvent_t mark) {
    RWR_CUDA(cudaEventRecord(mark, from));
    RWR_CUDA(cudaStreamWaitEvent(to, mark));
    return absl::OkStatus();
  }
  // The stream waits until parameter bucket k has arrived (nothing without buckets).
  // Not while a decode graph is captured: a captured stream may not wait for another stream's
  // event, and Advance waited for every bucket before it.
  absl::Status AwaitBucket(size_t k) {
    if (comm_stream == nullptr) return absl::OkStatus();
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    RWR_CUDA(cudaStreamIsCapturing(stream, &capturing));
    if (capturing == cudaStreamCaptureStatusNone) {
      RWR_CUDA(cudaStreamWaitEvent(stream, bucket_ready[k]));
    }
    return absl::OkStatus();
  }
  absl::Status AwaitAllParams() { return AwaitBucket(bucket_ready.size() - 1); }
  // Data parallelism: the part of bucket k each rank owns, as (begin, end, owner) — where the
  // bucket's gradient sums go and its updated parameters come from.
  struct OwnedPart {
    int64_t begin, end;
    int owner;
  };
  std::vector<OwnedPart> BucketOwners(size_t k) const {
    std::vector<OwnedPart> parts;
    for (int owner = 0; owner < static_cast<int>(owners.size()); ++owner) {
      const int64_t lo = std::max(owners[owner].begin, bucket_begin[k]);
      const int64_t hi = std::min(owners[owner].end, bucket_begin[k + 1]);
      if (lo < hi) parts.push_back({lo, hi, owner});
    }
    return parts;
  }
  // Counts a ForwardBackward call of the accumulation ZeroGrads started, refusing one past the
  // calls it announced; returns whether this call sums the gradients over the ranks as its
  // backward writes them (SumBucket).
  absl::StatusOr<bool> CountCall() {
    if (accumulation > 0 && accumulated == accumulation) {
      return absl::FailedPreconditionError(fmt::format(
          "MambaCuda::ForwardBackward: call {} of an accumulation ZeroGrads announced as {}: the "
          "gradients are complete (and summed over the ranks); ClipAndStep or ZeroGrads first",
          accumulated + 1, accumulation));
    }
    ++accumulated;
    return dp != nullptr && overlap_reduce && !clock.on && accumulated == accumulation;
  }
  // The main stream waits for the gradient sums SumBucket queued on comm_stream (nothing where
  // none are queued). ClipAndStep waits for them before it reads the gradients; so must whatever
  // reads or overwrites them when no ClipAndStep came (a step skipped for a non-finite loss, or
  // a call that failed half way: the next accumulation's first writers overwrite them).
  absl::Status AwaitGradSums() {
    if (!sums_queued) return absl::OkStatus();
    sums_queued = false;
    return Follow(stream, comm_stream, comm_mark);
  }
  // Data parallelism: sums bucket k of the gradients over the ranks into its owners' ranges, on
  // comm_stream once the main stream has written it (a tensor in it no writer reached is cleared
  // first). The backward calls it for each bucket it has finished, so the sums run beside the
  // layers still to go.
  absl::Status SumBucket(size_t k) {
    RWR_RETURN_IF_ERROR(ClearUnwritten(bucket_begin[k], bucket_begin[k + 1]));
    RWR_RETURN_IF_ERROR(Follow(comm_stream, stream, main_mark));
    std::vector<DeviceCollectives::Piece> pieces;
    for (const OwnedPart& part : BucketOwners(k)) {
      pieces.push_back({grads.ptr + part.begin, (part.end - part.begin) * 4, part.owner});
    }
    sums_queued = true;
    return pieces.empty() ? absl::OkStatus() : dp->ReduceSum(pieces, comm_stream);
  }
  std::unique_ptr<CallBuffers> call;  // this call's buffers (Prepare sizes them)
  std::map<std::tuple<int64_t, int64_t, bool>, int64_t> fitted_chunk;  // (B, T, grad) → chunk
  std::tuple<int64_t, int64_t, bool> call_shape{0, 0, false};          // what `call` is sized for
  int64_t last_chunk_len = 0;
  DeviceBuffer<double> norm_acc;  // [0] the sum, then SumSquares' scratch
  GradWrites grad_writes;
  PhaseClock clock;
  bool keep_acts = true;  // keep recomputable activations where memory allows (KeptActs)
  // Generation (Advance): the sequence's state, [layer] conv + ssm as in CallBuffers::states; and
  // GEMMs untimed while it runs, since every prompt length would be a new shape to time.
  DeviceBuffer<float> sequence;
  int64_t sequence_rows = 0;
  bool untimed_gemms = false;
  // A decode step (one token per row) replays a CUDA graph of the step's ~700 kernels, captured
  // on the first such step after the call buffers were sized for it; a step of another shape,
  // new call buffers or a moved state buffer capture again. Off (the plain path) where a capture
  // fails, or by SetDecodeGraphs(false).
  struct DecodeGraph {
    cudaGraphExec_t exec = nullptr;
    int64_t call_id = 0, rows = 0;
    const float* sequence = nullptr;
  };
  DecodeGraph decode_graph;
  bool decode_graphs = true;
  // Whether A = −exp(A_log) (`A`) is that of the parameters as they are now: a full ComputeA ran
  // after their last change. A decode step's graph holds no A of its own (64 launches a step at
  // 2.8B for values that change only with the parameters); DecodeStepWithGraph brings A up to
  // date before it replays one.
  bool a_current = false;
  void DropDecodeGraph() {
    if (decode_graph.exec != nullptr) cudaGraphExecDestroy(decode_graph.exec);
    decode_graph = {};
  }

  ~Impl() {
    DropDecodeGraph();
    gemms.reset();
    for (cudaEvent_t e : bucket_ready) cudaEventDestroy(e);
    if (main_mark) cudaEventDestroy(main_mark);
    if (comm_mark) cudaEventDestroy(comm_mark);
    if (comm_stream) cudaStreamDestroy(comm_stream);
    if (stream) cudaStreamDestroy(stream);
  }

  // One layer's recurrent state: the conv window, then the scan state, each padded to 16 bytes
  // (the scan wants its state 16-byte aligned whatever B·d_inner is).
  static int64_t Pad4(int64_t floats) { return (floats + 3) / 4 * 4; }
  int64_t ConvStateFloats(int64_t B) const { return Pad4(B * c.d_inner * (c.d_conv - 1)); }
  int64_t StateFloats(int64_t B) const {
    return ConvStateFloats(B) + Pad4(B * c.d_inner * c.d_state);
  }
  int64_t es() const { return cuda::ActBytes(act); }  // bytes per activation
  // After a change of what the buffers depend on (memory budget, keeping activations): the next
  // call fits its chunk, sizes its buffers and decides what to keep afresh.
  void SizeNextCallAfresh() {
    call_shape = {};
    fitted_chunk.clear();
  }
  GradOut Grad(int64_t offset) { return {grads.ptr + offset, grad_writes.Add(offset)}; }
  // UploadParams of a model with fp32_spans: the kept tensors go to `params` and from there to
  // params16; the GEMM weights, kept in bf16 only, pass through a staging buffer of at most one
  // tensor (64 MiB at most), so the upload never holds their fp32 size.
  absl::Status UploadPacked(std::span<const float> host) {
    std::vector<std::pair<int64_t, int64_t>> gemm_only;  // (offset, size): the gaps between spans
    int64_t at = 0, largest = 0;
    for (const Fp32Span& span : fp32_spans) {
      RWR_CUDA(cudaMemcpy(params.ptr + span.packed, host.data() + span.offset, span.size * 4,
                          cudaMemcpyHostToDevice));
      RWR_RETURN_IF_ERROR(cuda::ToBf16(params.ptr + span.packed, params16.ptr + span.offset * 2,
                                       span.size, stream));
      if (span.offset > at) gemm_only.push_back({at, span.offset - at});
      at = span.offset + span.size;
    }
    if (static_cast<int64_t>(host.size()) > at) gemm_only.push_back({at, host.size() - at});
    for (const auto& [offset, size] : gemm_only) largest = std::max(largest, size);
    constexpr int64_t kStageFloats = int64_t{16} << 20;
    DeviceArena staging(&tally);
    DeviceBuffer<float> stage;
    RWR_RETURN_IF_ERROR(staging.Alloc(&stage, std::min(largest, kStageFloats)));
    for (const auto& [offset, size] : gemm_only) {
      for (int64_t begin = offset; begin < offset + size; begin += kStageFloats) {
        const int64_t count = std::min(kStageFloats, offset + size - begin);
        RWR_CUDA(cudaStreamSynchronize(stream));  // the stage's last piece is converted
        RWR_CUDA(cudaMemcpy(stage.ptr, host.data() + begin, count * 4, cudaMemcpyHostToDevice));
        RWR_RETURN_IF_ERROR(cuda::ToBf16(stage.ptr, params16.ptr + begin * 2, count, stream));
      }
    }
    RWR_CUDA(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }
  // The fp32 tensor at layout `offset`.
  const float* Fp32(int64_t offset) const {
    if (fp32_spans.empty()) return params.ptr + offset;
    auto it = std::upper_bound(fp32_spans.begin(), fp32_spans.end(), offset,
                               [](int64_t o, const Fp32Span& s) { return o < s.offset; });
    if (it == fp32_spans.begin() || offset >= (it - 1)->offset + (it - 1)->size) {
      std::fprintf(stderr, "MambaCuda: no fp32 parameter at offset %lld\n", (long long)offset);
      std::abort();  // a kernel reading in fp32 what only the GEMMs were to read: a bug here
    }
    --it;
    return params.ptr + it->packed + (offset - it->offset);
  }
  // OK for a model made by Create; a model made for inference holds no gradients.
  absl::Status Trains(const char* call) const {
    if (grads.ptr != nullptr) return absl::OkStatus();
    return absl::FailedPreconditionError(fmt::format(
        "MambaCuda::{}: this model was made for inference (CreateForInference), without "
        "gradients",
        call));
  }
  // Clears the gradient tensors that start in [lo, hi) and no writer reached since ZeroGrads;
  // the optimizer or a sum over the ranks reads them next.
  absl::Status ClearUnwritten(int64_t lo = 0, int64_t hi = std::numeric_limits<int64_t>::max()) {
    for (const auto& [offset, size] : grad_writes.Unwritten(lo, hi)) {
      RWR_CUDA(cudaMemsetAsync(grads.ptr + offset, 0, size * 4, stream));
    }
    grad_writes.MarkLive(lo, hi);
    return absl::OkStatus();
  }
  scan::DType ScanType() const { return act == Act::kF32 ? scan::DType::kF32 : scan::DType::kBF16; }
  cudaDataType_t CudaType() const { return act == Act::kF32 ? CUDA_R_32F : CUDA_R_16BF; }
  // One GEMM through the runner; on failure the runtime's last error is cleared too (cuBLAS may
  // have failed on an allocation), so the next kernel-launch check does not report it again.
  absl::Status Gemm(const GemmProblem& p, const void* A, const void* B, void* D, float beta) {
    absl::Status status = gemms->Run(p, A, B, D, beta);
    if (!status.ok()) cudaGetLastError();
    return status;
  }

  // Runs `call` (returning a Status), bracketed by events when phase timing is on; `kind` is one
  // of kPhaseKinds, `what` and `role` optional details.
  template <typename F>
  absl::Status Timed(const char* kind, const char* what, const char* role, F&& call) {
    if (!clock.on) return call();
    if (std::none_of(std::begin(kPhaseKinds), std::end(kPhaseKinds),
                     [&](const char* k) { return std::string_view(k) == kind; })) {
      // The kinds must add up to the timed work: a new one goes into kPhaseKinds first.
      return absl::InternalError(fmt::format("phase timing: unknown kind '{}'", kind));
    }
    RWR_ASSIGN_OR_RETURN(cudaEvent_t start, clock.Next());
    RWR_CUDA(cudaEventRecord(start, stream));
    RWR_RETURN_IF_ERROR(call());
    RWR_ASSIGN_OR_RETURN(cudaEvent_t end, clock.Next());
    RWR_CUDA(cudaEventRecord(end, stream));
    clock.spans.push_back({kind, what, role, clock.used - 2});
    return absl::OkStatus();
  }
  template <typename F>
  absl::Status Timed(const char* kind, const char* what, F&& call) {
    return Timed(kind, what, nullptr, std::forward<F>(call));
  }
  // One token a row with the state carried out (generation's decode steps): the kernels'
  // single-token steps, which read and write the state once and nothing more.
  static bool IsStep(int64_t seqlen, const float* final_state) {
    return seqlen == 1 && final_state != nullptr;
  }
  absl::Status ScanForward(const scan::SelectiveScanParams& p) {
    if (IsStep(p.seqlen, p.final_state)) {
      return Timed("scan", "step", [&] { return scan::Step(p, stream); });
    }
    return Timed("scan", "fwd", [&] { return scan::Forward(p, stream); });
  }
  absl::Status ScanBackward(const scan::SelectiveScanParams& p, const scan::SelectiveScanGrads& g) {
    return Timed("scan", "bwd", [&] { return scan::Backward(p, g, stream); });
  }
  absl::Status ConvForward(const scan::CausalConv1dParams& p) {
    if (IsStep(p.seqlen, p.final_state)) {
      return Timed("conv", "step", [&] { return scan::Step(p, stream); });
    }
    return Timed("conv", "fwd", [&] { return scan::Forward(p, stream); });
  }
  absl::Status ConvBackward(const scan::CausalConv1dParams& p, const scan::CausalConv1dGrads& g) {
    return Timed("conv", "bwd", [&] { return scan::Backward(p, g, stream); });
  }

  // The GEMMs' copy of the weights at `offset` of the flat layout.
  const void* W(int64_t offset) const {
    return act == Act::kF32 ? static_cast<const void*>(params.ptr + offset)
                            : static_cast<const void*>(params16.ptr + offset * 2);
  }

  // Row-major GEMMs (the CPU twins are in mamba_cpu.cc), mapped to column-major for the runner
  // (gemm_runner.h: cuBLASLt, algorithm timed per shape). X, W and dY are activations; an output
  // is fp32 when its `*_f32` flag says so, else an activation. Accumulation is fp32 throughout.
  // `what` names the weight for phase timing.

  // The call as a few-rows linear (trainer/few_rows_linear.h): a decode step's few rows, one
  // kernel that reads each bf16 weight once.
  static cuda::FewRowsLinear FewRows(const LinearCall& c, bool let_next_start) {
    return {.x = c.x,
            .ldx = c.ldx,
            .w = c.w,
            .y = c.y,
            .ldy = c.ldy,
            .y_f32 = c.y_f32,
            .beta = c.beta,
            .rows = c.m,
            .n = c.n,
            .k = c.k,
            .let_next_start = let_next_start};
  }
  // Whether Linear runs this call as a few-rows linear: a programmatic dependent launch that
  // waits for the kernel before it, so that kernel may let it start early (the `let_next_start`
  // of the launchers) — and only then, for a cuBLASLt kernel may not wait.
  bool TakesFewRows(const LinearCall& c) const {
    return act == Act::kBF16 && cuda::FewRowsLinearApplies(FewRows(c, false));
  }
  // Runs c; let_next_start: the next kernel is a few-rows linear (TakesFewRows), which may start
  // before this one ends (honoured by the few-rows kernel; cuBLASLt's never lets it).
  absl::Status Linear(const LinearCall& c, bool let_next_start = false) {
    if (TakesFewRows(c)) {
      return Timed("gemm", c.what, "fwd",
                   [&] { return cuda::RunFewRowsLinear(FewRows(c, let_next_start), stream); });
    }
    GemmProblem p = GemmProblem::Forward(c.m, c.n, c.k, c.ldx, c.ldy, CudaType(),
                                         c.y_f32 ? CUDA_R_32F : CudaType());
    p.timed = c.timed && !untimed_gemms;
    return Timed("gemm", c.what, "fwd", [&] { return Gemm(p, c.w, c.x, c.y, c.beta); });
  }
  // dX(M, K) = dY(M, N)·W(N, K) + beta·dX
  absl::Status LinearDx(const char* what, const void* dY, int64_t lddy, const void* Wt, void* dX,
                        bool dx_f32, int64_t lddx, int64_t M, int64_t N, int64_t K,
                        GradOptions options = {}) {
    GemmProblem p =
        GemmProblem::InputGrad(M, N, K, lddy, lddx, CudaType(), dx_f32 ? CUDA_R_32F : CudaType());
    p.timed = options.timed && !untimed_gemms;
    return Timed("gemm", what, "dx", [&] { return Gemm(p, Wt, dY, dX, options.beta); });
  }
  // dW(N, K) (+)= dY(M, N)ᵀ·X(M, K), dW fp32 (nothing of dW is read where beta is 0)
  absl::Status LinearDw(const char* what, const void* dY, int64_t lddy, const void* X, int64_t ldx,
                        GradOut dW, int64_t M, int64_t N, int64_t K, bool timed = true) {
    GemmProblem p = GemmProblem::WeightGrad(M, N, K, lddy, ldx, CudaType());
    p.timed = timed && !untimed_gemms;
    return Timed("gemm", what, "dw", [&] { return Gemm(p, X, dY, dW.ptr, dW.add ? 1.f : 0.f); });
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
  CallBuffers& k() const { return *m_.call; }
  const float* P(int64_t offset) const { return m_.Fp32(offset); }
  GradOut G(int64_t offset) const { return m_.Grad(offset); }
  // A layer's normed input, conv output and Δraw: its own where kept, else the call's working
  // buffer (written by the forward, rewritten by the backward's recomputation).
  void* Xn(const LayerActs& a) const { return a.xn.ptr != nullptr ? a.xn.ptr : k().xn.ptr; }
  void* Uc(const LayerActs& a) const { return a.uc.ptr != nullptr ? a.uc.ptr : k().uc.ptr; }
  void* Dtraw(const LayerActs& a) const {
    return a.dtraw.ptr != nullptr ? a.dtraw.ptr : k().dtraw.ptr;
  }
  float* State(int64_t chunk, int64_t layer) const {
    return k().states.ptr + (chunk * c_.n_layer + layer) * m_.StateFloats(batch_.batch);
  }

  // h (M, D), the residual stream, in place. States: in (conv | ssm), out (may be null). With
  // `keep`, the layer's input is saved in a.h_in for its backward.
  absl::Status LayerForward(int64_t l, const ChunkDims& d, const float* state_in, float* state_out,
                            LayerActs& a, bool keep) {
    RWR_RETURN_IF_ERROR(LayerReady(l));
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M(), conv_floats = m_.ConvStateFloats(d.B);
    cudaStream_t s = m_.stream;
    const LinearCall in_proj{"in_proj", Xn(a),    d.D, m_.W(o.in_proj), a.xz.ptr,
                             false,     2 * d.Di, M,   2 * d.Di,        d.D};
    const LinearCall x_proj{"x_proj", Uc(a), d.Di, m_.W(o.x_proj), a.xdbl.ptr, false, d.X,
                            M,        d.X,   d.Di};
    const LinearCall dt_proj = DtProj(d, o, a);
    // The residual add is the GEMM's beta: h += y·out_projᵀ, accumulated in fp32.
    const LinearCall out_proj{
        "out_proj", k().y.ptr, d.Di, m_.W(o.out_proj), k().h.ptr, true, d.D, M, d.D, d.Di, 1.f};
    // A kernel before a few-rows linear lets it start early (a decode step's; TakesFewRows).
    const bool few_in = m_.TakesFewRows(in_proj), few_x = m_.TakesFewRows(x_proj);
    const bool few_dt = m_.TakesFewRows(dt_proj), few_out = m_.TakesFewRows(out_proj);
    // With `keep`, the norm also copies its input h to a.h_in (h is updated in place below).
    RWR_RETURN_IF_ERROR(m_.Timed("norm", "fwd", [&] {
      return cuda::RmsNorm(k().h.ptr, P(o.norm), Xn(a), m_.act, a.rstd.ptr, M, d.D, c_.norm_eps, s,
                           keep ? a.h_in.ptr : nullptr, few_in);
    }));
    RWR_RETURN_IF_ERROR(m_.Linear(in_proj));
    scan::CausalConv1dParams conv = Conv(d, o, state_in, state_out, a);
    conv.let_next_start = few_x;
    RWR_RETURN_IF_ERROR(m_.ConvForward(conv));
    RWR_RETURN_IF_ERROR(m_.Linear(x_proj, /*let_next_start=*/few_dt));
    RWR_RETURN_IF_ERROR(m_.Linear(dt_proj));
    scan::SelectiveScanParams scan =
        Scan(l, d, o, state_in + conv_floats, state_out ? state_out + conv_floats : nullptr, a);
    scan.let_next_start = few_out;
    RWR_RETURN_IF_ERROR(m_.ScanForward(scan));
    return m_.Linear(out_proj);
  }

  // Δraw = x_proj's first R columns · dt_projᵀ (the bias is added inside the scan).
  LinearCall DtProj(const ChunkDims& d, const LayerOffsets& o, LayerActs& a) const {
    return {"dt_proj", a.xdbl.ptr, d.X, m_.W(o.dt_proj_weight), Dtraw(a), false, d.Di,
            d.M(),     d.Di,       d.R};
  }

  // dh (M, D): gradient of the layer output → of its input (dh_act follows it in kBf16). dstate
  // (conv | ssm) of the state leaving the chunk → dstate_next of the state entering it.
  absl::Status LayerBackward(int64_t l, const ChunkDims& d, LayerActs& a, const float* state_in,
                             const float* dstate, float* dstate_next) {
    const LayerOffsets& o = layout_.layer(l);
    const int64_t M = d.M(), conv_floats = m_.ConvStateFloats(d.B);
    cudaStream_t s = m_.stream;
    const void* dh = DhAct();
    RWR_RETURN_IF_ERROR(
        m_.LinearDx("out_proj", dh, d.D, m_.W(o.out_proj), k().dy.ptr, false, d.Di, M, d.D, d.Di));

    // Recompute what the forward did not keep: conv output and Δ here (unless kept), the scan
    // output (the out_proj GEMM's input) inside the scan's backward, which rebuilds the states
    // anyway.
    if (a.uc.ptr == nullptr) RWR_RETURN_IF_ERROR(m_.ConvForward(Conv(d, o, state_in, nullptr, a)));
    if (a.dtraw.ptr == nullptr) {
      RWR_RETURN_IF_ERROR(m_.Linear(DtProj(d, o, a)));
    }
    scan::SelectiveScanParams sp = Scan(l, d, o, state_in + conv_floats, nullptr, a);

    const int64_t es = m_.es();
    scan::SelectiveScanGrads sg;
    sg.out = k().y.ptr;
    sg.out_strides = {d.Tc * d.Di, d.Di};
    sg.dout = k().dy.ptr;
    sg.dout_strides = {d.Tc * d.Di, d.Di};
    sg.dfinal_state = dstate + conv_floats;
    sg.dx = k().duc.ptr;
    sg.dx_strides = {d.Tc * d.Di, d.Di};
    sg.ddelta = k().ddtraw.ptr;
    sg.ddelta_strides = {d.Tc * d.Di, d.Di};
    sg.dA = k().dA.ptr;
    sg.dB = At(k().dxdbl.ptr, d.R, es);
    sg.dB_strides = {d.Tc * d.X, d.X};
    sg.dC = At(k().dxdbl.ptr, d.R + d.S, es);
    sg.dC_strides = {d.Tc * d.X, d.X};
    sg.dD = k().dD.ptr;
    sg.dz = At(k().dxz.ptr, d.Di, es);
    sg.dz_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    sg.ddelta_bias = k().ddt_bias.ptr;
    sg.dinitial_state = dstate_next + conv_floats;
    RWR_RETURN_IF_ERROR(m_.ScanBackward(sp, sg));
    RWR_RETURN_IF_ERROR(
        m_.LinearDw("out_proj", dh, d.D, k().y.ptr, d.Di, G(o.out_proj), M, d.D, d.Di));
    RWR_RETURN_IF_ERROR(m_.Timed("other", "param_grads", [&]() -> absl::Status {
      const GradOut ga = G(o.A_log), gd = G(o.D), gb = G(o.dt_proj_bias);
      RWR_RETURN_IF_ERROR(
          cuda::ALogGrad(k().dA.ptr, m_.A.ptr + l * d.Di * d.S, ga.ptr, d.Di * d.S, ga.add, s));
      RWR_RETURN_IF_ERROR(cuda::Accumulate(gd.ptr, k().dD.ptr, d.Di, gd.add, s));
      return cuda::Accumulate(gb.ptr, k().ddt_bias.ptr, d.Di, gb.add, s);
    }));

    RWR_RETURN_IF_ERROR(m_.LinearDw("dt_proj", k().ddtraw.ptr, d.Di, a.xdbl.ptr, d.X,
                                    G(o.dt_proj_weight), M, d.Di, d.R));
    RWR_RETURN_IF_ERROR(m_.LinearDx("dt_proj", k().ddtraw.ptr, d.Di, m_.W(o.dt_proj_weight),
                                    k().dxdbl.ptr, false, d.X, M, d.Di, d.R));
    RWR_RETURN_IF_ERROR(
        m_.LinearDw("x_proj", k().dxdbl.ptr, d.X, Uc(a), d.Di, G(o.x_proj), M, d.X, d.Di));
    RWR_RETURN_IF_ERROR(m_.LinearDx("x_proj", k().dxdbl.ptr, d.X, m_.W(o.x_proj), k().duc.ptr,
                                    false, d.Di, M, d.X, d.Di, {.beta = 1.f}));

    scan::CausalConv1dParams cp = Conv(d, o, state_in, nullptr, a);
    cp.workspace = k().conv_ws.ptr;
    scan::CausalConv1dGrads cg;
    cg.dout = k().duc.ptr;
    cg.dout_strides = {d.Tc * d.Di, d.Di};
    cg.dfinal_state = dstate;
    cg.dx = k().dxz.ptr;
    cg.dx_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    cg.dweight = k().dconv_w.ptr;
    cg.dbias = k().dconv_b.ptr;
    cg.dinitial_state = dstate_next;
    RWR_RETURN_IF_ERROR(m_.ConvBackward(cp, cg));
    RWR_RETURN_IF_ERROR(m_.Timed("other", "param_grads", [&]() -> absl::Status {
      const GradOut gw = G(o.conv_weight), gb = G(o.conv_bias);
      RWR_RETURN_IF_ERROR(cuda::Accumulate(gw.ptr, k().dconv_w.ptr, d.Di * d.W, gw.add, s));
      return cuda::Accumulate(gb.ptr, k().dconv_b.ptr, d.Di, gb.add, s);
    }));

    if (a.xn.ptr == nullptr) {
      RWR_RETURN_IF_ERROR(m_.Timed("norm", "recompute", [&] {
        return cuda::RmsNorm(a.h_in.ptr, P(o.norm), k().xn.ptr, m_.act, a.rstd.ptr, M, d.D,
                             c_.norm_eps, s);
      }));
    }
    RWR_RETURN_IF_ERROR(
        m_.LinearDw("in_proj", k().dxz.ptr, 2 * d.Di, Xn(a), d.D, G(o.in_proj), M, 2 * d.Di, d.D));
    RWR_RETURN_IF_ERROR(m_.LinearDx("in_proj", k().dxz.ptr, 2 * d.Di, m_.W(o.in_proj), k().dxn.ptr,
                                    true, d.D, M, 2 * d.Di, d.D));
    return m_.Timed("norm", "bwd", [&] {
      const GradOut gw = G(o.norm);
      return cuda::RmsNormBackward(a.h_in.ptr, P(o.norm), a.rstd.ptr, k().dxn.ptr, k().dh.ptr,
                                   DhActOut(), m_.act, gw.ptr, gw.add, k().norm_scratch.ptr, M, d.D,
                                   s);
    });
  }

  // Final norm, head, cross-entropy over the chunk's loss rows (all rows with logits).
  absl::StatusOr<LossSum> Head(const ChunkDims& d, float* host_logits, float loss_scale,
                               bool grad) {
    cudaStream_t s = m_.stream;
    const int64_t M = d.M();
    RWR_RETURN_IF_ERROR(m_.AwaitAllParams());  // the final norm
    RWR_RETURN_IF_ERROR(m_.Timed("norm", "final", [&] {
      return cuda::RmsNorm(k().h.ptr, P(layout_.norm_f()), k().hn.ptr, m_.act, k().rstd_f.ptr, M,
                           d.D, c_.norm_eps, s);
    }));
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
    if (grad) RWR_CUDA(cudaMemsetAsync(k().dhn.ptr, 0, M * d.D * 4, s));
    LossSum result;
    const int64_t block = std::min(HeadBlockRows(d.V), M);
    if (!rows.empty()) {
      RWR_CUDA(
          cudaMemcpyAsync(k().rows.ptr, rows.data(), rows.size() * 4, cudaMemcpyHostToDevice, s));
      RWR_CUDA(cudaMemcpyAsync(k().row_targets.ptr, targets.data(), targets.size() * 4,
                               cudaMemcpyHostToDevice, s));
      RWR_CUDA(cudaMemcpyAsync(k().row_weight.ptr, weights.data(), weights.size(),
                               cudaMemcpyHostToDevice, s));
    }
    // The bf16 gradient of a block of logits goes to its own buffer; fp32 overwrites the logits.
    void* dlogits = m_.act == Act::kF32 ? static_cast<void*>(k().block_logits.ptr)
                                        : static_cast<void*>(k().block_dlogits.ptr);
    const void* E = m_.W(layout_.embedding());
    for (size_t r0 = 0; r0 < rows.size(); r0 += block) {
      const int64_t nr = std::min<int64_t>(block, rows.size() - r0);
      // Full blocks are one shape for the whole run; a smaller block's rows (the loss rows left,
      // or all of a chunk's) change with the data, so its GEMMs are not timed
      // (GemmProblem::timed): every new size would be timed and recorded otherwise.
      const bool timed = nr == HeadBlockRows(d.V);
      RWR_RETURN_IF_ERROR(m_.Timed("head", "gather", [&] {
        return cuda::GatherRows(k().hn.ptr, k().rows.ptr + r0, k().block_in.ptr, m_.act, nr, d.D,
                                s);
      }));
      RWR_RETURN_IF_ERROR(m_.Linear({"lm_head", k().block_in.ptr, d.D, E, k().block_logits.ptr,
                                     true, d.V, nr, d.V, d.D, 0.f, timed}));
      if (host_logits != nullptr) {
        std::vector<float> logits(nr * d.V);
        RWR_CUDA(cudaMemcpyAsync(logits.data(), k().block_logits.ptr, nr * d.V * 4,
                                 cudaMemcpyDeviceToHost, s));
        RWR_CUDA(cudaStreamSynchronize(s));
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t row = rows[r0 + r];
          const int64_t i = (row / d.Tc) * d.T + d.t0 + row % d.Tc;
          std::copy(logits.begin() + r * d.V, logits.begin() + (r + 1) * d.V,
                    host_logits + i * d.V);
        }
      }
      RWR_RETURN_IF_ERROR(m_.Timed("head", "cross_entropy", [&] {
        return cuda::CrossEntropy(k().block_logits.ptr, nr, d.V, k().row_targets.ptr + r0,
                                  k().row_weight.ptr + r0, k().row_loss.ptr + r0, loss_scale,
                                  grad ? dlogits : nullptr, m_.act, s);
      }));
      if (grad) {
        RWR_RETURN_IF_ERROR(m_.LinearDx("lm_head", dlogits, d.V, E, k().block_dh.ptr, true, d.D, nr,
                                        d.V, d.D, {.timed = timed}));
        RWR_RETURN_IF_ERROR(m_.Timed("head", "scatter", [&] {
          return cuda::ScatterRows(k().block_dh.ptr, k().rows.ptr + r0, k().dhn.ptr, nr, d.D, s);
        }));
        RWR_RETURN_IF_ERROR(m_.LinearDw("lm_head", dlogits, d.V, k().block_in.ptr, d.D,
                                        G(layout_.embedding()), nr, d.V, d.D, timed));
      }
    }
    // One read-back per chunk; summed on the host in row order (the same bits every run).
    std::vector<float> losses(rows.size());
    RWR_CUDA(cudaMemcpyAsync(losses.data(), k().row_loss.ptr, rows.size() * 4,
                             cudaMemcpyDeviceToHost, s));
    RWR_CUDA(cudaStreamSynchronize(s));
    for (size_t r = 0; r < rows.size(); ++r) {
      if (weights[r]) {
        result.loss_sum += losses[r];
        result.tokens += 1;
      }
    }
    if (grad) {
      RWR_CUDA(cudaMemsetAsync(k().dh.ptr, 0, M * d.D * 4, s));
      RWR_RETURN_IF_ERROR(m_.Timed("norm", "final_bwd", [&] {
        const GradOut gw = G(layout_.norm_f());
        return cuda::RmsNormBackward(k().h.ptr, P(layout_.norm_f()), k().rstd_f.ptr, k().dhn.ptr,
                                     k().dh.ptr, DhActOut(), m_.act, gw.ptr, gw.add,
                                     k().norm_scratch.ptr, M, d.D, s);
      }));
    }
    return result;
  }

  absl::Status Embed(const ChunkDims& d) {
    RWR_RETURN_IF_ERROR(m_.AwaitBucket(0));
    return m_.Timed("other", "embedding", [&] {
      return cuda::Embed(k().tokens.ptr, d.T, d.t0, d.Tc, d.M(), P(layout_.embedding()), k().h.ptr,
                         d.D, m_.stream);
    });
  }
  // Each distinct token's rows, summed in row order by one block: no atomics, same bits every run.
  absl::Status EmbedBackward(const ChunkDims& d) {
    std::vector<std::pair<int32_t, int32_t>> id_row;  // (token id, chunk row)
    id_row.reserve(d.M());
    for (int64_t b = 0; b < d.B; ++b) {
      for (int64_t t = 0; t < d.Tc; ++t) {
        id_row.emplace_back(batch_.tokens[b * d.T + d.t0 + t], static_cast<int32_t>(b * d.Tc + t));
      }
    }
    std::sort(id_row.begin(), id_row.end());
    // Kept in the runner until the call ends (it ends with a stream sync): the copies below may
    // still be reading them after they return.
    auto& [ids, offsets, rows] = host_embed_;
    ids.clear();
    offsets.clear();
    rows.clear();
    for (size_t i = 0; i < id_row.size(); ++i) {
      if (i == 0 || id_row[i].first != id_row[i - 1].first) {
        ids.push_back(id_row[i].first);
        offsets.push_back(static_cast<int32_t>(i));
      }
      rows.push_back(id_row[i].second);
    }
    offsets.push_back(static_cast<int32_t>(rows.size()));
    cudaStream_t s = m_.stream;
    RWR_CUDA(
        cudaMemcpyAsync(k().emb_ids.ptr, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, s));
    RWR_CUDA(cudaMemcpyAsync(k().emb_offsets.ptr, offsets.data(), offsets.size() * 4,
                             cudaMemcpyHostToDevice, s));
    RWR_CUDA(
        cudaMemcpyAsync(k().emb_rows.ptr, rows.data(), rows.size() * 4, cudaMemcpyHostToDevice, s));
    return m_.Timed("other", "embedding_bwd", [&]() -> absl::Status {
      // Adds the rows of the tokens seen: where nothing wrote the (tied) embedding's gradient yet
      // (no loss rows so far), the rest must read as zeros.
      const GradOut g = G(layout_.embedding());
      if (!g.add) RWR_CUDA(cudaMemsetAsync(g.ptr, 0, d.V * d.D * 4, s));
      return cuda::EmbedBackward(k().emb_ids.ptr, k().emb_offsets.ptr, k().emb_rows.ptr,
                                 static_cast<int64_t>(ids.size()), k().dh.ptr, g.ptr, d.D, s);
    });
  }

  // The rows continue a sequence from the state put in slot 0 (generation): their first token
  // does not start a document. Call before Prepare.
  void ContinueSequence() { continues_ = true; }

  // The logits that follow each row's last token in the chunk (B × V floats, to the host): the
  // final norm and the tied head of those rows alone, a head block at a time.
  absl::Status LastLogits(const ChunkDims& d, float* host_logits) {
    RWR_RETURN_IF_ERROR(UploadLastRows(d));
    const int64_t block = std::min(HeadBlockRows(d.V), d.M());
    for (int64_t r0 = 0; r0 < d.B; r0 += block) {
      const int64_t nr = std::min(block, d.B - r0);
      RWR_RETURN_IF_ERROR(LastLogitsOnDevice(d, r0, nr));
      RWR_CUDA(cudaMemcpyAsync(host_logits + r0 * d.V, k().block_logits.ptr, nr * d.V * 4,
                               cudaMemcpyDeviceToHost, m_.stream));
    }
    RWR_CUDA(cudaStreamSynchronize(m_.stream));
    return absl::OkStatus();
  }
  // The index of each row's last token in the chunk, to k().rows (what LastLogitsOnDevice reads).
  absl::Status UploadLastRows(const ChunkDims& d) {
    host_rows_.resize(d.B);
    for (int64_t b = 0; b < d.B; ++b) host_rows_[b] = static_cast<int32_t>(b * d.Tc + d.Tc - 1);
    RWR_CUDA(cudaMemcpyAsync(k().rows.ptr, host_rows_.data(), d.B * 4, cudaMemcpyHostToDevice,
                             m_.stream));
    return absl::OkStatus();
  }
  // Rows [r0, r0 + nr) of those logits into k().block_logits (nr ≤ one head block), on the
  // stream alone: no host transfer, so a decode step's graph can hold it.
  absl::Status LastLogitsOnDevice(const ChunkDims& d, int64_t r0, int64_t nr) {
    cudaStream_t s = m_.stream;
    if (r0 == 0) {
      RWR_RETURN_IF_ERROR(cuda::RmsNorm(k().h.ptr, P(layout_.norm_f()), k().hn.ptr, m_.act,
                                        k().rstd_f.ptr, d.M(), d.D, c_.norm_eps, s));
    }
    const LinearCall head{"lm_head",
                          k().block_in.ptr,
                          d.D,
                          m_.W(layout_.embedding()),
                          k().block_logits.ptr,
                          true,
                          d.V,
                          nr,
                          d.V,
                          d.D,
                          0.f,
                          /*timed=*/false};
    RWR_RETURN_IF_ERROR(cuda::GatherRows(k().hn.ptr, k().rows.ptr + r0, k().block_in.ptr, m_.act,
                                         nr, d.D, s, /*let_next_start=*/m_.TakesFewRows(head)));
    return m_.Linear(head);
  }

  // One decode step on the device (one token per row, already in k().tokens; the last rows in
  // k().rows; A current, EnsureA): the layers update the sequences' state in place (the conv and
  // scan steps read a state before they write it), and the logits go to k().block_logits. Only
  // stream work, so it can be captured as a graph.
  absl::Status DecodeStepOnDevice(float* sequence) {
    const ChunkDims d = Dims(0, 1);
    RWR_RETURN_IF_ERROR(Embed(d));
    for (int64_t l = 0; l < c_.n_layer; ++l) {
      float* state = sequence + l * m_.StateFloats(d.B);
      RWR_RETURN_IF_ERROR(LayerForward(l, d, state, state, k().pass_acts, false));
    }
    return LastLogitsOnDevice(d, 0, d.B);
  }

  // This call's tokens and resets to the device again (the buffers Prepare sized and filled for
  // an earlier call of the same shape).
  absl::Status UploadTokens() {
    const int64_t n = batch_.batch * batch_.seq_len;
    RWR_CUDA(cudaMemcpyAsync(k().tokens.ptr, batch_.tokens, n * 4, cudaMemcpyHostToDevice,
                             m_.stream));
    host_reset_.assign(n, 0);
    if (batch_.reset != nullptr) std::copy(batch_.reset, batch_.reset + n, host_reset_.begin());
    RWR_CUDA(cudaMemcpyAsync(k().reset.ptr, host_reset_.data(), n, cudaMemcpyHostToDevice,
                             m_.stream));
    return absl::OkStatus();
  }

  // Uploads the batch and sizes every buffer for chunks of chunk_len tokens.
  absl::Status Prepare(int64_t chunk_len, int64_t state_slots, bool grad) {
    DeviceArena& ar = k().arena;
    const int64_t B = batch_.batch, T = batch_.seq_len, n = B * T;
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().tokens, n));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().reset, n));
    RWR_CUDA(
        cudaMemcpyAsync(k().tokens.ptr, batch_.tokens, n * 4, cudaMemcpyHostToDevice, m_.stream));
    host_reset_.assign(n, 0);
    if (batch_.reset != nullptr) std::copy(batch_.reset, batch_.reset + n, host_reset_.begin());
    if (!continues_) {
      for (int64_t b = 0; b < B; ++b) host_reset_[b * T] = 1;
    }
    RWR_CUDA(
        cudaMemcpyAsync(k().reset.ptr, host_reset_.data(), n, cudaMemcpyHostToDevice, m_.stream));
    const ChunkDims d = Dims(0, chunk_len);
    const int64_t M = d.M();
    // What every pass needs.
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().h, M * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().rstd_f, M));
    for (auto* b : {&k().xn, &k().hn}) RWR_RETURN_IF_ERROR(AllocAct(b, M * d.D));
    for (auto* b : {&k().uc, &k().dtraw, &k().y}) RWR_RETURN_IF_ERROR(AllocAct(b, M * d.Di));
    // Loss rows (at most one per chunk row) and their losses.
    for (auto* b : {&k().rows, &k().row_targets}) RWR_RETURN_IF_ERROR(ar.Alloc(b, M));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().row_weight, M));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().row_loss, M));
    const int64_t block = std::min(HeadBlockRows(d.V), M);
    RWR_RETURN_IF_ERROR(AllocAct(&k().block_in, block * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().block_logits, block * d.V));
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().scan_scratch, scan::ScratchBytes(ScanProbe(d)) + 256));
    const int64_t sf = m_.StateFloats(B);
    RWR_RETURN_IF_ERROR(ar.Alloc(&k().states, state_slots * c_.n_layer * sf));
    RWR_CUDA(cudaMemsetAsync(k().states.ptr, 0, c_.n_layer * sf * 4, m_.stream));  // chunk 0 in
    RWR_RETURN_IF_ERROR(AllocActs(k().pass_acts, d, false));
    if (grad) {  // the backward's gradients, and each layer's kept activations
      for (auto* b : {&k().dh, &k().dxn, &k().dhn}) RWR_RETURN_IF_ERROR(ar.Alloc(b, M * d.D));
      if (m_.act != Act::kF32) RWR_RETURN_IF_ERROR(AllocAct(&k().dh_act, M * d.D));
      for (auto* b : {&k().dy, &k().duc, &k().ddtraw}) RWR_RETURN_IF_ERROR(AllocAct(b, M * d.Di));
      RWR_RETURN_IF_ERROR(AllocAct(&k().dxdbl, M * d.X));
      RWR_RETURN_IF_ERROR(AllocAct(&k().dxz, M * 2 * d.Di));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().dA, d.Di * d.S));
      for (auto* b : {&k().dD, &k().ddt_bias, &k().dconv_b}) RWR_RETURN_IF_ERROR(ar.Alloc(b, d.Di));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().dconv_w, d.Di * d.W));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().norm_scratch, cuda::RmsNormBackwardScratch(M, d.D)));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().block_dh, block * d.D));
      if (m_.act != Act::kF32) RWR_RETURN_IF_ERROR(AllocAct(&k().block_dlogits, block * d.V));
      for (auto* b : {&k().emb_ids, &k().emb_rows}) RWR_RETURN_IF_ERROR(ar.Alloc(b, M));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().emb_offsets, M + 1));
      scan::CausalConv1dParams conv_probe;
      conv_probe.batch = B;
      conv_probe.seqlen = chunk_len;
      conv_probe.dim = d.Di;
      conv_probe.width = d.W;
      conv_probe.dtype = m_.ScanType();
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().conv_ws, scan::ConvWorkspaceBytes(conv_probe) + 256));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().dstates, c_.n_layer * sf));
      RWR_RETURN_IF_ERROR(ar.Alloc(&k().dstates_next, c_.n_layer * sf));
      RWR_CUDA(cudaMemsetAsync(k().dstates.ptr, 0, c_.n_layer * sf * 4, m_.stream));
      k().acts.resize(c_.n_layer);
      for (auto& a : k().acts) RWR_RETURN_IF_ERROR(AllocActs(a, d, true));
      RWR_RETURN_IF_ERROR(KeepActs(d));
    }
    if (m_.comm_stream != nullptr) {  // each layer's A once its bucket is there (LayerReady)
      std::fill(m_.a_fresh.begin(), m_.a_fresh.end(), 0);
      return absl::OkStatus();
    }
    return ComputeA();
  }

  // A = −exp(A_log), per layer, from the parameters as they are now (a model for inference).
  absl::Status ComputeA() {
    for (int64_t l = 0; l < c_.n_layer; ++l) RWR_RETURN_IF_ERROR(ComputeLayerA(l));
    m_.a_current = true;
    return absl::OkStatus();
  }
  // A for every layer, unless it is current; with buckets, no layer's LayerReady computes it
  // again (a decode graph must not hold it).
  absl::Status EnsureA() {
    if (!m_.a_current) RWR_RETURN_IF_ERROR(ComputeA());
    std::fill(m_.a_fresh.begin(), m_.a_fresh.end(), 1);
    return absl::OkStatus();
  }
  absl::Status ComputeLayerA(int64_t l) {
    const int64_t n = c_.d_inner * c_.d_state;
    return cuda::NegExp(P(layout_.layer(l).A_log), m_.A.ptr + l * n, n, m_.stream);
  }
  // With buckets: layer l's parameters are there, and its A computed from them.
  absl::Status LayerReady(int64_t l) {
    if (m_.comm_stream == nullptr) return absl::OkStatus();
    RWR_RETURN_IF_ERROR(m_.AwaitBucket(l + 1));
    if (!m_.a_fresh[l]) {
      RWR_RETURN_IF_ERROR(ComputeLayerA(l));
      m_.a_fresh[l] = 1;
    }
    return absl::OkStatus();
  }

 private:
  template <typename B>
  absl::Status AllocAct(B* b, int64_t elements) {
    return k().arena.Alloc(b, elements * m_.es());
  }

  // Rows of logits computed at once: at most 4096 and 256 MiB of fp32 logits.
  static int64_t HeadBlockRows(int64_t V) {
    return std::max<int64_t>(1, std::min<int64_t>(4096, (int64_t(1) << 26) / V));
  }

  // The gradient of the residual stream as a GEMM operand, and where the norm backward writes it.
  const void* DhAct() const {
    return m_.act == Act::kF32 ? static_cast<const void*>(k().dh.ptr)
                               : static_cast<const void*>(k().dh_act.ptr);
  }
  void* DhActOut() const { return m_.act == Act::kF32 ? nullptr : k().dh_act.ptr; }

  scan::SelectiveScanParams ScanProbe(const ChunkDims& d) const {
    scan::SelectiveScanParams p;
    p.batch = d.B;
    p.seqlen = d.Tc;
    p.dim = d.Di;
    p.dstate = d.S;
    p.dtype = m_.ScanType();
    return p;
  }

  // Where the memory left after the call's buffers allows, every layer keeps its normed input,
  // conv output and Δraw instead of the backward recomputing them (the norm, the conv forward and
  // the dt_proj GEMM again: ≈ 9 ms of a 2048 × 4 Mamba-2.8B step). Each kind for all layers or
  // none, the most time saved per byte first; decided once per call shape, so that every call of
  // it runs the same kernels. Memory short (an 80 GB card at 8192 tokens per chunk): recompute.
  absl::Status KeepActs(const ChunkDims& d) {
    KeptActs& kept = k().kept;
    if (!kept.decided) {
      kept.decided = true;
      size_t free_bytes = 0, total_bytes = 0;
      RWR_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
      // Twice the headroom: the chunk search's check after this call must still pass once
      // allocation granularity has taken its share.
      int64_t left = static_cast<int64_t>(free_bytes) - 2 * static_cast<int64_t>(kHeadroomBytes);
      const MemoryTally& tally = *k().arena.tally;
      if (tally.budget > 0) left = std::min(left, tally.budget - tally.bytes);
      const int64_t per_layer = d.M() * m_.es();
      auto take = [&](int64_t width) {
        const int64_t bytes = c_.n_layer * per_layer * width;
        if (!m_.keep_acts || bytes > left) return false;
        left -= bytes;
        return true;
      };
      kept.xn = take(d.D);
      kept.uc = take(d.Di);
      kept.dtraw = take(d.Di);
    }
    // A buffer that does not fit after all (a later call of this shape with longer chunks) stays
    // empty: that layer recomputes, with the same result.
    for (auto& a : k().acts) {
      for (auto [want, buf, width] :
           {std::tuple{kept.xn, &a.xn, d.D}, std::tuple{kept.uc, &a.uc, d.Di},
            std::tuple{kept.dtraw, &a.dtraw, d.Di}}) {
        if (!want) continue;
        const absl::Status st = AllocAct(buf, d.M() * width);
        if (!st.ok() && !absl::IsResourceExhausted(st)) return st;
      }
    }
    return absl::OkStatus();
  }

  absl::Status AllocActs(LayerActs& a, const ChunkDims& d, bool keep_input) {
    const int64_t M = d.M();
    DeviceArena& ar = k().arena;
    if (keep_input) RWR_RETURN_IF_ERROR(ar.Alloc(&a.h_in, M * d.D));
    RWR_RETURN_IF_ERROR(ar.Alloc(&a.rstd, M));
    RWR_RETURN_IF_ERROR(AllocAct(&a.xz, M * 2 * d.Di));
    RWR_RETURN_IF_ERROR(AllocAct(&a.xdbl, M * d.X));
    return ar.Alloc(&a.ckpt, scan::CheckpointBytes(ScanProbe(d)) + 256);
  }

  scan::CausalConv1dParams Conv(const ChunkDims& d, const LayerOffsets& o, const float* in,
                                float* out_state, const LayerActs& a) const {
    scan::CausalConv1dParams p;
    p.batch = d.B;
    p.seqlen = d.Tc;
    p.dim = d.Di;
    p.width = d.W;
    p.dtype = m_.ScanType();
    p.x = a.xz.ptr;
    p.x_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    p.weight = P(o.conv_weight);
    p.bias = P(o.conv_bias);
    p.silu = true;
    p.resets = k().reset.ptr + d.t0;
    p.resets_batch_stride = d.T;
    p.initial_state = in;
    p.final_state = out_state;
    p.out = Uc(a);
    p.out_strides = {d.Tc * d.Di, d.Di};
    return p;
  }

  scan::SelectiveScanParams Scan(int64_t l, const ChunkDims& d, const LayerOffsets& o,
                                 const float* in, float* out_state, const LayerActs& a) const {
    const int64_t es = m_.es();
    scan::SelectiveScanParams p = ScanProbe(d);
    p.x = Uc(a);
    p.x_strides = {d.Tc * d.Di, d.Di};
    p.delta = Dtraw(a);
    p.delta_strides = {d.Tc * d.Di, d.Di};
    p.A = m_.A.ptr + l * d.Di * d.S;
    p.B = At(a.xdbl.ptr, d.R, es);
    p.B_strides = {d.Tc * d.X, d.X};
    p.C = At(a.xdbl.ptr, d.R + d.S, es);
    p.C_strides = {d.Tc * d.X, d.X};
    p.D = P(o.D);
    p.z = At(a.xz.ptr, d.Di, es);
    p.z_strides = {d.Tc * 2 * d.Di, 2 * d.Di};
    p.delta_bias = P(o.dt_proj_bias);
    p.delta_softplus = true;
    p.resets = k().reset.ptr + d.t0;
    p.resets_batch_stride = d.T;
    p.initial_state = in;
    p.final_state = out_state;
    p.out = k().y.ptr;
    p.out_strides = {d.Tc * d.Di, d.Di};
    p.workspace = a.ckpt.ptr;
    p.scratch = k().scan_scratch.ptr;
    return p;
  }

  MambaCuda::Impl& m_;
  const MambaConfig& c_;
  const ParamLayout& layout_;
  const TokenBatch& batch_;
  // Host sources of asynchronous uploads, alive until the call's closing stream sync.
  std::vector<uint8_t> host_reset_;
  bool continues_ = false;  // ContinueSequence: the rows go on from a state, no reset at token 0
  std::vector<int32_t> host_rows_;  // LastLogits' row indices, alive until its stream sync
  std::tuple<std::vector<int32_t>, std::vector<int32_t>, std::vector<int32_t>> host_embed_;
};

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

absl::StatusOr<std::unique_ptr<MambaCuda>> MambaCuda::Create(const MambaConfig& config,
                                                             GemmPrecision precision,
                                                             DeviceCollectives* collectives) {
  return Make(config, precision, collectives, true);
}

namespace {

// The tensors a bf16 model for inference keeps in fp32: all but the GEMM weights, which its
// kernels read only through params16 (Impl::W); packed in layout order.
std::vector<MambaCuda::Impl::Fp32Span> Fp32Spans(const ParamLayout& layout, int64_t n_layer) {
  std::vector<int64_t> gemm_only;
  for (int64_t l = 0; l < n_layer; ++l) {
    const LayerOffsets& o = layout.layer(l);
    gemm_only.insert(gemm_only.end(), {o.in_proj, o.x_proj, o.dt_proj_weight, o.out_proj});
  }
  std::sort(gemm_only.begin(), gemm_only.end());
  std::vector<MambaCuda::Impl::Fp32Span> spans;
  int64_t packed = 0;
  for (const ParamSpec& spec : layout.specs()) {
    if (spec.size == 0 || std::binary_search(gemm_only.begin(), gemm_only.end(), spec.offset)) {
      continue;
    }
    spans.push_back({spec.offset, packed, spec.size});
    packed += spec.size;
  }
  std::sort(spans.begin(), spans.end(),
            [](const auto& a, const auto& b) { return a.offset < b.offset; });
  return spans;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MambaCuda>> MambaCuda::CreateForInference(
    const MambaConfig& config, GemmPrecision precision) {
  return Make(config, precision, nullptr, false);
}

absl::StatusOr<std::unique_ptr<MambaCuda>> MambaCuda::Make(const MambaConfig& config,
                                                           GemmPrecision precision,
                                                           DeviceCollectives* collectives,
                                                           bool training) {
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
  m.act = precision == GemmPrecision::kFp32 ? Act::kF32 : Act::kBF16;
  RWR_CUDA(cudaStreamCreate(&m.stream));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.gemm_workspace, kGemmWorkspaceBytes));
  RWR_ASSIGN_OR_RETURN(m.gemms,
                       GemmRunner::Create(m.stream, m.gemm_workspace.ptr, kGemmWorkspaceBytes));
  const int world = collectives != nullptr ? collectives->world_size() : 1;
  const int rank = collectives != nullptr ? collectives->rank() : 0;
  m.dp = world > 1 ? collectives : nullptr;
  m.shard = ShardRange::For(model->layout_.total(), rank, world);
  m.padded = ShardRange::Padded(model->layout_.total(), world);
  if (m.dp != nullptr) {
    for (int r = 0; r < world; ++r)
      m.owners.push_back(ShardRange::For(model->layout_.total(), r, world));
  }
  if (training) RWR_RETURN_IF_ERROR(m.SetUpBuckets(model->layout_));
  const int64_t n = m.padded;
  m.call = std::make_unique<CallBuffers>(&m.tally);
  int64_t fp32_count = n;
  if (!training && m.act != Act::kF32) {
    m.fp32_spans = Fp32Spans(model->layout_, config.n_layer);
    fp32_count = m.fp32_spans.back().packed + m.fp32_spans.back().size;
  }
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.params, fp32_count));
  if (training) RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.grads, n));
  if (m.act != Act::kF32) RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.params16, n * 2));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.A, config.n_layer * config.d_inner * config.d_state));
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.norm_acc, 1 + cuda::SumSquaresScratch()));
  RWR_CUDA(cudaMemset(m.params.ptr, 0, fp32_count * 4));
  if (training) RWR_CUDA(cudaMemset(m.grads.ptr, 0, n * 4));
  m.grad_writes.Init(model->layout_);
  if (m.act != Act::kF32) RWR_CUDA(cudaMemset(m.params16.ptr, 0, n * 2));
  return model;
}

MambaCuda::~MambaCuda() = default;

absl::Status MambaCuda::UploadParams(std::span<const float> params) {
  if (static_cast<int64_t>(params.size()) != layout_.total())
    return absl::InvalidArgumentError("UploadParams: size mismatch");
  Impl& m = *impl_;
  RWR_RETURN_IF_ERROR(m.AwaitAllParams());
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  m.a_current = false;
  if (!m.fp32_spans.empty()) return m.UploadPacked(params);
  RWR_CUDA(cudaMemcpy(m.params.ptr, params.data(), params.size() * 4, cudaMemcpyHostToDevice));
  if (m.act != Act::kF32) {
    RWR_RETURN_IF_ERROR(cuda::ToBf16(m.params.ptr, m.params16.ptr, layout_.total(), m.stream));
    RWR_CUDA(cudaStreamSynchronize(m.stream));
  }
  return absl::OkStatus();
}
absl::Status MambaCuda::DownloadParams(std::span<float> params) const {
  if (!impl_->fp32_spans.empty()) {
    return absl::FailedPreconditionError(
        "MambaCuda::DownloadParams: this model was made for bf16 inference "
        "(CreateForInference) and keeps the GEMM weights in bf16 only");
  }
  RWR_RETURN_IF_ERROR(impl_->AwaitAllParams());
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(params.data(), impl_->params.ptr, params.size() * 4, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}
absl::Status MambaCuda::DownloadGrads(std::span<float> grads) const {
  RWR_RETURN_IF_ERROR(impl_->Trains("DownloadGrads"));
  if (static_cast<int64_t>(grads.size()) != layout_.total()) {
    return absl::InvalidArgumentError("DownloadGrads: size mismatch");
  }
  RWR_RETURN_IF_ERROR(impl_->AwaitGradSums());
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(grads.data(), impl_->grads.ptr, grads.size() * 4, cudaMemcpyDeviceToHost));
  for (const auto& [offset, size] : impl_->grad_writes.Unwritten()) {
    std::fill_n(grads.begin() + offset, size, 0.f);
  }
  return absl::OkStatus();
}
absl::Status MambaCuda::ZeroGrads(int64_t calls) {
  if (calls < 0) {
    return absl::InvalidArgumentError(
        fmt::format("MambaCuda::ZeroGrads: {} calls (0: not said, else at least 1)", calls));
  }
  Impl& m = *impl_;
  RWR_RETURN_IF_ERROR(m.AwaitGradSums());  // a skipped step's sums, still running
  m.grad_writes.Forget();  // the next writers overwrite (GradWrites)
  m.accumulation = calls;
  m.accumulated = 0;
  m.grads_summed = false;
  return absl::OkStatus();
}
GemmChoices MambaCuda::gemm_choices() const { return impl_->gemms->choices(); }

absl::Status MambaCuda::AdoptGemmChoices(const GemmChoices& choices) {
  return impl_->gemms->Adopt(choices);
}

int64_t MambaCuda::peak_bytes() const { return impl_->tally.peak; }

int64_t MambaCuda::last_chunk_len() const { return impl_->last_chunk_len; }

void MambaCuda::SetMemoryBudget(int64_t bytes) {
  impl_->tally.budget = bytes;
  impl_->SizeNextCallAfresh();
}

void MambaCuda::SetPhaseTiming(bool on) { impl_->clock.on = on; }

void MambaCuda::SetDecodeGraphs(bool on) {
  impl_->decode_graphs = on;
  if (!on) impl_->DropDecodeGraph();
}

bool MambaCuda::decode_graphs() const { return impl_->decode_graphs; }

void MambaCuda::SetKeepActivations(bool on) {
  impl_->keep_acts = on;
  impl_->SizeNextCallAfresh();
}

absl::StatusOr<std::map<std::string, double>> MambaCuda::TakePhaseTimes() {
  PhaseClock& clock = impl_->clock;
  std::map<std::string, double> ms;
  for (const char* kind : kPhaseKinds) ms[kind] = 0;
  if (clock.used > 0) RWR_CUDA(cudaEventSynchronize(clock.events[clock.used - 1]));
  for (const PhaseSpan& span : clock.spans) {
    float t = 0;
    RWR_CUDA(cudaEventElapsedTime(&t, clock.events[span.start], clock.events[span.start + 1]));
    ms[span.kind] += t;
    if (span.what != nullptr) {
      ms[span.role != nullptr ? fmt::format("{}.{}.{}", span.kind, span.what, span.role)
                              : fmt::format("{}.{}", span.kind, span.what)] += t;
    }
  }
  clock.spans.clear();
  clock.used = 0;
  return ms;
}

namespace {

absl::Status EnsureOptimizer(MambaCuda::Impl& m, const ParamLayout& layout) {
  const int64_t n = m.shard.size();
  if (m.exp_avg.ptr == nullptr) {
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.exp_avg, std::max<int64_t>(n, 1)));
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.exp_avg_sq, std::max<int64_t>(n, 1)));
    const int64_t words = (m.padded + 31) / 32;
    RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.decay, words));
    RWR_CUDA(cudaMemset(m.exp_avg.ptr, 0, n * 4));
    RWR_CUDA(cudaMemset(m.exp_avg_sq.ptr, 0, n * 4));
    std::vector<uint32_t> decay(words, 0);
    for (const ParamSpec& spec : layout.specs()) {
      if (!spec.weight_decay) continue;
      int64_t i = spec.offset;
      const int64_t end = spec.offset + spec.size;
      for (; i < end && (i & 31) != 0; ++i) decay[i >> 5] |= 1u << (i & 31);
      for (; i + 32 <= end; i += 32) decay[i >> 5] = ~0u;  // whole words
      for (; i < end; ++i) decay[i >> 5] |= 1u << (i & 31);
    }
    RWR_CUDA(cudaMemcpy(m.decay.ptr, decay.data(), words * 4, cudaMemcpyHostToDevice));
  }
  return absl::OkStatus();
}

// Sizes the call's buffers for chunks of `chunk_len` tokens per row. 0 asks for the whole row if
// it fits in device memory, else the first that fits of half the row, a quarter, ... (each
// rounded up to a multiple of 16 tokens, at least 16), remembered for rows of this shape so later
// calls skip the search. Returns the chunk length used.
absl::StatusOr<int64_t> PrepareChunks(MambaCuda::Impl& m, CudaRunner& run, const TokenBatch& batch,
                                      int64_t chunk_len, bool grad) {
  const int64_t B = batch.batch, T = batch.seq_len;
  // A new row shape starts from an empty arena: buffers another shape left would otherwise count
  // against this one's fit (and make the chunk it gets depend on what ran before).
  const std::tuple<int64_t, int64_t, bool> shape{B, T, grad};
  if (shape != m.call_shape) {
    m.call = std::make_unique<CallBuffers>(&m.tally);
    m.call_shape = shape;
  }
  // State slots: every chunk's entering state for a backward; two in turn for a forward.
  auto prepare = [&](int64_t tc) { return run.Prepare(tc, grad ? (T + tc - 1) / tc : 2, grad); };
  if (chunk_len > 0) {
    const int64_t tc = std::min(chunk_len, T);
    absl::Status s = prepare(tc);
    if (absl::IsResourceExhausted(s)) {
      return absl::ResourceExhaustedError(fmt::format(
          "out of GPU memory for chunks of {} tokens x {} rows: set train.chunk_len smaller, or 0 "
          "to use the largest chunk that fits ({})",
          tc, B, std::string(s.message())));
    }
    RWR_RETURN_IF_ERROR(s);
    m.last_chunk_len = tc;
    return tc;
  }
  auto known = m.fitted_chunk.find(shape);
  int64_t tc = known != m.fitted_chunk.end() ? known->second : T;
  std::string why_not_larger;  // the last refusal, for the log line
  for (;;) {
    absl::Status s = prepare(tc);
    if (s.ok()) {
      // Headroom for what is allocated on first use (lazily loaded kernels, cuBLASLt's own).
      size_t free_bytes = 0, total_bytes = 0;
      RWR_CUDA(cudaMemGetInfo(&free_bytes, &total_bytes));
      if (free_bytes >= kHeadroomBytes || tc <= 16) break;
      s = absl::ResourceExhaustedError(
          fmt::format("{} MiB left free, want {}", free_bytes >> 20, kHeadroomBytes >> 20));
    }
    if (!absl::IsResourceExhausted(s)) return s;
    if (tc <= 16) {
      return absl::ResourceExhaustedError(
          fmt::format("no chunk of a {}-token row x {} fits in GPU memory, down to {} tokens: {}",
                      T, B, tc, std::string(s.message())));
    }
    m.call = std::make_unique<CallBuffers>(&m.tally);  // release this shape's buffers, retry
    why_not_larger = fmt::format("{} tokens: {}", tc, std::string(s.message()));
    tc = std::max<int64_t>(16, ((tc + 1) / 2 + 15) / 16 * 16);  // half, up to a multiple of 16
  }
  if (tc < T && known == m.fitted_chunk.end()) {
    spdlog::info("cuda: rows of {} tokens x {} run in chunks of {} tokens to fit GPU memory ({})",
                 T, B, tc, why_not_larger);
  }
  m.fitted_chunk[shape] = tc;
  m.last_chunk_len = tc;
  return tc;
}

// One decode step (one token per row of the generation's sequences) through the step's graph,
// captured here when there is none for these buffers. Unimplemented where capturing fails: the
// caller then runs the plain path, and graphs stay off for this model.
absl::Status DecodeStepWithGraph(MambaCuda::Impl& m, const ParamLayout& layout,
                                 const TokenBatch& batch, std::span<float> next_logits) {
  CudaRunner run(m, layout, batch);
  run.ContinueSequence();
  const int64_t rows = batch.batch;
  const std::tuple<int64_t, int64_t, bool> shape{rows, 1, false};
  MambaCuda::Impl::DecodeGraph& g = m.decode_graph;
  const bool have = g.exec != nullptr && m.call_shape == shape && g.call_id == m.call->id &&
                    g.rows == rows && g.sequence == m.sequence.ptr;
  const ChunkDims d = run.Dims(0, 1);
  if (have) {
    RWR_RETURN_IF_ERROR(run.UploadTokens());
  } else {
    m.DropDecodeGraph();
    RWR_ASSIGN_OR_RETURN(const int64_t chunk, PrepareChunks(m, run, batch, 1, false));
    if (chunk != 1 || rows > std::min<int64_t>(4096, (int64_t(1) << 26) / d.V)) {
      return absl::UnimplementedError("no decode graph for this shape");
    }
  }
  RWR_RETURN_IF_ERROR(run.UploadLastRows(d));
  RWR_RETURN_IF_ERROR(run.EnsureA());
  if (!have) {
    RWR_CUDA(cudaStreamSynchronize(m.stream));  // the uploads and A are not part of the graph
    RWR_CUDA(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeRelaxed));
    const absl::Status body = run.DecodeStepOnDevice(m.sequence.ptr);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(m.stream, &graph);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = body.ok() && ended == cudaSuccess
                                 ? cudaGraphInstantiate(&exec, graph, 0)
                                 : cudaErrorStreamCaptureInvalidated;
    if (graph != nullptr) cudaGraphDestroy(graph);
    if (made != cudaSuccess) {
      cudaGetLastError();  // the failed capture's error is not the next launch's
      m.decode_graphs = false;
      spdlog::warn("cuda: decode steps run without a CUDA graph ({})",
                   body.ok() ? cudaGetErrorString(ended != cudaSuccess ? ended : made)
                             : std::string(body.message()));
      return absl::UnimplementedError("decode step not captured");
    }
    g = {exec, m.call->id, rows, m.sequence.ptr};
  }
  RWR_CUDA(cudaGraphLaunch(g.exec, m.stream));
  RWR_CUDA(cudaMemcpyAsync(next_logits.data(), m.call->block_logits.ptr,
                           rows * d.V * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LossSum> MambaCuda::Forward(const TokenBatch& batch, int64_t chunk_len,
                                           float* host_logits) {
  const int64_t T = batch.seq_len;
  CudaRunner run(*impl_, layout_, batch);
  Impl& m = *impl_;
  RWR_ASSIGN_OR_RETURN(chunk_len, PrepareChunks(m, run, batch, chunk_len, false));
  const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
  LossSum total;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const ChunkDims d = run.Dims(c * chunk_len, std::min(chunk_len, T - c * chunk_len));
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < m.c.n_layer; ++l) {
      // states slot (c % 2) in, (c + 1) % 2 out
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, run.State(c % 2, l), run.State((c + 1) % 2, l),
                                           m.call->pass_acts, false));
    }
    RWR_ASSIGN_OR_RETURN(LossSum part, run.Head(d, host_logits, 0.f, false));
    total.loss_sum += part.loss_sum;
    total.tokens += part.tokens;
  }
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  return total;
}

absl::Status MambaCuda::ResetSequence(int64_t rows) {
  Impl& m = *impl_;
  if (rows <= 0) return absl::InvalidArgumentError(fmt::format("ResetSequence: {} rows", rows));
  const int64_t floats = m.c.n_layer * m.StateFloats(rows);
  RWR_RETURN_IF_ERROR(m.arena.Alloc(&m.sequence, floats));
  RWR_CUDA(cudaMemsetAsync(m.sequence.ptr, 0, floats * 4, m.stream));
  m.sequence_rows = rows;
  return absl::OkStatus();
}

absl::Status MambaCuda::Advance(const RowTokens& in, int64_t chunk_len,
                                std::span<float> next_logits) {
  Impl& m = *impl_;
  RWR_RETURN_IF_ERROR(m.AwaitAllParams());  // decode graphs wait for no other stream
  const int64_t rows = in.rows;
  if (rows != m.sequence_rows) {
    return absl::InvalidArgumentError(fmt::format(
        "Advance: {} rows, but ResetSequence started {}", rows, m.sequence_rows));
  }
  std::vector<uint8_t> no_loss;
  RWR_ASSIGN_OR_RETURN(const TokenBatch batch,
                       RowsAsBatch(in, m.c.vocab_size, next_logits.size(), &no_loss));
  const int64_t T = batch.seq_len;
  m.untimed_gemms = true;
  if (T == 1 && m.decode_graphs) {
    absl::Status stepped = DecodeStepWithGraph(m, layout_, batch, next_logits);
    if (!absl::IsUnimplemented(stepped)) {  // Unimplemented: the step could not be captured
      m.untimed_gemms = false;
      return stepped;
    }
  }
  absl::Status status = [&]() -> absl::Status {
    CudaRunner run(m, layout_, batch);
    run.ContinueSequence();
    RWR_ASSIGN_OR_RETURN(chunk_len, PrepareChunks(m, run, batch, chunk_len, false));
    const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
    const int64_t floats = m.c.n_layer * m.StateFloats(rows);
    // Slot 0 holds every layer's state entering the first chunk (see CudaRunner::State).
    RWR_CUDA(cudaMemcpyAsync(run.State(0, 0), m.sequence.ptr, floats * 4,
                             cudaMemcpyDeviceToDevice, m.stream));
    for (int64_t c = 0; c < num_chunks; ++c) {
      const ChunkDims d = run.Dims(c * chunk_len, std::min(chunk_len, T - c * chunk_len));
      RWR_RETURN_IF_ERROR(run.Embed(d));
      for (int64_t l = 0; l < m.c.n_layer; ++l) {
        RWR_RETURN_IF_ERROR(run.LayerForward(l, d, run.State(c % 2, l),
                                             run.State((c + 1) % 2, l), m.call->pass_acts, false));
      }
      if (c + 1 == num_chunks) RWR_RETURN_IF_ERROR(run.LastLogits(d, next_logits.data()));
    }
    RWR_CUDA(cudaMemcpyAsync(m.sequence.ptr, run.State(num_chunks % 2, 0), floats * 4,
                             cudaMemcpyDeviceToDevice, m.stream));
    RWR_CUDA(cudaStreamSynchronize(m.stream));
    return absl::OkStatus();
  }();
  m.untimed_gemms = false;
  return status;
}

absl::StatusOr<LossSum> MambaCuda::ForwardBackward(const TokenBatch& batch, int64_t chunk_len,
                                                   float loss_scale) {
  RWR_RETURN_IF_ERROR(impl_->Trains("ForwardBackward"));
  const int64_t T = batch.seq_len;
  CudaRunner run(*impl_, layout_, batch);
  Impl& m = *impl_;
  // The optimizer state first: a training step follows, and the chunk search must see the
  // memory that is really left.
  RWR_RETURN_IF_ERROR(EnsureOptimizer(m, layout_));
  RWR_ASSIGN_OR_RETURN(chunk_len, PrepareChunks(m, run, batch, chunk_len, true));
  const int64_t num_chunks = (T + chunk_len - 1) / chunk_len;
  // The accumulation's last call (data parallelism) sums each bucket of the gradients over the
  // ranks once the backward of the first chunk (the last it runs) has written it: the final norm
  // after the head, each layer after its backward, the embedding (the tied head's and the
  // embedding's gradient) last.
  RWR_ASSIGN_OR_RETURN(const bool sums, m.CountCall());
  // Pass 1: the state entering every chunk.
  for (int64_t c = 0; c + 1 < num_chunks; ++c) {
    const ChunkDims d = run.Dims(c * chunk_len, chunk_len);
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < m.c.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(
          run.LayerForward(l, d, run.State(c, l), run.State(c + 1, l), m.call->pass_acts, false));
    }
  }
  // Pass 2: last chunk first, forward with activations kept, then backward.
  LossSum total;
  const int64_t sf = m.StateFloats(batch.batch);
  for (int64_t c = num_chunks - 1; c >= 0; --c) {
    const ChunkDims d = run.Dims(c * chunk_len, std::min(chunk_len, T - c * chunk_len));
    RWR_RETURN_IF_ERROR(run.Embed(d));
    for (int64_t l = 0; l < m.c.n_layer; ++l) {
      RWR_RETURN_IF_ERROR(run.LayerForward(l, d, run.State(c, l), nullptr, m.call->acts[l], true));
    }
    RWR_ASSIGN_OR_RETURN(LossSum part, run.Head(d, nullptr, loss_scale, true));
    total.loss_sum += part.loss_sum;
    total.tokens += part.tokens;
    const bool sum_now = sums && c == 0;
    if (sum_now) RWR_RETURN_IF_ERROR(m.SumBucket(m.bucket_ready.size() - 1));  // the final norm
    for (int64_t l = m.c.n_layer - 1; l >= 0; --l) {
      RWR_RETURN_IF_ERROR(run.LayerBackward(l, d, m.call->acts[l], run.State(c, l),
                                            m.call->dstates.ptr + l * sf,
                                            m.call->dstates_next.ptr + l * sf));
      if (sum_now) RWR_RETURN_IF_ERROR(m.SumBucket(l + 1));
    }
    std::swap(m.call->dstates, m.call->dstates_next);
    RWR_RETURN_IF_ERROR(run.EmbedBackward(d));
    if (sum_now) RWR_RETURN_IF_ERROR(m.SumBucket(0));
  }
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  m.grads_summed = sums;
  return total;
}

ShardRange MambaCuda::optimizer_range() const { return impl_->shard; }
void MambaCuda::SetOverlapParamGather(bool on) { impl_->overlap_gather = on; }
void MambaCuda::SetOverlapOptimizer(bool on) { impl_->overlap_optimizer = on; }
void MambaCuda::SetOverlapGradReduce(bool on) { impl_->overlap_reduce = on; }

absl::Status MambaCuda::DownloadOptimizer(std::vector<float>* exp_avg,
                                          std::vector<float>* exp_avg_sq, int64_t* step) const {
  const int64_t n = impl_->shard.size();
  // 22 GB at 2.8B on one rank: fresh ones paged in by several threads.
  if (static_cast<int64_t>(exp_avg->size()) != n) *exp_avg = ZeroedFloats(n);
  if (static_cast<int64_t>(exp_avg_sq->size()) != n) *exp_avg_sq = ZeroedFloats(n);
  *step = impl_->adam_step;
  if (impl_->exp_avg.ptr == nullptr) {  // no update yet: zero
    std::fill(exp_avg->begin(), exp_avg->end(), 0.f);
    std::fill(exp_avg_sq->begin(), exp_avg_sq->end(), 0.f);
    return absl::OkStatus();
  }
  RWR_RETURN_IF_ERROR(impl_->AwaitAllParams());  // the last AdamW may run on the second stream
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(exp_avg->data(), impl_->exp_avg.ptr, n * 4, cudaMemcpyDeviceToHost));
  RWR_CUDA(cudaMemcpy(exp_avg_sq->data(), impl_->exp_avg_sq.ptr, n * 4, cudaMemcpyDeviceToHost));
  return absl::OkStatus();
}

absl::Status MambaCuda::UploadOptimizer(std::span<const float> exp_avg,
                                        std::span<const float> exp_avg_sq, int64_t step) {
  RWR_RETURN_IF_ERROR(impl_->Trains("UploadOptimizer"));
  const int64_t n = impl_->shard.size();
  if (static_cast<int64_t>(exp_avg.size()) != n || static_cast<int64_t>(exp_avg_sq.size()) != n) {
    return absl::InvalidArgumentError(
        "UploadOptimizer: moment sizes differ from the optimizer range");
  }
  RWR_RETURN_IF_ERROR(EnsureOptimizer(*impl_, layout_));
  RWR_RETURN_IF_ERROR(impl_->AwaitAllParams());  // no AdamW still reading the moments
  RWR_CUDA(cudaStreamSynchronize(impl_->stream));
  RWR_CUDA(cudaMemcpy(impl_->exp_avg.ptr, exp_avg.data(), n * 4, cudaMemcpyHostToDevice));
  RWR_CUDA(cudaMemcpy(impl_->exp_avg_sq.ptr, exp_avg_sq.data(), n * 4, cudaMemcpyHostToDevice));
  impl_->adam_step = step;
  return absl::OkStatus();
}

absl::StatusOr<double> MambaCuda::ClipAndStep(double clip_norm, double lr, const AdamWOptions& o) {
  Impl& m = *impl_;
  RWR_RETURN_IF_ERROR(m.Trains("ClipAndStep"));
  const ShardRange& r = m.shard;
  const int64_t per_rank =
      ShardRange::PerRank(layout_.total(), m.dp != nullptr ? m.dp->world_size() : 1);
  RWR_RETURN_IF_ERROR(EnsureOptimizer(m, layout_));
  RWR_RETURN_IF_ERROR(m.ClearUnwritten());
  m.a_current = false;  // the update below changes A_log
  if (m.dp != nullptr && m.grads_summed) {
    // Summed bucket by bucket by the accumulation's last call: the norm below waits for the sums.
    RWR_RETURN_IF_ERROR(m.AwaitGradSums());
  } else if (m.dp != nullptr) {
    RWR_RETURN_IF_ERROR(m.Timed("optimizer", "reduce_scatter", [&]() -> absl::Status {
      RWR_RETURN_IF_ERROR(m.Follow(m.comm_stream, m.stream, m.main_mark));
      RWR_RETURN_IF_ERROR(m.dp->ReduceScatterSum(m.grads.ptr, per_rank, m.comm_stream));
      return m.Follow(m.stream, m.comm_stream, m.comm_mark);
    }));
  }
  // The accumulation is used up: a ForwardBackward from here on adds to the gradients as before
  // ZeroGrads counted calls.
  m.accumulation = m.accumulated = 0;
  m.grads_summed = false;
  // The norm of the summed gradients: each rank's range, then the ranks' sums added.
  RWR_RETURN_IF_ERROR(m.Timed("optimizer", "grad_norm", [&]() -> absl::Status {
    if (r.size() == 0) {
      RWR_CUDA(cudaMemsetAsync(m.norm_acc.ptr, 0, 8, m.stream));
    } else {
      RWR_RETURN_IF_ERROR(cuda::SumSquares(m.grads.ptr + r.begin, r.size(), m.norm_acc.ptr + 1,
                                           m.norm_acc.ptr, m.stream));
    }
    if (m.dp == nullptr) return absl::OkStatus();
    RWR_RETURN_IF_ERROR(m.Follow(m.comm_stream, m.stream, m.main_mark));
    RWR_RETURN_IF_ERROR(m.dp->AllReduceSum(m.norm_acc.ptr, 1, m.comm_stream));
    return m.Follow(m.stream, m.comm_stream, m.comm_mark);
  }));
  double sumsq = 0;
  RWR_CUDA(cudaMemcpyAsync(&sumsq, m.norm_acc.ptr, 8, cudaMemcpyDeviceToHost, m.stream));
  RWR_CUDA(cudaStreamSynchronize(m.stream));
  const double norm = std::sqrt(sumsq);
  if (!std::isfinite(norm)) return norm;
  const double coef = clip_norm > 0 ? std::min(1.0, clip_norm / (norm + 1e-6)) : 1.0;
  ++m.adam_step;
  const double bc1 = 1 - std::pow(o.beta1, double(m.adam_step));
  const double bc2 = 1 - std::pow(o.beta2, double(m.adam_step));
  // r.begin is a multiple of ShardRange::kAlign: the decay bits of the range start on a word.
  char* p16 = m.act == Act::kF32 ? nullptr : m.params16.ptr;
  RWR_RETURN_IF_ERROR(m.AwaitAllParams());  // the last broadcasts read this rank's range
  // AdamW over [lo, hi) of this rank's range, on `on`; lo a multiple of 32 past r.begin (the
  // decay bits of the range start on a word).
  auto adamw = [&](int64_t lo, int64_t hi, cudaStream_t on) {
    return cuda::AdamW(m.params.ptr + lo, p16 != nullptr ? p16 + lo * 2 : nullptr,
                       m.grads.ptr + lo, m.exp_avg.ptr + (lo - r.begin),
                       m.exp_avg_sq.ptr + (lo - r.begin), m.decay.ptr + lo / 32, hi - lo, o.beta1,
                       o.beta2, static_cast<float>(lr / bc1),
                       static_cast<float>(1 - lr * o.weight_decay),
                       static_cast<float>(1 / std::sqrt(bc2)), static_cast<float>(o.eps),
                       static_cast<float>(coef), on);
  };
  // With data parallelism, bucket k's updated parameters from their owners to every rank.
  auto gather = [&](size_t k) -> absl::Status {
    std::vector<DeviceCollectives::Piece> pieces;
    for (const auto& [lo, hi, owner] : m.BucketOwners(k)) {
      pieces.push_back({m.params.ptr + lo, (hi - lo) * 4, owner});
      if (p16 != nullptr) pieces.push_back({p16 + lo * 2, (hi - lo) * 2, owner});
    }
    return pieces.empty() ? absl::OkStatus() : m.dp->Broadcast(pieces, m.comm_stream);
  };
  const size_t buckets = m.bucket_ready.size();
  if (m.overlap_optimizer && !m.clock.on) {
    // Bucket by bucket on the second stream, queued and not waited for: AdamW over this rank's
    // part of the bucket, then (data parallelism) the owners' broadcasts of it. The next call's
    // forward waits for each layer's bucket only (AwaitBucket), so the update (memory bound) and
    // the broadcasts overlap its first layers (compute bound) instead of holding back the first.
    // The cuts are bucket starts rounded up to 32 parameters (r.begin is a multiple of 64), so
    // this rank's part of bucket k is updated once the pieces up to its own are done. (With phase
    // timing on it runs in line below: overlapped work has no time of its own.)
    RWR_RETURN_IF_ERROR(m.Follow(m.comm_stream, m.stream, m.main_mark));
    int64_t lo = r.begin;
    for (size_t k = 0; k < buckets; ++k) {
      const int64_t hi =
          k + 1 == buckets ? r.end : std::min(r.end, (m.bucket_begin[k + 1] + 31) / 32 * 32);
      if (lo < hi) RWR_RETURN_IF_ERROR(adamw(lo, hi, m.comm_stream));
      lo = std::max(lo, hi);
      if (m.dp != nullptr) RWR_RETURN_IF_ERROR(gather(k));
      RWR_CUDA(cudaEventRecord(m.bucket_ready[k], m.comm_stream));
    }
  } else {
    if (r.size() > 0) {
      RWR_RETURN_IF_ERROR(
          m.Timed("optimizer", "adamw", [&] { return adamw(r.begin, r.end, m.stream); }));
    }
    if (m.dp != nullptr) {
      // Queued, not waited for: the next call's forward waits bucket by bucket (AwaitBucket).
      RWR_RETURN_IF_ERROR(m.Follow(m.comm_stream, m.stream, m.main_mark));
      for (size_t k = 0; k < buckets; ++k) {
        RWR_RETURN_IF_ERROR(gather(k));
        RWR_CUDA(cudaEventRecord(m.bucket_ready[k], m.comm_stream));
      }
    }
  }
  if (m.dp != nullptr && !m.overlap_gather) {
    RWR_RETURN_IF_ERROR(m.Timed("optimizer", "all_gather", [&] { return m.AwaitAllParams(); }));
  }
  // A = −exp(A_log) is recomputed from the new parameters by the next call (Prepare, or with
  // data parallelism each layer's LayerReady).
  return norm;
}

}  // namespace rwr::trainer
