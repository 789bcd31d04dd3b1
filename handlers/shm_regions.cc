#include "handlers/shm_regions.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "handlers/shm_fault_guard.h"

namespace tensorprep::handlers {

namespace {

constexpr size_t kMaxKeyBytes = 255;  // NAME_MAX for a name under /dev/shm
constexpr size_t kMaxNameBytes = 128;
constexpr size_t kMaxExpectBytes = 64;
constexpr size_t kHandleBytes = 16;  // 128 random bits, 32 hex characters

// 128 bits from the kernel's generator; empty if it fails (then registration fails).
std::string NewHandle() {
  unsigned char raw[kHandleBytes];
  size_t got = 0;
  while (got < sizeof(raw)) {
    const ssize_t n = getrandom(raw + got, sizeof(raw) - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return "";
    }
    got += static_cast<size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * sizeof(raw), '0');
  for (size_t i = 0; i < sizeof(raw); ++i) {
    out[2 * i] = kHex[raw[i] >> 4];
    out[2 * i + 1] = kHex[raw[i] & 15];
  }
  return out;
}

// Closes a descriptor when it goes out of scope.
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

}  // namespace

ShmRegion::~ShmRegion() {
  if (guard_slot_ >= 0) ShmFaultGuard::Remove(guard_slot_);
  if (map_base_ != nullptr) munmap(map_base_, map_bytes_);
  if (mapped_ != nullptr) mapped_->fetch_sub(size_);
}

ShmPin::ShmPin(std::shared_ptr<ShmRegion> region) : region_(std::move(region)) {
  if (region_ != nullptr) region_->in_use_.fetch_add(1, std::memory_order_relaxed);
}

ShmPin& ShmPin::operator=(ShmPin&& other) noexcept {
  if (this != &other) {
    if (region_ != nullptr) region_->in_use_.fetch_sub(1, std::memory_order_relaxed);
    region_ = std::move(other.region_);
  }
  return *this;
}

ShmPin::~ShmPin() {
  if (region_ != nullptr) region_->in_use_.fetch_sub(1, std::memory_order_relaxed);
}

bool ShmSpan::Overlaps(const ShmSpan& other) const {
  if (bytes == 0 || other.bytes == 0 || dev != other.dev || ino != other.ino) return false;
  return object_begin < other.object_begin + other.bytes &&
         other.object_begin < object_begin + bytes;
}

SharedMemoryRegions::SharedMemoryRegions(ShmOptions options) : options_(std::move(options)) {}

SharedMemoryRegions::~SharedMemoryRegions() = default;

absl::Status SharedMemoryRegions::DisabledError() const {
  return absl::FailedPreconditionError(
      "shared memory is disabled on this server (the operator enables it with --shm-prefix); "
      "send the tensors' bytes in the message instead");
}

absl::StatusOr<std::string> SharedMemoryRegions::Register(
    const pb::RegisterSharedMemoryRequest& request, const std::string& client) {
  if (!enabled()) return DisabledError();
  const std::string& key = request.key();
  if (key.empty() || key.size() > kMaxKeyBytes || key[0] != '/' ||
      key.find('/', 1) != std::string::npos || key.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: expected a shared-memory object name of 2 to ", kMaxKeyBytes,
        " bytes, '/' then no other '/' (as for shm_open), got ", key.size(), " bytes that are not"));
  }
  if (key.compare(0, options_.key_prefix.size(), options_.key_prefix) != 0 ||
      key.size() == options_.key_prefix.size()) {
    return absl::PermissionDeniedError(absl::StrCat(
        "key: this server maps only objects whose names start with '", options_.key_prefix,
        "' and go on after it; the key given does not"));
  }
  if (request.name().size() > kMaxNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat("name: expected at most ", kMaxNameBytes,
                                                   " bytes, got ", request.name().size()));
  }
  if (request.expect_prefix().size() > kMaxExpectBytes) {
    return absl::InvalidArgumentError(absl::StrCat("expect_prefix: expected at most ",
                                                   kMaxExpectBytes, " bytes, got ",
                                                   request.expect_prefix().size()));
  }
  const uint64_t offset = request.offset();
  const uint64_t size = request.byte_size();
  if (size == 0) {
    return absl::InvalidArgumentError("byte_size: expected >= 1, got 0");
  }
  if (size < request.expect_prefix().size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expect_prefix: ", request.expect_prefix().size(), " bytes, longer than the region (",
        size, " bytes)"));
  }
  if (offset > UINT64_MAX - size || offset + size > static_cast<uint64_t>(INT64_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("offset + byte_size overflows (", offset,
                                                   " + ", size, ")"));
  }

  // Reserve the client's slot and the bytes before mapping, so that concurrent registrations
  // cannot pass the limits together; given back on any failure below.
  {
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t& held = per_client_[client];
    if (held >= options_.max_regions_per_client) {
      if (held == 0) per_client_.erase(client);
      return absl::ResourceExhaustedError(absl::StrCat(
          "this client holds ", options_.max_regions_per_client,
          " shared-memory regions, the server's limit per client (--shm-max-regions); "
          "unregister one first"));
    }
    const uint64_t mapped = mapped_->load();
    if (size > options_.max_mapped_bytes || mapped > options_.max_mapped_bytes - size) {
      if (held == 0) per_client_.erase(client);
      return absl::ResourceExhaustedError(absl::StrCat(
          "mapping ", size, " more bytes would pass the server's shared-memory limit of ",
          options_.max_mapped_bytes, " bytes (--shm-max-mb; ", mapped,
          " mapped now); unregister regions or use smaller ones"));
    }
    ++held;
    mapped_->fetch_add(size);
  }
  auto region = std::shared_ptr<ShmRegion>(new ShmRegion());
  region->size_ = size;
  region->mapped_ = mapped_;  // from here the region gives the bytes back when it goes
  auto give_back_client = [&] {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = per_client_.find(client);
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
  };
  auto fail = [&](absl::Status s) {
    give_back_client();
    return s;
  };

  // Open only: never create, never follow a client's name anywhere else.
  const int fd = shm_open(key.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) {
      return fail(absl::NotFoundError(
          "key: no shared-memory object of that name exists on the server's host (a server on "
          "another host, or in another IPC namespace, cannot see the client's memory)"));
    }
    if (err == EACCES || err == EPERM) {
      return fail(absl::PermissionDeniedError(
          "key: the server may not open that object for reading and writing (check its mode: "
          "the server needs read and write access)"));
    }
    return fail(absl::InvalidArgumentError(
        absl::StrCat("key: the object cannot be opened (", std::strerror(err), ")")));
  }
  FdCloser closer{fd};
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return fail(absl::InvalidArgumentError("key: not a shared-memory object"));
  }
  if (static_cast<uint64_t>(st.st_size) < offset + size) {
    return fail(absl::InvalidArgumentError(absl::StrCat(
        "offset + byte_size: the region [", offset, ", ", offset + size,
        ") ends past the object's end (", st.st_size, " bytes)")));
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t map_offset = offset / page * page;
  const size_t map_bytes = static_cast<size_t>(offset - map_offset + size);
  void* base = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd,
                    static_cast<off_t>(map_offset));
  if (base == MAP_FAILED) {
    return fail(absl::ResourceExhaustedError(absl::StrCat(
        "mapping the region failed (", std::strerror(errno), ")")));
  }
  region->map_base_ = base;
  region->map_bytes_ = map_bytes;
  region->data_ = static_cast<uint8_t*>(base) + (offset - map_offset);
  region->object_offset_ = offset;
  region->dev_ = st.st_dev;
  region->ino_ = st.st_ino;
  region->name_ = request.name();
  region->client_ = client;
  region->guard_slot_ = ShmFaultGuard::Add(base, map_bytes, &region->broken_);
  if (region->guard_slot_ < 0) {
    return fail(absl::ResourceExhaustedError(absl::StrCat(
        "the server maps ", ShmFaultGuard::kMaxRanges,
        " shared-memory regions already, its most; unregister some first")));
  }
  const std::string& expect = request.expect_prefix();
  if (!expect.empty() && (std::memcmp(region->data_, expect.data(), expect.size()) != 0 ||
                          region->broken())) {
    return fail(absl::FailedPreconditionError(
        "expect_prefix: the region's first bytes differ from the ones given, so the server does "
        "not see the memory the client wrote (another host or IPC namespace with an object of "
        "the same name?); send tensors inline"));
  }
  std::string handle = NewHandle();
  if (handle.empty()) {
    return fail(absl::InternalError("the kernel's random generator failed; no handle made"));
  }
  region->handle_ = handle;
  std::lock_guard<std::mutex> lock(mu_);
  by_handle_.emplace(handle, std::move(region));
  return handle;
}

absl::Status SharedMemoryRegions::Unregister(const std::string& handle) {
  if (!enabled()) return DisabledError();
  std::shared_ptr<ShmRegion> region;  // released outside the lock: may unmap
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_handle_.find(handle);
    if (it == by_handle_.end()) {
      return absl::NotFoundError("region: no registered shared-memory region has this handle");
    }
    region = std::move(it->second);
    by_handle_.erase(it);
    auto c = per_client_.find(region->client_);
    if (c != per_client_.end() && --c->second == 0) per_client_.erase(c);
  }
  return absl::OkStatus();
}

absl::StatusOr<ShmRegionStatus> SharedMemoryRegions::Status(const std::string& handle) const {
  if (!enabled()) return DisabledError();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_handle_.find(handle);
  if (it == by_handle_.end()) {
    return absl::NotFoundError("regions: no registered shared-memory region has this handle");
  }
  const ShmRegion& r = *it->second;
  return ShmRegionStatus{handle, r.name(), r.size(), r.in_use(), r.broken()};
}

uint32_t SharedMemoryRegions::ClientRegions(const std::string& client) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = per_client_.find(client);
  return it == per_client_.end() ? 0 : it->second;
}

uint64_t SharedMemoryRegions::mapped_bytes() const { return mapped_->load(); }

size_t SharedMemoryRegions::regions() const {
  std::lock_guard<std::mutex> lock(mu_);
  return by_handle_.size();
}

absl::StatusOr<ShmSpan> SharedMemoryRegions::Resolve(const pb::SharedMemoryRef& ref,
                                                     const std::string& path,
                                                     uint64_t exact_bytes, uint64_t min_bytes,
                                                     uint64_t align) const {
  if (!enabled()) return DisabledError();
  std::shared_ptr<ShmRegion> region;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_handle_.find(ref.region());
    if (it != by_handle_.end()) region = it->second;
  }
  if (region == nullptr) {
    return absl::NotFoundError(absl::StrCat(
        path, ".region: no registered shared-memory region has this handle (",
        ref.region().size(), " bytes given; handles are what RegisterSharedMemory returned)"));
  }
  if (region->broken()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ".region: the region is broken: its object shrank while the server had it mapped; "
              "unregister it and register a new one"));
  }
  const uint64_t offset = ref.offset();
  const uint64_t bytes = ref.byte_size();
  if (offset > region->size() || bytes > region->size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": bytes [", offset, ", ", offset, " + ", bytes, ") lie outside the region's ",
        region->size(), " bytes"));
  }
  if (exact_bytes != 0 && bytes != exact_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ".byte_size: expected ", exact_bytes,
                                                   " (the tensor's size), got ", bytes));
  }
  if (bytes < min_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(path, ".byte_size: expected at least ",
                                                   min_bytes, " (the result's size), got ",
                                                   bytes));
  }
  uint8_t* data = region->data() + offset;
  if (align > 1 && reinterpret_cast<uintptr_t>(data) % align != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ".offset: the tensor must start on a multiple of its element size (", align,
        " bytes) in the object; region offset + offset = ", region->object_offset_ + offset));
  }
  ShmSpan span;
  span.data = data;
  span.bytes = bytes;
  span.dev = region->dev_;
  span.ino = region->ino_;
  span.object_begin = region->object_offset_ + offset;
  span.pin = ShmPin(std::move(region));
  return span;
}

}  // namespace tensorprep::handlers
