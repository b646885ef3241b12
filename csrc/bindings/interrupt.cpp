// The SIGINT handler of a stoppable call (interrupt.h).
#include "interrupt.h"

#include <pythread.h>
#include <signal.h>

namespace elman {
namespace bind {
namespace {

std::atomic<int> g_flag{0};          // raised by on_sigint; a lock-free atomic (signal-safe)
struct sigaction g_prev;             // the handler ours passes the signal on to
unsigned long g_main_thread = 0;     // threading.main_thread().ident

void on_sigint(int sig, siginfo_t* info, void* context) {
  g_flag.store(1, std::memory_order_relaxed);
  if (g_prev.sa_flags & SA_SIGINFO) g_prev.sa_sigaction(sig, info, context);
  else if (g_prev.sa_handler != SIG_DFL && g_prev.sa_handler != SIG_IGN) g_prev.sa_handler(sig);
}

}  // namespace

void init_interrupt() {
  namespace py = pybind11;
  g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();
}

// Only the main thread sees KeyboardInterrupt, and only one call runs there at a time, so
// g_prev and g_flag belong to that call.
Interruptible::Interruptible(double macs) {
  if (macs < kStoppableMacs || PyThread_get_thread_ident() != g_main_thread) return;
  struct sigaction current;
  if (sigaction(SIGINT, nullptr, &current) != 0) return;
  const bool plain = !(current.sa_flags & SA_SIGINFO);
  if (plain && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN)) return;
  g_prev = current;
  g_flag.store(0, std::memory_order_relaxed);
  struct sigaction ours = current;
  ours.sa_sigaction = on_sigint;
  ours.sa_flags = (current.sa_flags | SA_SIGINFO) & ~SA_RESETHAND;
  on_ = sigaction(SIGINT, &ours, nullptr) == 0;
}

Interruptible::~Interruptible() {
  if (on_) sigaction(SIGINT, &g_prev, nullptr);
}

const std::atomic<int>* Interruptible::flag() const { return &g_flag; }
void Interruptible::rearm() { g_flag.store(0, std::memory_order_relaxed); }

}  // namespace bind
}  // namespace elman
