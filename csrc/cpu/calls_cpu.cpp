// CPU backend: several calls at once (rnn.h): the directions of a bidirectional layer side by
// side, and a stack of one-direction layers as a wavefront, each call on the drivers of
// drivers.h with its own plan for one thread. When the sequences all have T steps, every call
// runs in chunks of steps that any thread of the region takes as soon as they are ready
// (run_chunks); otherwise (variable lengths) each call runs whole, alone on one thread.
#include <algorithm>
#include <atomic>
#include <exception>
#include <memory>
#include <thread>
#include <vector>

#include "../rnn.h"
#include "drivers.h"
#include "schedule.h"
#include "threads.h"

namespace elman {

using cpu::Backward;
using cpu::Forward;
using cpu::Scratch;
using cpu::copy_h_n;

namespace {

std::atomic<bool> g_concurrent{true};

// Memory a call reads or writes: `rows` rows of `width` bytes, `ld` bytes apart.
struct Span {
  uintptr_t p = 0;
  int64_t rows = 0, width = 0, ld = 0;
};

template <typename T>
Span flat(const T* p, int64_t n) {
  const int64_t bytes = n * int64_t(sizeof(T));
  return {reinterpret_cast<uintptr_t>(p), p && n > 0 ? 1 : 0, bytes, bytes};
}

template <typename T>
Span rows(const T* p, int64_t n, int64_t width, int64_t ld) {
  const int64_t s = int64_t(sizeof(T));
  return {reinterpret_cast<uintptr_t>(p), p && n > 0 && width > 0 ? n : 0, width * s, ld * s};
}

// Whether two spans may share a byte. Two row sets at the same row stride are told apart by
// their columns (the two directions' halves of one output); otherwise by their extents only.
bool overlap(const Span& a, const Span& b) {
  if (a.rows == 0 || b.rows == 0) return false;
  const uintptr_t a_end = a.p + uintptr_t((a.rows - 1) * a.ld + a.width);
  const uintptr_t b_end = b.p + uintptr_t((b.rows - 1) * b.ld + b.width);
  if (a_end <= b.p || b_end <= a.p) return false;
  if (a.rows == 1 || b.rows == 1 || a.ld != b.ld || a.width > a.ld || b.width > b.ld) return true;
  const int64_t ld = a.ld;
  const int64_t d = ((int64_t(b.p) - int64_t(a.p)) % ld + ld) % ld;  // b's column offset in a's row
  return !(d >= a.width && d + b.width <= ld);
}

struct Access {
  std::vector<Span> reads, writes;
};

// No call writes what another call reads or writes.
bool independent(const std::vector<Access>& calls) {
  for (size_t i = 0; i < calls.size(); ++i)
    for (size_t j = 0; j < calls.size(); ++j) {
      if (i == j) continue;
      for (const Span& w : calls[i].writes) {
        for (const Span& r : calls[j].reads)
          if (overlap(w, r)) return false;
        for (const Span& o : calls[j].writes)
          if (overlap(w, o)) return false;
      }
    }
  return true;
}

template <typename T>
Access access(const RnnForwardArgs<T>& a) {
  const RnnShape& s = a.shape;
  return {{flat(a.x, s.T * s.B * s.I), flat(a.w.W_ih, s.H * s.I), flat(a.w.W_hh, s.H * s.H),
           flat(a.w.b_ih, s.H), flat(a.w.b_hh, s.H), flat(a.h0, s.B * s.H),
           flat(s.lengths, s.B)},
          {rows(a.out, s.T * s.B, s.H, a.ld_out), flat(a.h_n, s.B * s.H)}};
}

template <typename T>
Access access(const RnnBackwardArgs<T>& a) {
  const RnnShape& s = a.shape;
  const int64_t n = s.T * s.B;
  return {{flat(a.x, n * s.I), flat(a.w.W_ih, s.H * s.I), flat(a.w.W_hh, s.H * s.H),
           flat(a.h0, s.B * s.H), rows(a.out, n, s.H, a.ld_out),
           rows(a.grad_out, n, s.H, a.ld_grad_out), flat(a.grad_h_n, s.B * s.H),
           flat(s.lengths, s.B)},
          {flat(a.grad_x, n * s.I), flat(a.grad_h0, s.B * s.H), flat(a.dW_ih, s.H * s.I),
           flat(a.dW_hh, s.H * s.H), flat(a.db_ih, s.H), flat(a.db_hh, s.H),
           flat(a.grad_norms, s.T), flat(a.dz, n * s.H)}};
}

// Whether the calls run at the same time, each alone (from the shapes and threads only): two
// or more calls, two or more threads, and no call whose rows the threads would split.
template <typename Args>
bool concurrent_plan(const Args* calls, int n, int threads) {
  if (n < 2 || threads < 2) return false;
  for (int i = 0; i < n; ++i) {
    const RnnShape& s = calls[i].shape;
    if (s.T == 0 || s.B == 0) return false;
    const cpu::RecurrencePlan rp = cpu::plan_recurrence(s.B, s.H, 1, threads);
    if (rp.by_rows && rp.parts > 1) return false;
  }
  return true;
}

// run(i) for every call, each alone on one thread of a region (or, for tests, one after another
// here); run returns false when the call was stopped. Exceptions are carried out of the region.
template <typename F>
void run_each_alone(int n, F&& run) {
  const std::atomic<int>* flag = cpu::stop_flag();
  std::vector<char> ok(size_t(n), 1);
  std::vector<std::exception_ptr> error(static_cast<size_t>(n));
  auto item = [&](int64_t i) {
    cpu::StopScope scope(flag);  // the caller's flag on whichever thread runs the call
    try {
      ok[size_t(i)] = run(int(i));
    } catch (...) {
      error[size_t(i)] = std::current_exception();
    }
  };
  bool done = true;
  if (g_concurrent.load(std::memory_order_relaxed))
    done = cpu::parallel(n, [&](cpu::Team& team) { team.for_each(n, item); });
  else
    for (int i = 0; i < n; ++i) item(i);
  for (const std::exception_ptr& e : error)
    if (e) std::rethrow_exception(e);
  if (!done || std::find(ok.begin(), ok.end(), 0) != ok.end()) throw cpu::Stopped();
}

// Steps per chunk: ~16 chunks (a pipeline's fill and drain cost one chunk per layer), at least
// 16 steps (a chunk ends in handing work to the other threads).
constexpr int64_t kChunks = 16, kMinChunkSteps = 16;

// The chunk steps for these calls, or 0 when they do not run in chunks: the calls run at the
// same time (concurrent_plan), every sequence has T steps, T and B are the same everywhere
// (and the direction too, for a chained stack), and there are at least two chunks.
template <typename Args>
int64_t chunk_steps(const Args* calls, int n, int threads, bool chained) {
  if (!concurrent_plan(calls, n, threads)) return 0;
  const RnnShape& s0 = calls[0].shape;
  for (int i = 0; i < n; ++i) {
    const RnnShape& s = calls[i].shape;
    if (!s.all_full() || s.T != s0.T || s.B != s0.B || (chained && s.reverse != s0.reverse))
      return 0;
  }
  const int64_t steps = std::max(kMinChunkSteps, (s0.T + kChunks - 1) / kChunks);
  return s0.T >= 2 * steps ? steps : 0;
}

// How far one call has come: chunks done, and whether a thread is on the next one.
struct alignas(64) Progress {
  std::atomic<int64_t> done{0};
  std::atomic<int> busy{0};
};

// Every chunk of every call, in dependency order: chunk c of call k runs once chunk c - 1 of
// call k (its recurrence) is done and, when the calls are `chained` (a stack of layers), chunk
// c of call k - 1 (its input). Each thread of the region takes whichever chunk is ready (the
// last call first, which drains a pipeline), so nothing waits for a round to end: a thread
// that is descheduled holds up only the chunks that depend on its own, and the others go on
// (with whole rounds, one late thread stalled every round: 2.6x slower than one thread on a
// loaded machine). Returns when every chunk is done, or when the call is stopped.
template <typename D, typename F>
void run_chunks(std::vector<std::unique_ptr<D>>& d, std::vector<Progress>& progress, F& chunk,
                bool chained) {
  const int n = int(d.size());
  const int64_t C = d[0]->sc.chunks.count;
  for (int idle = 0;;) {
    bool finished = true, ran = false;
    for (int k = n - 1; k >= 0 && !ran; --k) {
      Progress& p = progress[size_t(k)];
      const int64_t c = p.done.load(std::memory_order_acquire);
      if (c >= C) continue;
      finished = false;
      if (chained && k > 0 && progress[size_t(k - 1)].done.load(std::memory_order_acquire) <= c)
        continue;
      int free = 0;
      if (!p.busy.compare_exchange_strong(free, 1, std::memory_order_acq_rel)) continue;
      if (p.done.load(std::memory_order_acquire) == c) {  // not finished by another meanwhile
        chunk(*d[size_t(k)], c);
        p.done.store(c + 1, std::memory_order_release);
        ran = true;
      }
      p.busy.store(0, std::memory_order_release);
    }
    if (finished || d[0]->sc.stop_requested()) return;
    if (ran) idle = 0;
    else if (++idle < 4096) __builtin_ia32_pause();
    else std::this_thread::yield();  // the thread with the chunk we need may need this core
  }
}

// The region of calls in chunks over drivers d (made for one thread with chunks of equal
// steps): every driver's work before the loop, the chunks (run_chunks), then every driver's
// passes after it.
template <typename D, typename F>
void run_chunked(std::vector<std::unique_ptr<D>>& d, bool chained, F&& chunk) {
  const int n = int(d.size());
  std::vector<Progress> progress(static_cast<size_t>(n));
  auto each = [&](cpu::Team& team, auto count, auto work) {
    int64_t total = 0;
    for (const auto& x : d) total += count(*x);
    team.for_each(total, [&](int64_t i) {
      int l = 0;
      while (i >= count(*d[size_t(l)])) i -= count(*d[size_t(l++)]);
      work(*d[size_t(l)], i);
    });
  };
  auto body = [&](cpu::Team& team) {
    each(team, [](const D& x) { return x.sc.before; }, [](D& x, int64_t i) { x.before(i); });
    run_chunks(d, progress, chunk, chained);
    for (int pass = 0; pass < 2; ++pass)
      each(team, [&](const D& x) { return x.sc.after[pass]; },
           [&](D& x, int64_t i) { x.after(pass, i); });
  };
  const bool concurrent = g_concurrent.load(std::memory_order_relaxed);
  if (!cpu::parallel(concurrent ? std::min(n, cpu::get_num_threads()) : 1,
                     [&](cpu::Team& team) { body(team); }))
    throw cpu::Stopped();
}

// One chunk of a forward call: its input projection, then its recurrence.
template <typename T>
void forward_chunk(Forward<T>& f, int64_t c) {
  int64_t i0, i1;
  f.sc.chunks.steps_of(f.sc.T, c, &i0, &i1);
  f.beside(c, 0);
  f.steps(i0, i1, 0, f.B, 0);
}

// One chunk of a backward call: its recurrence, then the chunk's weight and input gradients.
template <typename T>
void backward_chunk(Backward<T>& b, int64_t c) {
  int64_t i0, i1;
  b.sc.chunks.steps_of(b.sc.T, c, &i0, &i1);
  b.steps(i0, i1, 0, b.B, 0);
  for (int item = 0; item < b.sc.side; ++item) b.beside(c, item);
}

}  // namespace

void set_concurrent_calls(bool on) { g_concurrent.store(on); }

// ==================================================================================== calls
template <typename T>
void rnn_forward_calls_cpu(const RnnForwardArgs<T>* calls, int n) {
  bool together = concurrent_plan(calls, n, cpu::get_num_threads());
  if (together) {
    std::vector<Access> acc;
    for (int i = 0; i < n; ++i) acc.push_back(access(calls[i]));
    together = independent(acc);
  }
  if (!together) {
    for (int i = 0; i < n; ++i) rnn_forward_cpu(calls[i]);
    return;
  }
  const int64_t steps = chunk_steps(calls, n, cpu::get_num_threads(), false);
  std::vector<std::unique_ptr<Forward<T>>> d;  // scratch taken here, before any work
  for (int i = 0; i < n; ++i) d.emplace_back(new Forward<T>(calls[i], 1, steps));
  if (steps > 0) {
    run_chunked(d, false, forward_chunk<T>);
    for (int i = 0; i < n; ++i) copy_h_n(calls[i]);
    return;
  }
  run_each_alone(n, [&](int i) {
    if (!cpu::run_schedule(d[size_t(i)]->sc, *d[size_t(i)])) return false;
    copy_h_n(calls[i]);
    return true;
  });
}

template <typename T>
void rnn_backward_calls_cpu(const RnnBackwardArgs<T>* given, int n) {
  if (!concurrent_plan(given, n, cpu::get_num_threads())) {
    for (int i = 0; i < n; ++i) rnn_backward_cpu(given[i]);
    return;
  }
  // A call adding into the grad_x of an earlier call writes its share to scratch instead.
  std::vector<RnnBackwardArgs<T>> calls(given, given + n);
  std::vector<std::unique_ptr<Scratch<T>>> share(static_cast<size_t>(n));
  std::vector<Access> acc;
  for (int j = 0; j < n; ++j) {
    RnnBackwardArgs<T>& c = calls[size_t(j)];
    const RnnShape& s = c.shape;
    for (int i = 0; i < j && c.accumulate_grad_x && c.grad_x; ++i) {
      const RnnShape& o = calls[size_t(i)].shape;
      if (given[i].grad_x != given[j].grad_x || o.T != s.T || o.B != s.B || o.I != s.I) continue;
      share[size_t(j)].reset(new Scratch<T>(s.T * s.B * s.I));
      c.grad_x = share[size_t(j)]->p;
      c.accumulate_grad_x = false;
    }
    acc.push_back(access(c));
  }
  if (!independent(acc)) {
    for (int i = 0; i < n; ++i) rnn_backward_cpu(given[i]);
    return;
  }
  const int64_t steps = chunk_steps(given, n, cpu::get_num_threads(), false);
  std::vector<std::unique_ptr<Backward<T>>> d;
  for (int i = 0; i < n; ++i) d.emplace_back(new Backward<T>(calls[size_t(i)], 1, steps));
  if (steps > 0) {
    run_chunked(d, false, backward_chunk<T>);
    for (const auto& b : d) b->finish();
  } else {
    run_each_alone(n, [&](int i) {
      if (!cpu::run_schedule(d[size_t(i)]->sc, *d[size_t(i)])) return false;
      d[size_t(i)]->finish();
      return true;
    });
  }
  for (int j = 0; j < n; ++j) {
    if (!share[size_t(j)]) continue;
    const int64_t m = given[j].shape.T * given[j].shape.B * given[j].shape.I;
    const T* src = share[size_t(j)]->p;
    T* dst = given[j].grad_x;
    for (int64_t k = 0; k < m; ++k) dst[k] += src[k];
  }
}

// ==================================================================================== layers
// A stack of layers in one direction, each layer's out the next one's x (forward), each
// layer's grad_out the grad_x of the layer above (backward, calls from the top), as a
// wavefront: chunk c of layer k + 1 runs once chunk c of layer k is done, so that with two
// threads two layers run at the same time, about one chunk apart, where each alone is one
// chain of dependent steps (small batch).
namespace {

// A stack's calls as a wavefront, or one after another: linked(k) says whether call k is the
// next link of the chain (for k >= 1: it reads what call k - 1 writes, through its read number
// `link` in access(), and nothing else of it); one(call) runs a call alone, chunk(driver, c)
// one chunk, finish(driver, call) what follows the region.
template <typename D, typename Args, typename Linked, typename One, typename Chunk,
          typename Finish>
void run_layers(const Args* calls, int n, size_t link, Linked linked, One one, Chunk chunk,
                Finish finish) {
  const int64_t steps = chunk_steps(calls, n, cpu::get_num_threads(), true);
  bool wave = steps > 0;
  std::vector<Access> acc;
  for (int k = 0; k < n && wave; ++k) {
    acc.push_back(access(calls[k]));
    wave = linked(k);
    if (k > 0) acc.back().reads[link] = Span();  // written by call k - 1 a round earlier
  }
  if (!wave || !independent(acc)) {
    for (int k = 0; k < n; ++k) one(calls[k]);
    return;
  }
  std::vector<std::unique_ptr<D>> d;
  for (int k = 0; k < n; ++k) d.emplace_back(new D(calls[k], 1, steps));
  run_chunked(d, true, chunk);
  for (int k = 0; k < n; ++k) finish(*d[size_t(k)], calls[k]);
}

}  // namespace

template <typename T>
void rnn_forward_layers_cpu(const RnnForwardArgs<T>* calls, int n) {
  run_layers<Forward<T>>(
      calls, n, 0,  // x: the out of the layer below
      [&](int l) {
        return l == 0 || (calls[l].x == calls[l - 1].out &&
                          calls[l - 1].ld_out == calls[l - 1].shape.H);
      },
      [](const RnnForwardArgs<T>& a) { rnn_forward_cpu(a); },
      forward_chunk<T>,
      [](Forward<T>&, const RnnForwardArgs<T>& a) { copy_h_n(a); });
}

template <typename T>
void rnn_backward_layers_cpu(const RnnBackwardArgs<T>* calls, int n) {
  run_layers<Backward<T>>(
      calls, n, 5,  // grad_out: the grad_x of the layer above
      [&](int k) {
        const RnnBackwardArgs<T>& c = calls[k];
        return !c.accumulate_grad_x && (k + 1 == n || c.grad_x) &&
               (k == 0 || (c.grad_out == calls[k - 1].grad_x &&
                           c.ld_grad_out == calls[k - 1].shape.I));
      },
      [](const RnnBackwardArgs<T>& a) { rnn_backward_cpu(a); },
      backward_chunk<T>,
      [](Backward<T>& b, const RnnBackwardArgs<T>&) { b.finish(); });
}

template void rnn_forward_calls_cpu<float>(const RnnForwardArgs<float>*, int);
template void rnn_forward_calls_cpu<double>(const RnnForwardArgs<double>*, int);
template void rnn_backward_calls_cpu<float>(const RnnBackwardArgs<float>*, int);
template void rnn_backward_calls_cpu<double>(const RnnBackwardArgs<double>*, int);
template void rnn_forward_layers_cpu<float>(const RnnForwardArgs<float>*, int);
template void rnn_forward_layers_cpu<double>(const RnnForwardArgs<double>*, int);
template void rnn_backward_layers_cpu<float>(const RnnBackwardArgs<float>*, int);
template void rnn_backward_layers_cpu<double>(const RnnBackwardArgs<double>*, int);

}  // namespace elman
