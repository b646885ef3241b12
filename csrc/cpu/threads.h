// Worker threads for the CPU kernels. A kernel call opens one parallel region and describes its
// work as items: independent items (for_each), or items in steps where step s starts only once
// step s-1 is complete (for_each_step: one time step of the recurrence split into parts). Any
// thread of the region takes the next item from a shared counter, so a call never waits for a
// worker that has not started (woken late, or descheduled on a loaded machine): the caller does
// the work itself. What each item computes never depends on which thread runs it, so results
// depend only on the split (fixed by the shapes and the configured thread count).
#pragma once
#include <atomic>
#include <cstdint>

namespace elman {
namespace cpu {

struct alignas(64) Phase {
  std::atomic<int64_t> next{0};
  alignas(64) std::atomic<int64_t> done{0};
};

struct Region {
  static constexpr int kMaxPhases = 16;
  Phase phases[kMaxPhases];
  const std::atomic<int>* stop = nullptr;  // the opening thread's StopScope flag, or none
  bool stop_requested() const { return stop && stop->load(std::memory_order_relaxed) != 0; }
};

void wait_until_done(const std::atomic<int64_t>& done, int64_t target);

class Team {
 public:
  explicit Team(Region* r) : r_(r) {}

  // body(i) for every i in [0, n), each exactly once; returns when all are done.
  template <typename F>
  void for_each(int64_t n, F&& body) {
    Phase& p = next_phase();
    for (int64_t i = p.next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = p.next.fetch_add(1, std::memory_order_relaxed)) {
      if (!r_->stop_requested()) body(i);
      p.done.fetch_add(1, std::memory_order_release);
    }
    wait_until_done(p.done, n);
  }

  // body(s, q) for s in [0, steps), q in [0, parts); (s, q) starts after all of step s - 1.
  template <typename F>
  void for_each_step(int64_t steps, int64_t parts, F&& body) {
    Phase& p = next_phase();
    const int64_t n = steps * parts;
    for (int64_t i = p.next.fetch_add(1, std::memory_order_relaxed); i < n;
         i = p.next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t s = i / parts;
      wait_until_done(p.done, s * parts);
      if (!r_->stop_requested()) body(s, i - s * parts);
      p.done.fetch_add(1, std::memory_order_release);
    }
    wait_until_done(p.done, n);
  }

 private:
  Phase& next_phase();
  Region* r_;
  int phase_ = 0;
};

using TeamFn = void (*)(void* ctx, Team& team);
bool parallel_raw(int want, TeamFn fn, void* ctx);

// Runs f(team) on the calling thread and on up to want - 1 workers that join while work is
// left; every thread of the region runs f (the same sequence of for_each calls). Before the
// region opens, the BLAS is given buffers for its threads (reserve_blas: std::bad_alloc when
// the memory for them cannot be had, with nothing touched). Returns false when the calling
// thread's StopScope flag was raised: items not yet begun were skipped, the results are
// incomplete.
template <typename F>
bool parallel(int want, F&& f) {
  return parallel_raw(want, [](void* ctx, Team& team) { (*static_cast<F*>(ctx))(team); },
                      const_cast<void*>(static_cast<const void*>(&f)));
}

// ------------------------------------------------------------------------- stopping a call
// A long call can be stopped early (elman._core: Ctrl-C). The thread that makes the call names
// a flag for its duration; something outside the kernels (a signal handler) raises it. The
// regions that thread opens then skip every item not yet begun, long items return at their
// next check (stop_flag() read into the call's plan), and parallel() returns false; the
// driver throws Stopped and the caller discards the call's results.
class StopScope {
 public:
  explicit StopScope(const std::atomic<int>* flag);
  ~StopScope();
  StopScope(const StopScope&) = delete;
  StopScope& operator=(const StopScope&) = delete;

 private:
  const std::atomic<int>* saved_;
};
// The calling thread's flag (nullptr: this call cannot be stopped).
const std::atomic<int>* stop_flag();
struct Stopped {};

// ------------------------------------------------------------------------- BLAS buffers
// OpenBLAS maps a work buffer (32 MiB of address space in the bundled build) the first time
// one more thread is inside a level-3 call than it has buffers for, and when it cannot map it
// prints "Memory allocation still failed" and exits the process. So elman lets no more
// threads into the BLAS at once than buffers it has made the BLAS take while it could check
// the memory (blas.h's gate): reserve_blas(n) checks that n - blas_buffers() buffers' worth
// of address space can be mapped (std::bad_alloc if not), then runs n threads into the BLAS
// together so that it maps them. Called on the calling thread before a region (parallel) or a
// product outside one.
void reserve_blas(int n);

void set_num_threads(int n);
int get_num_threads();
// ELMAN_NUM_THREADS if it is a whole number in [1, max_num_threads()], else the CPUs this
// process may run on (python/elman/_threads.py warns about a value outside that rule).
int default_num_threads();
// 4 x the online CPUs, at least 4: the most threads elman accepts, the same
// rule as elman.max_num_threads() in python/elman/_threads.py.
int max_num_threads();

}  // namespace cpu
}  // namespace elman
