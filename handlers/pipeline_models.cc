#include "handlers/pipeline_models.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/util/json_util.h"
#include "handlers/error_text.h"
#include "handlers/op_registry.h"

namespace tensorprep::handlers {

namespace {

constexpr size_t kMaxNameBytes = 64;
constexpr char kDatatypes[] = "UINT8, INT32, FP16, FP32";

bool ValidName(const std::string& name) {
  if (name.empty() || name.size() > kMaxNameBytes) return false;
  if (!std::isalnum(static_cast<unsigned char>(name[0]))) return false;
  return std::all_of(name.begin(), name.end(), [](char ch) {
    return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-' || ch == '.';
  });
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::Status NameError(const std::string& path, const std::string& name) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": expected 1 to ", kMaxNameBytes,
                   " letters, digits, '_', '-' or '.', starting with a letter or digit, got ",
                   QuoteCallerString(name)));
}

// Checks one model; errors name the field under the model (the caller adds file and model).
absl::StatusOr<PipelineModelSpec> CheckModel(const pb::PipelineModel& m) {
  PipelineModelSpec spec;
  spec.name = m.name();
  spec.description = m.description();
  if (!ValidName(m.name())) return NameError("name", m.name());
  if (m.name() == kBuiltinModelName) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: '", kBuiltinModelName,
                     "' is the built-in model (pipeline given per request); choose another name"));
  }
  if (m.max_batch_size() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_size: expected >= 0, got ", m.max_batch_size()));
  }
  spec.max_batch_size = m.max_batch_size();
  if (m.inputs_size() == 0) {
    return absl::InvalidArgumentError(
        "inputs: expected at least one input (the first is the batch the pipeline transforms)");
  }
  std::set<std::string> names;
  for (int i = 0; i < m.inputs_size(); ++i) {
    const pb::PipelineTensor& t = m.inputs(i);
    const std::string path = absl::StrCat("inputs[", i, "]");
    if (!ValidName(t.name())) return NameError(path + ".name", t.name());
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".name: ", QuoteCallerString(t.name()),
                                                     " names an earlier input too"));
    }
    ModelTensor in;
    in.name = t.name();
    in.dtype = ParseDatatype(t.datatype());
    if (!in.dtype) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".datatype: expected one of ",
                                                     kDatatypes, ", got ",
                                                     QuoteCallerString(t.datatype())));
    }
    if (t.shape_size() != 3 && t.shape_size() != 4) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".shape: expected rank 3 (N,H,W) or 4 (N,H,W,C), got ", t.shape_size(),
                       " dimensions"));
    }
    for (int d = 0; d < t.shape_size(); ++d) {
      if (t.shape(d) != -1 && t.shape(d) < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".shape[", d, "]: expected -1 (free) or >= 1, got ", t.shape(d)));
      }
      in.shape.push_back(t.shape(d));
    }
    if (spec.max_batch_size > 0 && in.shape[0] != -1) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".shape[0]: expected -1 (the batch dimension) with max_batch_size ",
                       spec.max_batch_size, ", got ", in.shape[0]));
    }
    if (i == 0) {
      if (t.optional()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".optional: the first input (the batch) cannot be optional"));
      }
    } else {
      const std::vector<int64_t>& main = spec.inputs[0].shape;
      for (int d = 0; d < 3; ++d) {
        if (in.shape[d] != -1 && main[d] != -1 && in.shape[d] != main[d]) {
          return absl::InvalidArgumentError(absl::StrCat(path, ".shape[", d, "]: expected ",
                                                         main[d], " (", "N,H,W of inputs[0] ",
                                                         ShapeText(main), "), got ", in.shape[d]));
        }
      }
      if (t.interpolation() < pb::INTERPOLATION_UNSPECIFIED ||
          t.interpolation() > pb::INTERPOLATION_BILINEAR) {
        return absl::InvalidArgumentError(
            absl::StrCat(path,
                         ".interpolation: expected INTERPOLATION_NEAREST or "
                         "INTERPOLATION_BILINEAR, got ",
                         t.interpolation()));
      }
      if (!std::isfinite(t.fill())) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".fill: expected a finite number, got ", t.fill()));
      }
      in.interpolation = t.interpolation();
      in.fill = t.fill();
      in.optional = t.optional();
    }
    if (!t.source().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".source: only outputs have a source"));
    }
    spec.inputs.push_back(std::move(in));
  }

  // The pipeline, lowered for a batch of the declared shape (free dimensions small).
  if (m.pipeline().ops_size() == 0) {
    return absl::InvalidArgumentError("pipeline.ops: expected at least one op, got none");
  }
  const ModelTensor& main = spec.inputs[0];
  BatchState state;
  state.dtype = *main.dtype;
  state.shape.n = main.shape[0] == -1 ? 1 : main.shape[0];
  state.shape.h = main.shape[1] == -1 ? 16 : main.shape[1];
  state.shape.w = main.shape[2] == -1 ? 16 : main.shape[2];
  state.shape.c = main.shape.size() == 3 ? 1 : (main.shape[3] == -1 ? 3 : main.shape[3]);
  std::vector<AuxSampling> aux(spec.inputs.size() - 1);
  auto plan = BuildPlan(m.pipeline(), state, 0, 0, aux, PlanOptions{});
  if (!plan.ok()) return plan.status();  // its message names the field under "pipeline"
  spec.pipeline = m.pipeline();
  // The outputs' shapes: the pipeline planned again with other sizes for the free dimensions;
  // a dimension of the result that moves with them is free (-1), one that does not is fixed
  // (resize, crop and random_resized_crop fix H and W; grayscale fixes C).
  BatchState probe = state;
  if (main.shape[1] == -1) probe.shape.h = 17;
  if (main.shape[2] == -1) probe.shape.w = 19;
  auto probed = BuildPlan(m.pipeline(), probe, 0, 0, aux, PlanOptions{});
  if (!probed.ok()) return probed.status();
  auto dim = [](int64_t declared, int64_t a, int64_t b) {
    return declared == -1 && a != b ? -1 : a;
  };
  const kernels::BatchShape& o = plan->output_shape;
  const int64_t out_h = dim(main.shape[1], o.h, probed->output_shape.h);
  const int64_t out_w = dim(main.shape[2], o.w, probed->output_shape.w);
  // C: free when the input's is and the pipeline keeps it (the probe's C is 3 both times).
  const int64_t in_c = main.shape.size() == 3 ? 1 : main.shape[3];
  const int64_t out_c = in_c == -1 && o.c == state.shape.c ? -1 : o.c;
  std::vector<int64_t> main_out = {main.shape[0], out_h, out_w};
  if (plan->channels_first) {
    main_out = {main.shape[0], out_c, out_h, out_w};
  } else if (main.shape.size() == 4 || o.c != 1) {
    main_out.push_back(out_c);
  }
  bool geometric = false;
  for (const Step& step : plan->steps) geometric = geometric || step.geometric();

  if (m.outputs_size() == 0) {
    return absl::InvalidArgumentError("outputs: expected at least one output");
  }
  names.clear();
  std::set<int> sources;
  for (int o = 0; o < m.outputs_size(); ++o) {
    const pb::PipelineTensor& t = m.outputs(o);
    const std::string path = absl::StrCat("outputs[", o, "]");
    if (!ValidName(t.name())) return NameError(path + ".name", t.name());
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".name: ", QuoteCallerString(t.name()),
                                                     " names an earlier output too"));
    }
    ModelTensor out;
    out.name = t.name();
    out.source = spec.FindInput(t.source());
    if (out.source < 0) {
      std::vector<std::string> inputs;
      for (const ModelTensor& in : spec.inputs) inputs.push_back(in.name);
      return absl::InvalidArgumentError(
          absl::StrCat(path, ".source: expected the name of an input (",
                       absl::StrJoin(inputs, ", "), "), got ", QuoteCallerString(t.source())));
    }
    if (!sources.insert(out.source).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ".source: input ", QuoteCallerString(t.source()),
          " is the source of an earlier output too; each input has at most one output"));
    }
    const ModelTensor& src = spec.inputs[out.source];
    out.dtype = out.source == 0 ? plan->output_dtype : *src.dtype;
    if (!t.datatype().empty()) {
      auto declared = ParseDatatype(t.datatype());
      if (!declared) {
        return absl::InvalidArgumentError(absl::StrCat(path, ".datatype: expected one of ",
                                                       kDatatypes, ", got ",
                                                       QuoteCallerString(t.datatype())));
      }
      if (*declared != *out.dtype) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".datatype: the pipeline makes ", DatatypeName(*out.dtype),
                         " from input '", src.name, "', but ", t.datatype(), " is declared"));
      }
    }
    // Aux tensors take the main batch's H and W when the pipeline moves pixels.
    std::vector<int64_t> made = src.shape;
    if (out.source == 0) {
      made = main_out;
    } else if (geometric) {
      made[1] = out_h;
      made[2] = out_w;
    }
    if (t.shape_size() != 0) {
      std::vector<int64_t> declared(t.shape().begin(), t.shape().end());
      if (declared != made) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ".shape: the pipeline makes ", ShapeText(made), " from input '",
                         src.name, "', got ", ShapeText(declared), " (leave it out)"));
      }
    }
    if (t.interpolation() != pb::INTERPOLATION_UNSPECIFIED || t.fill() != 0 || t.optional()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": interpolation, fill and optional belong to the input (",
                       QuoteCallerString(src.name), ")"));
    }
    out.shape = std::move(made);
    out.optional = src.optional;
    spec.outputs.push_back(std::move(out));
  }
  return spec;
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read"));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read"));
  return text.str();
}

}  // namespace

int PipelineModelSpec::FindInput(const std::string& name) const {
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (inputs[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int PipelineModelSpec::FindOutput(const std::string& name) const {
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (outputs[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

std::optional<kernels::DType> ParseDatatype(const std::string& datatype) {
  if (datatype == "UINT8") return kernels::DType::kUInt8;
  if (datatype == "INT32") return kernels::DType::kInt32;
  if (datatype == "FP16") return kernels::DType::kFloat16;
  if (datatype == "FP32") return kernels::DType::kFloat32;
  return std::nullopt;
}

const char* DatatypeName(kernels::DType dtype) {
  switch (dtype) {
    case kernels::DType::kUInt8:
      return "UINT8";
    case kernels::DType::kInt32:
      return "INT32";
    case kernels::DType::kFloat16:
      return "FP16";
    case kernels::DType::kFloat32:
      return "FP32";
  }
  return "INVALID";
}

absl::StatusOr<std::vector<PipelineModelSpec>> CheckPipelineFile(const pb::PipelineFile& parsed,
                                                                 const std::string& file) {
  if (parsed.pipelines_size() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": pipelines: expected at least one pipeline, got none"));
  }
  std::vector<PipelineModelSpec> models;
  std::set<std::string> names;
  for (int i = 0; i < parsed.pipelines_size(); ++i) {
    const pb::PipelineModel& m = parsed.pipelines(i);
    const std::string where =
        absl::StrCat(file, ": pipelines[", i, "]",
                     m.name().empty() ? "" : " " + QuoteCallerString(m.name()), ": ");
    auto spec = CheckModel(m);
    if (!spec.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, spec.status().message()));
    }
    if (!names.insert(spec->name).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "name: an earlier pipeline of this file has this name"));
    }
    spec->file = file;
    models.push_back(std::move(*spec));
  }
  return models;
}

absl::StatusOr<std::vector<PipelineModelSpec>> LoadPipelineModels(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no such file or directory"));
  }
  std::vector<std::string> files;
  if (S_ISDIR(st.st_mode)) {
    DIR* dir = opendir(path.c_str());
    if (dir == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot be read"));
    for (dirent* e = readdir(dir); e != nullptr; e = readdir(dir)) {
      const std::string name = e->d_name;
      if (name.size() <= 5 || name.compare(name.size() - 5, 5, ".json") != 0) continue;
      const std::string full = path + "/" + name;
      struct stat fst;
      if (stat(full.c_str(), &fst) == 0 && S_ISREG(fst.st_mode)) files.push_back(full);
    }
    closedir(dir);
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": a directory without pipeline files (*.json)"));
    }
  } else {
    files.push_back(path);
  }
  std::vector<PipelineModelSpec> all;
  std::map<std::string, std::string> declared_in;
  for (const std::string& file : files) {
    auto text = ReadFile(file);
    if (!text.ok()) return text.status();
    pb::PipelineFile parsed;
    google::protobuf::util::JsonParseOptions options;  // unknown fields are errors: typos show
    auto s = google::protobuf::util::JsonStringToMessage(*text, &parsed, options);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": not a pipeline file (tensorprep.v1.PipelineFile in JSON): ",
                       std::string(s.message())));
    }
    auto models = CheckPipelineFile(parsed, file);
    if (!models.ok()) return models.status();
    for (PipelineModelSpec& m : *models) {
      auto [it, inserted] = declared_in.emplace(m.name, file);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(file, ": pipeline ",
                                                       QuoteCallerString(m.name),
                                                       ": name: already declared in ", it->second));
      }
      all.push_back(std::move(m));
    }
  }
  return all;
}

PipelineModelSpec BuiltinModel() {
  PipelineModelSpec spec;
  spec.name = kBuiltinModelName;
  spec.description =
      "the pipeline comes from each request's 'pipeline' parameter (tensorprep.v1.Pipeline JSON)";
  spec.builtin = true;
  spec.any_rank = true;
  const char* names[] = {"IMAGES", "LABELS", "MASKS"};
  for (int i = 0; i < 3; ++i) {
    ModelTensor in;
    in.name = names[i];
    in.shape = {-1, -1, -1, -1};
    in.optional = i > 0;
    in.interpolation = pb::INTERPOLATION_NEAREST;
    spec.inputs.push_back(in);
    ModelTensor out = in;
    out.source = i;
    spec.outputs.push_back(out);
  }
  return spec;
}

absl::StatusOr<pb::Pipeline> ParsePipelineJson(const std::string& json, const std::string& what) {
  size_t first = json.find_first_not_of(" \t\r\n");
  std::string text = json;
  if (first != std::string::npos && json[first] == '[') text = "{\"ops\": " + json + "}";
  pb::Pipeline pipeline;
  auto s = google::protobuf::util::JsonStringToMessage(text, &pipeline);
  if (!s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what,
        ": expected a tensorprep.v1.Pipeline in JSON ({\"ops\": [...]}) or a JSON list of "
        "ops: ",
        std::string(s.message()).substr(0, 200)));
  }
  return pipeline;
}

}  // namespace tensorprep::handlers
