// The CPU schedule's plan (schedule.h): how many parts a product and the recurrence are split
// into, and when the loop runs chunk by chunk.
#include "schedule.h"

namespace elman {
namespace cpu {

int gemm_parts(int64_t M, int64_t N, int64_t K, int threads) {
  const double flops = 2.0 * double(M) * double(N) * double(K);
  int P = int(std::min<double>(threads, std::max(1.0, flops / 2e6)));
  return std::max(1, std::min<int>(P, int(std::min<int64_t>(M, 1 << 20))));
}

RecurrencePlan plan_recurrence(int64_t B, int64_t H, int64_t npanels, int threads) {
  RecurrencePlan p;
  const double macs_per_step = double(B) * double(H) * double(H);
  if (threads <= 1 || macs_per_step < 24576.0) return p;  // below ~1 us of work: stay alone
  if (B >= 4 * threads) {
    p.parts = threads;
    return p;
  }
  if (npanels >= 2 && macs_per_step >= 65536.0) {
    p.parts = int(std::min<int64_t>(threads, npanels));
    p.by_rows = false;
  }
  return p;
}

Chunks plan_chunks(const RnnShape& sh, const RecurrencePlan& rp, bool uniform,
                   double bytes_per_row) {
  Chunks c;
  c.steps = std::max<int64_t>(1, (256 + sh.B - 1) / sh.B);
  c.count = (sh.T + c.steps - 1) / c.steps;
  c.on = rp.by_rows && uniform && c.count > 1 &&
         double(c.steps * sh.B) * bytes_per_row <= 768.0 * 1024.0;
  return c;
}

Schedule plan_schedule(const RnnShape& sh, bool backward, int64_t npanels, int threads,
                       double bytes_per_row, int64_t chunk_steps) {
  Schedule sc;
  sc.T = sh.T;
  sc.B = sh.B;
  sc.npanels = npanels;
  sc.backward = backward;
  sc.reverse = sh.reverse;
  sc.uniform = sh.all_full();
  sc.rec = plan_recurrence(sh.B, sh.H, npanels, threads);
  sc.chunks = plan_chunks(sh, sc.rec, sc.uniform, bytes_per_row);
  if (chunk_steps > 0 && sc.uniform && sc.rec.parts == 1) {
    sc.chunks.steps = chunk_steps;
    sc.chunks.count = (sh.T + chunk_steps - 1) / chunk_steps;
    sc.chunks.on = true;
  }
  sc.stop = stop_flag();
  return sc;
}

}  // namespace cpu
}  // namespace elman
