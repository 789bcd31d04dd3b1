# tensorprep-server image: a build stage that compiles the server and CLI, and a slim runtime stage
# with only the shared libraries they load, a non-root user and the server as entrypoint.
#
# CPU image (Debian 12):
#   docker build -t tensorprep:cpu .
# GPU image (CUDA backend; needs the NVIDIA container toolkit on the host to run). The NVIDIA CUDA
# images are Ubuntu-based; Ubuntu 24.04 carries the same gRPC/protobuf/OpenCV releases as Debian 12:
#   docker build -t tensorprep:gpu \
#     --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-base-ubuntu24.04 \
#     --build-arg CUDA=ON .
# BUILD_IMAGE and RUNTIME_IMAGE must be the same distribution release: the runtime stage installs
# the packages that own the libraries the binaries were linked against, by name.
#
# BINARIES=prebuilt skips the compile and takes bin/tensorprep-server, bin/tensorprep and
# runtime-packages.txt from the build context's .container-prebuilt/ folder instead (what
# scripts/container-test.sh does in CI, where compiling inside the image costs too long); the
# binaries must have been built on the RUNTIME_IMAGE's release.
#
# Ports: 50051 gRPC (tensorprep.v1.Preprocessor, grpc.health.v1.Health, reflection),
#        9464 Prometheus metrics (HTTP, /metrics).
# Settings: the server's TENSORPREP_* variables (see `tensorprep-server --help`), or flags after the
# image name, e.g. `docker run tensorprep:cpu --threads 4 --device cpu`.

ARG BUILD_IMAGE=debian:12
ARG RUNTIME_IMAGE=debian:12-slim
ARG BINARIES=build

# ---- build ------------------------------------------------------------------------------------
FROM ${BUILD_IMAGE} AS build
ARG CUDA=OFF
ARG JOBS=
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      libopencv-dev prometheus-cpp-dev libjpeg-dev libpng-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the server and CLI are built from; tests, benchmarks and the Python client stay out.
COPY CMakeLists.txt ./
COPY proto proto
COPY kernels kernels
COPY handlers handlers
COPY server server
COPY client/cpp client/cpp
COPY scripts/runtime-packages.sh scripts/
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DTENSORPREP_CUDA=${CUDA} \
      -DTENSORPREP_BUILD_TESTS=OFF -DTENSORPREP_BUILD_BENCHMARKS=OFF \
 && cmake --build build --target tensorprep-server tensorprep ${JOBS:+-j ${JOBS}} \
 && mkdir -p /out/bin \
 && install -s build/server/tensorprep-server build/client/cpp/tensorprep /out/bin/ \
 && scripts/runtime-packages.sh /out/bin/* > /out/runtime-packages.txt \
 && cat /out/runtime-packages.txt

# ---- prebuilt (BINARIES=prebuilt) -------------------------------------------------------------
FROM scratch AS prebuilt
COPY .container-prebuilt/ /out/

FROM ${BINARIES} AS binaries

# ---- runtime ----------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
COPY --from=binaries /out/runtime-packages.txt /usr/share/tensorprep/runtime-packages.txt
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive xargs -a /usr/share/tensorprep/runtime-packages.txt \
      apt-get install -y --no-install-recommends \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin tensorprep
COPY --from=binaries /out/bin/ /usr/local/bin/
USER 10001:10001
ENV TENSORPREP_HOST=0.0.0.0 \
    TENSORPREP_PORT=50051 \
    TENSORPREP_METRICS_PORT=9464 \
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1
EXPOSE 50051/tcp 9464/tcp
# The CLI's grpc.health.v1 check, on the port the server was told to use.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/bin/sh", "-c", "exec tensorprep --address 127.0.0.1:${TENSORPREP_PORT} --timeout-ms 2000 health"]
# SIGTERM drains: NOT_SERVING for TENSORPREP_DRAIN_DELAY_SECONDS (default 0; set it where clients
# balance over several replicas), then TENSORPREP_GRACE_SECONDS (default 30 s) for calls in
# flight. Give `docker stop` at least the two together.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tensorprep-server"]
