// The CPU backend's schedule: how one call of the recurrence is split into parts and in what
// order the parts run inside one parallel region, written once for both directions. A call
// plans a Schedule, then hands run_schedule a driver that says what each piece of work is:
//
//   d.before(i)                      item i of the work before the loop (packing weights, a
//                                    product over all rows)
//   d.step(s, r0, r1, p0, p1, part)  one step at processing index s, rows [r0, r1) of the
//                                    batch, column panels [p0, p1), by the recurrence's part
//   d.steps(i0, i1, r0, r1, q)       loop steps [i0, i1) for rows [r0, r1), the loop over time
//                                    inside the kernel (every sequence has all T steps)
//   d.beside(c, item)                item of the work beside chunk c (the products that are
//                                    not on the recurrence's chain, done while c's rows are in
//                                    cache)
//   d.after(phase, i)                item i of the phase-th pass after the loop
//
// Loop index i counts steps in the order the loop runs them: processing step s = i forward,
// s = T - 1 - i backward (BPTT walks the processing order back).
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "../rnn.h"
#include "blas.h"
#include "kernels.h"
#include "threads.h"

namespace elman {
namespace cpu {

// ------------------------------------------------------------------------------------ parts
// [lo, hi) of part q when n items are split into P near-equal contiguous parts.
inline void part_range(int64_t n, int P, int q, int64_t* lo, int64_t* hi) {
  *lo = n * q / P;
  *hi = n * (q + 1) / P;
}

// In a stoppable call (threads.h's StopScope), the most multiply-adds done between two checks
// of the stop flag: ~1-10 ms on one core.
constexpr int64_t kStopPiece = int64_t(1) << 23;

// How a product is split: by rows of C, P parts, each at least ~1 MFLOP of work.
int gemm_parts(int64_t M, int64_t N, int64_t K, int threads);

// 64-byte aligned scratch, freed on scope exit; std::bad_alloc when it cannot be had.
template <typename T>
struct Scratch {
  T* p = nullptr;
  explicit Scratch(int64_t n) {
    const size_t bytes = (size_t(n > 0 ? n : 1) * sizeof(T) + 63) / 64 * 64;
    p = static_cast<T*>(std::aligned_alloc(64, bytes));
    if (!p) throw std::bad_alloc();
  }
  ~Scratch() { std::free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// A BLAS product C [M, N] = op(A) op(B) + beta C, run in parts by rows of C.
template <typename T>
struct Gemm {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  const T* A = nullptr;
  int64_t lda = 0;
  const T* B = nullptr;
  int64_t ldb = 0;
  T beta = T(0);
  T* C = nullptr;
  int64_t ldc = 0;
  const std::atomic<int>* stop = nullptr;  // a stoppable call's flag (threads.h), or none
  // Part q of P: rows [lo, hi) of C, in pieces of at least 512 rows and ~kStopPiece
  // multiply-adds, with the stop flag checked between them. Always in pieces, stoppable or not:
  // the BLAS's sums depend on how the rows are grouped into products, so the pieces depend only
  // on the shapes and the split (tests/test_interrupt.py compares stoppable and unstoppable
  // calls bit for bit).
  void run_part(int q, int P) const {
    int64_t lo, hi;
    part_range(M, P, q, &lo, &hi);
    const int64_t step = std::max<int64_t>(512, kStopPiece / std::max<int64_t>(1, N * K));
    for (int64_t r = lo; r < hi; r += step) {
      if (stop && stop->load(std::memory_order_relaxed)) return;
      const int64_t r1 = std::min(hi, r + step);
      const T* a = ta ? A + r : A + r * lda;
      gemm<T>(ta, tb, r1 - r, N, K, T(1), a, lda, B, ldb, beta, C + r * ldc, ldc);
    }
  }
};

// A weight matrix as the kernels read it: B [K, N] in this ISA's column panels of N, element
// (k, n) = trans ? src[n * ld + k] : src[k * ld + n]. Room is taken at construction, the
// copy is made in parts inside the parallel region. Not wanted: no panels, no room.
template <typename T>
struct Packed {
  const Kernels<T>& ker;
  const T* src;
  int64_t ld;
  bool trans;
  int64_t K, N;
  std::vector<Panel> panels;
  Scratch<T> data;
  Packed(const Kernels<T>& k, const T* src_, int64_t ld_, bool trans_, int64_t K_, int64_t N_,
         bool wanted = true)
      : ker(k), src(src_), ld(ld_), trans(trans_), K(K_), N(N_),
        panels(wanted ? plan(k, N_) : std::vector<Panel>()),
        data(wanted ? (panels.back().offset + int64_t(panels.back().nv) * k.width) * K_ : 1) {}
  int64_t count() const { return int64_t(panels.size()); }
  // Parts to copy it in: none when not wanted, one when small (below 2^16 elements, a few
  // microseconds: waking a second thread would cost more than it saves, and a call whose
  // recurrence runs alone then opens no region for more threads), else one per thread.
  int parts(int threads) const {
    if (count() == 0) return 0;
    return K * N < (int64_t(1) << 16) ? 1 : int(std::min<int64_t>(threads, count()));
  }
  // Panels of part q of P.
  void pack_part(int q, int P) const {
    int64_t lo, hi;
    part_range(count(), P, q, &lo, &hi);
    ker.pack(src, ld, trans, K, N, panels.data(), lo, hi, data.p);
  }
  static std::vector<Panel> plan(const Kernels<T>& k, int64_t N) {
    std::vector<Panel> p(k.plan_panels(N, nullptr));
    k.plan_panels(N, p.data());
    return p;
  }
};

// ------------------------------------------------------------------------------------ plan
// The recurrence: by batch rows when every part gets a few rows (no per-step barrier), else by
// column panels (one barrier per step), else one part when a step is too small to share.
struct RecurrencePlan {
  int parts = 1;
  bool by_rows = true;
};
RecurrencePlan plan_recurrence(int64_t B, int64_t H, int64_t npanels, int threads);

// The chunked schedule of a call whose sequences all have T steps, split by rows: chunks of
// ~256 rows of [T*B] (whole steps), with the products that do not sit on the recurrence's chain
// (forward: the input projection of the next chunk; backward: the weight and input gradients of
// the previous one) done beside it while their operands are in cache. Only when a chunk's
// operands (bytes_per_row each) fit comfortably in L2, and there are at least two chunks.
struct Chunks {
  bool on = false;
  int64_t steps = 1, count = 1;
  // Loop steps [i0, i1) of chunk c.
  void steps_of(int64_t T, int64_t c, int64_t* i0, int64_t* i1) const {
    *i0 = c * steps;
    *i1 = std::min(T, (c + 1) * steps);
  }
  // Rows [lo, hi) of [T*B] that chunk c covers, where loop step i is time i, or time
  // T - 1 - i when from_end (a reverse direction's forward, a forward direction's backward).
  void rows(int64_t T, int64_t B, bool from_end, int64_t c, int64_t* lo, int64_t* hi) const {
    int64_t i0, i1;
    steps_of(T, c, &i0, &i1);
    *lo = (from_end ? T - i1 : i0) * B;
    *hi = (from_end ? T - i0 : i1) * B;
  }
};
Chunks plan_chunks(const RnnShape& sh, const RecurrencePlan& rp, bool uniform,
                   double bytes_per_row);

// One call's schedule. plan_schedule fixes the recurrence's split and the chunks; the driver
// then says how many items each phase has and how many threads the region asks for.
struct Schedule {
  int64_t T = 0, B = 0, npanels = 0;
  bool backward = false;  // the loop runs processing steps T-1 .. 0
  bool reverse = false;   // processing step s is time T-1-s (RnnShape::reverse)
  bool uniform = true;    // every sequence has T steps
  RecurrencePlan rec;
  Chunks chunks;
  // Filled by the driver:
  int64_t before = 0;         // items before the loop
  int side = 0;               // items beside each chunk (chunked only)
  int64_t after[2] = {0, 0};  // items of the two passes after the loop
  int threads = 1;            // threads the region asks for
  const std::atomic<int>* stop = nullptr;  // the call's stop flag (threads.h), or none

  bool stop_requested() const { return stop && stop->load(std::memory_order_relaxed) != 0; }
  // Loop steps per piece of a by-rows part of `rows` rows: the whole loop, or in a stoppable
  // call ~kStopPiece multiply-adds.
  int64_t steps_per_piece(int64_t rows, int64_t H) const {
    if (!stop) return T;
    return std::max<int64_t>(1, kStopPiece / std::max<int64_t>(1, rows * H * H));
  }

  int64_t step_at(int64_t i) const { return backward ? T - 1 - i : i; }
  // Rows [lo, hi) of [T*B] that chunk c covers (its time steps, whatever the direction).
  void chunk_rows(int64_t c, int64_t* lo, int64_t* hi) const {
    chunks.rows(T, B, reverse != backward, c, lo, hi);
  }
};
// chunk_steps > 0: chunks of that many steps whatever the cache (the wavefront of a stack of
// layers, calls_cpu.cpp), for a call whose sequences all have T steps and whose rows are not
// split.
Schedule plan_schedule(const RnnShape& sh, bool backward, int64_t npanels, int threads,
                       double bytes_per_row, int64_t chunk_steps = 0);

// ------------------------------------------------------------------------------------ run
// The recurrence in one of four ways:
//   chunked               rows split in parts, chunk by chunk, one barrier per chunk; the work
//                         beside chunk c runs in the same round as the recurrence of chunk c-1
//                         (forward: the side work is one chunk ahead) or c+1 (backward: behind)
//   by rows, uniform      each part runs the whole loop inside the kernel, no barrier at all
//   by rows, variable     each part steps through the loop on its rows, no barrier at all
//   by panels             every step split by column panels, one barrier per step
template <typename Driver>
void run_recurrence(const Schedule& sc, Driver& d, Team& team) {
  const int parts = sc.rec.parts;
  if (sc.chunks.on) {
    const int64_t lag = sc.backward ? 0 : 1;  // the recurrence's chunk is round c - lag
    team.for_each_step(sc.chunks.count + 1, parts + sc.side, [&](int64_t c, int64_t item) {
      if (item < parts) {
        const int64_t rc = c - lag;
        if (rc < 0 || rc >= sc.chunks.count) return;
        int64_t i0, i1, r0, r1;
        sc.chunks.steps_of(sc.T, rc, &i0, &i1);
        part_range(sc.B, parts, int(item), &r0, &r1);
        d.steps(i0, i1, r0, r1, int(item));
      } else {
        const int64_t side = c - (1 - lag);
        if (side < 0 || side >= sc.chunks.count) return;
        d.beside(side, int(item - parts));
      }
    });
  } else if (sc.rec.by_rows && sc.uniform) {
    team.for_each(parts, [&](int64_t q) {
      int64_t r0, r1;
      part_range(sc.B, parts, int(q), &r0, &r1);
      const int64_t piece = sc.steps_per_piece(r1 - r0, d.H);
      for (int64_t i0 = 0; i0 < sc.T && !sc.stop_requested(); i0 += piece)
        d.steps(i0, std::min(sc.T, i0 + piece), r0, r1, int(q));
    });
  } else if (sc.rec.by_rows) {
    team.for_each(parts, [&](int64_t q) {
      int64_t r0, r1;
      part_range(sc.B, parts, int(q), &r0, &r1);
      for (int64_t i = 0; i < sc.T && !sc.stop_requested(); ++i)
        d.step(sc.step_at(i), r0, r1, 0, sc.npanels, int(q));
    });
  } else {
    team.for_each_step(sc.T, parts, [&](int64_t i, int64_t q) {
      int64_t p0, p1;
      part_range(sc.npanels, parts, int(q), &p0, &p1);
      d.step(sc.step_at(i), 0, sc.B, p0, p1, int(q));
    });
  }
}

// The whole parallel region: the work before the loop, the recurrence, the passes after it.
// False when the call was stopped (threads.h): the results are incomplete.
template <typename Driver>
bool run_schedule(const Schedule& sc, Driver& d) {
  return parallel(sc.threads, [&](Team& team) {
    if (sc.before > 0) team.for_each(sc.before, [&](int64_t i) { d.before(i); });
    run_recurrence(sc, d, team);
    for (int pass = 0; pass < 2; ++pass)
      if (sc.after[pass] > 0) team.for_each(sc.after[pass], [&](int64_t i) { d.after(pass, i); });
  });
}

}  // namespace cpu
}  // namespace elman
