// Force-included into the fuzz build only (scripts/fuzz.sh). clang 14 rejects
// __builtin_cpu_supports("f16c"), which the CPU kernels use to pick AVX2/F16C paths; here every
// such query answers "no", so the fuzzer exercises the portable paths. The sanitizer and release
// builds (g++) are unaffected.
#ifndef TENSORPREP_FUZZ_CPU_SUPPORTS_SHIM_H_
#define TENSORPREP_FUZZ_CPU_SUPPORTS_SHIM_H_
#if defined(__clang__)
#define __builtin_cpu_supports(feature) 0
#endif
#endif  // TENSORPREP_FUZZ_CPU_SUPPORTS_SHIM_H_
