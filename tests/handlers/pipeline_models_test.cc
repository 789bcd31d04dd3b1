// The pipeline file loader: valid files load with the shapes, datatypes and sources they
// declare (output datatypes derived from the pipeline's casts); every kind of mistake is refused
// with a message that names the file, the pipeline and the field.
#include "handlers/pipeline_models.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <string>

namespace tensorprep::handlers {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;
namespace v1 = ::tensorprep::v1;

// A temporary directory removed with the test.
class PipelineFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("tp-pipelines-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }

  fs::path dir_;
};

constexpr char kRotateModel[] = R"({
  "name": "rotate30",
  "inputs": [{"name": "IMAGES", "datatype": "FP32", "shape": [-1, 256, 256, 3]}],
  "outputs": [{"name": "ROTATED", "source": "IMAGES"}],
  "pipeline": {"ops": [{"rotate": {"angleDeg": 30, "interpolation": "INTERPOLATION_BILINEAR",
                                   "border": "BORDER_EDGE"}}]}})";

// A model with an aux input and a cast, whose fields a test replaces one at a time.
std::string FlipModel(const std::string& name = "flip", const std::string& images_dtype = "UINT8",
                      const std::string& labels_shape = "[-1, -1, -1]",
                      const std::string& out_dtype = "\"FP32\"",
                      const std::string& labels_source = "LABELS",
                      const std::string& ops =
                          R"([{"randomFlip": {"axis": "FLIP_AXIS_HORIZONTAL", "p": 0.5}},
                              {"cast": {"dtype": "DTYPE_FLOAT32"}}])") {
  return R"({"name": ")" + name + R"(", "max_batch_size": 8,
    "inputs": [{"name": "IMAGES", "datatype": ")" +
         images_dtype + R"(", "shape": [-1, -1, -1, 3]},
               {"name": "LABELS", "datatype": "INT32", "shape": )" +
         labels_shape + R"(,
                "interpolation": "INTERPOLATION_NEAREST", "fill": 255, "optional": true}],
    "outputs": [{"name": "IMAGES_OUT", "source": "IMAGES", "datatype": )" +
         out_dtype + R"(},
                {"name": "LABELS_OUT", "source": ")" +
         labels_source + R"("}],
    "pipeline": {"ops": )" +
         ops + "}}";
}

std::string File(const std::string& models) { return "{\"pipelines\": [" + models + "]}"; }

TEST_F(PipelineFileTest, LoadsAFileWithShapesDatatypesAndSources) {
  const std::string path =
      Write("models.json", File(std::string(kRotateModel) + "," + FlipModel()));
  auto models = LoadPipelineModels(path);
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 2u);
  const PipelineModelSpec& rotate = (*models)[0];
  EXPECT_EQ(rotate.name, "rotate30");
  EXPECT_EQ(rotate.file, path);
  EXPECT_EQ(rotate.max_batch_size, 0);
  ASSERT_EQ(rotate.inputs.size(), 1u);
  EXPECT_EQ(rotate.inputs[0].shape, (std::vector<int64_t>{-1, 256, 256, 3}));
  ASSERT_EQ(rotate.outputs.size(), 1u);
  EXPECT_EQ(rotate.outputs[0].source, 0);
  EXPECT_EQ(rotate.outputs[0].dtype, kernels::DType::kFloat32);
  EXPECT_EQ(rotate.outputs[0].shape, rotate.inputs[0].shape);
  EXPECT_EQ(rotate.pipeline.ops_size(), 1);

  const PipelineModelSpec& flip = (*models)[1];
  EXPECT_EQ(flip.max_batch_size, 8);
  ASSERT_EQ(flip.inputs.size(), 2u);
  EXPECT_EQ(flip.inputs[0].dtype, kernels::DType::kUInt8);
  EXPECT_EQ(flip.inputs[1].interpolation, v1::INTERPOLATION_NEAREST);
  EXPECT_EQ(flip.inputs[1].fill, 255);
  EXPECT_TRUE(flip.inputs[1].optional);
  // The cast makes the main output FP32; the aux output keeps its input's datatype.
  EXPECT_EQ(flip.outputs[0].dtype, kernels::DType::kFloat32);
  EXPECT_EQ(flip.outputs[1].dtype, kernels::DType::kInt32);
  EXPECT_EQ(flip.outputs[1].source, 1);
  EXPECT_TRUE(flip.outputs[1].optional);
  EXPECT_EQ(flip.FindInput("LABELS"), 1);
  EXPECT_EQ(flip.FindOutput("LABELS_OUT"), 1);
  EXPECT_EQ(flip.FindOutput("nope"), -1);
}

// Shape-changing pipelines: the outputs' shapes are what the pipeline makes, fixed where an op
// fixes them (random_resized_crop's H and W), free where they follow a free input dimension
// (pad's), permuted by channels_first; aux outputs take the main batch's H and W.
TEST_F(PipelineFileTest, OutputShapesFollowTheOps) {
  const std::string rrc =
      FlipModel("train", "UINT8", "[-1, -1, -1]", "\"FP32\"", "LABELS",
                R"([{"randomResizedCrop": {"height": 224, "width": 200, "antialias": true}},
          {"cast": {"dtype": "DTYPE_FLOAT32"}}, {"channelsFirst": {}}])");
  const std::string pad = FlipModel(
      "padded", "UINT8", "[-1, -1, -1]", "\"FP32\"", "LABELS",
      R"([{"pad": {"top": 2, "left": 3}}, {"grayscale": {}}, {"cast": {"dtype": "DTYPE_FLOAT32"}}])");
  auto models = LoadPipelineModels(Write("models.json", File(rrc + "," + pad)));
  ASSERT_TRUE(models.ok()) << models.status();
  const PipelineModelSpec& train = (*models)[0];
  EXPECT_EQ(train.outputs[0].shape, (std::vector<int64_t>{-1, 3, 224, 200}));
  EXPECT_EQ(train.outputs[1].shape, (std::vector<int64_t>{-1, 224, 200}));
  const PipelineModelSpec& padded = (*models)[1];
  EXPECT_EQ(padded.outputs[0].shape, (std::vector<int64_t>{-1, -1, -1, 1}));
  EXPECT_EQ(padded.outputs[1].shape, (std::vector<int64_t>{-1, -1, -1}));

  // A declared shape must be the one made.
  const std::string wrong = std::string(R"({"name": "r", "inputs": [{"name": "IMAGES",
      "datatype": "UINT8", "shape": [-1, 256, 256, 3]}], "outputs": [{"name": "OUT",
      "source": "IMAGES", "shape": [-1, 256, 256, 3]}],
      "pipeline": {"ops": [{"resize": {"height": 128, "width": 64}}]}})");
  auto bad = LoadPipelineModels(Write("wrong.json", File(wrong)));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("the pipeline makes [-1,128,64,3]"), std::string::npos)
      << bad.status();
}

TEST_F(PipelineFileTest, LoadsEveryJsonFileOfADirectoryInNameOrder) {
  Write("b.json", File(FlipModel("second")));
  Write("a.json", File(FlipModel("first")));
  Write("notes.txt", "not a pipeline file");
  auto models = LoadPipelineModels(dir_.string());
  ASSERT_TRUE(models.ok()) << models.status();
  ASSERT_EQ(models->size(), 2u);
  EXPECT_EQ((*models)[0].name, "first");
  EXPECT_EQ((*models)[1].name, "second");
  EXPECT_THAT((*models)[0].file, HasSubstr("a.json"));
}

TEST_F(PipelineFileTest, ANameDeclaredInTwoFilesNamesBoth) {
  const std::string a = Write("a.json", File(FlipModel("same")));
  const std::string b = Write("b.json", File(FlipModel("same")));
  auto models = LoadPipelineModels(dir_.string());
  ASSERT_FALSE(models.ok());
  EXPECT_EQ(models.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(models.status().message(), HasSubstr(b));
  EXPECT_THAT(models.status().message(), HasSubstr("'same'"));
  EXPECT_THAT(models.status().message(), HasSubstr("already declared in " + a));
}

TEST_F(PipelineFileTest, MissingFilesAndEmptyDirectoriesAreErrors) {
  auto missing = LoadPipelineModels((dir_ / "nope.json").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.json"));
  auto empty = LoadPipelineModels(dir_.string());
  ASSERT_FALSE(empty.ok());
  EXPECT_THAT(empty.status().message(), HasSubstr("without pipeline files"));
}

TEST_F(PipelineFileTest, JsonThatIsNotAPipelineFileNamesTheFile) {
  const std::string path = Write("bad.json", R"({"pipelines": [{"name": "x", "inptus": []}]})");
  auto models = LoadPipelineModels(path);
  ASSERT_FALSE(models.ok());
  EXPECT_EQ(models.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(models.status().message(), HasSubstr(path + ": not a pipeline file"));
  EXPECT_THAT(models.status().message(), HasSubstr("inptus"));
}

struct BadCase {
  const char* label;
  std::string model;
  const char* field;     // what the message must name after "pipelines[0] 'NAME': "
  const char* expected;  // and a piece of what it says
};

class BadModelTest : public PipelineFileTest, public ::testing::WithParamInterface<BadCase> {};

TEST_P(BadModelTest, NamesFilePipelineAndField) {
  const BadCase& c = GetParam();
  const std::string path = Write("models.json", File(FlipModel("ok") + "," + c.model));
  auto models = LoadPipelineModels(path);
  ASSERT_FALSE(models.ok()) << c.label;
  EXPECT_EQ(models.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(models.status().message());
  EXPECT_THAT(msg, HasSubstr(path + ": pipelines[1]")) << c.label;
  EXPECT_THAT(msg, HasSubstr(c.field)) << c.label;
  EXPECT_THAT(msg, HasSubstr(c.expected)) << c.label;
}

INSTANTIATE_TEST_SUITE_P(
    Fields, BadModelTest,
    ::testing::Values(
        BadCase{"bad name", FlipModel("bad name"), "name:", "letters, digits"},
        BadCase{"builtin name", FlipModel("tensorprep"), "name:", "built-in model"},
        BadCase{"duplicate name", FlipModel("ok"), "name:", "earlier pipeline"},
        BadCase{"unknown datatype", FlipModel("m", "FP64"),
                "'m': inputs[0].datatype:", "got 'FP64'"},
        BadCase{"rank", FlipModel("m", "UINT8", "[-1, 4]"),
                "'m': inputs[1].shape:", "rank 3 (N,H,W) or 4"},
        BadCase{"zero dim", FlipModel("m", "UINT8", "[-1, 0, -1]"),
                "'m': inputs[1].shape[1]:", "got 0"},
        BadCase{"batch dim with max_batch_size", FlipModel("m", "UINT8", "[4, -1, -1]"),
                "'m': inputs[1].shape[0]:", "max_batch_size"},
        BadCase{"output datatype differs", FlipModel("m", "UINT8", "[-1, -1, -1]", "\"UINT8\""),
                "'m': outputs[0].datatype:", "makes FP32"},
        BadCase{"unknown source", FlipModel("m", "UINT8", "[-1, -1, -1]", "\"FP32\"", "MASKS"),
                "'m': outputs[1].source:", "got 'MASKS'"},
        BadCase{"source twice", FlipModel("m", "UINT8", "[-1, -1, -1]", "\"FP32\"", "IMAGES"),
                "'m': outputs[1].source:", "earlier output"},
        BadCase{"bad op argument",
                FlipModel("m", "UINT8", "[-1, -1, -1]", "\"FP32\"", "LABELS",
                          R"([{"randomFlip": {"axis": "FLIP_AXIS_HORIZONTAL", "p": 2}}])"),
                "'m': pipeline.ops[0]", "p"},
        BadCase{"empty pipeline",
                FlipModel("m", "UINT8", "[-1, -1, -1]", "\"FP32\"", "LABELS", "[]"),
                "'m': pipeline.ops:", "at least one op"},
        BadCase{"normalize on uint8",
                FlipModel("m", "UINT8", "[-1, -1, -1]", "\"FP32\"", "LABELS",
                          R"([{"normalize": {"mean": [0.5], "std": [0.25]}}])"),
                "'m': pipeline.ops[0].normalize", "float"}),
    [](const ::testing::TestParamInfo<BadCase>& info) {
      std::string name = info.param.label;
      for (char& ch : name) {
        if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return name;
    });

TEST(PipelineJsonTest, TakesAPipelineOrABareListOfOps) {
  auto full = ParsePipelineJson(R"({"ops": [{"flip": {"axis": "FLIP_AXIS_VERTICAL"}}]})", "p");
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->ops(0).flip().axis(), v1::FLIP_AXIS_VERTICAL);
  auto list = ParsePipelineJson(R"(  [{"add": {"value": [1]}}, {"flip": {}}])", "p");
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->ops_size(), 2);
  auto bad = ParsePipelineJson("{not json", "parameters.pipeline");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("parameters.pipeline:"));
}

TEST(BuiltinModelTest, TakesImagesAndOptionalLabelsAndMasks) {
  const PipelineModelSpec m = BuiltinModel();
  EXPECT_EQ(m.name, kBuiltinModelName);
  EXPECT_TRUE(m.builtin);
  ASSERT_EQ(m.inputs.size(), 3u);
  EXPECT_FALSE(m.inputs[0].optional);
  EXPECT_FALSE(m.inputs[0].dtype.has_value());
  EXPECT_TRUE(m.inputs[1].optional);
  EXPECT_EQ(m.outputs[2].source, 2);
}

TEST(DatatypeTest, RoundTrips) {
  for (auto d : {kernels::DType::kUInt8, kernels::DType::kInt32, kernels::DType::kFloat16,
                 kernels::DType::kFloat32}) {
    EXPECT_EQ(ParseDatatype(DatatypeName(d)), d);
  }
  EXPECT_FALSE(ParseDatatype("FP64").has_value());
  EXPECT_FALSE(ParseDatatype("fp32").has_value());
}

}  // namespace
}  // namespace tensorprep::handlers
