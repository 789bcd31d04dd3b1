// The C++ client's shared-memory pool: slots in POSIX shared-memory objects that the server maps
// once, so that requests carry references (region, offset, byte size) instead of tensor bytes.
//
// How a region comes to be (ShmPool::Create, and growth when the pool is short):
//   1. an object named <key_prefix><pid>-<24 random hex digits> is created with
//      shm_open(O_CREAT | O_EXCL), mode 0600 (never an existing one), sized, its pages reserved
//      (so that a full /dev/shm fails here instead of faulting later), and mapped;
//   2. a random nonce is written at its start and the region is registered with
//      RegisterSharedMemory(expect_prefix = nonce). This is how the client knows that the server
//      sees the same memory: a server on another host or in another IPC namespace finds no such
//      object (NOT_FOUND) or a different one (FAILED_PRECONDITION);
//   3. the name is shm_unlink'ed at once, registered or not: the server keeps its own mapping
//      until Unregister, so nothing is left in /dev/shm whatever happens to either process.
//
// Slots are 64-byte-aligned blocks handed out first-fit from each region's arena; a ShmSlot owns
// its block and returns it to the pool when destroyed. When no region has room, the pool
// registers another one (as large as the pool so far, or the request if larger: the pool
// doubles), up to its caps; past them an allocation fails with the reason and the caller may
// send that request inline.
//
// Lifetime: Close() (the client calls it when it is destroyed) unregisters every region; the
// local mappings stay until the pool object itself goes, which is when the last slot and the
// last shared_ptr to it are gone. A slot therefore never points to unmapped memory.
//
// Slots of a request abandoned without a response (deadline, cancellation, a broken stream) are
// quarantined, never reused blindly: the server may still be writing there. They come back only
// once SharedMemoryStatus reports that no request uses their region.
//
// A region handle is a capability (whoever holds it can use the region), so the pool shows
// handles only to the server, in the references it builds.
//
// Thread-safety: ShmPool is thread-safe; a ShmSlot or Buffer is not (one owner at a time), but
// slots of one pool may be used and destroyed concurrently from many threads.
#ifndef TENSORPREP_CLIENT_CPP_SHM_POOL_H_
#define TENSORPREP_CLIENT_CPP_SHM_POOL_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::client {

// Every slot starts on a cache line, and so on a multiple of every dtype's size.
inline constexpr uint64_t kShmAlign = 64;
// Bytes of the nonce written at a new region's start and sent as expect_prefix (the server
// compares at most 64).
inline constexpr size_t kShmNonceBytes = 32;

// First-fit allocator of kShmAlign-aligned blocks in [0, size). Free blocks are kept sorted and
// coalesced, so a pool that hands out and takes back blocks of one batch size keeps reusing the
// same (already faulted-in) pages. Not thread-safe: ShmPool locks around it.
class ShmArena {
 public:
  // `size` must be a positive multiple of kShmAlign.
  explicit ShmArena(uint64_t size);

  // `bytes` rounded up to kShmAlign (at least kShmAlign).
  static uint64_t RoundUp(uint64_t bytes);

  // Offset of a block of at least `bytes`, or nullopt when none is free.
  std::optional<uint64_t> Alloc(uint64_t bytes);
  // Returns a block Alloc handed out. INTERNAL (and no change) for a block outside the arena
  // or overlapping a free one: a double free, a broken invariant of the caller.
  absl::Status Free(uint64_t offset, uint64_t bytes);

  uint64_t size() const { return size_; }
  uint64_t used() const { return used_; }
  uint64_t largest_free() const;
  size_t free_blocks() const { return free_.size(); }

 private:
  uint64_t size_;
  uint64_t used_ = 0;
  std::map<uint64_t, uint64_t> free_;  // offset -> length; never adjacent, never overlapping
};

// What the pool asks of the server (the client supplies these over its channel).
struct ShmServerCalls {
  // RegisterSharedMemory for bytes [0, byte_size) of `key`, with `nonce` as expect_prefix.
  // Returns the region handle, or the server's status.
  std::function<absl::StatusOr<std::string>(const std::string& key, uint64_t byte_size,
                                            const std::string& nonce)>
      register_region;
  // UnregisterSharedMemory; failures are ignored (the server forgets regions it cannot find).
  std::function<absl::Status(const std::string& handle)> unregister_region;
  // SharedMemoryStatus: requests_in_use per handle. May be empty; quarantined slots then never
  // come back.
  std::function<absl::StatusOr<std::map<std::string, uint32_t>>(const std::vector<std::string>&)>
      requests_in_use;
};

struct ShmPoolOptions {
  // The server's key_prefix (ListOpsResponse.shared_memory): "/" and then no other "/".
  std::string key_prefix;
  // Size of the first region, and the least size of each further one.
  uint64_t initial_bytes = uint64_t{64} << 20;
  // All regions together, and how many at most.
  uint64_t max_bytes = uint64_t{1} << 30;
  uint32_t max_regions = 16;
};

struct ShmPoolStats {
  uint64_t mapped_bytes = 0;  // all regions
  uint64_t in_use_bytes = 0;  // reserved now (rounded to slots), quarantined ones included
  size_t regions = 0;
  size_t quarantined_slots = 0;
};

class ShmPool;
struct ShmRegionState;

// A reserved block of the pool: `size()` bytes at `data()`. Move-only; destroying it (or
// Release) returns the block to the pool. Keeps the pool (and so the mapping) alive.
class ShmSlot {
 public:
  ShmSlot() = default;
  ShmSlot(ShmSlot&& other) noexcept;
  ShmSlot& operator=(ShmSlot&& other) noexcept;
  ShmSlot(const ShmSlot&) = delete;
  ShmSlot& operator=(const ShmSlot&) = delete;
  ~ShmSlot();

  explicit operator bool() const { return region_ != nullptr; }
  uint8_t* data() const;
  uint64_t size() const { return size_; }
  uint64_t offset() const { return offset_; }
  // A reference naming the slot's first `bytes` bytes (all of it when `bytes` is 0).
  v1::SharedMemoryRef Ref(uint64_t bytes = 0) const;
  // Returns the block to the pool now; the slot is empty afterwards.
  void Release();

 private:
  friend class ShmPool;
  std::shared_ptr<ShmPool> pool_;
  ShmRegionState* region_ = nullptr;  // owned by pool_
  uint64_t offset_ = 0;
  uint64_t size_ = 0;
};

// Bytes of a tensor that the client hands out: a shared-memory slot (returned to its pool when
// the Buffer goes) or memory of the Buffer's own. Move-only; not thread-safe.
class Buffer {
 public:
  Buffer() = default;
  // Takes `bytes` (e.g. a response's tensor data, swapped out of the message: no copy).
  static Buffer Owned(std::string bytes);
  // `size` bytes at the start of `slot` (size <= slot.size()).
  static Buffer InSlot(ShmSlot slot, uint64_t size);

  uint8_t* data() { return slot_ ? slot_.data() : reinterpret_cast<uint8_t*>(owned_.data()); }
  const uint8_t* data() const {
    return slot_ ? slot_.data() : reinterpret_cast<const uint8_t*>(owned_.data());
  }
  size_t size() const { return size_; }
  // Whether the bytes lie in the client's shared memory (then sending them costs no copy).
  bool in_shared_memory() const { return static_cast<bool>(slot_); }
  // An owning copy in ordinary memory; the slot, if any, stays with this Buffer.
  Buffer Copy() const;

 private:
  ShmSlot slot_;
  std::string owned_;
  size_t size_ = 0;
};

// Why ShmPool::Create failed.
enum class ShmSetupFailure {
  kNone,
  kLocal,   // this side: no shared memory, a bad prefix, no room in /dev/shm
  kServer,  // RegisterSharedMemory refused; the status is the server's
};

// The pool. Made with Create and always held by shared_ptr (slots keep it alive). Thread-safe.
class ShmPool : public std::enable_shared_from_this<ShmPool> {
 public:
  // Creates and registers the first region. Errors: FAILED_PRECONDITION (local set-up: a bad
  // prefix, shm_open, ftruncate, mmap or space reservation failing, with the reason) or the
  // status register_region returned; `failure`, when given, says which side failed.
  static absl::StatusOr<std::shared_ptr<ShmPool>> Create(const ShmPoolOptions& options,
                                                         ShmServerCalls calls,
                                                         ShmSetupFailure* failure = nullptr);
  ShmPool(const ShmPool&) = delete;
  ShmPool& operator=(const ShmPool&) = delete;
  ~ShmPool();  // Close(), then unmaps every region

  // Reserves one slot per size (bytes, 0 counts as 1), all or none, registering another region
  // when the pool is short and its caps allow. RESOURCE_EXHAUSTED with the reason when they do
  // not fit (the pool's caps, or the server refused another region); FAILED_PRECONDITION after
  // Close.
  absl::StatusOr<std::vector<ShmSlot>> AllocMany(const std::vector<uint64_t>& sizes);
  absl::StatusOr<ShmSlot> Alloc(uint64_t bytes);

  // Where [data, data + bytes) lies: a reference to it when it is wholly inside one region of
  // this pool (the caller checks alignment), else nullopt. The reference is valid only while
  // the memory stays reserved by its owner.
  std::optional<v1::SharedMemoryRef> Locate(const void* data, uint64_t bytes) const;

  // Slots of a request that may still run on the server: kept out of use until
  // SharedMemoryStatus says their region is idle (checked when an allocation falls short).
  void Quarantine(std::vector<ShmSlot> slots);

  // Unregisters every region with the server (once; later calls do nothing). Slots stay valid
  // memory until they are destroyed, but allocations fail from now on.
  void Close();
  bool closed() const;

  ShmPoolStats stats() const;

 private:
  friend class ShmSlot;
  ShmPool(const ShmPoolOptions& options, ShmServerCalls calls);

  // Creates, registers and unlinks one object of `bytes`. Sets *failure on error.
  absl::StatusOr<std::unique_ptr<ShmRegionState>> NewRegion(uint64_t bytes,
                                                            ShmSetupFailure* failure);
  // A block taken from a region's arena, not yet owned by a ShmSlot.
  struct Held {
    ShmRegionState* region;
    uint64_t offset, bytes;
  };
  // All of `sizes` from the regions there are, or an empty vector. Requires mu_.
  std::vector<Held> AllocLocked(const std::vector<uint64_t>& sizes);
  // Slots owning `held` (each keeps the pool alive). Call without mu_.
  std::vector<ShmSlot> ToSlots(const std::vector<Held>& held);
  // Registers a region of at least `need` bytes; OK, or RESOURCE_EXHAUSTED with why not.
  absl::Status Grow(uint64_t need);
  // Frees quarantined slots of idle regions; true when any came back.
  bool ReclaimQuarantine();
  void FreeBlock(ShmRegionState* region, uint64_t offset, uint64_t bytes);

  const ShmPoolOptions options_;
  ShmServerCalls calls_;  // cleared by Close
  mutable std::mutex mu_;
  std::mutex grow_mu_;  // one registration at a time
  // Regions, mapped until the pool is destroyed (GUARDED_BY(mu_) for the vector and arenas).
  std::vector<std::unique_ptr<ShmRegionState>> regions_;
  std::vector<Held> quarantine_;  // GUARDED_BY(mu_)
  bool closed_ = false;           // GUARDED_BY(mu_)
  std::string grow_refused_;      // GUARDED_BY(grow_mu_): the server's refusal, once given
};

// Size in bytes of one element of `dtype`, or 0 for an unknown one.
uint64_t DTypeSize(v1::DType dtype);

}  // namespace tensorprep::client

#endif  // TENSORPREP_CLIENT_CPP_SHM_POOL_H_
