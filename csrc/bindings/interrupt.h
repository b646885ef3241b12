// Ctrl-C during a long CPU kernel call (elman._core). Python runs its SIGINT handler only
// between bytecodes, so a call that holds the thread for seconds would otherwise be
// interrupted only when it ends. For a call long enough to matter, made from the main thread
// while SIGINT has a handler, elman puts its own handler in front of that one for the call's
// duration: it raises the call's stop flag (cpu::StopScope, threads.h) and passes the signal
// on. The kernels then stop within a few milliseconds, the binding puts back what the call had
// added into the caller's accumulators, and Python's handlers run (PyErr_CheckSignals): the
// KeyboardInterrupt (or whatever a handler raised) propagates with nothing changed, and when
// no handler raised, the call runs again from the start.
#pragma once
#include <pybind11/pybind11.h>

#include <atomic>
#include <string>

#include "../cpu/threads.h"
#include "args.h"

namespace elman {
namespace bind {

// A call of fewer multiply-adds than this is never stopped (it ends within milliseconds).
constexpr double kStoppableMacs = double(1 << 24);

// For one call (GIL held): on() when the call is stoppable, flag() the flag its handler raises.
class Interruptible {
 public:
  explicit Interruptible(double macs);
  ~Interruptible();
  Interruptible(const Interruptible&) = delete;
  Interruptible& operator=(const Interruptible&) = delete;
  bool on() const { return on_; }
  const std::atomic<int>* flag() const;
  void rearm();  // the flag lowered again, for a rerun

 private:
  bool on_ = false;
};

// Runs f() as run_kernel does (without the GIL; std::bad_alloc -> MemoryError with `message`),
// stoppable when `intr` is on. When it was stopped: restore() undoes what the call added,
// Python's signal handlers run and an exception they raise propagates; otherwise f runs again.
template <typename F, typename R>
void run_stoppable(Interruptible& intr, const std::string& message, F&& f, R&& restore) {
  for (;;) {
    bool stopped = false;
    run_kernel(message, [&] {
      cpu::StopScope scope(intr.on() ? intr.flag() : nullptr);
      try {
        f();
      } catch (const cpu::Stopped&) {
        stopped = true;
      }
    });
    if (!stopped) return;
    restore();
    if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
    intr.rearm();
  }
}

// Registers the main thread's identity (called once at module import, GIL held).
void init_interrupt();

}  // namespace bind
}  // namespace elman
