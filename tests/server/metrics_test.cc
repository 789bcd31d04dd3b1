// The metrics are checked through what a scrape sees: the registry is serialized in Prometheus
// text format and parsed back, so names, labels and values are asserted as Prometheus reads them.
#include "server/metrics.h"

#include <cmath>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace tensorprep::server {
namespace {

const std::vector<std::string> kKernels = {"warp", "flip", "elementwise"};

// One scraped sample: "name{labels} value". Labels are kept in their text form, sorted by
// prometheus-cpp, e.g. `code="OK",rpc="Process"`.
struct Scrape {
  std::map<std::string, double> values;  // key: name + "{" + labels + "}"
  std::map<std::string, std::string> types;
  std::map<std::string, std::string> helps;
  int samples = 0;
};

// Bucket bounds as the test spells them; the scraped `le` values are parsed as numbers and
// rewritten the same way, so the test does not depend on how the library prints a double.
std::string Le(double bound) {
  std::ostringstream out;
  out.precision(17);
  out << bound;
  return out.str();
}

std::string CanonicalLe(const std::string& labels) {
  static const std::regex le(R"re(le="([^"+]+)")re");
  std::smatch m;
  if (!std::regex_search(labels, m, le)) return labels;
  return m.prefix().str() + "le=\"" + Le(std::stod(m[1].str())) + "\"" + m.suffix().str();
}

Scrape Collect(const prometheus::Registry& registry) {
  std::ostringstream text;
  prometheus::TextSerializer().Serialize(text, registry.Collect());
  Scrape scrape;
  std::istringstream lines(text.str());
  std::string line;
  const std::regex sample(R"(^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$)");
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    std::smatch m;
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream fields(line.substr(7));
      std::string name, type;
      fields >> name >> type;
      scrape.types[name] = type;
      continue;
    }
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      const size_t space = rest.find(' ');
      scrape.helps[rest.substr(0, space)] =
          space == std::string::npos ? std::string() : rest.substr(space + 1);
      continue;
    }
    if (!std::regex_match(line, m, sample)) {
      ADD_FAILURE() << "unparsable exposition line: " << line;
      continue;
    }
    scrape.values[m[1].str() + "{" + CanonicalLe(m[3].str()) + "}"] = std::stod(m[4].str());
    ++scrape.samples;
  }
  return scrape;
}

// Looks a sample up; fails the test (and returns NaN) when the series is missing.
double Value(const Scrape& scrape, const std::string& key) {
  auto it = scrape.values.find(key);
  if (it == scrape.values.end()) {
    ADD_FAILURE() << "missing series " << key;
    return std::nan("");
  }
  return it->second;
}

class MetricsTest : public ::testing::Test {
 protected:
  prometheus::Registry registry_;
  Metrics metrics_{registry_, kKernels, "1.2.3-test"};
};

TEST(DurationBucketsTest, SpanTensOfMicrosecondsToTensOfSecondsInIncreasingOrder) {
  const auto& buckets = DurationBuckets();
  ASSERT_GE(buckets.size(), 10u);
  EXPECT_DOUBLE_EQ(buckets.front(), 25e-6);
  EXPECT_DOUBLE_EQ(buckets.back(), 30.0);
  for (size_t i = 1; i < buckets.size(); ++i) {
    EXPECT_GT(buckets[i], buckets[i - 1]) << "bucket " << i;
    // No gap wider than x2.5: a latency shift of that factor always moves between buckets.
    EXPECT_LE(buckets[i] / buckets[i - 1], 3.0 + 1e-9) << "bucket " << i;
  }
}

TEST(NamesTest, ClosedLabelSetsUseGrpcSpelling) {
  EXPECT_STREQ(RpcName(Rpc::kProcess), "Process");
  EXPECT_STREQ(RpcName(Rpc::kProcessStream), "ProcessStream");
  EXPECT_STREQ(RpcName(Rpc::kListOps), "ListOps");
  EXPECT_STREQ(StageName(Stage::kDecode), "decode");
  EXPECT_STREQ(StageName(Stage::kQueue), "queue");
  EXPECT_STREQ(StageName(Stage::kKernel), "kernel");
  EXPECT_STREQ(StageName(Stage::kEncode), "encode");
  EXPECT_STREQ(StageName(Stage::kImageDecode), "image_decode");
  EXPECT_STREQ(DeviceName(MetricDevice::kCpu), "cpu");
  EXPECT_STREQ(DeviceName(MetricDevice::kCuda), "cuda");
  // grpc::StatusCode values, spelled as in grpc/include/grpcpp/support/status_code_enum.h.
  const std::map<int, std::string> expected = {
      {0, "OK"},
      {1, "CANCELLED"},
      {2, "UNKNOWN"},
      {3, "INVALID_ARGUMENT"},
      {4, "DEADLINE_EXCEEDED"},
      {5, "NOT_FOUND"},
      {6, "ALREADY_EXISTS"},
      {7, "PERMISSION_DENIED"},
      {8, "RESOURCE_EXHAUSTED"},
      {9, "FAILED_PRECONDITION"},
      {10, "ABORTED"},
      {11, "OUT_OF_RANGE"},
      {12, "UNIMPLEMENTED"},
      {13, "INTERNAL"},
      {14, "UNAVAILABLE"},
      {15, "DATA_LOSS"},
      {16, "UNAUTHENTICATED"},
  };
  for (const auto& [code, name] : expected) EXPECT_EQ(CodeName(code), name) << code;
  EXPECT_STREQ(CodeName(-1), "UNKNOWN");
  EXPECT_STREQ(CodeName(17), "UNKNOWN");
}

TEST_F(MetricsTest, EverySeriesExistsAtZeroBeforeAnyRequest) {
  const Scrape s = Collect(registry_);
  const size_t bucket_lines = DurationBuckets().size() + 1;                   // + le="+Inf"
  const size_t histogram_lines = bucket_lines + 2;                            // + _sum, _count
  const size_t expected = kRpcCount * kCodeCount * histogram_lines            // request duration
                          + kRpcCount * kCodeCount                            // requests_total
                          + kRpcCount                                         // in flight
                          + kRpcCount * 3  // accepted, answered, cancelled
                          + kTransportCount + 2 * 2  // transport requests, bytes (in/out)
                          + 2                        // shm regions, mapped bytes
                          + kStageCount * kDeviceCount * histogram_lines      // stage duration
                          + kKernels.size() * kDeviceCount * histogram_lines  // kernel duration
                          + 2                                                 // bytes
                          + kDeviceCount * 2  // samples, device usable
                          + 3;                // queued, streams open, build info
  EXPECT_EQ(static_cast<size_t>(s.samples), expected);

  for (int r = 0; r < kRpcCount; ++r) {
    const std::string rpc = RpcName(static_cast<Rpc>(r));
    EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"" + rpc + "\"}"), 0);
    for (int c = 0; c < kCodeCount; ++c) {
      const std::string labels = "code=\"" + std::string(CodeName(c)) + "\",rpc=\"" + rpc + "\"";
      EXPECT_EQ(Value(s, "tensorprep_requests_total{" + labels + "}"), 0);
      EXPECT_EQ(Value(s, "tensorprep_request_duration_seconds_count{" + labels + "}"), 0);
      EXPECT_EQ(Value(s, "tensorprep_request_duration_seconds_bucket{" + labels + ",le=\"+Inf\"}"),
                0);
    }
  }
  for (const auto& op : kKernels) {
    EXPECT_EQ(
        Value(s, "tensorprep_kernel_duration_seconds_count{device=\"cuda\",op=\"" + op + "\"}"), 0);
  }
  EXPECT_EQ(Value(s, "tensorprep_build_info{version=\"1.2.3-test\"}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_device_usable{device=\"cpu\"}"), 0);
}

TEST_F(MetricsTest, NamesFollowPrometheusConventions) {
  const Scrape s = Collect(registry_);
  const std::map<std::string, std::string> families = {
      {"tensorprep_request_duration_seconds", "histogram"},
      {"tensorprep_stage_duration_seconds", "histogram"},
      {"tensorprep_kernel_duration_seconds", "histogram"},
      {"tensorprep_requests_total", "counter"},
      {"tensorprep_requests_accepted_total", "counter"},
      {"tensorprep_requests_answered_total", "counter"},
      {"tensorprep_requests_cancelled_total", "counter"},
      {"tensorprep_transport_requests_total", "counter"},
      {"tensorprep_transport_bytes_total", "counter"},
      {"tensorprep_shm_regions", "gauge"},
      {"tensorprep_shm_mapped_bytes", "gauge"},
      {"tensorprep_received_bytes_total", "counter"},
      {"tensorprep_sent_bytes_total", "counter"},
      {"tensorprep_samples_total", "counter"},
      {"tensorprep_requests_in_flight", "gauge"},
      {"tensorprep_queued_requests", "gauge"},
      {"tensorprep_streams_open", "gauge"},
      {"tensorprep_device_usable", "gauge"},
      {"tensorprep_build_info", "gauge"},
  };
  EXPECT_EQ(s.types, families);
  for (const auto& [name, type] : s.types) {
    if (type == "counter") {
      EXPECT_EQ(name.substr(name.size() - 6), "_total") << name;
    }
    if (type == "histogram") {
      EXPECT_EQ(name.substr(name.size() - 8), "_seconds") << name;
    }
    EXPECT_FALSE(s.helps.at(name).empty()) << name << " has no help text";
  }
}

TEST_F(MetricsTest, FinishedRequestsLandInTheBucketOfTheirDurationAndCode) {
  metrics_.RequestStarted(Rpc::kProcess);
  metrics_.RequestStarted(Rpc::kProcess);
  metrics_.RequestStarted(Rpc::kProcess);
  Scrape s = Collect(registry_);
  EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"Process\"}"), 3);

  metrics_.RequestFinished(Rpc::kProcess, 0, 0.0003);   // OK, between 250 us and 500 us
  metrics_.RequestFinished(Rpc::kProcess, 0, 0.004);    // OK, between 2.5 ms and 5 ms
  metrics_.RequestFinished(Rpc::kProcess, 3, 0.00002);  // INVALID_ARGUMENT, below 25 us
  s = Collect(registry_);
  EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"Process\"}"), 0);

  const std::string ok = "code=\"OK\",rpc=\"Process\"";
  EXPECT_EQ(Value(s, "tensorprep_requests_total{" + ok + "}"), 2);
  EXPECT_EQ(Value(s, "tensorprep_request_duration_seconds_count{" + ok + "}"), 2);
  EXPECT_NEAR(Value(s, "tensorprep_request_duration_seconds_sum{" + ok + "}"), 0.0043, 1e-12);
  // Buckets are cumulative: a bound counts every observation at or below it.
  for (double bound : DurationBuckets()) {
    const double expected = (bound >= 0.004) ? 2 : (bound >= 0.0003) ? 1 : 0;
    EXPECT_EQ(
        Value(s, "tensorprep_request_duration_seconds_bucket{" + ok + ",le=\"" + Le(bound) + "\"}"),
        expected)
        << "le=" << bound;
  }

  const std::string invalid = "code=\"INVALID_ARGUMENT\",rpc=\"Process\"";
  EXPECT_EQ(Value(s, "tensorprep_requests_total{" + invalid + "}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_request_duration_seconds_bucket{" + invalid + ",le=\"" +
                         Le(25e-6) + "\"}"),
            1);
  // Nothing leaked into another RPC.
  EXPECT_EQ(Value(s, "tensorprep_requests_total{code=\"OK\",rpc=\"ProcessStream\"}"), 0);
}

TEST_F(MetricsTest, CodesOutsideTheClosedSetCountAsUnknown) {
  metrics_.RequestStarted(Rpc::kListOps);
  metrics_.RequestStarted(Rpc::kListOps);
  metrics_.RequestFinished(Rpc::kListOps, 99, 0.001);
  metrics_.RequestFinished(Rpc::kListOps, -4, 0.001);
  const Scrape s = Collect(registry_);
  EXPECT_EQ(Value(s, "tensorprep_requests_total{code=\"UNKNOWN\",rpc=\"ListOps\"}"), 2);
  EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"ListOps\"}"), 0);
  for (const auto& [key, value] : s.values) {
    EXPECT_EQ(key.find("99"), std::string::npos) << "request data leaked into " << key;
  }
}

TEST_F(MetricsTest, NegativeAndNanDurationsCountAsZero) {
  metrics_.ObserveStage(Stage::kQueue, MetricDevice::kCpu, -0.5);
  metrics_.ObserveStage(Stage::kQueue, MetricDevice::kCpu, std::nan(""));
  const Scrape s = Collect(registry_);
  const std::string labels = "device=\"cpu\",stage=\"queue\"";
  EXPECT_EQ(Value(s, "tensorprep_stage_duration_seconds_count{" + labels + "}"), 2);
  EXPECT_EQ(Value(s, "tensorprep_stage_duration_seconds_sum{" + labels + "}"), 0);
  EXPECT_EQ(
      Value(s, "tensorprep_stage_duration_seconds_bucket{" + labels + ",le=\"" + Le(25e-6) + "\"}"),
      2);
}

TEST_F(MetricsTest, StagesAndKernelsGoToTheirOwnSeries) {
  metrics_.ObserveStage(Stage::kDecode, MetricDevice::kCpu, 0.001);
  metrics_.ObserveStage(Stage::kKernel, MetricDevice::kCuda, 0.02);
  metrics_.ObserveStage(Stage::kKernel, MetricDevice::kCuda, 0.03);
  metrics_.ObserveKernel(1, MetricDevice::kCpu, 0.0001);  // "flip"
  metrics_.ObserveKernel(3, MetricDevice::kCpu, 1.0);     // out of range: ignored
  metrics_.ObserveKernel(-1, MetricDevice::kCuda, 1.0);   // out of range: ignored
  const Scrape s = Collect(registry_);

  for (int st = 0; st < kStageCount; ++st) {
    for (int d = 0; d < kDeviceCount; ++d) {
      const std::string key = std::string("tensorprep_stage_duration_seconds_count{device=\"") +
                              DeviceName(static_cast<MetricDevice>(d)) + "\",stage=\"" +
                              StageName(static_cast<Stage>(st)) + "\"}";
      const double expected = (st == 0 && d == 0) ? 1 : (st == 2 && d == 1) ? 2 : 0;
      EXPECT_EQ(Value(s, key), expected) << key;
    }
  }
  EXPECT_NEAR(Value(s, "tensorprep_stage_duration_seconds_sum{device=\"cuda\",stage=\"kernel\"}"),
              0.05, 1e-12);

  double kernel_total = 0;
  for (const auto& op : kKernels) {
    for (const char* device : {"cpu", "cuda"}) {
      kernel_total += Value(s, "tensorprep_kernel_duration_seconds_count{device=\"" +
                                   std::string(device) + "\",op=\"" + op + "\"}");
    }
  }
  EXPECT_EQ(kernel_total, 1);
  EXPECT_EQ(Value(s, "tensorprep_kernel_duration_seconds_count{device=\"cpu\",op=\"flip\"}"), 1);
  EXPECT_NEAR(Value(s, "tensorprep_kernel_duration_seconds_sum{device=\"cpu\",op=\"flip\"}"),
              0.0001, 1e-15);
}

TEST_F(MetricsTest, CountersAndGaugesAccumulate) {
  metrics_.AddBytes(1000, 250);
  metrics_.AddBytes(24, 0);
  metrics_.AddSamples(MetricDevice::kCpu, 32);
  metrics_.AddSamples(MetricDevice::kCpu, 1);
  metrics_.AddSamples(MetricDevice::kCuda, 128);
  metrics_.AddQueued(2);
  metrics_.AddQueued(-1);
  metrics_.AddOpenStreams(3);
  metrics_.AddOpenStreams(-2);
  metrics_.SetDeviceUsable(MetricDevice::kCpu, true);
  metrics_.SetDeviceUsable(MetricDevice::kCuda, true);
  metrics_.SetDeviceUsable(MetricDevice::kCuda, false);
  const Scrape s = Collect(registry_);
  EXPECT_EQ(Value(s, "tensorprep_received_bytes_total{}"), 1024);
  EXPECT_EQ(Value(s, "tensorprep_sent_bytes_total{}"), 250);
  EXPECT_EQ(Value(s, "tensorprep_samples_total{device=\"cpu\"}"), 33);
  EXPECT_EQ(Value(s, "tensorprep_samples_total{device=\"cuda\"}"), 128);
  EXPECT_EQ(Value(s, "tensorprep_queued_requests{}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_streams_open{}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_device_usable{device=\"cpu\"}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_device_usable{device=\"cuda\"}"), 0);
}

TEST_F(MetricsTest, ConcurrentObservationsAreAllCounted) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([this, t] {
      const Rpc rpc = (t % 2 == 0) ? Rpc::kProcess : Rpc::kProcessStream;
      for (int i = 0; i < kPerThread; ++i) {
        metrics_.RequestStarted(rpc);
        metrics_.AddQueued(1);
        metrics_.AddQueued(-1);
        metrics_.ObserveStage(Stage::kEncode, MetricDevice::kCpu, 0.001);
        metrics_.AddBytes(3, 5);
        metrics_.RequestFinished(rpc, 0, 0.002);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const Scrape s = Collect(registry_);
  const double half = kThreads / 2 * kPerThread;
  EXPECT_EQ(Value(s, "tensorprep_requests_total{code=\"OK\",rpc=\"Process\"}"), half);
  EXPECT_EQ(Value(s, "tensorprep_requests_total{code=\"OK\",rpc=\"ProcessStream\"}"), half);
  EXPECT_EQ(Value(s, "tensorprep_request_duration_seconds_count{code=\"OK\",rpc=\"Process\"}"),
            half);
  EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"Process\"}"), 0);
  EXPECT_EQ(Value(s, "tensorprep_requests_in_flight{rpc=\"ProcessStream\"}"), 0);
  EXPECT_EQ(Value(s, "tensorprep_queued_requests{}"), 0);
  EXPECT_EQ(Value(s, "tensorprep_stage_duration_seconds_count{device=\"cpu\",stage=\"encode\"}"),
            kThreads * kPerThread);
  EXPECT_EQ(Value(s, "tensorprep_received_bytes_total{}"), 3.0 * kThreads * kPerThread);
  EXPECT_EQ(Value(s, "tensorprep_sent_bytes_total{}"), 5.0 * kThreads * kPerThread);
}

TEST(MetricsConstructionTest, RejectsEmptyOrDuplicateKernelLabels) {
  prometheus::Registry registry;
  EXPECT_THROW(Metrics(registry, {"flip", "flip"}, "v"), std::invalid_argument);
  EXPECT_THROW(Metrics(registry, {"flip", ""}, "v"), std::invalid_argument);
  // Nothing was registered by the rejected attempts.
  EXPECT_TRUE(registry.Collect().empty());
}

TEST(MetricsConstructionTest, NoKernelsStillBuildsEveryOtherFamily) {
  prometheus::Registry registry;
  Metrics metrics(registry, {}, "v");
  metrics.ObserveKernel(0, MetricDevice::kCpu, 1.0);  // ignored, no series to hit
  const Scrape s = Collect(registry);
  // A family without series is not exposed at all; every other family is.
  EXPECT_EQ(s.types.count("tensorprep_kernel_duration_seconds"), 0u);
  EXPECT_EQ(s.types.size(), 18u);
}

TEST_F(MetricsTest, ModelSeriesArePerProtocolAndModelAndCreatedUpFront) {
  metrics_.AddModels({"rotate30", "tensorprep"});
  Scrape s = Collect(registry_);
  for (const char* model : {"rotate30", "tensorprep"}) {
    const std::string labels = std::string("model=\"") + model + "\",protocol=\"kserve_v2\"";
    EXPECT_EQ(Value(s, "tensorprep_model_samples_total{" + labels + "}"), 0);
    EXPECT_EQ(Value(s, "tensorprep_model_request_duration_seconds_count{" + labels + "}"), 0);
    for (int c = 0; c < kCodeCount; ++c) {
      EXPECT_EQ(Value(s, std::string("tensorprep_model_requests_total{code=\"") + CodeName(c) +
                             "\"," + labels + "}"),
                0);
    }
  }
  metrics_.ObserveModelRequest(Protocol::kKServeV2, 0, 0, 0.002, 32);
  metrics_.ObserveModelRequest(Protocol::kKServeV2, 0, 3, 0.0001, 0);
  metrics_.ObserveModelRequest(Protocol::kKServeV2, 5, 0, 0.002, 32);  // no such model: ignored
  metrics_.RequestFinished(Rpc::kModelInfer, 0, 0.002);
  s = Collect(registry_);
  const std::string rotate = "model=\"rotate30\",protocol=\"kserve_v2\"";
  EXPECT_EQ(Value(s, "tensorprep_model_requests_total{code=\"OK\"," + rotate + "}"), 1);
  EXPECT_EQ(Value(s, "tensorprep_model_requests_total{code=\"INVALID_ARGUMENT\"," + rotate + "}"),
            1);
  EXPECT_EQ(Value(s, "tensorprep_model_samples_total{" + rotate + "}"), 32);
  EXPECT_EQ(Value(s, "tensorprep_model_request_duration_seconds_count{" + rotate + "}"), 2);
  EXPECT_EQ(Value(s, "tensorprep_model_samples_total{model=\"tensorprep\",protocol=\"kserve_v2\"}"),
            0);
  EXPECT_EQ(Value(s, "tensorprep_requests_total{code=\"OK\",rpc=\"ModelInfer\"}"), 1);
  EXPECT_THROW(Metrics(registry_, kKernels, "x").AddModels({"a", "a"}), std::invalid_argument);
}

}  // namespace
}  // namespace tensorprep::server
