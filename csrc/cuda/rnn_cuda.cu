// CUDA backend: the kernels of kernels.h as __global__ functions, the executor that launches
// them for the algorithm of algo.h, the entry points of rnn.h and the runtime services of
// runtime.h. Built by nvcc into a static library that the binding links.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "../rnn.h"
#include "algo.h"
#include "runtime.h"

namespace elman {
namespace cuda {
namespace {

extern __shared__ __align__(16) unsigned char elman_smem[];

// The Ctx of kernels.h on the GPU.
struct DeviceCtx {
  __device__ int tid() const { return threadIdx.x; }
  __device__ int block_x() const { return blockIdx.x; }
  __device__ int block_y() const { return blockIdx.y; }
  __device__ int block_z() const { return blockIdx.z; }
  __device__ unsigned char* smem() const { return elman_smem; }
  __device__ void sync() const { __syncthreads(); }
  // Only reached by kernels launched with cudaLaunchCooperativeKernel.
  __device__ void grid_sync() const { cooperative_groups::this_grid().sync(); }
};

__device__ __forceinline__ int64_t global_index() {
  return int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) gemm_kernel(const GemmArgs<T> a) {
  DeviceCtx c;
  gemm_block(a, c);
}
template <typename T>
__global__ void __launch_bounds__(kThreads) splitk_finish_kernel(const GemmArgs<T> a) {
  splitk_finish_element(a, global_index());
}
template <typename T>
__global__ void __launch_bounds__(kThreads)
    persistent_kernel(const StepArgs<T> a, const PersistentPlan p, const bool backward) {
  DeviceCtx c;
  persistent_block(a, p, backward, c);
}
template <typename T>
__global__ void __launch_bounds__(kThreads) grad_norm_kernel(const StepArgs<T> a, double* norms) {
  DeviceCtx c;
  grad_norm_block(a, norms, c);
}
template <typename T>
__global__ void bias_sum_kernel(const T* b_ih, const T* b_hh, T* bias, int64_t H) {
  bias_sum_element(b_ih, b_hh, bias, H, global_index());
}
template <typename T>
__global__ void h_n_kernel(const StepArgs<T> a, T* h_n) {
  h_n_element(a, h_n, global_index());
}
template <typename T>
__global__ void gather_prev_kernel(const StepArgs<T> a, T* prev) {
  gather_prev_element(a, prev, global_index());
}
template <typename T>
__global__ void gather_first_dz_kernel(const StepArgs<T> a, T* first) {
  gather_first_dz_element(a, first, global_index());
}
template <typename T>
__global__ void bias_grad_kernel(const StepArgs<T> a, T* db_ih, T* db_hh) {
  bias_grad_element(a, db_ih, db_hh, global_index());
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("elman CUDA: ") + what + " failed: " + cudaGetErrorName(e) +
                             " (" + cudaGetErrorString(e) + ")");
}

dim3 blocks_for(int64_t n) { return dim3(unsigned((n + kThreads - 1) / kThreads)); }

// The executor of algo.h on the GPU: everything is queued on one stream; scratch memory comes
// from the stream-ordered allocator and is released in stream order when the executor ends.
class DeviceExec {
 public:
  explicit DeviceExec(cudaStream_t s) : stream_(s) {}
  ~DeviceExec() {
    for (void* p : allocs_) cudaFreeAsync(p, stream_);
  }
  DeviceExec(const DeviceExec&) = delete;
  DeviceExec& operator=(const DeviceExec&) = delete;

  template <typename T>
  T* alloc(int64_t n) {
    void* p = nullptr;
    check(cudaMallocAsync(&p, size_t(n > 0 ? n : 1) * sizeof(T), stream_), "cudaMallocAsync");
    allocs_.push_back(p);
    return static_cast<T*>(p);
  }

  template <typename T>
  void gemm(GemmArgs<T> g) {
    if (g.M == 0 || g.N == 0) return;
    if (g.splits > 1) g.partial = alloc<T>(g.splits * g.M * g.N);
    gemm_kernel<T><<<grid_of(g), kThreads, sizeof(GemmSmem<T>), stream_>>>(g);
    check(cudaGetLastError(), "gemm_kernel launch");
    if (g.splits > 1) {
      splitk_finish_kernel<T><<<blocks_for(g.M * g.N), kThreads, 0, stream_>>>(g);
      check(cudaGetLastError(), "splitk_finish_kernel launch");
    }
  }

  // Tier 3: the per-step products as one graph of kernel nodes, each depending on the last,
  // launched once (one submission instead of T launches).
  template <typename T>
  void gemm_chain(const std::vector<GemmArgs<T>>& steps) {
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    check(cudaGraphCreate(&graph, 0), "cudaGraphCreate");
    cudaGraphNode_t prev = nullptr;
    cudaError_t err = cudaSuccess;
    for (const GemmArgs<T>& g : steps) {
      GemmArgs<T> arg = g;
      void* params[] = {&arg};
      cudaKernelNodeParams p = {};
      p.func = reinterpret_cast<void*>(&gemm_kernel<T>);
      p.gridDim = grid_of(g);
      p.blockDim = dim3(kThreads);
      p.sharedMemBytes = sizeof(GemmSmem<T>);
      p.kernelParams = params;
      cudaGraphNode_t node = nullptr;
      err = cudaGraphAddKernelNode(&node, graph, prev ? &prev : nullptr, prev ? 1 : 0, &p);
      if (err != cudaSuccess) break;
      prev = node;
    }
    if (err == cudaSuccess) err = cudaGraphInstantiate(&exec, graph, 0);
    if (err == cudaSuccess) err = cudaGraphLaunch(exec, stream_);
    if (exec) cudaGraphExecDestroy(exec);  // freed once the launch completes
    cudaGraphDestroy(graph);
    check(err, "the tier-3 step graph");
  }

  template <typename T>
  void persistent(const StepArgs<T>& st, const RecurrencePlan& plan, bool backward) {
    const void* fn = reinterpret_cast<const void*>(&persistent_kernel<T>);
    check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem_bytes)),
          "cudaFuncSetAttribute(shared memory)");
    const dim3 grid(unsigned(plan.grid_x), unsigned(plan.grid_y));
    if (!plan.p.grid_sync) {
      persistent_kernel<T><<<grid, kThreads, plan.smem_bytes, stream_>>>(st, plan.p, backward);
      check(cudaGetLastError(), "persistent_kernel launch");
      return;
    }
    int dev = 0, per_sm = 0, sms = 0;
    check(cudaGetDevice(&dev), "cudaGetDevice");
    check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kThreads, plan.smem_bytes),
          "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    if (int64_t(per_sm) * sms < plan.grid_x * plan.grid_y)
      throw std::runtime_error("elman CUDA: the tier-2 cooperative grid of " +
                               std::to_string(plan.grid_x * plan.grid_y) + " blocks does not fit (" +
                               std::to_string(per_sm) + " per SM x " + std::to_string(sms) + " SMs)");
    StepArgs<T> a = st;
    PersistentPlan p = plan.p;
    bool bw = backward;
    void* args[] = {&a, &p, &bw};
    check(cudaLaunchCooperativeKernel(fn, grid, dim3(kThreads), args, plan.smem_bytes, stream_),
          "cudaLaunchCooperativeKernel");
  }

  template <typename T>
  void bias_sum(const T* b_ih, const T* b_hh, T* bias, int64_t H) {
    bias_sum_kernel<T><<<blocks_for(H), kThreads, 0, stream_>>>(b_ih, b_hh, bias, H);
    check(cudaGetLastError(), "bias_sum_kernel launch");
  }
  template <typename T>
  void h_n(const StepArgs<T>& st, T* h_n) {
    h_n_kernel<T><<<blocks_for(st.shape.B * st.shape.H), kThreads, 0, stream_>>>(st, h_n);
    check(cudaGetLastError(), "h_n_kernel launch");
  }
  template <typename T>
  void gather_prev(const StepArgs<T>& st, T* prev) {
    gather_prev_kernel<T><<<blocks_for(st.shape.T * st.shape.B * st.shape.H), kThreads, 0, stream_>>>(st, prev);
    check(cudaGetLastError(), "gather_prev_kernel launch");
  }
  template <typename T>
  void gather_first_dz(const StepArgs<T>& st, T* first) {
    gather_first_dz_kernel<T><<<blocks_for(st.shape.B * st.shape.H), kThreads, 0, stream_>>>(st, first);
    check(cudaGetLastError(), "gather_first_dz_kernel launch");
  }
  template <typename T>
  void bias_grad(const StepArgs<T>& st, T* db_ih, T* db_hh) {
    bias_grad_kernel<T><<<blocks_for(st.shape.H), kThreads, 0, stream_>>>(st, db_ih, db_hh);
    check(cudaGetLastError(), "bias_grad_kernel launch");
  }
  template <typename T>
  void grad_norms(const StepArgs<T>& st, double* norms) {
    grad_norm_kernel<T><<<unsigned(st.shape.T), kThreads, kThreads * sizeof(double), stream_>>>(st, norms);
    check(cudaGetLastError(), "grad_norm_kernel launch");
  }

 private:
  template <typename T>
  static dim3 grid_of(const GemmArgs<T>& g) {
    return dim3(unsigned((g.M + kBM - 1) / kBM), unsigned((g.N + kBN - 1) / kBN), unsigned(g.splits));
  }
  cudaStream_t stream_;
  std::vector<void*> allocs_;
};

DeviceProps current_props() {
  int dev = 0, sms = 0, smem = 0, coop = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev), "cudaDeviceGetAttribute");
  return DeviceProps{sms, smem, coop != 0};
}

}  // namespace

// ------------------------------------------------------------------------------ entry points
}  // namespace cuda

template <typename T>
void rnn_forward_cuda(const RnnForwardArgs<T>& a, const CudaLaunch& launch) {
  cuda::DeviceExec ex(static_cast<cudaStream_t>(launch.stream));
  cuda::forward(ex, a, cuda::current_props(), launch.tier);
}
template <typename T>
void rnn_backward_cuda(const RnnBackwardArgs<T>& a, const CudaLaunch& launch) {
  cuda::DeviceExec ex(static_cast<cudaStream_t>(launch.stream));
  cuda::backward(ex, a, cuda::current_props(), launch.tier);
}
template void rnn_forward_cuda<float>(const RnnForwardArgs<float>&, const CudaLaunch&);
template void rnn_forward_cuda<double>(const RnnForwardArgs<double>&, const CudaLaunch&);
template void rnn_backward_cuda<float>(const RnnBackwardArgs<float>&, const CudaLaunch&);
template void rnn_backward_cuda<double>(const RnnBackwardArgs<double>&, const CudaLaunch&);

// ------------------------------------------------------------------------- runtime services
namespace cuda {

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (n == 0 && why) *why = "no CUDA device found";
  return n;
}
std::string device_name(int device) {
  cudaDeviceProp p;
  check(cudaGetDeviceProperties(&p, device), "cudaGetDeviceProperties");
  return std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
}
int runtime_version() {
  int v = 0;
  cudaRuntimeGetVersion(&v);
  return v;
}
int driver_version() {
  int v = 0;
  cudaDriverGetVersion(&v);
  return v;
}
void set_device(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }
int get_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}
int pointer_device(const void* p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged ? a.device : -1;
}
void* malloc_device(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc");
  return p;
}
void free_device(void* p) noexcept { cudaFree(p); }
void copy_to_device(void* dst, const void* src, size_t bytes, void* stream) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync (host to device)");
}
void copy_to_host(void* dst, const void* src, size_t bytes, void* stream) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
        "cudaMemcpyAsync (device to host)");
}
void synchronize(void* stream) {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}
void stream_wait(void* waiter, void* other) {
  if (waiter == other) return;
  cudaEvent_t ev;
  check(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cudaEventCreate");
  cudaError_t e = cudaEventRecord(ev, static_cast<cudaStream_t>(other));
  if (e == cudaSuccess) e = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiter), ev, 0);
  cudaEventDestroy(ev);
  check(e, "cudaStreamWaitEvent");
}

StreamCopy::StreamCopy(const void* src, size_t bytes, void* stream) : stream_(stream) {
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  check(cudaMallocAsync(&p_, bytes ? bytes : 1, s), "cudaMallocAsync");
  const char* from = static_cast<const char*>(src);
  auto* staging = new std::vector<char>(from, from + bytes);
  cudaError_t e = cudaMemcpyAsync(p_, staging->data(), bytes, cudaMemcpyHostToDevice, s);
  if (e == cudaSuccess)
    e = cudaLaunchHostFunc(s, [](void* v) { delete static_cast<std::vector<char>*>(v); }, staging);
  if (e != cudaSuccess) {
    cudaStreamSynchronize(s);  // a queued copy may still read the staging buffer
    delete staging;
    cudaFreeAsync(p_, s);
    check(e, "staging a host array on the stream");
  }
}
StreamCopy::~StreamCopy() { cudaFreeAsync(p_, static_cast<cudaStream_t>(stream_)); }

}  // namespace cuda
}  // namespace elman
