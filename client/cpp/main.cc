// tensorprep: command-line client. `tensorprep --help` lists the commands.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/cpp/bench.h"
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
          [--seed N] [--device auto|cpu|cuda] [--shm[=auto|on|off]]
                              run a pipeline on one batch. P is the Pipeline in protobuf's JSON
                              mapping, inline or a file name, e.g.
                              '{"ops":[{"rotate":{"angleDeg":30,"border":"BORDER_EDGE"}}]}'
                              (a bare JSON list of ops is accepted too)
  process --images A.jpg B.png ... --out Y.npy --pipeline P [--channels 1|3]
          [--masks M1.png M2.png ... --masks-out M.npy] [--seed N]
                              the same for image files, each of its own size: JPEG and PNG
                              files are sent as they are and decoded by the server (.npy files
                              go as raw (H, W[, C]) samples); P must bring them to one size
                              (resize to both sides, crop, centerCrop or randomResizedCrop), and
                              Y.npy is the dense batch. --channels: 3 (RGB, default) or 1
                              (grey). --masks: one per image, of its size (a palette PNG gives
                              its indices), following the geometric ops; written to --masks-out
                              (default Y.npy.masks.npy). Always inline, on the server's CPU
  bench [--workload W1|W2|W3|small] [--batch N] [--mode unary|stream] [--requests N]
        [--warmup N] [--inflight N] [--device D] [--json] [--distinct N]
        [--progress-seconds S|off] [--max-memory-mb N] [--shm[=auto|on|off]]
                              random data through a seed workload: images/s, p50/p99 latency,
                              and the split of the round trip into server stages and network.
                              Defaults: W2, batch 1, unary, 50 requests after 5 warm-up ones,
                              4 in flight on a stream. Only --distinct batches of random data
                              are held (default --inflight + 4, so 8; at most warm-up +
                              requests); request i is sent in batch i mod N with its own id and
                              sample offset, so memory does not grow with --requests. Progress
                              goes to stderr every S seconds (default 5; 0 = after every
                              request). The run fails before generating any data when it would
                              need more memory than is available (MemAvailable, or a cgroup
                              limit) or than --max-memory-mb. With --shm the batches are
                              placed in shared memory once and requests only name them

Global flags: --address (default 127.0.0.1:50051; unix:PATH for a Unix socket; several joined
by commas are balanced round-robin), --timeout-ms (per call; default none), --max-message-mb
(default 256).
Same host: --shm (or --shm=on) sends tensors through shared memory and fails, saying why, when
the server does not allow it or cannot see this client's memory; --shm=auto falls back to inline
bytes instead; --shm=off (the default) sends bytes inline. process and bench print the transport
they used. --shm-pool-mb N (first region, default 64), --shm-max-mb N (all regions, default
1024).
Security: --tls (TLS with the system's roots), --tls-ca FILE (TLS, trusting this CA),
--tls-cert FILE --tls-key FILE (client certificate for mutual TLS), --tls-server-name NAME
(check the server's certificate for NAME), --auth-token-file FILE (send the file's first line
as "authorization: Bearer <token>"; TENSORPREP_AUTH_TOKEN gives it directly).
)usage";

struct Args {
  std::map<std::string, std::string> flags;
  // Flags that take every word up to the next flag (--images a.jpg b.png).
  std::map<std::string, std::vector<std::string>> lists;
  std::vector<std::string> positional;
};

bool IsListFlag(const std::string& name) { return name == "images" || name == "masks"; }

Args ParseArgs(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s.rfind("--", 0) == 0) {
      std::string name = s.substr(2), value = "true";
      const size_t eq = name.find('=');
      if (IsListFlag(name.substr(0, eq))) {
        std::vector<std::string>& list = a.lists[name.substr(0, eq)];
        if (eq != std::string::npos) list.push_back(name.substr(eq + 1));
        while (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
          list.push_back(argv[++i]);
        }
        continue;
      }
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (name == "shm") {
        // A bare --shm means on; "--shm auto" (a mode as the next word) works too.
        if (i + 1 < argc && ParseShmMode(argv[i + 1]).ok()) value = argv[++i];
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
  return absl::InvalidArgumentError(
      absl::StrCat("--device: expected auto, cpu or cuda, got '", s, "'"));
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

// One line on stderr: the way the tensors travelled, with the bytes each way, or why inline.
void PrintTransport(const CallResult& r) {
  const v1::Transfer& x = r.transfer;
  if (r.transport == Transport::kShm) {
    std::fprintf(stderr,
                 "transport=shm (shared memory: %llu bytes in, %llu out; inline %llu in, %llu "
                 "out; %llu bytes copied into shared memory by this client)\n",
                 static_cast<unsigned long long>(x.shm_bytes_in()),
                 static_cast<unsigned long long>(x.shm_bytes_out()),
                 static_cast<unsigned long long>(x.inline_bytes_in()),
                 static_cast<unsigned long long>(x.inline_bytes_out()),
                 static_cast<unsigned long long>(r.client_copy_bytes));
  } else {
    std::fprintf(stderr, "transport=inline (%s)\n", r.transport_reason.c_str());
  }
}

void PrintTimings(v1::Device device, double rtt, const v1::ServerTimings& t) {
  std::fprintf(stderr,
               "device=%s round_trip=%.3f ms server=%.3f ms (decode %.3f, image decode %.3f, "
               "queue %.3f, kernel %.3f, encode %.3f)\n",
               v1::Device_Name(device).substr(7).c_str(), rtt * 1e3, t.total_ns() * 1e-6,
               t.decode_ns() * 1e-6, t.image_decode_ns() * 1e-6, t.queue_ns() * 1e-6,
               t.kernel_ns() * 1e-6, t.encode_ns() * 1e-6);
}

// Fills `list` with one sample per file: a .npy file as a raw tensor, anything else as an
// encoded file whose format the server reads from its first bytes. NOT_FOUND for a file that
// cannot be read, INVALID_ARGUMENT for an empty one or a .npy file that does not parse; both
// name the flag and the file.
absl::Status ReadSamples(const std::vector<std::string>& paths, const std::string& flag,
                         v1::ImageList* list) {
  for (size_t i = 0; i < paths.size(); ++i) {
    const std::string& path = paths[i];
    const std::string what = absl::StrCat("--", flag, " ", path, " (sample ", i, ")");
    v1::ImageSample* sample = list->add_samples();
    if (absl::EndsWith(path, ".npy")) {
      auto t = ReadNpy(path);
      if (!t.ok()) {
        return absl::Status(t.status().code(), absl::StrCat(what, ": ", t.status().message()));
      }
      *sample->mutable_tensor() = std::move(*t);
      continue;
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat(what, ": cannot open the file"));
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) return absl::NotFoundError(absl::StrCat(what, ": cannot read the file"));
    if (bytes.empty()) return absl::InvalidArgumentError(absl::StrCat(what, ": the file is empty"));
    sample->set_encoded(std::move(bytes));
  }
  return absl::OkStatus();
}

// `process --images ...`: a ragged batch of files in, one dense batch out (always inline).
int CmdProcessFiles(const Client& client, const Args& a) {
  const std::string out = Flag(a, "out"), pipe = Flag(a, "pipeline");
  const std::vector<std::string>& images = a.lists.at("images");
  auto masks_it = a.lists.find("masks");
  const bool with_masks = masks_it != a.lists.end();
  if (images.empty() || out.empty() || pipe.empty()) {
    std::cerr << "tensorprep process: --images (one or more files), --out and --pipeline are "
                 "required\n";
    return 2;
  }
  if (!Flag(a, "in").empty() || !Flag(a, "labels").empty()) {
    std::cerr << "tensorprep process: --images takes --masks, not --in or --labels\n";
    return 2;
  }
  if (with_masks && masks_it->second.size() != images.size()) {
    std::cerr << "tensorprep process: --masks: expected one per image (" << images.size()
              << "), got " << masks_it->second.size() << "\n";
    return 2;
  }
  const int64_t channels = IntFlag(a, "channels", 0);
  if (channels < 0) {
    std::cerr << "tensorprep process: --channels: expected 1 or 3, got " << channels << "\n";
    return 2;
  }
  auto pipeline = ParsePipeline(pipe);
  if (!pipeline.ok()) return Fail(pipeline.status());
  v1::ProcessRequest request;
  request.set_request_id("cli");
  *request.mutable_pipeline() = std::move(*pipeline);
  request.mutable_image_list()->set_channels(static_cast<uint32_t>(channels));
  if (absl::Status s = ReadSamples(images, "images", request.mutable_image_list()); !s.ok()) {
    return Fail(s);
  }
  if (with_masks) {
    v1::AuxTensor* aux = request.add_aux();
    aux->set_name("masks");
    if (absl::Status s = ReadSamples(masks_it->second, "masks", aux->mutable_list()); !s.ok()) {
      return Fail(s);
    }
  }
  request.set_seed(static_cast<uint64_t>(IntFlag(a, "seed", 0)));
  auto device = ParseDevice(Flag(a, "device"));
  if (!device.ok()) return Fail(device.status());
  request.set_device(*device);
  const auto start = std::chrono::steady_clock::now();
  auto r = client.Process(request);
  const double rtt =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) return Fail(r.status());
  if (absl::Status s = WriteNpy(out, r->images()); !s.ok()) return Fail(s);
  if (with_masks) {
    if (r->aux_size() != 1) {
      return Fail(absl::InternalError(
          absl::StrCat("the response has ", r->aux_size(), " aux tensors, expected the masks")));
    }
    if (absl::Status s = WriteNpy(Flag(a, "masks-out", out + ".masks.npy"), r->aux(0).tensor());
        !s.ok()) {
      return Fail(s);
    }
  }
  PrintTimings(r->device(), rtt, r->timings());
  std::fprintf(stderr, "transport=inline (files are sent inline) %llu bytes in, %llu out\n",
               static_cast<unsigned long long>(r->transfer().inline_bytes_in()),
               static_cast<unsigned long long>(r->transfer().inline_bytes_out()));
  return 0;
}

int CmdProcess(const Client& client, const Args& a) {
  if (a.lists.count("images") != 0) return CmdProcessFiles(client, a);
  if (a.lists.count("masks") != 0) {
    std::cerr << "tensorprep process: --masks goes with --images\n";
    return 2;
  }
  const std::string in = Flag(a, "in"), out = Flag(a, "out"), pipe = Flag(a, "pipeline");
  if (in.empty() || out.empty() || pipe.empty()) {
    std::cerr << "tensorprep process: --in, --out and --pipeline are required\n";
    return 2;
  }
  auto images = ReadNpy(in);
  if (!images.ok()) return Fail(images.status());
  auto pipeline = ParsePipeline(pipe);
  if (!pipeline.ok()) return Fail(pipeline.status());
  CallRequest call;
  call.request_id = "cli";
  // The tensors stay in the messages ReadNpy filled; Call copies them into shared memory once,
  // or into the request inline.
  auto view = [](const v1::Tensor& t) {
    return TensorInput{t.dtype(), std::vector<int64_t>(t.shape().begin(), t.shape().end()),
                       t.data().data()};
  };
  call.images = view(*images);
  call.pipeline = std::move(*pipeline);
  const std::string labels = Flag(a, "labels");
  absl::StatusOr<v1::Tensor> l;
  if (!labels.empty()) {
    l = ReadNpy(labels);
    if (!l.ok()) return Fail(l.status());
    call.aux.push_back(AuxInput{"labels", view(*l)});
  }
  call.seed = static_cast<uint64_t>(IntFlag(a, "seed", 0));
  auto device = ParseDevice(Flag(a, "device"));
  if (!device.ok()) return Fail(device.status());
  call.device = *device;
  // The transport is decided (and a shared-memory pool registered) before the clock starts.
  if (absl::Status c = client.Connect(); !c.ok()) return Fail(c);
  const auto start = std::chrono::steady_clock::now();
  auto r = client.Call(call);
  const double rtt =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (!r.ok()) return Fail(r.status());
  // Written from where the result lies (a shared-memory slot, or the response's bytes).
  auto write = [](const std::string& path, const TensorResult& t) {
    return WriteNpy(path, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
  };
  absl::Status s = write(out, r->images);
  if (!s.ok()) return Fail(s);
  if (!labels.empty()) {
    const std::string labels_out = Flag(a, "labels-out", out + ".labels.npy");
    s = write(labels_out, r->aux.at(0).tensor);
    if (!s.ok()) return Fail(s);
  }
  PrintTimings(r->device, rtt, r->timings);
  PrintTransport(*r);
  return 0;
}

// ---- bench ------------------------------------------------------------------------------------

int CmdBench(const Client& client, const Args& a, int max_message_mb, ShmMode shm) {
  BenchOptions o;
  o.workload = Flag(a, "workload", o.workload);
  o.batch = IntFlag(a, "batch", o.batch);
  const std::string mode = Flag(a, "mode", "unary");
  o.stream = mode == "stream";
  o.requests = IntFlag(a, "requests", o.requests);
  o.warmup = IntFlag(a, "warmup", o.warmup);
  o.inflight =
      static_cast<int>(std::clamp<int64_t>(IntFlag(a, "inflight", o.inflight), -1, 1 << 20));
  o.distinct = IntFlag(a, "distinct", o.distinct);
  o.max_memory_mb = IntFlag(a, "max-memory-mb", o.max_memory_mb);
  o.max_message_mb = max_message_mb;
  o.shm = shm;
  o.json = Flag(a, "json") == "true";
  const std::string progress = Flag(a, "progress-seconds");
  if (progress == "off") {
    o.progress_seconds = -1;
  } else if (!progress.empty() &&
             (!absl::SimpleAtod(progress, &o.progress_seconds) || !(o.progress_seconds >= 0))) {
    std::cerr << "tensorprep bench: --progress-seconds: expected seconds >= 0 or 'off', got '"
              << progress << "'\n";
    return 2;
  }
  absl::Status valid = ValidateBenchOptions(o);
  if (!valid.ok() || (mode != "unary" && mode != "stream")) {
    std::cerr << "tensorprep bench: "
              << (valid.ok() ? std::string("--mode: expected unary or stream")
                             : std::string(valid.message()))
              << "\n";
    return 2;
  }
  auto device = ParseDevice(Flag(a, "device"));
  if (!device.ok()) return Fail(device.status());
  o.device = *device;
  absl::Status s = RunBench(client, o, stdout, stderr);
  if (!s.ok()) return Fail(s);
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
  const std::string shm = Flag(a, "shm", "off");
  auto shm_mode = ParseShmMode(shm);
  if (!shm_mode.ok()) {
    std::cerr << "tensorprep: --" << shm_mode.status().message() << "\n";
    return 2;
  }
  options.shm = *shm_mode;
  options.shm_pool_mb = static_cast<uint64_t>(std::max<int64_t>(1, IntFlag(a, "shm-pool-mb", 64)));
  options.shm_max_mb = static_cast<uint64_t>(
      std::max<int64_t>(static_cast<int64_t>(options.shm_pool_mb), IntFlag(a, "shm-max-mb", 1024)));
  Client client(options);
  const std::string& cmd = a.positional[0];
  if (cmd == "ops") return CmdOps(client);
  if (cmd == "health") return CmdHealth(client, a);
  if (cmd == "process") return CmdProcess(client, a);
  if (cmd == "bench") return CmdBench(client, a, options.max_message_mb, options.shm);
  std::cerr << "tensorprep: unknown command '" << cmd << "'\n" << kUsage;
  return 2;
}
