// Keeps a client's shared memory from crashing the server.
//
// A mapping of a POSIX shared-memory object raises SIGBUS on any access past the object's end.
// The server maps objects that clients own, and a client can shrink or remove its object while a
// request reads or writes it; without a guard that signal would end the process. The guard is a
// process-wide SIGBUS handler over a fixed table of guarded address ranges: a fault inside one
// maps fresh zero pages over the whole range (so the faulting access, retried on return, and
// every later one succeed), marks the range broken, and returns. The request that touched the
// range then reads zeros or writes into memory nobody sees; its owner checks the broken flag after
// the kernels ran and fails the request. A SIGBUS anywhere else gets the action that was there
// before (by default the process dies, as without the guard).
//
// This is the technique display servers use for clients' shared-memory buffers. It relies on
// mmap being callable from a signal handler, which Linux allows (it is a plain system call).
#ifndef TENSORPREP_HANDLERS_SHM_FAULT_GUARD_H_
#define TENSORPREP_HANDLERS_SHM_FAULT_GUARD_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace tensorprep::handlers {

class ShmFaultGuard {
 public:
  // Ranges that can be guarded at once; Add fails beyond it.
  static constexpr int kMaxRanges = 4096;

  // Guards [base, base + bytes) (base page-aligned, the whole mapping) and installs the handler
  // on first use. `broken` (not owned) is set to true when a fault hits the range and must
  // outlive the guard of the range. Returns a slot for Remove, or -1 when the table is full.
  // Thread-safe.
  static int Add(void* base, size_t bytes, std::atomic<bool>* broken);

  // Stops guarding a slot from Add. Call it before unmapping the range, and only once no thread
  // can touch the range any more. Thread-safe.
  static void Remove(int slot);

  // How many faults the guard has absorbed since the process started (for tests and logs).
  static uint64_t faults();
};

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_SHM_FAULT_GUARD_H_
