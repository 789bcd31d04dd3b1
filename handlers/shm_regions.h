// Shared-memory regions: clients on the same host register (part of) a POSIX shared-memory object
// once, then send requests whose tensors and results are places in it instead of bytes in the
// message. Kernels read and write the mapped memory directly.
//
// Semantics follow the KServe v2 system shared-memory extension (register, status, unregister; a
// region is a key + offset + byte size), made safer:
// - off unless the operator sets a key prefix; keys outside it are refused;
// - objects are opened, never created, and their size is checked against the region;
// - requests name a region by an unguessable handle that Register returns (128 random bits), not
//   by the caller's name, so one client cannot read, write or unregister another's regions
//   unless it is given the handle; handles and keys never appear in error messages;
// - every reference is checked for range, overflow and alignment;
// - a region unregistered while requests use it stays mapped until the last of them finishes
//   (requests hold a ShmPin);
// - a client that shrinks or removes its object cannot crash the server (ShmFaultGuard) and its
//   region refuses every later request (FAILED_PRECONDITION);
// - regions per client and bytes mapped in all are limited (RESOURCE_EXHAUSTED).
#ifndef TENSORPREP_HANDLERS_SHM_REGIONS_H_
#define TENSORPREP_HANDLERS_SHM_REGIONS_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tensorprep/v1/tensorprep.pb.h"

namespace tensorprep::handlers {

namespace pb = ::tensorprep::v1;

struct ShmOptions {
  // Keys must start with this (e.g. "/tensorprep-"); empty disables shared memory.
  std::string key_prefix;
  // Regions one client may hold at once (see Register for who a client is; the server's
  // clients are connection peers, and all clients of a Unix socket share one peer).
  uint32_t max_regions_per_client = 64;
  // Bytes mapped for all clients together.
  uint64_t max_mapped_bytes = uint64_t{4} << 30;
};

// One mapped region. Owned through shared_ptr by the registry and by the pins of the requests
// that use it; unmapped when the last owner lets go. Thread-safe.
class ShmRegion {
 public:
  ShmRegion(const ShmRegion&) = delete;
  ShmRegion& operator=(const ShmRegion&) = delete;
  ~ShmRegion();

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  // True once the object was found shorter than the region (by a check or by a fault): the
  // memory now holds zeros, and every request naming the region fails.
  bool broken() const { return broken_.load(std::memory_order_acquire); }
  uint32_t in_use() const { return in_use_.load(std::memory_order_relaxed); }

 private:
  friend class SharedMemoryRegions;
  friend class ShmPin;
  ShmRegion() = default;

  void* map_base_ = nullptr;  // page-aligned start of the mapping
  size_t map_bytes_ = 0;
  uint8_t* data_ = nullptr;   // the region's first byte, inside the mapping
  uint64_t size_ = 0;
  uint64_t object_offset_ = 0;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
  int guard_slot_ = -1;
  std::string handle_;
  std::string name_;
  std::string client_;
  std::atomic<bool> broken_{false};
  std::atomic<uint32_t> in_use_{0};
  std::shared_ptr<std::atomic<uint64_t>> mapped_;  // the registry's count, given back on unmap
};

// Keeps a region mapped and counted in use while a request holds it. Movable.
class ShmPin {
 public:
  ShmPin() = default;
  explicit ShmPin(std::shared_ptr<ShmRegion> region);
  ShmPin(ShmPin&& other) noexcept = default;
  ShmPin& operator=(ShmPin&& other) noexcept;
  ~ShmPin();
  const ShmRegion* region() const { return region_.get(); }
  explicit operator bool() const { return region_ != nullptr; }

 private:
  std::shared_ptr<ShmRegion> region_;
};

// A resolved reference: where the bytes are, the pin that keeps them there, and the bytes'
// place in the underlying object (to find overlaps between references, even through two
// registrations of one object).
struct ShmSpan {
  uint8_t* data = nullptr;
  uint64_t bytes = 0;
  ShmPin pin;
  dev_t dev = 0;
  ino_t ino = 0;
  uint64_t object_begin = 0;  // offset of `data` in the object

  bool Overlaps(const ShmSpan& other) const;
};

struct ShmRegionStatus {
  std::string handle;
  std::string name;
  uint64_t byte_size = 0;
  uint32_t in_use = 0;
  bool broken = false;
};

// The registry of one server. Thread-safe: every method may be called from any thread.
class SharedMemoryRegions {
 public:
  explicit SharedMemoryRegions(ShmOptions options);
  ~SharedMemoryRegions();

  bool enabled() const { return !options_.key_prefix.empty(); }
  const ShmOptions& options() const { return options_; }

  // Maps bytes [offset, offset + byte_size) of the object `key` and returns its handle.
  // `client` identifies the caller for the per-client region limit (the server passes the
  // transport peer and token). Errors: FAILED_PRECONDITION when disabled or when `expect_prefix`
  // differs from the region's first bytes; PERMISSION_DENIED for a key outside the prefix or an
  // object the server may not open; NOT_FOUND for a missing object; INVALID_ARGUMENT for a
  // malformed key, a zero size, a range past the object's end or an over-long field;
  // RESOURCE_EXHAUSTED over the region or byte limits. Messages never contain the key.
  absl::StatusOr<std::string> Register(const pb::RegisterSharedMemoryRequest& request,
                                       const std::string& client);

  // Forgets a handle (NOT_FOUND if unknown). The mapping stays until pins let go.
  absl::Status Unregister(const std::string& handle);

  absl::StatusOr<ShmRegionStatus> Status(const std::string& handle) const;
  uint32_t ClientRegions(const std::string& client) const;
  uint64_t mapped_bytes() const;
  size_t regions() const;  // registered now

  // Resolves `ref` to memory for a request. `path` names the field in errors
  // ("images.shm"). `exact_bytes`: the tensor's size, which byte_size must equal (an input), or
  // 0; `min_bytes`: a lower bound for byte_size (an output's result size), or 0. `align`: the
  // element size the address must be a multiple of. Errors: FAILED_PRECONDITION when disabled or
  // the region is broken; NOT_FOUND for an unknown handle; INVALID_ARGUMENT for a range outside
  // the region, an overflow, a wrong size or a misaligned place.
  absl::StatusOr<ShmSpan> Resolve(const pb::SharedMemoryRef& ref, const std::string& path,
                                  uint64_t exact_bytes, uint64_t min_bytes, uint64_t align) const;

 private:
  absl::Status DisabledError() const;

  const ShmOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<ShmRegion>> by_handle_;  // GUARDED_BY(mu_)
  std::map<std::string, uint32_t> per_client_;                   // GUARDED_BY(mu_)
  // Bytes mapped by registered regions and by unregistered ones still pinned.
  std::shared_ptr<std::atomic<uint64_t>> mapped_ =
      std::make_shared<std::atomic<uint64_t>>(0);
};

}  // namespace tensorprep::handlers

#endif  // TENSORPREP_HANDLERS_SHM_REGIONS_H_
