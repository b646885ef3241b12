// The worker pool behind parallel(): workers spin briefly for the next region (so a training
// loop's forward, backward and the Python between them do not pay a wake-up), then block.
#include "threads.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace elman {
namespace cpu {
namespace {

constexpr int kSpinBeforeYield = 4000;  // pause loops before sched_yield in a barrier
// An idle worker spins (yielding its core to anything else runnable) this long before it
// blocks: waking a blocked thread costs 30-50 us at the median and milliseconds at the tail on
// the machines measured, more than many whole kernel calls, so a training loop's forward,
// backward and the Python between them should never see a sleeping worker.
constexpr auto kIdleSpin = std::chrono::milliseconds(20);

struct alignas(64) Barrier {
  alignas(64) std::atomic<int> arrived{0};
  alignas(64) std::atomic<uint32_t> generation{0};
};

struct Pool {
  explicit Pool(int n) : nthreads(n) {}
  int nthreads;                      // including the calling thread
  std::vector<std::thread> workers;  // nthreads - 1, started on first use
  std::atomic<bool> busy{false};
  std::mutex m;
  std::condition_variable cv;
  std::atomic<int> sleepers{0};
  std::atomic<bool> stop{false};
  alignas(64) std::atomic<uint64_t> job{0};
  TeamFn fn = nullptr;
  void* ctx = nullptr;
  int size = 1;
  alignas(64) std::atomic<int> finished{0};
  Barrier barrier;

  void worker(int index) {
    uint64_t seen = 0;
    for (;;) {
      const auto until = std::chrono::steady_clock::now() + kIdleSpin;
      int spins = 0;
      while (job.load(std::memory_order_acquire) == seen && !stop.load(std::memory_order_relaxed)) {
        if (++spins < kSpinBeforeYield) _mm_pause();
        else sched_yield();
        if (spins % 256 == 0 && std::chrono::steady_clock::now() > until) {
          std::unique_lock<std::mutex> lock(m);
          sleepers.fetch_add(1);
          cv.wait(lock, [&] { return job.load(std::memory_order_acquire) != seen || stop.load(); });
          sleepers.fetch_sub(1);
          break;
        }
      }
      if (stop.load()) return;
      seen = job.load(std::memory_order_acquire);
      if (index < size) {
        Team team(index, size, &barrier);
        fn(ctx, team);
        finished.fetch_add(1, std::memory_order_acq_rel);
      }
    }
  }

  void start() {
    for (int i = 1; i < nthreads; ++i) workers.emplace_back([this, i] { worker(i); });
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

void Team::barrier() {
  if (size_ <= 1) return;
  auto* b = static_cast<Barrier*>(barrier_);
  const uint32_t gen = b->generation.load(std::memory_order_acquire);
  if (b->arrived.fetch_add(1, std::memory_order_acq_rel) == size_ - 1) {
    b->arrived.store(0, std::memory_order_relaxed);
    b->generation.store(gen + 1, std::memory_order_release);
    return;
  }
  int spins = 0;
  while (b->generation.load(std::memory_order_acquire) == gen) {
    if (++spins < kSpinBeforeYield) _mm_pause();
    else sched_yield();  // another process holds our core: let it run
  }
}

void parallel_raw(int want, TeamFn fn, void* ctx) {
  Pool* p = pool();
  const int size = want < p->nthreads ? want : p->nthreads;
  bool expected = false;
  if (size <= 1 || !p->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
    Team team(0, 1, nullptr);  // alone: this thread runs every part
    fn(ctx, team);
    return;
  }
  if (p->workers.empty()) p->start();
  p->fn = fn;
  p->ctx = ctx;
  p->size = size;
  p->finished.store(0, std::memory_order_relaxed);
  p->barrier.arrived.store(0, std::memory_order_relaxed);
  p->job.fetch_add(1, std::memory_order_acq_rel);
  if (p->sleepers.load() > 0) {
    std::lock_guard<std::mutex> lock(p->m);
    p->cv.notify_all();
  }
  Team team(0, size, &p->barrier);
  fn(ctx, team);
  int spins = 0;
  while (p->finished.load(std::memory_order_acquire) != size - 1) {
    if (++spins < kSpinBeforeYield) _mm_pause();
    else sched_yield();
  }
  p->busy.store(false, std::memory_order_release);
}

int default_num_threads() {
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
    old->shutdown();  // the old pool object is kept (a racing caller may still hold it)
  }
  g_pool.store(new Pool(n), std::memory_order_release);
}

int get_num_threads() { return pool()->nthreads; }

}  // namespace cpu
}  // namespace elman
