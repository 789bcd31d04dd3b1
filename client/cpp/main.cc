// tensorprep: command-line client. `tensorprep --help` lists the commands.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cpp/client.h"
#include "client/cpp/npy.h"

namespace tensorprep::client {
namespace {

constexpr char kUsage[] = R"usage(tensorprep: client for the tensorprep preprocessing service

Usage: tensorprep [--address HOST:PORT] [--timeout-ms N] COMMAND [flags]

Commands:
  ops                         list ops, their arguments and the server's devices
  health [--service NAME]     grpc.health.v1 check ("" = whole server)
  process --in X.npy --out Y.npy --pipeline P [--labels L.npy --labels-out L2.npy]
          [--seed N] [--device auto|cpu|cuda]
                              run a pipeline on one batch. P is the Pipeline in protobuf's JSON
                              mapping, inline or a file name, e.g.
                              '{"ops":[{"rotate":{"angleDeg":30,"border":"BORDER_EDGE"}}]}'
                              (a bare JSON list of ops is accepted too)
  bench [--workload W1|W2|W3|small] [--batch N] [--mode unary|stream] [--requests N]
        [--warmup N] [--inflight N] [--device D] [--json]
                              random data through a seed workload: images/s, p50/p99 latency,
                              and the split of the round trip into server stages and network

Global flags: --address (default 127.0.0.1:50051; several joined by commas are balanced
round-robin), --timeout-ms (per call; default none), --max-message-mb (default 256).
Security: --tls (TLS with the system's roots), --tls-ca FILE (TLS, trusting this CA),
--tls-cert FILE --tls-key FILE (client certificate for mutual TLS), --tls-server-name NAME
(check the server's certificate for NAME), --auth-token-file FILE (send the file's first line
as "authorization: Bearer <token>"; TENSORPREP_AUTH_TOKEN gives it directly).
)usage";

struct Args {
  std::map<std::string, std::string> flags;
  std::vector<std::string> positional;
};

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      std::string name = s.substr(2), value = "true";
      const size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (name != "json" && name != "help" && name != "tls" && i + 1 < argc) {
        value = argv[++i];
      }
      a.flags[name] = value;
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

std::string Flag(const Args& a, const std::string& name, const std::string& fallback = "") {
  auto it = a.flags.find(name);
  return it == a.flags.end() ? fallback : it->second;
}

int64_t IntFlag(const Args& a, const std::string& name, int64_t fallback) {
  int64_t v;
  const std::string s = Flag(a, name);
  if (s.empty()) return fallback;
  if (!absl::SimpleAtoi(s, &v)) {
    std::cerr << "tensorprep: --" << name << ": expected an integer, got '" << s << "'\n";
    std::exit(2);
  }
  return v;
}

int Fail(const absl::Status& s) {
  std::cerr << "tensorprep: " << absl::StatusCodeToString(s.code()) << ": " << s.message() << "\n";
  return 1;
}

absl::StatusOr<v1::Pipeline> ParsePipeline(const std::string& arg) {
  std::string text = arg;
  const size_t first = arg.find_first_not_of(" \t\r\n");
  if (first == std::string::npos || (arg[first] != '{' && arg[first] != '[')) {
    std::ifstream in(arg);
    if (!in) return absl::NotFoundError(absl::StrCat("--pipeline: cannot open '", arg, "'"));
    std::stringstream buf;
    buf << in.rdbuf();
    text = buf.str();
  }
  const size_t start = text.find_first_not_of(" \t\r\n");
  if (start != std::string::npos && text[start] == '[') text = absl::StrCat("{\"ops\":", text, "}");
  v1::Pipeline pipeline;
  auto status = google::protobuf::util::JsonStringToMessage(text, &pipeline);
  if (!status.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--pipeline: not a valid Pipeline in JSON: ", status.ToString()));
  }
  return pipeline;
}

absl::StatusOr<v1::Device> ParseDevice(const std::string& s) {
  if (s.empty() || s == "auto") return v1::DEVICE_AUTO;
  if (s == "cpu") return v1::DEVICE_CPU;
  if (s == "cuda") return v1::DEVICE_CUDA;
  return absl::InvalidArgumentError(absl::StrCat("--device: expected auto, cpu or cuda, got '", s, "'"));
}

int CmdOps(const Client& client) {
  auto r = client.ListOps();
  if (!r.ok()) return Fail(r.status());
  std::printf("server %s\n\ndevices:\n", r->server_version().c_str());
  for (const auto& d : r->devices()) {
    std::printf("  %-5s %-8s %s%s%s\n", v1::Device_Name(d.device()).substr(7).c_str(),
                d.usable() ? "usable" : "unusable", d.name().c_str(),
                d.detail().empty() ? "" : " - ", d.detail().c_str());
  }
  std::printf("\nops:\n");
  for (const auto& op : r->ops()) {
    std::printf("  %-14s %s%s\n", op.name().c_str(), op.summary().c_str(),
                op.geometric() ? " [geometric: aux tensors follow]" : "");
    for (const auto& a : op.args()) {
      std::printf("      %-14s %-16s %s\n", a.name().c_str(), a.type().c_str(),
                  a.description().c_str());
    }
  }
  return 0;
}

int CmdHealth(const Client& client, const Args& a) {
  auto r = client.Health(Flag(a, "service"));
  if (!r.ok()) return Fail(r.status());
  std::printf("%s\n", r->c_str());
  return *r == "SERVING" ? 0 : 1;
}

int CmdProcess(const Client& client, const Args& a) {
  const std::string in = Flag(a, "in"), out = Flag(a, "out"), pipe = Flag(a, "pipeline");
  if (in.empty() || out.empty() || pipe.empty()) {
    std::cerr << "tensorprep process: --in, --out and --pipeline are required\n";
    return 2;
  }
  v1::ProcessRequest request;
  auto images = ReadNpy(in);
  if (!images.ok()) return Fail(images.status());
  *request.mutable_images() = std::move(*images);
  auto pipeline = ParsePipeline(pipe);
  if (!pipeline.ok()) return Fail(pipeline.status());
  *request.mutable_pipeline() = std::move(*pipeline);
  const std::string labels = Flag(a, "labels");
  if (!labels.empty()) {
    auto l = ReadNpy(labels);
    if (!l.ok()) return Fail(l.status());
    v1::AuxTensor* aux = request.add_aux();
    aux->set_name("labels");
    *aux->mutable_tensor() = std::move(*l);
  }
  request.set_seed(static_cast<uint64_t>(IntFlag(a, "seed", 0)));
  auto device = ParseDevice(Flag(a, "device"));
  if (!device.ok()) return Fail(device.status());
  request.set_device(*device);
  request.set_request_id("cli");
  const auto start = std::chrono::steady_clock::now();
  auto r = client.Process(request);
  const double rtt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) return Fail(r.status());
  absl::Status s = WriteNpy(out, r->images());
  if (!s.ok()) return Fail(s);
  if (!labels.empty()) {
    const std::string labels_out = Flag(a, "labels-out", out + ".labels.npy");
    s = WriteNpy(labels_out, r->aux(0).tensor());
    if (!s.ok()) return Fail(s);
  }
  const auto& t = r->timings();
  std::fprintf(stderr,
               "device=%s round_trip=%.3f ms server=%.3f ms (decode %.3f, queue %.3f, kernel "
               "%.3f, encode %.3f)\n",
               v1::Device_Name(r->device()).substr(7).c_str(), rtt * 1e3, t.total_ns() * 1e-6,
               t.decode_ns() * 1e-6, t.queue_ns() * 1e-6, t.kernel_ns() * 1e-6,
               t.encode_ns() * 1e-6);
  return 0;
}

// ---- bench ------------------------------------------------------------------------------------

struct Workload {
  v1::ProcessRequest request;  // images and aux filled with random data
};

void FillRandom(v1::Tensor* t, v1::DType dtype, std::vector<int64_t> shape, std::mt19937& rng,
                int label_classes = 0) {
  t->set_dtype(dtype);
  int64_t n = 1;
  for (int64_t d : shape) {
    t->add_shape(d);
    n *= d;
  }
  std::string* data = t->mutable_data();
  if (dtype == v1::DTYPE_FLOAT32) {
    std::vector<float> v(n);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    for (auto& x : v) x = u(rng);
    data->assign(reinterpret_cast<const char*>(v.data()), n * 4);
  } else if (dtype == v1::DTYPE_INT32) {
    std::vector<int32_t> v(n);
    std::uniform_int_distribution<int32_t> u(0, label_classes > 0 ? label_classes - 1 : 1000000);
    for (auto& x : v) x = u(rng);
    data->assign(reinterpret_cast<const char*>(v.data()), n * 4);
  } else {
    std::vector<uint8_t> v(n);
    std::uniform_int_distribution<int> u(0, 255);
    for (auto& x : v) x = static_cast<uint8_t>(u(rng));
    data->assign(reinterpret_cast<const char*>(v.data()), n);
  }
}

absl::StatusOr<v1::ProcessRequest> MakeWorkload(const std::string& name, int64_t batch) {
  std::mt19937 rng(42);
  v1::ProcessRequest r;
  if (name == "W1") {
    FillRandom(r.mutable_images(), v1::DTYPE_INT32, {batch, 1, 100000}, rng);
    r.mutable_pipeline()->add_ops()->mutable_add()->add_value(1);
  } else if (name == "W2") {
    FillRandom(r.mutable_images(), v1::DTYPE_FLOAT32, {batch, 256, 256, 3}, rng);
    auto* rot = r.mutable_pipeline()->add_ops()->mutable_rotate();
    rot->set_angle_deg(30);
    rot->set_interpolation(v1::INTERPOLATION_BILINEAR);
    rot->set_border(v1::BORDER_EDGE);
  } else if (name == "W3") {
    FillRandom(r.mutable_images(), v1::DTYPE_FLOAT32, {batch, 256, 256, 3}, rng);
    auto* aux = r.add_aux();
    aux->set_name("label");
    FillRandom(aux->mutable_tensor(), v1::DTYPE_INT32, {batch, 256, 256}, rng, 21);
    auto* f = r.mutable_pipeline()->add_ops()->mutable_random_flip();
    f->set_axis(v1::FLIP_AXIS_HORIZONTAL);
    f->set_p(0.5);
  } else if (name == "small") {
    FillRandom(r.mutable_images(), v1::DTYPE_UINT8, {batch, 64, 64, 3}, rng);
    r.mutable_pipeline()->add_ops()->mutable_flip()->set_axis(v1::FLIP_AXIS_HORIZONTAL);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--workload: expected W1, W2, W3 or small, got '", name, "'"));
  }
  return r;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5));
  return v[i];
}

int CmdBench(const Client& client, const Args& a) {
  const std::string workload = Flag(a, "workload", "W2");
  const int64_t batch = IntFlag(a, "batch", 1);
  const std::string mode = Flag(a, "mode", "unary");
  const int64_t requests = IntFlag(a, "requests", 50);
  const int64_t warmup = IntFlag(a, "warmup", 5);
  const int inflight = static_cast<int>(IntFlag(a, "inflight", 4));
  if (batch < 1 || requests < 1 || warmup < 0 || (mode != "unary" && mode != "stream")) {
    std::cerr << "tensorprep bench: need --batch >= 1, --requests >= 1, --mode unary|stream\n";
    return 2;
  }
  auto base = MakeWorkload(workload, batch);
  if (!base.ok()) return Fail(base.status());
  auto device = ParseDevice(Flag(a, "device"));
  if (!device.ok()) return Fail(device.status());
  base->set_device(*device);
  base->set_seed(7);

  const int64_t total = warmup + requests;
  std::vector<v1::ProcessRequest> reqs(total, *base);
  for (int64_t i = 0; i < total; ++i) {
    reqs[i].set_request_id(std::to_string(i));
    reqs[i].set_sample_offset(static_cast<uint64_t>(i * batch));
  }
  std::vector<double> rtt(total, 0), server(total, 0), kernel(total, 0), queue(total, 0);
  std::vector<std::chrono::steady_clock::time_point> sent(total);
  std::string device_used;
  double wall = 0;
  if (mode == "unary") {
    for (int64_t i = 0; i < total; ++i) {
      const auto start = std::chrono::steady_clock::now();
      if (i == warmup) sent[0] = start;
      auto r = client.Process(reqs[i]);
      if (!r.ok()) return Fail(r.status());
      rtt[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      server[i] = r->timings().total_ns() * 1e-9;
      kernel[i] = r->timings().kernel_ns() * 1e-9;
      queue[i] = r->timings().queue_ns() * 1e-9;
      device_used = v1::Device_Name(r->device()).substr(7);
    }
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent[0]).count();
  } else {
    // Warm-up on its own stream, then the measured stream.
    std::vector<const v1::ProcessRequest*> warm, measured;
    for (int64_t i = 0; i < total; ++i) (i < warmup ? warm : measured).push_back(&reqs[i]);
    absl::Status err = absl::OkStatus();
    auto collect = [&](v1::ProcessResponse& r) {
      const int64_t i = std::stoll(r.request_id());
      if (r.has_error()) {
        err = absl::Status(static_cast<absl::StatusCode>(r.error().code()), r.error().message());
        return;
      }
      rtt[i] = std::chrono::duration<double>(std::chrono::steady_clock::now() - sent[i]).count();
      server[i] = r.timings().total_ns() * 1e-9;
      kernel[i] = r.timings().kernel_ns() * 1e-9;
      queue[i] = r.timings().queue_ns() * 1e-9;
      device_used = v1::Device_Name(r.device()).substr(7);
    };
    std::mutex sent_mu;
    if (!warm.empty()) {
      absl::Status s = client.Stream(warm, inflight, collect, [&](size_t k) {
        std::lock_guard<std::mutex> lock(sent_mu);
        sent[k] = std::chrono::steady_clock::now();
      });
      if (!s.ok()) return Fail(s);
    }
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = client.Stream(measured, inflight, collect, [&](size_t k) {
      std::lock_guard<std::mutex> lock(sent_mu);
      sent[warmup + k] = std::chrono::steady_clock::now();
    });
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!s.ok()) return Fail(s);
    if (!err.ok()) return Fail(err);
  }
  auto tail = [&](const std::vector<double>& v) {
    return std::vector<double>(v.begin() + warmup, v.end());
  };
  std::vector<double> network(total);
  for (int64_t i = 0; i < total; ++i) network[i] = rtt[i] - server[i];
  const double images_per_s = static_cast<double>(requests * batch) / wall;
  const double p50 = Percentile(tail(rtt), 0.5), p99 = Percentile(tail(rtt), 0.99);
  const double mb_per_s = static_cast<double>(requests) * base->ByteSizeLong() / wall / 1e6;
  if (Flag(a, "json") == "true") {
    std::printf(
        "{\"workload\":\"%s\",\"batch\":%lld,\"mode\":\"%s\",\"requests\":%lld,\"device\":\"%s\","
        "\"images_per_s\":%.3f,\"request_mb_per_s\":%.3f,\"p50_ms\":%.4f,\"p99_ms\":%.4f,"
        "\"server_p50_ms\":%.4f,\"kernel_p50_ms\":%.4f,\"queue_p50_ms\":%.4f,"
        "\"network_p50_ms\":%.4f}\n",
        workload.c_str(), static_cast<long long>(batch), mode.c_str(),
        static_cast<long long>(requests), device_used.c_str(), images_per_s, mb_per_s, p50 * 1e3,
        p99 * 1e3, Percentile(tail(server), 0.5) * 1e3, Percentile(tail(kernel), 0.5) * 1e3,
        Percentile(tail(queue), 0.5) * 1e3, Percentile(tail(network), 0.5) * 1e3);
  } else {
    std::printf("%s batch=%lld mode=%s requests=%lld device=%s\n", workload.c_str(),
                static_cast<long long>(batch), mode.c_str(), static_cast<long long>(requests),
                device_used.c_str());
    std::printf("  throughput   %.1f images/s  (%.1f MB/s of requests)\n", images_per_s, mb_per_s);
    std::printf("  round trip   p50 %.3f ms  p99 %.3f ms\n", p50 * 1e3, p99 * 1e3);
    std::printf("  server       p50 %.3f ms  (kernel %.3f ms, queue %.3f ms)\n",
                Percentile(tail(server), 0.5) * 1e3, Percentile(tail(kernel), 0.5) * 1e3,
                Percentile(tail(queue), 0.5) * 1e3);
    std::printf("  network+client p50 %.3f ms  (round trip minus server time)\n",
                Percentile(tail(network), 0.5) * 1e3);
  }
  return 0;
}

absl::Status ApplySecurityFlags(const Args& a, ClientOptions* options) {
  options->tls = Flag(a, "tls") == "true";
  for (auto [flag, out] : {std::pair{"tls-ca", &options->tls_root_certs},
                           std::pair{"tls-cert", &options->tls_cert_chain},
                           std::pair{"tls-key", &options->tls_private_key}}) {
    const std::string path = Flag(a, flag);
    if (path.empty()) continue;
    auto pem = LoadPemFile(path, absl::StrCat("--", flag));
    if (!pem.ok()) return pem.status();
    *out = std::move(*pem);
    options->tls = true;
  }
  if (options->tls_cert_chain.empty() != options->tls_private_key.empty()) {
    return absl::InvalidArgumentError("--tls-cert and --tls-key: expected both or neither");
  }
  options->tls_server_name = Flag(a, "tls-server-name");
  if (!options->tls_server_name.empty()) options->tls = true;
  const char* env_token = std::getenv("TENSORPREP_AUTH_TOKEN");
  if (env_token != nullptr) options->auth_token = env_token;
  const std::string token_file = Flag(a, "auth-token-file");
  if (!token_file.empty()) {
    auto text = LoadPemFile(token_file, "--auth-token-file");
    if (!text.ok()) return text.status();
    options->auth_token = text->substr(0, text->find_first_of("\r\n"));
    if (options->auth_token.empty()) {
      return absl::InvalidArgumentError("--auth-token-file: the first line is empty");
    }
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace tensorprep::client

int main(int argc, char** argv) {
  using namespace tensorprep::client;
  Args a = ParseArgs(argc, argv);
  if (a.positional.empty() || Flag(a, "help") == "true") {
    std::cout << kUsage;
    return a.positional.empty() && Flag(a, "help") != "true" ? 2 : 0;
  }
  ClientOptions options;
  options.target = Flag(a, "address", "127.0.0.1:50051");
  options.timeout = std::chrono::milliseconds(IntFlag(a, "timeout-ms", 0));
  options.max_message_mb = static_cast<int>(IntFlag(a, "max-message-mb", 256));
  absl::Status security = ApplySecurityFlags(a, &options);
  if (!security.ok()) return Fail(security);
  Client client(options);
  const std::string& cmd = a.positional[0];
  if (cmd == "ops") return CmdOps(client);
  if (cmd == "health") return CmdHealth(client, a);
  if (cmd == "process") return CmdProcess(client, a);
  if (cmd == "bench") return CmdBench(client, a);
  std::cerr << "tensorprep: unknown command '" << cmd << "'\n" << kUsage;
  return 2;
}
