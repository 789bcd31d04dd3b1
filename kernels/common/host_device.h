// Lets small numeric helpers compile for both host (g++) and device (nvcc).
#ifndef TENSORPREP_KERNELS_COMMON_HOST_DEVICE_H_
#define TENSORPREP_KERNELS_COMMON_HOST_DEVICE_H_

#if defined(__CUDACC__)
#define TP_HD __host__ __device__ __forceinline__
#else
#define TP_HD inline
#endif

#endif  // TENSORPREP_KERNELS_COMMON_HOST_DEVICE_H_
