// The worker pool behind parallel(). Idle workers spin briefly for the next region, then block;
// a region never waits for a worker to arrive, only for the items taken to be finished.
#include "threads.h"

#include "blas.h"
#include "fpmode.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
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
  bool flush = true;  // the region's floating-point mode (fpmode.h), chosen by its caller
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
        FpModeGuard fp(flush);
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
std::mutex g_reserve;  // one reservation of BLAS buffers at a time (reserve_blas)
std::mutex g_config;  // serialises set_num_threads, the creation of the pool and freeing
// Pools replaced by set_num_threads (guarded by g_config). A call may have loaded g_pool just
// before the replacement and still use the old pool (it then finds it busy and runs alone), so
// a retired pool is freed only once no call can hold it: every call that uses a pool is
// counted in g_users from before it loads g_pool until after its last use of the pool, and
// once g_users is seen at 0 after a pool was retired, every call that could have loaded it has
// finished (later calls load the new pool). That is checked at each set_num_threads and by the
// call that brings g_users to 0, if it can take g_config without waiting.
std::vector<Pool*> g_retired;
std::atomic<int64_t> g_users{0};
std::atomic<bool> g_has_retired{false};

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_seq_cst);
  if (p) return p;
  std::lock_guard<std::mutex> lock(g_config);
  p = g_pool.load();
  if (!p) {
    p = new Pool(default_num_threads());
    g_pool.store(p, std::memory_order_seq_cst);
  }
  return p;
}

// Frees the retired pools if no call is using a pool now (g_config held). Every pool in
// g_retired was replaced in g_pool before this thread took g_config.
void free_retired_locked() {
  if (g_retired.empty() || g_users.load(std::memory_order_seq_cst) != 0) return;
  for (Pool* p : g_retired) delete p;  // shut down already: its workers have been joined
  g_retired.clear();
  g_has_retired.store(false, std::memory_order_relaxed);
}

// The current pool, held for the lifetime of this object (see g_users).
class PoolRef {
 public:
  PoolRef() {
    g_users.fetch_add(1, std::memory_order_seq_cst);
    p_ = pool();
  }
  ~PoolRef() {
    if (g_users.fetch_sub(1, std::memory_order_seq_cst) == 1 &&
        g_has_retired.load(std::memory_order_relaxed)) {
      std::unique_lock<std::mutex> lock(g_config, std::try_to_lock);  // never wait here
      if (lock.owns_lock()) free_retired_locked();
    }
  }
  PoolRef(const PoolRef&) = delete;
  PoolRef& operator=(const PoolRef&) = delete;
  Pool* operator->() const { return p_; }

 private:
  Pool* p_;
};

// After fork() only the forking thread exists in the child: forget the parent's pool (its
// workers are gone) and build a new one on first use. The parent's pools, and any count of
// calls that were running in its other threads, stay behind: a child never frees them.
void after_fork_in_child() {
  g_pool.store(nullptr);
  new (&g_config) std::mutex();
  new (&g_reserve) std::mutex();
  blas_after_fork_in_child();
  new (&g_retired) std::vector<Pool*>();
  g_users.store(0);
  g_has_retired.store(false);
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

namespace {

// The calling thread's stop flag (StopScope). initial-exec: a pointer in the static TLS block,
// never allocated on first use.
__attribute__((tls_model("initial-exec"))) thread_local const std::atomic<int>* t_stop = nullptr;

// One region: f on the calling thread and on workers that join. Returns false when stopped.
bool open_region(int want, TeamFn fn, void* ctx) {
  Region region;
  region.stop = t_stop;
  PoolRef p;
  const bool flush = flush_denormals();
  FpModeGuard fp(flush);  // this thread's mode, restored on return (and on an exception)
  if (want > p->nthreads) want = p->nthreads;
  bool expected = false;
  if (want <= 1 || !p->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
    Team team(&region);  // alone: this thread takes every item
    fn(ctx, team);
    return !region.stop_requested();
  }
  if (p->workers.empty()) p->start();
  p->flush = flush;
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
  return !region.stop_requested();
}

int g_warm_attempts = 0;  // warm-ups run (guarded by g_reserve), bounded below
constexpr int kMaxWarmAttempts = 8;
// Address space checked per missing buffer: twice the 32 MiB the bundled OpenBLAS maps.
constexpr size_t kBlasBufferProbe = size_t(64) << 20;

}  // namespace

bool parallel_raw(int want, TeamFn fn, void* ctx) {
  reserve_blas(std::max(1, std::min(want, get_num_threads())));
  return open_region(want, fn, ctx);
}

StopScope::StopScope(const std::atomic<int>* flag) : saved_(t_stop) { t_stop = flag; }
StopScope::~StopScope() { t_stop = saved_; }
const std::atomic<int>* stop_flag() { return t_stop; }

void reserve_blas(int n) {
  if (n <= blas_buffers()) return;
  std::lock_guard<std::mutex> lock(g_reserve);
  const int have = blas_buffers();
  if (n <= have || (have > 0 && g_warm_attempts >= kMaxWarmAttempts)) return;
  // The address space for the missing buffers, checked by mapping it (and giving it back).
  const size_t bytes = size_t(n - have) * kBlasBufferProbe;
  void* probe = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) throw std::bad_alloc();
  munmap(probe, bytes);
  ++g_warm_attempts;
  // n threads into the BLAS at once, so that it maps one buffer per thread: each thread does
  // products in a loop while it waits for the others, and once one thread has finished three
  // products with all n in the loop (each of them in or between products the whole time), they
  // all stop. A thread that gives up (50 ms) leaves the count, so items that one thread runs
  // one after the other are never counted as n threads.
  std::vector<float> c(size_t(n) * kBlasWarm * kBlasWarm);
  std::atomic<int> present{0};
  std::atomic<bool> together{false};
  auto warm = [&](Team& team) {
    team.for_each(n, [&](int64_t i) {
      present.fetch_add(1);
      const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
      int full = 0;
      while (!together.load() && std::chrono::steady_clock::now() < until) {
        blas_warm(c.data() + i * kBlasWarm * kBlasWarm);
        if (present.load() == n && ++full >= 3) together.store(true);
      }
      if (!together.load()) present.fetch_sub(1);
    });
  };
  StopScope unstoppable(nullptr);
  open_region(n, [](void* ctx, Team& team) { (*static_cast<decltype(warm)*>(ctx))(team); }, &warm);
  const int now = together.load() ? n : 1;
  if (now > have) blas_add_buffers(now - have);
}

namespace {
// ELMAN_FLUSH_DENORMAL=0 (or "false", "off", "no") starts with exact subnormal arithmetic.
bool flush_from_env() {
  const char* env = std::getenv("ELMAN_FLUSH_DENORMAL");
  if (!env) return true;
  std::string v(env);
  for (char& c : v) c = char(std::tolower(static_cast<unsigned char>(c)));
  return !(v == "0" || v == "false" || v == "off" || v == "no");
}
std::atomic<bool> g_flush{flush_from_env()};
}  // namespace

bool flush_denormals() { return g_flush.load(std::memory_order_relaxed); }
void set_flush_denormals(bool on) { g_flush.store(on, std::memory_order_relaxed); }

int max_num_threads() {
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  return int(std::max(4L, 4 * cpus));
}

int default_num_threads() {
  const char* env = std::getenv("ELMAN_NUM_THREADS");
  if (env && *env) {  // an explicit choice wins, when it is a whole number in range
    char* end = nullptr;
    errno = 0;
    const long n = std::strtol(env, &end, 10);
    while (end != env && std::isspace(static_cast<unsigned char>(*end))) ++end;
    if (end != env && *end == '\0' && errno == 0 && n >= 1 && n <= max_num_threads()) return int(n);
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
    g_retired.push_back(old);
    g_has_retired.store(true, std::memory_order_relaxed);
  }
  g_pool.store(new Pool(n), std::memory_order_seq_cst);
  free_retired_locked();
}

int get_num_threads() {
  PoolRef p;
  return p->nthreads;
}

}  // namespace cpu
}  // namespace elman
