// The CPU simulator of the CUDA backend: runs the kernel bodies of kernels.h thread by thread,
// each simulated GPU thread a fiber (ucontext) that yields at every barrier, so the very code
// nvcc compiles is executed, phase by phase, with block and grid barriers honoured. Used only
// by the test module elman._cuda_sim; it needs no GPU and no CUDA toolkit.
#pragma once
#include <ucontext.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "algo.h"

namespace elman {
namespace cuda {
namespace sim {

class Grid;

// The Ctx of kernels.h for one simulated thread.
struct ThreadCtx {
  Grid* grid;
  int tid_, bx, by, bz;
  unsigned char* smem_;
  int tid() const { return tid_; }
  int block_x() const { return bx; }
  int block_y() const { return by; }
  int block_z() const { return bz; }
  unsigned char* smem() const { return smem_; }
  void sync();
  void grid_sync();
};

// Runs one launch: every block of the grid at once when the kernel has grid-wide barriers,
// otherwise one block after another (blocks cannot communicate then).
class Grid {
 public:
  using Body = std::function<void(ThreadCtx&)>;

  static void launch(int64_t gx, int64_t gy, int64_t gz, size_t smem_bytes, bool grid_sync,
                     const Body& body) {
    std::vector<std::array<int64_t, 3>> blocks;
    for (int64_t z = 0; z < gz; ++z)
      for (int64_t y = 0; y < gy; ++y)
        for (int64_t x = 0; x < gx; ++x) blocks.push_back({x, y, z});
    if (grid_sync) {
      Grid g(blocks, smem_bytes, body);
      g.run();
    } else {
      for (const auto& b : blocks) {
        Grid g({b}, smem_bytes, body);
        g.run();
      }
    }
  }

  void block_barrier(int fiber) { wait(fiber, State::at_block); }
  void grid_barrier(int fiber) { wait(fiber, State::at_grid); }

 private:
  enum class State { ready, at_block, at_grid, done };
  struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    State state = State::ready;
    ThreadCtx tc;
    Grid* grid;
    int index;
  };
  static constexpr size_t kStack = 256 * 1024;

  Grid(const std::vector<std::array<int64_t, 3>>& blocks, size_t smem_bytes, const Body& body)
      : body_(body), nblocks_(int(blocks.size())) {
    // Shared memory starts as garbage (NaN bytes), as it may on the GPU: a kernel that reads
    // shared memory it never wrote produces NaN here instead of a lucky zero.
    smem_.assign(blocks.size(), std::vector<unsigned char>(smem_bytes + 16, 0xff));
    fibers_.resize(blocks.size() * kThreads);
    for (size_t b = 0; b < blocks.size(); ++b)
      for (int t = 0; t < kThreads; ++t) {
        Fiber& f = fibers_[b * kThreads + t];
        f.grid = this;
        f.index = int(b * kThreads + t);
        f.tc = ThreadCtx{this, t, int(blocks[b][0]), int(blocks[b][1]), int(blocks[b][2]),
                         smem_[b].data()};
      }
  }

  static void entry(unsigned lo, unsigned hi) {
    Fiber* f = reinterpret_cast<Fiber*>((uintptr_t(hi) << 32) | uintptr_t(lo));
    f->grid->current_ = f->index;
    f->grid->body_(f->tc);
    f->state = State::done;
    swapcontext(&f->ctx, &f->grid->main_);
  }

  void wait(int fiber, State s) {
    Fiber& f = fibers_[fiber];
    f.state = s;
    swapcontext(&f.ctx, &main_);
  }

  void resume(Fiber& f) {
    f.state = State::ready;
    current_ = f.index;
    swapcontext(&main_, &f.ctx);
  }

  void run() {
    for (Fiber& f : fibers_) {
      f.stack.reset(new char[kStack]);
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack.get();
      f.ctx.uc_stack.ss_size = kStack;
      f.ctx.uc_link = nullptr;
      const uintptr_t p = reinterpret_cast<uintptr_t>(&f);
      makecontext(&f.ctx, reinterpret_cast<void (*)()>(&Grid::entry), 2, unsigned(p & 0xffffffffu),
                  unsigned(p >> 32));
    }
    for (;;) {
      for (Fiber& f : fibers_)
        if (f.state == State::ready) resume(f);
      // Every fiber is now done or waiting at a barrier: release whichever barrier is complete.
      bool all_done = true, progress = false;
      for (int b = 0; b < nblocks_; ++b) {
        int at_block = 0, done = 0;
        for (int t = 0; t < kThreads; ++t) {
          const State s = fibers_[b * kThreads + t].state;
          at_block += s == State::at_block;
          done += s == State::done;
        }
        if (done != kThreads) all_done = false;
        if (at_block == kThreads) {
          for (int t = 0; t < kThreads; ++t) fibers_[b * kThreads + t].state = State::ready;
          progress = true;
        } else if (at_block && done) {
          throw std::logic_error("simulated kernel: some threads of a block exited while others wait "
                                 "at a block barrier (barrier divergence)");
        }
      }
      if (all_done) return;
      if (progress) continue;
      size_t at_grid = 0;
      for (const Fiber& f : fibers_) at_grid += f.state == State::at_grid;
      if (at_grid == fibers_.size()) {
        for (Fiber& f : fibers_) f.state = State::ready;
        continue;
      }
      throw std::logic_error("simulated kernel: deadlock (threads wait at different barriers)");
    }
  }

  friend struct ThreadCtx;
  Body body_;
  int nblocks_;
  std::vector<std::vector<unsigned char>> smem_;
  std::vector<Fiber> fibers_;
  ucontext_t main_;
  int current_ = 0;
};

inline void ThreadCtx::sync() { grid->block_barrier(grid->current_); }
inline void ThreadCtx::grid_sync() { grid->grid_barrier(grid->current_); }

// Elementwise passes: one simulated thread per element, no barriers, so a plain loop.
template <typename F>
void for_each(int64_t n, F&& f) {
  for (int64_t i = 0; i < n; ++i) f(i);
}

// The executor of algo.h on the CPU: host memory stands in for device memory.
class Exec {
 public:
  template <typename T>
  T* alloc(int64_t n) {
    // NaN-filled, like fresh device memory may be garbage: reading an unwritten element shows.
    buffers_.emplace_back(size_t(n) * sizeof(T) + 16, 0xff);
    return reinterpret_cast<T*>(buffers_.back().data());
  }

  template <typename T>
  void gemm(GemmArgs<T> g) {
    if (g.M == 0 || g.N == 0) return;
    if (g.splits > 1) g.partial = alloc<T>(g.splits * g.M * g.N);
    Grid::launch((g.M + kBM - 1) / kBM, (g.N + kBN - 1) / kBN, g.splits, sizeof(GemmSmem<T>), false,
                 [&](ThreadCtx& c) { gemm_block(g, c); });
    if (g.splits > 1) for_each(g.M * g.N, [&](int64_t i) { splitk_finish_element(g, i); });
  }

  template <typename T>
  void gemm_chain(const std::vector<GemmArgs<T>>& steps) {
    last_tier = 3;
    for (const auto& g : steps) gemm(g);
  }

  template <typename T>
  void persistent(const StepArgs<T>& st, const RecurrencePlan& plan, bool backward) {
    last_tier = plan.tier;
    Grid::launch(plan.grid_x, plan.grid_y, 1, plan.smem_bytes, plan.p.grid_sync,
                 [&](ThreadCtx& c) { persistent_block(st, plan.p, backward, c); });
  }

  template <typename T>
  void bias_sum(const T* b_ih, const T* b_hh, T* bias, int64_t H) {
    for_each(H, [&](int64_t j) { bias_sum_element(b_ih, b_hh, bias, H, j); });
  }
  template <typename T>
  void h_n(const StepArgs<T>& st, T* h_n) {
    for_each(st.shape.B * st.shape.H, [&](int64_t i) { h_n_element(st, h_n, i); });
  }
  template <typename T>
  void gather_prev(const StepArgs<T>& st, T* prev) {
    for_each(st.shape.T * st.shape.B * st.shape.H, [&](int64_t i) { gather_prev_element(st, prev, i); });
  }
  template <typename T>
  void gather_first_dz(const StepArgs<T>& st, T* first) {
    for_each(st.shape.B * st.shape.H, [&](int64_t i) { gather_first_dz_element(st, first, i); });
  }
  template <typename T>
  void bias_grad(const StepArgs<T>& st, T* db_ih, T* db_hh) {
    for_each(st.shape.H, [&](int64_t j) { bias_grad_element(st, db_ih, db_hh, j); });
  }
  template <typename T>
  void grad_norms(const StepArgs<T>& st, double* norms) {
    Grid::launch(st.shape.T, 1, 1, kThreads * sizeof(double), false,
                 [&](ThreadCtx& c) { grad_norm_block(st, norms, c); });
  }

  int last_tier = 0;  // the recurrence tier of the last forward or backward run

 private:
  std::vector<std::vector<unsigned char>> buffers_;
};

}  // namespace sim
}  // namespace cuda
}  // namespace elman
