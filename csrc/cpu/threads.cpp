// The worker pool behind parallel(). Idle workers spin briefly for the next region, then block;
// a region never waits for a worker to arrive, only for the items taken to be finished.
#include "threads.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace elman {
namespace cpu {
namespace {

// A waiting thread spins (pause) this many times, then yields its core between checks.
constexpr int kSpinBeforeYield = 20000;
// An idle worker spins this long for the next region before it blocks. Joining late costs the
// region only parallelism, never a wait, so this can stay short and leave the cores to other
// thread pools (a torch or NumPy call between two elman calls).
constexpr auto kIdleSpin = std::chrono::microseconds(500);

struct Pool {
  explicit Pool(int n) : nthreads(n) {}
  int nthreads;                      // including the calling thread
  std::vector<std::thread> workers;  // nthreads - 1, started on first use
  std::atomic<bool> busy{false};     // a region is open
  std::mutex m;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  alignas(64) std::atomic<uint64_t> job{0};
  // The open region (valid while `open` is set and a worker holds `active`).
  TeamFn fn = nullptr;
  void* ctx = nullptr;
  Region* region = nullptr;
  int want = 1;
  alignas(64) std::atomic<bool> open{false};
  alignas(64) std::atomic<int> active{0};   // workers inside fn
  alignas(64) std::atomic<int> joined{0};   // workers admitted to this region

  void worker() {
    uint64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kIdleSpin;
      int spins = 0;
      while (job.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_relaxed)) {
        _mm_pause();
        if (++spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lock(m);
          sleepers.fetch_add(1);
          cv.wait(lock, [&] { return job.load(std::memory_order_acquire) != seen || stop.load(); });
          sleepers.fetch_sub(1);
          break;
        }
      }
      if (stop.load()) return;
      seen = job.load(std::memory_order_acquire);
      // Join unless the region is already closed or has all the threads it asked for.
      active.fetch_add(1, std::memory_order_seq_cst);
      if (open.load(std::memory_order_seq_cst) &&
          joined.fetch_add(1, std::memory_order_relaxed) + 1 < want) {
        Team team(region);
        fn(ctx, team);
      }
      active.fetch_sub(1, std::memory_order_release);
    }
  }

  // A thread that cannot be created (a process or container limit) is simply missing: regions
  // never wait for workers, so fewer of them cost only parallelism, and nothing is thrown
  // while a region is being opened.
  void start() {
    try {
      for (int i = 1; i < nthreads; ++i) workers.emplace_back([this] { worker(); });
    } catch (const std::system_error&) {
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> lock(m);
      stop.store(true);
    }
    cv.notify_all();
    for (auto& w : workers) w.join();
    workers.clear();
  }
};

std::atomic<Pool*> g_pool{nullptr};
std::mutex g_config;  // serialises set_num_threads and the creation of the pool
std::vector<Pool*> g_retired;  // pools replaced by set_num_threads (guarded by g_config)

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  std::lock_guard<std::mutex> lock(g_config);
  p = g_pool.load();
  if (!p) {
    p = new Pool(default_num_threads());
    g_pool.store(p, std::memory_order_release);
  }
  return p;
}

// After fork() only the forking thread exists in the child: forget the parent's pool (its
// workers are gone) and build a new one on first use.
void after_fork_in_child() {
  g_pool.store(nullptr);
  new (&g_config) std::mutex();
}

const bool g_atfork = [] { return pthread_atfork(nullptr, nullptr, after_fork_in_child) == 0; }();

}  // namespace

void wait_until_done(const std::atomic<int64_t>& done, int64_t target) {
  int spins = 0;
  while (done.load(std::memory_order_acquire) < target) {
    if (++spins < kSpinBeforeYield) _mm_pause();
    else sched_yield();  // the thread finishing the item may need this core
  }
}

Phase& Team::next_phase() {
  if (phase_ >= Region::kMaxPhases) std::abort();  // a kernel opened too many phases: a bug
  return r_->phases[phase_++];
}

void parallel_raw(int want, TeamFn fn, void* ctx) {
  Region region;
  Pool* p = pool();
  if (want > p->nthreads) want = p->nthreads;
  bool expected = false;
  if (want <= 1 || !p->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
    Team team(&region);  // alone: this thread takes every item
    fn(ctx, team);
    return;
  }
  if (p->workers.empty()) p->start();
  p->fn = fn;
  p->ctx = ctx;
  p->region = &region;
  p->want = want;
  p->joined.store(0, std::memory_order_relaxed);
  p->open.store(true, std::memory_order_seq_cst);
  p->job.fetch_add(1, std::memory_order_acq_rel);
  if (p->sleepers.load() > 0) {
    std::lock_guard<std::mutex> lock(p->m);
    p->cv.notify_all();
  }
  Team team(&region);
  fn(ctx, team);  // returns when every item is done
  p->open.store(false, std::memory_order_seq_cst);
  while (p->active.load(std::memory_order_seq_cst) != 0) _mm_pause();  // late joiners leave
  p->busy.store(false, std::memory_order_release);
}

int default_num_threads() {
  if (const char* env = std::getenv("ELMAN_NUM_THREADS")) {  // an explicit choice wins
    const long n = std::strtol(env, nullptr, 10);
    if (n >= 1 && n <= 4096) return int(n);
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n) : 1;
}

void set_num_threads(int n) {
  if (n < 1) n = 1;
  std::lock_guard<std::mutex> lock(g_config);
  Pool* old = g_pool.load();
  if (old) {
    bool expected = false;
    while (!old->busy.compare_exchange_weak(expected, true)) {  // wait for the region in flight
      expected = false;
      std::this_thread::yield();
    }
    if (old->nthreads == n) {
      old->busy.store(false);
      return;
    }
    old->shutdown();
    // The old pool object is kept (a racing caller may still hold a pointer to it), listed
    // here so that it stays owned rather than leaked: a few hundred bytes per change of count.
    g_retired.push_back(old);
  }
  g_pool.store(new Pool(n), std::memory_order_release);
}

int get_num_threads() { return pool()->nthreads; }

}  // namespace cpu
}  // namespace elman
