#include "tests/handlers/request_util.h"

#include <cmath>
#include <cstdlib>

namespace tensorprep::handlers::testing {

namespace v1 = ::tensorprep::v1;

v1::Tensor Wire(const kernels::testing::Buffer& b, v1::DType dtype, bool nhw) {
  v1::Tensor t;
  t.set_dtype(dtype);
  t.add_shape(b.shape().n);
  t.add_shape(b.shape().h);
  t.add_shape(b.shape().w);
  if (!nhw) t.add_shape(b.shape().c);
  t.set_data(std::string(reinterpret_cast<const char*>(b.bytes().data()), b.view().bytes()));
  return t;
}

void AddFlip(v1::Pipeline& p, v1::FlipAxis axis) { p.add_ops()->mutable_flip()->set_axis(axis); }

void AddRotate(v1::Pipeline& p, double angle, v1::Interpolation interp, v1::Border border) {
  auto* r = p.add_ops()->mutable_rotate();
  r->set_angle_deg(angle);
  r->set_interpolation(interp);
  r->set_border(border);
}

v1::Pipeline RandomPipeline(std::mt19937& rng, bool nearest, int channels) {
  v1::Pipeline p;
  std::uniform_int_distribution<int> n_ops(1, 7), kind(0, 7);
  std::uniform_real_distribution<double> angle(-179, 179), value(-2, 2);
  bool rotated = false;
  const int count = n_ops(rng);
  for (int i = 0; i < count; ++i) {
    switch (kind(rng)) {
      case 0:
        AddFlip(p, v1::FLIP_AXIS_HORIZONTAL);
        break;
      case 1:
        AddFlip(p, v1::FLIP_AXIS_VERTICAL);
        break;
      case 2: {
        auto* f = p.add_ops()->mutable_random_flip();
        f->set_axis(rng() % 2 ? v1::FLIP_AXIS_HORIZONTAL : v1::FLIP_AXIS_VERTICAL);
        f->set_p(0.5);
        break;
      }
      case 3:
        if (!rotated) {
          AddRotate(p, angle(rng), nearest ? v1::INTERPOLATION_NEAREST : v1::INTERPOLATION_BILINEAR,
                    static_cast<v1::Border>(1 + rng() % 5));
          rotated = true;
        }
        break;
      case 4: {
        auto* a = p.add_ops()->mutable_add();
        const int values = rng() % 2 ? channels : 1;
        for (int c = 0; c < values; ++c) a->add_value(value(rng));
        break;
      }
      case 5:
        p.add_ops()->mutable_multiply()->add_value(value(rng));
        break;
      case 6: {
        auto* c = p.add_ops()->mutable_clamp();
        c->set_min(-1);
        c->set_max(1.5);
        break;
      }
      case 7: {
        auto* n = p.add_ops()->mutable_normalize();
        n->add_mean(value(rng));
        n->add_std(0.5 + std::abs(value(rng)));
        break;
      }
    }
  }
  return p;
}

absl::StatusOr<RunResult> Process(const Processor& processor, const v1::ProcessRequest& request) {
  auto prepared = processor.Prepare(request);
  if (!prepared.ok()) return prepared.status();
  v1::ProcessResponse response;
  auto stats = processor.Run(request, **prepared, &response);
  if (!stats.ok()) return stats.status();
  RunResult out;
  out.images = response.images().data();
  out.images_shape.assign(response.images().shape().begin(), response.images().shape().end());
  for (const auto& a : response.aux()) {
    out.aux.push_back(a.tensor().data());
    out.aux_shapes.emplace_back(a.tensor().shape().begin(), a.tensor().shape().end());
  }
  out.device = response.device();
  return out;
}

}  // namespace tensorprep::handlers::testing
