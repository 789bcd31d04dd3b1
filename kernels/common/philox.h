// Counter-based random numbers (Philox4x32-10, Salmon et al., "Parallel random numbers: as easy
// as 1, 2, 3", SC 2011). A draw is a pure function of (key, counter), so the per-sample random
// parameters of an op depend only on (seed, sample index, op index): not on threads, devices or
// how a batch was split. Identical on host and device.
#ifndef TENSORPREP_KERNELS_COMMON_PHILOX_H_
#define TENSORPREP_KERNELS_COMMON_PHILOX_H_

#include <cstdint>

#include "kernels/common/host_device.h"

namespace tensorprep::kernels {

struct Philox4x32 {
  uint32_t v[4];
};

TP_HD void PhiloxMulHiLo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 on `counter` with the 64-bit `key`.
TP_HD Philox4x32 Philox(Philox4x32 counter, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key);
  uint32_t k1 = static_cast<uint32_t>(key >> 32);
  uint32_t* c = counter.v;
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    PhiloxMulHiLo(0xD2511F53u, c[0], &hi0, &lo0);
    PhiloxMulHiLo(0xCD9E8D57u, c[2], &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c[1] ^ k0;
    const uint32_t n1 = lo1;
    const uint32_t n2 = hi0 ^ c[3] ^ k1;
    const uint32_t n3 = lo0;
    c[0] = n0;
    c[1] = n1;
    c[2] = n2;
    c[3] = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return counter;
}

// Uniform double in [0, 1) with 53 random bits for (seed, sample, op index, draw index).
TP_HD double UniformDouble(uint64_t seed, uint64_t sample, uint32_t op_index, uint32_t draw) {
  const Philox4x32 r = Philox(
      Philox4x32{{static_cast<uint32_t>(sample), static_cast<uint32_t>(sample >> 32), op_index,
                  draw}},
      seed);
  const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 21) ^ (r.v[1] >> 11);
  return static_cast<double>(bits & ((uint64_t{1} << 53) - 1)) * (1.0 / 9007199254740992.0);
}

}  // namespace tensorprep::kernels

#endif  // TENSORPREP_KERNELS_COMMON_PHILOX_H_
