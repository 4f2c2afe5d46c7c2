// Fused skip-gram negative-sampling update for the CPU.
//
// One call trains on a batch of consecutive kept tokens, in place, the way word2vec's
// C tool and gensim do: for every centre token i and every context j that its radius
// reaches in the same run, the input vector of the context word is trained to predict
// the centre word against `negatives` noise words drawn for that pair from the alias
// table of unigram^0.75. Every pair reads and writes the current rows, so nothing is
// materialised between the steps of one pair. The batch is cut into one slice of
// centres per thread of TensorFlow's intra-op pool, and the slices update the shared
// rows without locks ("Hogwild"), as word2vec's threads do.
//
// The Python side (trainer/kernels.py) compiles this file once per machine and
// TensorFlow version and loads it with tf.load_op_library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/resource_var.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

namespace embedflow {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::Var;

REGISTER_OP("EmbedflowSkipgramStep")
    .Input("input_vectors: resource")
    .Input("output_vectors: resource")
    .Input("ids: int64")
    .Input("rows: int64")
    .Input("radius: int32")
    .Input("noise_prob: float")
    .Input("noise_alias: int32")
    .Input("learning_rate: float")
    .Input("seed: int64")
    .Input("compute_loss: bool")
    .Attr("negatives: int >= 1")
    .Output("loss: float")
    .Output("pairs: float")
    .SetIsStateful()
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Scalar());
      c->set_output(1, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Trains skip-gram with negative sampling on one batch, updating both tables in place.

input_vectors: [V, d] float variable, the vectors of words as contexts (the embeddings).
output_vectors: [V, d] float variable, the vectors of words as predicted centres.
ids: [N] token ids of consecutive kept tokens.
rows: [N] the run each token belongs to; pairs never cross runs; a negative row pairs
  with nothing.
radius: [N] the dynamic window radius drawn for each centre.
noise_prob, noise_alias: [V] Walker alias table of the noise distribution.
learning_rate: scalar step size.
seed: scalar; the noise words of a call are a function of it (and of the thread count).
compute_loss: scalar; when false the loss output is 0 and the call is cheaper.
loss: sum over the pairs of the negative-sampling loss before the update.
pairs: number of (centre, context) pairs trained.
)doc");

namespace {

// splitmix64: seeds one generator per slice from (seed, slice).
inline uint64_t SplitMix(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// xorshift64*: fast, and plenty for drawing noise words.
struct Rng {
  uint64_t s;
  inline uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545f4914f6cdd1dULL;
  }
};

inline float Dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

inline void Axpy(float* y, float alpha, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) y[k] += alpha * x[k];
}

// Makes the variable's buffer private before writing in place: a tensor read from the
// variable earlier may still share it (TensorFlow's own in-place updates do the same).
absl::Status MakeExclusive(OpKernelContext* ctx, Var* var) {
  Tensor* t = var->tensor();
  if (t->RefCountIsOne()) return absl::OkStatus();
  Tensor copy;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &copy));
  std::memcpy(copy.data(), t->data(), t->TotalBytes());
  *t = copy;
  return absl::OkStatus();
}

}  // namespace

class SkipgramStepOp : public OpKernel {
 public:
  explicit SkipgramStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("negatives", &negatives_));
  }

  void Compute(OpKernelContext* ctx) override {
    tensorflow::core::RefCountPtr<Var> in_var, out_var;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &in_var));
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 1), &out_var));
    OP_REQUIRES(ctx, in_var.get() != out_var.get(),
                absl::InvalidArgumentError("input_vectors and output_vectors must be two variables"));
    const Tensor& ids_t = ctx->input(2);
    const Tensor& rows_t = ctx->input(3);
    const Tensor& radius_t = ctx->input(4);
    const Tensor& prob_t = ctx->input(5);
    const Tensor& alias_t = ctx->input(6);
    const float lr = ctx->input(7).scalar<float>()();
    const uint64_t seed = static_cast<uint64_t>(ctx->input(8).scalar<int64_t>()());
    const bool with_loss = ctx->input(9).scalar<bool>()();
    const int64_t n = ids_t.NumElements();
    OP_REQUIRES(ctx, ids_t.dims() == 1 && rows_t.NumElements() == n && radius_t.NumElements() == n,
                absl::InvalidArgumentError("ids, rows and radius must be vectors of one length"));

    tensorflow::mutex_lock in_lock(*in_var->mu());
    tensorflow::mutex_lock out_lock(*out_var->mu());
    Tensor* in_t = in_var->tensor();
    Tensor* out_t = out_var->tensor();
    OP_REQUIRES(ctx, in_t->dtype() == tensorflow::DT_FLOAT && out_t->dtype() == tensorflow::DT_FLOAT,
                absl::InvalidArgumentError("the vector tables must be float32"));
    OP_REQUIRES(ctx, in_t->dims() == 2 && in_t->shape() == out_t->shape(),
                absl::InvalidArgumentError("the vector tables must be matrices of one shape"));
    const int64_t vocab = in_t->dim_size(0);
    const int64_t dim = in_t->dim_size(1);
    OP_REQUIRES(ctx, prob_t.NumElements() == vocab && alias_t.NumElements() == vocab,
                absl::InvalidArgumentError("noise_prob and noise_alias must hold one entry per vocabulary row"));

    const int64_t* ids = ids_t.flat<int64_t>().data();
    const int64_t* rows = rows_t.flat<int64_t>().data();
    const int32_t* radius = radius_t.flat<int32_t>().data();
    const float* prob = prob_t.flat<float>().data();
    const int32_t* alias = alias_t.flat<int32_t>().data();
    for (int64_t i = 0; i < n; ++i) {
      OP_REQUIRES(ctx, ids[i] >= 0 && ids[i] < vocab,
                  absl::InvalidArgumentError(absl::StrCat("ids[", i, "] = ", ids[i], " is outside the vocabulary [0, ",
                                                          vocab, ")")));
    }
    for (int64_t i = 0; i < vocab; ++i) {
      OP_REQUIRES(ctx, alias[i] >= 0 && alias[i] < vocab,
                  absl::InvalidArgumentError("noise_alias holds an id outside the vocabulary"));
    }

    OP_REQUIRES_OK(ctx, MakeExclusive(ctx, in_var.get()));
    OP_REQUIRES_OK(ctx, MakeExclusive(ctx, out_var.get()));
    float* w_in = in_t->flat<float>().data();
    float* w_out = out_t->flat<float>().data();

    auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
    // Slices of at least 512 centres: smaller ones cost more in hand-offs than they save.
    const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(pool->num_threads, n / 512));
    std::vector<double> loss(slices, 0.0), pairs(slices, 0.0);
    const int negatives = negatives_;

    auto work = [&](int64_t first_slice, int64_t end_slice) {
      std::vector<float> grad(dim);
      // The noise words of the next pair are drawn one pair ahead and their rows
      // prefetched, so the loads overlap the arithmetic of the current pair.
      std::vector<int64_t> current(negatives), next(negatives);
      const int64_t lines = (dim * static_cast<int64_t>(sizeof(float)) + 63) / 64;
      for (int64_t s = first_slice; s < end_slice; ++s) {
        uint64_t state = seed ^ (0x632be59bd9b4e019ULL * static_cast<uint64_t>(s + 1));
        Rng rng{SplitMix(&state) | 1};
        auto draw = [&](std::vector<int64_t>* out) {
          for (int k = 0; k < negatives; ++k) {
            const uint64_t u = rng.Next();
            const int64_t b = static_cast<int64_t>(((u >> 32) * static_cast<uint64_t>(vocab)) >> 32);
            const float frac = static_cast<float>(u & 0xffffffffULL) * (1.0f / 4294967296.0f);
            const int64_t t = frac < prob[b] ? b : alias[b];
            (*out)[k] = t;
            const char* row = reinterpret_cast<const char*>(w_out + t * dim);
            for (int64_t line = 0; line < lines; ++line) __builtin_prefetch(row + 64 * line, 1);
          }
        };
        draw(&next);
        const int64_t lo = n * s / slices, hi = n * (s + 1) / slices;
        double slice_loss = 0.0, slice_pairs = 0.0;
        for (int64_t i = lo; i < hi; ++i) {
          const int64_t row = rows[i];
          if (row < 0) continue;
          const int64_t centre = ids[i];
          const int64_t r = radius[i];
          const int64_t j_lo = std::max<int64_t>(0, i - r), j_hi = std::min<int64_t>(n - 1, i + r);
          for (int64_t j = j_lo; j <= j_hi; ++j) {
            if (j == i || rows[j] != row) continue;
            current.swap(next);
            draw(&next);
            float* l1 = w_in + ids[j] * dim;
            std::fill(grad.begin(), grad.end(), 0.f);
            for (int k = 0; k <= negatives; ++k) {
              const int64_t target = k == 0 ? centre : current[k - 1];
              if (k > 0 && target == centre) continue;
              const float label = k == 0 ? 1.f : 0.f;
              float* c = w_out + target * dim;
              const float x = std::min(30.f, std::max(-30.f, Dot(l1, c, dim)));
              const float e = std::exp(-x);
              const float g = (label - 1.f / (1.f + e)) * lr;
              // -log sigmoid(x) = log1p(e) for the centre, -log sigmoid(-x) = x + log1p(e)
              // for a noise word.
              if (with_loss) slice_loss += std::log1p(e) + (k == 0 ? 0.f : x);
              // One pass over the row: its old value into the context's gradient, then
              // the row's own update.
              float* gr = grad.data();
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) {
                gr[d] += g * c[d];
                c[d] += g * l1[d];
              }
            }
            Axpy(l1, 1.f, grad.data(), dim);
            slice_pairs += 1.0;
          }
        }
        loss[s] = slice_loss;
        pairs[s] = slice_pairs;
      }
    };
    // A cost per slice so large that Shard gives every slice its own thread.
    tensorflow::Shard(pool->num_threads, pool->workers, slices, /*cost_per_unit=*/int64_t{1} << 40, work);

    double loss_sum = 0.0, pairs_sum = 0.0;
    for (int64_t s = 0; s < slices; ++s) {
      loss_sum += loss[s];
      pairs_sum += pairs[s];
    }
    Tensor* loss_out = nullptr;
    Tensor* pairs_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {}, &loss_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {}, &pairs_out));
    loss_out->scalar<float>()() = static_cast<float>(loss_sum);
    pairs_out->scalar<float>()() = static_cast<float>(pairs_sum);
  }

 private:
  int negatives_;
};

REGISTER_KERNEL_BUILDER(Name("EmbedflowSkipgramStep").Device(DEVICE_CPU), SkipgramStepOp);

}  // namespace embedflow
