// Persistent worker threads for the CPU kernels. One parallel region per kernel call; inside
// it, threads synchronise once per time step with a spin barrier (waking a blocked thread costs
// tens of microseconds, far more than a step). Work is described as P parts that the team
// shares out (part q runs on thread q % size), so the result depends only on P, never on how
// many threads happened to be free: a call that finds the pool busy runs every part itself.
#pragma once
#include <cstdint>
#include <utility>

namespace elman {
namespace cpu {

class Team {
 public:
  Team(int tid, int size, void* barrier) : tid_(tid), size_(size), barrier_(barrier) {}
  int tid() const { return tid_; }
  int size() const { return size_; }
  void barrier();  // all threads of the team reach this point before any continues

 private:
  int tid_, size_;
  void* barrier_;
};

using TeamFn = void (*)(void* ctx, Team& team);
void parallel_raw(int want, TeamFn fn, void* ctx);

// Runs f(team) on min(want, get_num_threads()) threads; the caller is thread 0.
template <typename F>
void parallel(int want, F&& f) {
  parallel_raw(want, [](void* ctx, Team& team) { (*static_cast<F*>(ctx))(team); },
               const_cast<void*>(static_cast<const void*>(&f)));
}

void set_num_threads(int n);
int get_num_threads();
int default_num_threads();  // the CPUs this process may run on

}  // namespace cpu
}  // namespace elman
