// Fused word2vec / fastText updates for the CPU: skip-gram and CBOW with negative
// sampling, with or without subword (character n-gram) input vectors.
//
// One call trains on a batch of consecutive kept tokens, in place, the way word2vec's
// C tool and gensim do. Token i is a centre; its contexts are the tokens j != i of the
// same run with |i - j| <= radius[i]. Noise words come from a Walker alias table (of
// unigram^0.75, built in Python); a noise word equal to the word it is noise for is
// skipped, as in word2vec. The batch is cut into one slice of centres per thread of
// TensorFlow's intra-op pool, and the slices update the shared rows without locks
// ("Hogwild"), as word2vec's threads do.
//
// Ops (each returns the loss summed over the terms before their update, and a count):
//   EmbedflowSkipgramStep, shared_negatives=false: word2vec's skip-gram update, pair by
//     pair: the context's input vector against the centre's output vector and
//     `negatives` noise words drawn for that pair.
//   EmbedflowSkipgramStep, shared_negatives=true (default): HogBatch (Ji et al. 2016).
//     The `negatives` noise words are drawn once per centre and shared by all its
//     pairs; the centre's pairs then form a small matrix problem: the contexts' input
//     rows X [m, d] against the output rows Y [1 + K, d] of the centre and its noise
//     words, G = (label - sigmoid(X Y^T)) * lr, X += G Y, Y += G^T X, both from the values
//     before the centre's update. Every pair still meets K noise words of the right
//     distribution, so the expected update is word2vec's, at a fraction of the memory
//     traffic and of the noise draws.
//   EmbedflowCbowStep: word2vec's CBOW (cbow_mean=1): the mean h of the contexts' input
//     rows predicts the centre's output row against K noise words drawn per centre; the
//     summed gradient of h is added, whole, to every context row (word2vec, gensim and
//     fastText all add it undivided). The centre's 1 + K output rows are updated
//     together from their values before the centre (word2vec: in turn; the two differ
//     only when a noise word repeats). With a subword table, h is the mean of all the
//     rows of all the contexts' words (fastText).
//   EmbedflowSubwordSkipgramStep: fastText's skip-gram: the centre's input vector h is
//     the mean of its word's subword rows (its own row and its n-gram rows), composed
//     once per centre; the gradient of h summed over the centre's pairs is added to every
//     one of its rows after them (fastText recomposes h and updates the rows after every
//     pair). shared_negatives=false: each context's output row is trained against h
//     with K noise words drawn for that pair, each output row updated in turn.
//     shared_negatives=true (default): HogBatch's sharing: K noise words drawn for each
//     group of 3 pairs of the centre, each counted once per pair it stands for, all the
//     output rows updated together; the same expected update with about half the
//     output rows touched.
//
// EmbedflowDrawBatch feeds the step ops from a corpus held in memory: it subsamples the
// tokens of a list of records and draws their window radii, as word2vec does while it
// reads, without a tf.data pipeline per epoch.
//
// Subword table (CSR): row ids of word w are subword_rows[subword_offsets[w] ..
// subword_offsets[w + 1]), into input_vectors, which may have more rows than the
// vocabulary (n-gram buckets after the word rows). Built by trainer/subwords.py.
//
// The Python side (trainer/kernels/__init__.py) compiles this file once per machine and
// TensorFlow version and loads it with tf.load_op_library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <tuple>
#include <unordered_set>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

absl::Status ScalarOutputs(tensorflow::shape_inference::InferenceContext* c) {
  c->set_output(0, c->Scalar());
  c->set_output(1, c->Scalar());
  return absl::OkStatus();
}

constexpr char kCommonDoc[] = R"doc(
input_vectors: [R, d] float variable, the vectors of words as inputs (the embeddings);
  R is the vocabulary size V, or more with a subword table.
output_vectors: [V, d] float variable, the vectors of words as predicted words.
ids: [N] token ids of consecutive kept tokens.
rows: [N] the run each token belongs to; contexts never cross runs; a negative row is
  never a centre nor a context.
radius: [N] the dynamic window radius drawn for each centre.
noise_prob, noise_alias: [V] Walker alias table of the noise distribution.
learning_rate: scalar step size.
seed: scalar; the noise words of a call are a function of it (and of the thread count).
compute_loss: scalar; when false the loss output is 0 and the call is cheaper.
loss: sum of the negative-sampling loss terms, each before its update.
)doc";

// The inputs every step op takes, in this order (the Python wrappers pass them so).
#define EMBEDFLOW_STEP_OP(name)              \
  REGISTER_OP(name)                          \
      .Input("input_vectors: resource")      \
      .Input("output_vectors: resource")     \
      .Input("ids: int64")                   \
      .Input("rows: int64")                  \
      .Input("radius: int32")                \
      .Input("noise_prob: float")            \
      .Input("noise_alias: int32")           \
      .Input("learning_rate: float")         \
      .Input("seed: int64")                  \
      .Input("compute_loss: bool")

EMBEDFLOW_STEP_OP("EmbedflowSkipgramStep")
    .Attr("negatives: int >= 1")
    .Attr("shared_negatives: bool = true")
    .Output("loss: float")
    .Output("pairs: float")
    .SetIsStateful()
    .SetShapeFn(ScalarOutputs)
    .Doc(absl::StrCat(R"doc(
Trains skip-gram with negative sampling on one batch, updating both tables in place.

The context's input vector predicts the centre's output vector. shared_negatives: draw
the noise words once per centre and update its pairs together (HogBatch), else per pair.
pairs: number of (centre, context) pairs trained. Both tables are [V, d].
)doc", kCommonDoc));

EMBEDFLOW_STEP_OP("EmbedflowCbowStep")
    .Input("subword_offsets: int64")
    .Input("subword_rows: int32")
    .Attr("negatives: int >= 1")
    .Output("loss: float")
    .Output("centres: float")
    .SetIsStateful()
    .SetShapeFn(ScalarOutputs)
    .Doc(absl::StrCat(R"doc(
Trains CBOW (mean of the context vectors) with negative sampling on one batch, in place.

subword_offsets, subword_rows: the subword table (CSR, [V + 1] and [nnz]), or both empty
  for word vectors only (then both tables are [V, d]).
centres: number of centres trained (those with at least one context).
)doc", kCommonDoc));

EMBEDFLOW_STEP_OP("EmbedflowSubwordSkipgramStep")
    .Input("subword_offsets: int64")
    .Input("subword_rows: int32")
    .Attr("negatives: int >= 1")
    .Attr("shared_negatives: bool = true")
    .Output("loss: float")
    .Output("pairs: float")
    .SetIsStateful()
    .SetShapeFn(ScalarOutputs)
    .Doc(absl::StrCat(R"doc(
Trains fastText's skip-gram on one batch, in place: the mean of the centre word's subword
rows predicts each context's output vector. shared_negatives: draw the noise words once
per group of 3 of a centre's pairs, each weighted by the pairs it stands for (HogBatch),
else per pair.

subword_offsets, subword_rows: the subword table (CSR, [V + 1] and [nnz]).
pairs: number of (centre, context) pairs trained.
)doc", kCommonDoc));

REGISTER_OP("EmbedflowDrawBatch")
    .Input("tokens: int32")
    .Input("record_starts: int64")
    .Input("records: int64")
    .Input("keep: float")
    .Input("seed: int64")
    .Attr("window: int >= 1")
    .Output("ids: int64")
    .Output("rows: int64")
    .Output("radius: int32")
    .Output("words: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      for (int i = 0; i < 3; ++i) c->set_output(i, c->Vector(c->UnknownDim()));
      c->set_output(3, c->Scalar());
      return absl::OkStatus();
    })
    .Doc(R"doc(
Draws a batch for the step ops from a corpus held in memory, as word2vec draws while
it reads the text. Each token of the given records is kept with its word's probability
(frequent words are subsampled), and every kept token gets a window radius drawn
uniformly from 1 to window.

tokens: [T] the corpus's token ids, record after record.
record_starts: [R + 1] where each record starts in tokens (the last entry is T).
records: [B] the records of this batch, in the order they are trained.
keep: [V] the probability of keeping each word.
seed: scalar; a record's draws are a function of it and of the record (not of the
  batch the record is in, nor of the threads).
ids: the kept tokens, the step ops' ids.
rows: the record of each kept token, the step ops' rows.
radius: the window radius drawn for each kept token.
words: the batch's tokens before subsampling (for the learning-rate schedule).
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

// ---- Vectors of kLanes floats: AVX-512, AVX2 + FMA, or one float, by what the build
// targets (-march=native). A row of `dim` floats is walked in chunks of kLanes; the last
// chunk may be partial (a Lane mask), and a partial load fills the rest with zeros.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
using V = __m512;
struct Lane {
  __mmask16 mask;
  static Lane Full() { return {static_cast<__mmask16>(0xffff)}; }
  static Lane Part(int64_t n) { return {static_cast<__mmask16>((1u << n) - 1)}; }
};
inline V Zero() { return _mm512_setzero_ps(); }
inline V Set1(float x) { return _mm512_set1_ps(x); }
inline V Load(const float* p, Lane l) { return _mm512_maskz_loadu_ps(l.mask, p); }
inline void Store(float* p, V v, Lane l) { _mm512_mask_storeu_ps(p, l.mask, v); }
inline V Add(V a, V b) { return _mm512_add_ps(a, b); }
inline V Mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V Min(V a, V b) { return _mm512_min_ps(a, b); }
inline V Max(V a, V b) { return _mm512_max_ps(a, b); }
inline V Div(V a, V b) { return _mm512_div_ps(a, b); }
inline V Round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline V Scale2(V a, V n) { return _mm512_scalef_ps(a, n); }  // a * 2^n, n integral
// a = f * 2^n with f in [1, 2), for positive normal a; returns f, sets n.
inline V Frexp(V a, V* n) {
  *n = _mm512_getexp_ps(a);
  return _mm512_getmant_ps(a, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero);
}
inline float Sum(V v) { return _mm512_reduce_add_ps(v); }
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;
using V = __m256;
struct Lane {
  bool full;
  __m256i mask;
  static Lane Full() { return {true, _mm256_set1_epi32(-1)}; }
  static Lane Part(int64_t n) {
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return {false, _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lanes)};
  }
};
inline V Zero() { return _mm256_setzero_ps(); }
inline V Set1(float x) { return _mm256_set1_ps(x); }
inline V Load(const float* p, Lane l) { return l.full ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, l.mask); }
inline void Store(float* p, V v, Lane l) {
  if (l.full) {
    _mm256_storeu_ps(p, v);
  } else {
    _mm256_maskstore_ps(p, l.mask, v);
  }
}
inline V Add(V a, V b) { return _mm256_add_ps(a, b); }
inline V Mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V Fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V Min(V a, V b) { return _mm256_min_ps(a, b); }
inline V Max(V a, V b) { return _mm256_max_ps(a, b); }
inline V Div(V a, V b) { return _mm256_div_ps(a, b); }
inline V Round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline V Scale2(V a, V n) {
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(a, _mm256_castsi256_ps(bits));
}
inline V Frexp(V a, V* n) {
  const __m256i bits = _mm256_castps_si256(a);
  *n = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
  return _mm256_castsi256_ps(
      _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
}
inline float Sum(V v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
#else
constexpr int64_t kLanes = 1;
using V = float;
struct Lane {
  static Lane Full() { return {}; }
  static Lane Part(int64_t) { return {}; }
};
inline V Zero() { return 0.f; }
inline V Set1(float x) { return x; }
inline V Load(const float* p, Lane) { return *p; }
inline void Store(float* p, V v, Lane) { *p = v; }
inline V Add(V a, V b) { return a + b; }
inline V Mul(V a, V b) { return a * b; }
inline V Fma(V a, V b, V c) { return a * b + c; }
inline V Min(V a, V b) { return std::min(a, b); }
inline V Max(V a, V b) { return std::max(a, b); }
inline V Div(V a, V b) { return a / b; }
inline V Round(V a) { return std::nearbyint(a); }
inline V Scale2(V a, V n) { return std::ldexp(a, static_cast<int>(n)); }
inline V Frexp(V a, V* n) {
  int e = 0;
  const float f = std::frexp(a, &e);  // in [0.5, 1)
  *n = static_cast<float>(e - 1);
  return 2.f * f;
}
inline float Sum(V v) { return v; }
#endif

// Calls f(k, lane) for the chunks [k, k + kLanes) of a row of n floats.
template <typename F>
inline void ForChunks(int64_t n, F&& f) {
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) f(k, Lane::Full());
  if (k < n) f(k, Lane::Part(n - k));
}

inline float Dot(const float* a, const float* b, int64_t n) {
  V acc = Zero();
  ForChunks(n, [&](int64_t k, Lane l) { acc = Fma(Load(a + k, l), Load(b + k, l), acc); });
  return Sum(acc);
}

inline void Axpy(float* y, float alpha, const float* x, int64_t n) {
  const V a = Set1(alpha);
  ForChunks(n, [&](int64_t k, Lane l) { Store(y + k, Fma(a, Load(x + k, l), Load(y + k, l)), l); });
}

// exp(x) for x in [-88, 88]: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor
// series to r^7 (relative error below 2e-7), times 2^n.
inline V Exp(V x) {
  const V n = Round(Mul(x, Set1(1.44269504088896341f)));
  // r = x - n ln2, ln2 = 0.693359375 - 2.12194440e-4 split so that n * 0.693359375 is exact.
  const V r = Fma(n, Set1(2.12194440e-4f), Fma(n, Set1(-0.693359375f), x));
  V p = Set1(1.f / 5040);
  p = Fma(p, r, Set1(1.f / 720));
  p = Fma(p, r, Set1(1.f / 120));
  p = Fma(p, r, Set1(1.f / 24));
  p = Fma(p, r, Set1(1.f / 6));
  p = Fma(p, r, Set1(0.5f));
  p = Fma(p, r, Set1(1.f));
  p = Fma(p, r, Set1(1.f));
  return Scale2(p, n);
}

// log(a) for positive normal a: a = f 2^n, f in [1, 2); log f = 2 atanh(s), s = (f - 1) /
// (f + 1) in [0, 1/3), by its series to s^13 (error below 1e-8).
inline V Log(V a) {
  V n;
  const V f = Frexp(a, &n);
  const V s = Div(Add(f, Set1(-1.f)), Add(f, Set1(1.f)));
  const V s2 = Mul(s, s);
  V p = Set1(2.f / 13);
  p = Fma(p, s2, Set1(2.f / 11));
  p = Fma(p, s2, Set1(2.f / 9));
  p = Fma(p, s2, Set1(2.f / 7));
  p = Fma(p, s2, Set1(2.f / 5));
  p = Fma(p, s2, Set1(2.f / 3));
  p = Fma(p, s2, Set1(2.f));
  return Fma(n, Set1(0.693147180559945f), Mul(p, s));
}

inline void Prefetch(const float* row, int64_t lines) {
  const char* p = reinterpret_cast<const char*>(row);
  for (int64_t line = 0; line < lines; ++line) __builtin_prefetch(p + 64 * line, 1);
}

// The step size of one term (dot = input . output row) and its loss: -log sigmoid(x)
// = log1p(e) for the word itself, -log sigmoid(-x) = x + log1p(e) for a noise word.
inline float Coefficient(float dot, bool positive, float lr, bool with_loss, double* loss) {
  const float x = std::min(30.f, std::max(-30.f, dot));
  const float e = std::exp(-x);
  if (with_loss) *loss += std::log1p(e) + (positive ? 0.f : x);
  return ((positive ? 1.f : 0.f) - 1.f / (1.f + e)) * lr;
}

// Huge pages for the vector tables. A step reads and writes rows all over the tables
// (tens of MB to GBs), so with 4 KiB pages nearly every row costs a TLB miss; 2 MiB pages
// cut those misses by 512x. Linux's default ("madvise" transparent huge pages) gives them
// only to memory that asks before it is first touched: a table is moved once into a
// fresh buffer that asks (the buffers this has moved are remembered by address).
constexpr int64_t kHugePage = int64_t{2} << 20;

class HugeTables {
 public:
  static bool Moved(const void* p) {
    std::lock_guard<std::mutex> lock(Mu());
    return Set().count(p) > 0;
  }
  static void Remember(const void* p) {
    std::lock_guard<std::mutex> lock(Mu());
    Set().insert(p);
  }
  // Asks for huge pages over the whole 2 MiB pages inside [p, p + bytes); the range's
  // old contents are discarded (its pages come back zero), so call it before writing.
  static void Advise(void* p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHugePage - 1) & ~uintptr_t(kHugePage - 1);
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + bytes) & ~uintptr_t(kHugePage - 1);
    if (hi <= lo) return;
    void* start = reinterpret_cast<void*>(lo);
    // Pages a reused heap buffer already mapped stay small unless they are dropped first.
    madvise(start, hi - lo, MADV_DONTNEED);
    madvise(start, hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
  }

 private:
  static std::mutex& Mu() {
    static std::mutex mu;
    return mu;
  }
  static std::unordered_set<const void*>& Set() {
    static auto* set = new std::unordered_set<const void*>();
    return *set;
  }
};

// Makes the variable's buffer private before writing in place: a tensor read from the
// variable earlier may still share it (TensorFlow's own in-place updates do the same).
// A table of at least two huge pages is also moved, once, into a buffer on huge pages.
absl::Status PrepareTable(OpKernelContext* ctx, Var* var) {
  Tensor* t = var->tensor();
  const bool huge = t->TotalBytes() >= static_cast<size_t>(2 * kHugePage);
  if (t->RefCountIsOne() && (!huge || HugeTables::Moved(t->data()))) return absl::OkStatus();
  Tensor copy;
  TF_RETURN_IF_ERROR(ctx->allocate_temp(t->dtype(), t->shape(), &copy));
  if (huge) HugeTables::Advise(copy.data(), static_cast<int64_t>(copy.TotalBytes()));
  std::memcpy(copy.data(), t->data(), t->TotalBytes());
  *t = copy;
  if (huge) HugeTables::Remember(t->data());
  return absl::OkStatus();
}

// Everything a slice of centres reads and writes.
struct Batch {
  float* w_in;
  float* w_out;
  int64_t dim;
  int64_t lines;  // cache lines of a row
  int64_t vocab;
  const int64_t* ids;
  const int64_t* rows;
  const int32_t* radius;
  int64_t n;
  const float* prob;
  const int32_t* alias;
  const int64_t* sub_offsets;  // the subword table, or null
  const int32_t* sub_rows;
  float lr;
  bool with_loss;
  int negatives;

  // A noise word, its output row prefetched for the update that will use it.
  inline int64_t DrawNoise(Rng* rng) const {
    const uint64_t u = rng->Next();
    const int64_t b = static_cast<int64_t>(((u >> 32) * static_cast<uint64_t>(vocab)) >> 32);
    const float frac = static_cast<float>(u & 0xffffffffULL) * (1.0f / 4294967296.0f);
    const int64_t t = frac < prob[b] ? b : alias[b];
    Prefetch(w_out + t * dim, lines);
    return t;
  }

  // The contexts of centre i (positions), into `out`; returns how many.
  inline int64_t Contexts(int64_t i, int64_t* out) const {
    const int64_t row = rows[i];
    if (row < 0) return 0;
    const int64_t r = radius[i];
    const int64_t lo = std::max<int64_t>(0, i - r), hi = std::min<int64_t>(n - 1, i + r);
    int64_t m = 0;
    for (int64_t j = lo; j <= hi; ++j) {
      if (j != i && rows[j] == row) out[m++] = j;
    }
    return m;
  }

  // Appends the input rows of word w (its subword rows, or itself) to `bag`.
  inline void AddRows(int64_t w, std::vector<float*>* bag) const {
    if (sub_offsets == nullptr) {
      bag->push_back(w_in + w * dim);
      return;
    }
    for (int64_t k = sub_offsets[w]; k < sub_offsets[w + 1]; ++k) bag->push_back(w_in + sub_rows[k] * dim);
  }

  // Prefetches the input rows of word w (its subword rows, or itself).
  inline void PrefetchRows(int64_t w) const {
    if (sub_offsets == nullptr) {
      Prefetch(w_in + w * dim, lines);
      return;
    }
    for (int64_t k = sub_offsets[w]; k < sub_offsets[w + 1]; ++k) Prefetch(w_in + sub_rows[k] * dim, lines);
  }

  // The most contexts a centre of this batch can have (a buffer size).
  int64_t MaxContexts() const {
    int64_t r = 0;
    for (int64_t i = 0; i < n; ++i) r = std::max<int64_t>(r, radius[i]);
    return std::min(2 * r, n) + 1;
  }
};

using SliceFn = void (*)(const Batch&, Rng*, int64_t lo, int64_t hi, double* loss, double* count);

// Draws between drawing noise words (and prefetching their rows) and using them: the
// arithmetic of one centre or pair is shorter than a load from memory.
constexpr int64_t kAhead = 2;

// Sets of `negatives` noise words, each drawn kAhead sets before it is used.
class NoiseRing {
 public:
  NoiseRing(const Batch& b, Rng* rng) : b_(b), rng_(rng), ring_((kAhead + 1) * b.negatives) {
    for (int64_t k = 0; k < kAhead * b.negatives; ++k) ring_[k] = b.DrawNoise(rng);
  }

  // The next set (valid until the next call).
  const int64_t* Next() {
    const int64_t* current = ring_.data() + slot_ * b_.negatives;
    int64_t* ahead = ring_.data() + ((slot_ + kAhead) % (kAhead + 1)) * b_.negatives;
    for (int k = 0; k < b_.negatives; ++k) ahead[k] = b_.DrawNoise(rng_);
    slot_ = (slot_ + 1) % (kAhead + 1);
    return current;
  }

 private:
  const Batch& b_;
  Rng* rng_;
  std::vector<int64_t> ring_;
  int64_t slot_ = 0;
};

// The mean of the input rows in `bag`, into h.
inline void Mean(const std::vector<float*>& bag, int64_t dim, float* h) {
  std::fill(h, h + dim, 0.f);
  for (const float* row : bag) Axpy(h, 1.f, row, dim);
  const float inv = 1.f / static_cast<float>(bag.size());
  for (int64_t d = 0; d < dim; ++d) h[d] *= inv;
}

// h against the output row of `target` (positive) or of a noise word: the output row is
// updated at once (one pass over it: its old value into h's gradient, in grad, then its
// own update).
inline void Predict(const Batch& b, const float* h, int64_t target, bool positive, float* grad,
                    double* loss) {
  float* c = b.w_out + target * b.dim;
  const float g = Coefficient(Dot(h, c, b.dim), positive, b.lr, b.with_loss, loss);
#pragma omp simd
  for (int64_t d = 0; d < b.dim; ++d) {
    grad[d] += g * c[d];
    c[d] += g * h[d];
  }
}

// word2vec's skip-gram, pair by pair.
void SkipgramPairs(const Batch& b, Rng* rng, int64_t lo, int64_t hi, double* loss, double* count) {
  const int64_t dim = b.dim;
  const int negatives = b.negatives;
  std::vector<float> grad(dim);
  std::vector<int64_t> ctx(b.MaxContexts());
  NoiseRing noise(b, rng);
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t m = b.Contexts(i, ctx.data());
    const int64_t centre = b.ids[i];
    for (int64_t a = 0; a < m; ++a) {
      const int64_t* current = noise.Next();
      float* l1 = b.w_in + b.ids[ctx[a]] * dim;
      std::fill(grad.begin(), grad.end(), 0.f);
      Predict(b, l1, centre, true, grad.data(), loss);
      for (int k = 0; k < negatives; ++k) {
        if (current[k] != centre) Predict(b, l1, current[k], false, grad.data(), loss);
      }
      Axpy(l1, 1.f, grad.data(), dim);
      *count += 1.0;
    }
  }
}

// ---- HogBatch: a centre's pairs share its noise words and are updated together. The
// centre's m context rows x[a] (inputs) and t target rows y[c] (outputs: the centre,
// then its noise words) make logits L = X Y^T [m, t] and steps G = (label - sigmoid(L))
// * lr; then X += G Y and Y += G^T X, both from the rows before the centre's update.
// Rows may repeat (a word twice among the contexts, a noise word drawn twice): their
// updates add up.

// Buffers of one centre's [m, t] terms.
struct CentreScratch {
  float* logit;
  float* coef;
  float* loss;
  float* dx;  // [m, max(dim, kLanes)]
};

// coef = (label - sigmoid(logit)) * lr over [m, t], label 1 in column 0; returns the
// loss: log(1 + e^-x) for a label 1, x + log(1 + e^-x) for a label 0.
inline double SharedSteps(int64_t m, int64_t t, float lr, bool with_loss, const CentreScratch& w) {
  const int64_t n = m * t;
  for (int64_t i = 0; i < n; i += kLanes) {
    const Lane l = i + kLanes <= n ? Lane::Full() : Lane::Part(n - i);
    const V x = Min(Set1(30.f), Max(Set1(-30.f), Load(w.logit + i, l)));
    const V e = Add(Set1(1.f), Exp(Mul(x, Set1(-1.f))));
    Store(w.coef + i, Div(Set1(-lr), e), l);
    if (with_loss) Store(w.loss + i, Log(e), l);
  }
  double loss = 0.0;
  for (int64_t a = 0; a < m; ++a) {
    w.coef[a * t] += lr;
    if (!with_loss) continue;
    for (int64_t c = 0; c < t; ++c) {
      loss += w.loss[a * t + c] + (c == 0 ? 0.f : std::min(30.f, std::max(-30.f, w.logit[a * t + c])));
    }
  }
  return loss;
}

// One centre with exactly T targets: the rows stay in registers chunk by chunk.
template <int T>
double SharedCentre(float* const* x, int64_t m, float* const* y, int64_t dim, float lr, bool with_loss,
                    const CentreScratch& w) {
  float* logit = w.logit;
  const float* coef = w.coef;
  float* scratch = w.dx;
  for (int64_t a = 0; a < m; ++a) {
    V acc[T];
    for (int c = 0; c < T; ++c) acc[c] = Zero();
    ForChunks(dim, [&](int64_t k, Lane l) {
      const V xa = Load(x[a] + k, l);
      for (int c = 0; c < T; ++c) acc[c] = Fma(xa, Load(y[c] + k, l), acc[c]);
    });
    for (int c = 0; c < T; ++c) logit[a * T + c] = Sum(acc[c]);
  }
  const double loss = SharedSteps(m, T, lr, with_loss, w);
  ForChunks(dim, [&](int64_t k, Lane l) {
    V yc[T], dy[T];
    for (int c = 0; c < T; ++c) {
      yc[c] = Load(y[c] + k, l);
      dy[c] = Zero();
    }
    for (int64_t a = 0; a < m; ++a) {
      const V xa = Load(x[a] + k, l);
      V dxa = Zero();
      for (int c = 0; c < T; ++c) {
        const V g = Set1(coef[a * T + c]);
        dxa = Fma(g, yc[c], dxa);
        dy[c] = Fma(g, xa, dy[c]);
      }
      Store(scratch + a * kLanes, dxa, Lane::Full());
    }
    // Written back only now, after every read of this chunk: updates of a repeated row
    // add up, each computed from the old values.
    for (int64_t a = 0; a < m; ++a) {
      Store(x[a] + k, Add(Load(x[a] + k, l), Load(scratch + a * kLanes, Lane::Full())), l);
    }
    for (int c = 0; c < T; ++c) Store(y[c] + k, Add(Load(y[c] + k, l), dy[c]), l);
  });
  return loss;
}

// The same for any number of targets, a row at a time (more than 8 targets: rare).
double SharedCentreAny(float* const* x, int64_t m, float* const* y, int64_t t, int64_t dim, float lr,
                       bool with_loss, const CentreScratch& w) {
  const float* coef = w.coef;
  float* dx = w.dx;
  for (int64_t a = 0; a < m; ++a) {
    for (int64_t c = 0; c < t; ++c) w.logit[a * t + c] = Dot(x[a], y[c], dim);
  }
  const double loss = SharedSteps(m, t, lr, with_loss, w);
  for (int64_t a = 0; a < m; ++a) {
    float* da = dx + a * dim;
    std::fill(da, da + dim, 0.f);
    for (int64_t c = 0; c < t; ++c) Axpy(da, coef[a * t + c], y[c], dim);
  }
  for (int64_t c = 0; c < t; ++c) {
    for (int64_t a = 0; a < m; ++a) Axpy(y[c], coef[a * t + c], x[a], dim);
  }
  for (int64_t a = 0; a < m; ++a) Axpy(x[a], 1.f, dx + a * dim, dim);
  return loss;
}

void SkipgramShared(const Batch& b, Rng* rng, int64_t lo, int64_t hi, double* loss, double* count) {
  const int64_t dim = b.dim;
  const int negatives = b.negatives;
  const int64_t max_ctx = b.MaxContexts();
  std::vector<int64_t> ctx(max_ctx);
  std::vector<float*> x(max_ctx), y(negatives + 1);
  const int64_t terms = max_ctx * (negatives + 1);
  std::vector<float> buffer(3 * terms + max_ctx * std::max(dim, kLanes));
  const CentreScratch work{buffer.data(), buffer.data() + terms, buffer.data() + 2 * terms, buffer.data() + 3 * terms};
  NoiseRing noise(b, rng);
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t m = b.Contexts(i, ctx.data());
    if (m == 0) continue;
    const int64_t* current = noise.Next();
    const int64_t centre = b.ids[i];
    int64_t t = 0;
    y[t++] = b.w_out + centre * dim;
    for (int k = 0; k < negatives; ++k) {
      if (current[k] != centre) y[t++] = b.w_out + current[k] * dim;
    }
    for (int64_t a = 0; a < m; ++a) x[a] = b.w_in + b.ids[ctx[a]] * dim;
    const auto args = std::make_tuple(x.data(), m, y.data(), dim, b.lr, b.with_loss, work);
    switch (t) {
      case 1: *loss += std::apply(SharedCentre<1>, args); break;
      case 2: *loss += std::apply(SharedCentre<2>, args); break;
      case 3: *loss += std::apply(SharedCentre<3>, args); break;
      case 4: *loss += std::apply(SharedCentre<4>, args); break;
      case 5: *loss += std::apply(SharedCentre<5>, args); break;
      case 6: *loss += std::apply(SharedCentre<6>, args); break;
      case 7: *loss += std::apply(SharedCentre<7>, args); break;
      case 8: *loss += std::apply(SharedCentre<8>, args); break;
      default:
        *loss += SharedCentreAny(x.data(), m, y.data(), t, dim, b.lr, b.with_loss, work);
    }
    *count += static_cast<double>(m);
  }
}

// ---- One input vector h against t output rows y[c] (CBOW: the centre and its noise
// words; fastText's skip-gram: the centre's contexts and its noise words): the first
// `positives` have label 1, the rest label 0, and term c counts weight[c] times. All
// terms are computed from the rows before the update, as in HogBatch's step: y[c] +=
// g[c] h and grad = sum of g[c] y[c] (h's gradient, applied by the caller), a repeated row
// getting each of its updates. Returns the loss (each term times its weight).
double HiddenStep(const float* h, float* const* y, int64_t t, int64_t positives, const float* weight, int64_t dim,
                  float lr, bool with_loss, float* coef, float* grad) {
  double loss = 0.0;
  constexpr int64_t kMaxVectorTerms = 64;
  if (t > kMaxVectorTerms) {  // more terms than the buffers below: one at a time
    for (int64_t c = 0; c < t; ++c) {
      const bool positive = c < positives;
      const float x = std::min(30.f, std::max(-30.f, Dot(h, y[c], dim)));
      const float e = std::exp(-x);
      coef[c] = ((positive ? 1.f : 0.f) - 1.f / (1.f + e)) * lr * weight[c];
      if (with_loss) loss += weight[c] * (std::log1p(e) + (positive ? 0.f : x));
    }
  } else {
    // The sigmoids (and losses) of all the terms at once: scalar exp and division, one
    // term at a time, cost CBOW about a quarter of its time.
    float logit[kMaxVectorTerms], term_loss[kMaxVectorTerms];
    for (int64_t c = 0; c < t; ++c) logit[c] = Dot(h, y[c], dim);
    ForChunks(t, [&](int64_t k, Lane l) {
      const V x = Min(Set1(30.f), Max(Set1(-30.f), Load(logit + k, l)));
      const V e = Add(Set1(1.f), Exp(Mul(x, Set1(-1.f))));  // 1 + e^-x
      Store(coef + k, Mul(Div(Set1(-lr), e), Load(weight + k, l)), l);
      if (with_loss) {
        Store(logit + k, x, l);
        Store(term_loss + k, Log(e), l);
      }
    });
    for (int64_t c = 0; c < positives; ++c) coef[c] += lr * weight[c];
    if (with_loss) {
      for (int64_t c = 0; c < t; ++c) loss += weight[c] * (term_loss[c] + (c < positives ? 0.f : logit[c]));
    }
  }
  // One pass: each chunk of grad from the old rows, then the rows' updates.
  ForChunks(dim, [&](int64_t k, Lane l) {
    const V hk = Load(h + k, l);
    V gk = Zero();
    for (int64_t c = 0; c < t; ++c) gk = Fma(Set1(coef[c]), Load(y[c] + k, l), gk);
    for (int64_t c = 0; c < t; ++c) Store(y[c] + k, Fma(Set1(coef[c]), hk, Load(y[c] + k, l)), l);
    Store(grad + k, gk, l);
  });
  return loss;
}

// word2vec's CBOW (cbow_mean=1), fastText's with a subword table.
void Cbow(const Batch& b, Rng* rng, int64_t lo, int64_t hi, double* loss, double* count) {
  const int64_t dim = b.dim;
  const int64_t max_ctx = b.MaxContexts();
  std::vector<int64_t> ctx(max_ctx);
  std::vector<float*> bag, y(b.negatives + 1);
  std::vector<float> h(dim), grad(dim), coef(b.negatives + 1), weight(b.negatives + 1, 1.f);
  NoiseRing noise(b, rng);
  double sum = 0.0, centres = 0.0;
  for (int64_t i = lo; i < hi; ++i) {
    // The rows of the token that enters the windows of the next centres, and the output
    // row of a centre kAhead on (its noise words' rows are prefetched as they are drawn).
    if (i + max_ctx < b.n) b.PrefetchRows(b.ids[i + max_ctx]);
    if (i + kAhead < hi) Prefetch(b.w_out + b.ids[i + kAhead] * dim, b.lines);
    const int64_t m = b.Contexts(i, ctx.data());
    if (m == 0) continue;
    const int64_t centre = b.ids[i];
    const int64_t* words = noise.Next();
    int64_t t = 0;
    y[t++] = b.w_out + centre * dim;
    for (int k = 0; k < b.negatives; ++k) {
      if (words[k] != centre) y[t++] = b.w_out + words[k] * dim;
    }
    bag.clear();
    for (int64_t a = 0; a < m; ++a) b.AddRows(b.ids[ctx[a]], &bag);
    Mean(bag, dim, h.data());
    sum += HiddenStep(h.data(), y.data(), t, 1, weight.data(), dim, b.lr, b.with_loss, coef.data(), grad.data());
    for (float* row : bag) Axpy(row, 1.f, grad.data(), dim);
    centres += 1.0;
  }
  *loss += sum;
  *count += centres;
}

// fastText's skip-gram, pair by pair: the centre's vector composed once per centre,
// `negatives` noise words drawn for each pair, each output row updated in turn.
void SubwordSkipgramPairs(const Batch& b, Rng* rng, int64_t lo, int64_t hi, double* loss, double* count) {
  const int64_t dim = b.dim;
  std::vector<int64_t> ctx(b.MaxContexts());
  std::vector<float*> bag;
  std::vector<float> h(dim), grad(dim);
  NoiseRing noise(b, rng);
  double sum = 0.0, pairs = 0.0;
  for (int64_t i = lo; i < hi; ++i) {
    if (i + 1 < hi) b.PrefetchRows(b.ids[i + 1]);  // the next centre's, while this one trains
    const int64_t m = b.Contexts(i, ctx.data());
    if (m == 0) continue;
    bag.clear();
    b.AddRows(b.ids[i], &bag);
    Mean(bag, dim, h.data());
    std::fill(grad.begin(), grad.end(), 0.f);
    for (int64_t a = 0; a < m; ++a) {
      const int64_t target = b.ids[ctx[a]];
      const int64_t* words = noise.Next();
      Predict(b, h.data(), target, true, grad.data(), &sum);
      for (int k = 0; k < b.negatives; ++k) {
        if (words[k] != target) Predict(b, h.data(), words[k], false, grad.data(), &sum);
      }
    }
    for (float* row : bag) Axpy(row, 1.f, grad.data(), dim);
    pairs += static_cast<double>(m);
  }
  *loss += sum;
  *count += pairs;
}

// fastText's skip-gram with HogBatch's shared noise words: the centre's pairs, in
// groups of kPairsPerNoiseSet, each draw `negatives` noise words shared by the group. h
// meets the m contexts' output rows (label 1) and each noise word once, weighted by the
// number of its group's pairs whose context is not that word (the pairs that would each
// have met it); then every row is updated together (HiddenStep). The expected update is
// the pair-by-pair one's, with fewer output rows touched per centre: m + K m / 3 instead
// of m (K + 1).
//
// The group size, measured (enwiki-AA, first 30 files, 5 epochs, dim 100, 2 threads;
// analogy top 30k): 1 pair (fastText's draws) 260k words/s, 53.1%; 2: 437k, 51.8%; 3:
// 466k, 52.2%; 4: 422k, 51.8%; all the centre's pairs: 555k, 48.0%. gensim's FastText on
// the same: 189k words/s, 51.9%. Sharing among all pairs costs 5 points: the centre's
// vector h is the same in all its pairs, so (unlike skip-gram's HogBatch, where each
// pair has its own input row) a shared noise word gives them one identical update.
constexpr int64_t kPairsPerNoiseSet = 3;

void SubwordSkipgramShared(const Batch& b, Rng* rng, int64_t lo, int64_t hi, double* loss, double* count) {
  const int64_t dim = b.dim;
  const int64_t max_ctx = b.MaxContexts();
  std::vector<int64_t> ctx(max_ctx);
  std::vector<float*> bag, y(max_ctx * (1 + b.negatives));
  std::vector<float> h(dim), grad(dim), coef(max_ctx * (1 + b.negatives)), weight(max_ctx * (1 + b.negatives));
  NoiseRing noise(b, rng);
  double sum = 0.0, pairs = 0.0;
  for (int64_t i = lo; i < hi; ++i) {
    // The next centre's subword rows, and the output row of the token entering the
    // windows of the centres ahead (the noise words' rows are prefetched when drawn).
    if (i + 1 < hi) b.PrefetchRows(b.ids[i + 1]);
    if (i + max_ctx < b.n) Prefetch(b.w_out + b.ids[i + max_ctx] * dim, b.lines);
    const int64_t m = b.Contexts(i, ctx.data());
    if (m == 0) continue;
    int64_t t = 0;
    for (int64_t a = 0; a < m; ++a) {
      weight[t] = 1.f;
      y[t++] = b.w_out + b.ids[ctx[a]] * dim;
    }
    for (int64_t g = 0; g < m; g += kPairsPerNoiseSet) {
      const int64_t g_end = std::min<int64_t>(m, g + kPairsPerNoiseSet);
      const int64_t* words = noise.Next();
      for (int k = 0; k < b.negatives; ++k) {
        int64_t n = 0;
        for (int64_t a = g; a < g_end; ++a) n += b.ids[ctx[a]] != words[k];
        if (n == 0) continue;
        weight[t] = static_cast<float>(n);
        y[t++] = b.w_out + words[k] * dim;
      }
    }
    bag.clear();
    b.AddRows(b.ids[i], &bag);
    Mean(bag, dim, h.data());
    sum += HiddenStep(h.data(), y.data(), t, m, weight.data(), dim, b.lr, b.with_loss, coef.data(), grad.data());
    for (float* row : bag) Axpy(row, 1.f, grad.data(), dim);
    pairs += static_cast<double>(m);
  }
  *loss += sum;
  *count += pairs;
}

enum class Subwords { kNone, kOptional, kRequired };

}  // namespace

// The checks, locking, slicing and outputs every op shares; subclasses pick the update.
class StepOp : public OpKernel {
 public:
  StepOp(OpKernelConstruction* ctx, Subwords subwords) : OpKernel(ctx), subwords_(subwords) {
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
    const int64_t n = ids_t.NumElements();
    OP_REQUIRES(ctx, ids_t.dims() == 1 && rows_t.NumElements() == n && radius_t.NumElements() == n,
                absl::InvalidArgumentError("ids, rows and radius must be vectors of one length"));
    Batch b{};
    b.lr = ctx->input(7).scalar<float>()();
    const uint64_t seed = static_cast<uint64_t>(ctx->input(8).scalar<int64_t>()());
    b.with_loss = ctx->input(9).scalar<bool>()();
    b.negatives = negatives_;
    const bool with_subwords = subwords_ != Subwords::kNone && ctx->input(10).NumElements() > 0;

    tensorflow::mutex_lock in_lock(*in_var->mu());
    tensorflow::mutex_lock out_lock(*out_var->mu());
    Tensor* in_t = in_var->tensor();
    Tensor* out_t = out_var->tensor();
    OP_REQUIRES(ctx, in_t->dtype() == tensorflow::DT_FLOAT && out_t->dtype() == tensorflow::DT_FLOAT,
                absl::InvalidArgumentError("the vector tables must be float32"));
    if (with_subwords || subwords_ == Subwords::kRequired) {
      OP_REQUIRES(ctx, in_t->dims() == 2 && out_t->dims() == 2 && in_t->dim_size(1) == out_t->dim_size(1) &&
                           in_t->dim_size(0) >= out_t->dim_size(0),
                  absl::InvalidArgumentError("the vector tables must be matrices of one width, input_vectors "
                                             "with at least as many rows as output_vectors"));
    } else {
      OP_REQUIRES(ctx, in_t->dims() == 2 && in_t->shape() == out_t->shape(),
                  absl::InvalidArgumentError("the vector tables must be matrices of one shape"));
    }
    b.vocab = out_t->dim_size(0);
    b.dim = in_t->dim_size(1);
    b.lines = (b.dim * static_cast<int64_t>(sizeof(float)) + 63) / 64;
    OP_REQUIRES(ctx, prob_t.NumElements() == b.vocab && alias_t.NumElements() == b.vocab,
                absl::InvalidArgumentError("noise_prob and noise_alias must hold one entry per vocabulary row"));
    b.ids = ids_t.flat<int64_t>().data();
    b.rows = rows_t.flat<int64_t>().data();
    b.radius = radius_t.flat<int32_t>().data();
    b.n = n;
    b.prob = prob_t.flat<float>().data();
    b.alias = alias_t.flat<int32_t>().data();
    OP_REQUIRES_OK(ctx, CheckIds(b));
    if (with_subwords || subwords_ == Subwords::kRequired) {
      OP_REQUIRES_OK(ctx, CheckSubwords(ctx->input(10), ctx->input(11), b.vocab, in_t->dim_size(0)));
      b.sub_offsets = ctx->input(10).flat<int64_t>().data();
      b.sub_rows = ctx->input(11).flat<int32_t>().data();
    }

    OP_REQUIRES_OK(ctx, PrepareTable(ctx, in_var.get()));
    OP_REQUIRES_OK(ctx, PrepareTable(ctx, out_var.get()));
    b.w_in = in_t->flat<float>().data();
    b.w_out = out_t->flat<float>().data();
    double loss = 0.0, count = 0.0;
    Run(ctx, b, seed, &loss, &count);
    Tensor* loss_out = nullptr;
    Tensor* count_out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {}, &loss_out));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {}, &count_out));
    loss_out->scalar<float>()() = static_cast<float>(loss);
    count_out->scalar<float>()() = static_cast<float>(count);
  }

 protected:
  virtual SliceFn Update() const = 0;

 private:
  static absl::Status CheckIds(const Batch& b) {
    for (int64_t i = 0; i < b.n; ++i) {
      if (b.ids[i] < 0 || b.ids[i] >= b.vocab) {
        return absl::InvalidArgumentError(
            absl::StrCat("ids[", i, "] = ", b.ids[i], " is outside the vocabulary [0, ", b.vocab, ")"));
      }
    }
    for (int64_t i = 0; i < b.vocab; ++i) {
      if (b.alias[i] < 0 || b.alias[i] >= b.vocab) {
        return absl::InvalidArgumentError("noise_alias holds an id outside the vocabulary");
      }
    }
    return absl::OkStatus();
  }

  static absl::Status CheckSubwords(const Tensor& offsets_t, const Tensor& rows_t, int64_t vocab, int64_t in_rows) {
    const int64_t nnz = rows_t.NumElements();
    if (offsets_t.dims() != 1 || offsets_t.NumElements() != vocab + 1) {
      return absl::InvalidArgumentError(absl::StrCat("subword_offsets must hold vocabulary size + 1 = ", vocab + 1,
                                                     " entries, got ", offsets_t.NumElements()));
    }
    const int64_t* offsets = offsets_t.flat<int64_t>().data();
    if (offsets[0] != 0 || offsets[vocab] != nnz) {
      return absl::InvalidArgumentError(absl::StrCat("subword_offsets must start at 0 and end at the length of "
                                                     "subword_rows (", nnz, ")"));
    }
    for (int64_t w = 0; w < vocab; ++w) {
      if (offsets[w + 1] <= offsets[w]) {
        return absl::InvalidArgumentError(absl::StrCat("word ", w, " has no subword rows: subword_offsets must "
                                                       "increase strictly"));
      }
    }
    const int32_t* rows = rows_t.flat<int32_t>().data();
    for (int64_t k = 0; k < nnz; ++k) {
      if (rows[k] < 0 || rows[k] >= in_rows) {
        return absl::InvalidArgumentError(absl::StrCat("subword_rows[", k, "] = ", rows[k],
                                                       " is outside input_vectors [0, ", in_rows, ")"));
      }
    }
    return absl::OkStatus();
  }

  // Cuts the batch into one slice of centres per thread (at least 512 centres a slice:
  // smaller ones cost more in hand-offs than they save) and trains them side by side.
  void Run(OpKernelContext* ctx, const Batch& b, uint64_t seed, double* loss, double* count) const {
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(pool->num_threads, b.n / 512));
    // One cache line per slice: the slices add to their sums at every centre.
    struct alignas(64) Sums {
      double loss = 0.0, count = 0.0;
    };
    std::vector<Sums> sums(slices);
    const SliceFn update = Update();
    auto work = [&](int64_t first_slice, int64_t end_slice) {
      for (int64_t s = first_slice; s < end_slice; ++s) {
        uint64_t state = seed ^ (0x632be59bd9b4e019ULL * static_cast<uint64_t>(s + 1));
        Rng rng{SplitMix(&state) | 1};
        update(b, &rng, b.n * s / slices, b.n * (s + 1) / slices, &sums[s].loss, &sums[s].count);
      }
    };
    // A cost per slice so large that Shard gives every slice its own thread.
    tensorflow::Shard(pool->num_threads, pool->workers, slices, /*cost_per_unit=*/int64_t{1} << 40, work);
    for (int64_t s = 0; s < slices; ++s) {
      *loss += sums[s].loss;
      *count += sums[s].count;
    }
  }

  Subwords subwords_;
  int negatives_;
};

class SkipgramStepOp : public StepOp {
 public:
  explicit SkipgramStepOp(OpKernelConstruction* ctx) : StepOp(ctx, Subwords::kNone) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shared_negatives", &shared_));
  }

 protected:
  SliceFn Update() const override { return shared_ ? SkipgramShared : SkipgramPairs; }

 private:
  bool shared_;
};

class CbowStepOp : public StepOp {
 public:
  explicit CbowStepOp(OpKernelConstruction* ctx) : StepOp(ctx, Subwords::kOptional) {}

 protected:
  SliceFn Update() const override { return Cbow; }
};

class SubwordSkipgramStepOp : public StepOp {
 public:
  explicit SubwordSkipgramStepOp(OpKernelConstruction* ctx) : StepOp(ctx, Subwords::kRequired) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shared_negatives", &shared_));
  }

 protected:
  SliceFn Update() const override { return shared_ ? SubwordSkipgramShared : SubwordSkipgramPairs; }

 private:
  bool shared_;
};

REGISTER_KERNEL_BUILDER(Name("EmbedflowSkipgramStep").Device(DEVICE_CPU), SkipgramStepOp);
REGISTER_KERNEL_BUILDER(Name("EmbedflowCbowStep").Device(DEVICE_CPU), CbowStepOp);
REGISTER_KERNEL_BUILDER(Name("EmbedflowSubwordSkipgramStep").Device(DEVICE_CPU), SubwordSkipgramStepOp);

// Subsampling and window radii drawn in C++ from a corpus in memory (see the op's doc).
class DrawBatchOp : public OpKernel {
 public:
  explicit DrawBatchOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("window", &window_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& tokens_t = ctx->input(0);
    const Tensor& starts_t = ctx->input(1);
    const Tensor& records_t = ctx->input(2);
    const Tensor& keep_t = ctx->input(3);
    OP_REQUIRES(ctx, tokens_t.dims() == 1 && starts_t.dims() == 1 && starts_t.NumElements() >= 1 &&
                         records_t.dims() == 1 && keep_t.dims() == 1,
                absl::InvalidArgumentError("tokens, record_starts, records and keep must be vectors, "
                                           "record_starts at least one entry long"));
    const int32_t* tokens = tokens_t.flat<int32_t>().data();
    const int64_t* starts = starts_t.flat<int64_t>().data();
    const int64_t* records = records_t.flat<int64_t>().data();
    const float* keep = keep_t.flat<float>().data();
    const int64_t num_records = starts_t.NumElements() - 1, num_tokens = tokens_t.NumElements();
    const int64_t vocab = keep_t.NumElements(), batch = records_t.NumElements();
    int64_t raw = 0;
    for (int64_t k = 0; k < batch; ++k) {
      const int64_t r = records[k];
      OP_REQUIRES(ctx, r >= 0 && r < num_records,
                  absl::InvalidArgumentError(absl::StrCat("records[", k, "] = ", r, " is outside [0, ",
                                                          num_records, ")")));
      OP_REQUIRES(ctx, starts[r] >= 0 && starts[r] <= starts[r + 1] && starts[r + 1] <= num_tokens,
                  absl::InvalidArgumentError(absl::StrCat("record_starts of record ", r, " (", starts[r], ", ",
                                                          starts[r + 1], ") are not a range of the ",
                                                          num_tokens, " tokens")));
      raw += starts[r + 1] - starts[r];
    }
    const uint64_t seed = static_cast<uint64_t>(ctx->input(4).scalar<int64_t>()());
    // Each record draws from its own generator (seed, record): the batch is the same
    // however the records are split among threads.
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(pool->num_threads, batch / 64));
    struct Part {
      std::vector<int64_t> ids, rows;
      std::vector<int32_t> radius;
      int64_t bad = -1;  // a token outside the vocabulary, by position
    };
    std::vector<Part> out(parts);
    auto work = [&](int64_t first, int64_t end) {
      for (int64_t p = first; p < end; ++p) {
        Part& part = out[p];
        for (int64_t k = batch * p / parts; k < batch * (p + 1) / parts && part.bad < 0; ++k) {
          const int64_t r = records[k];
          uint64_t state = seed ^ (0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(r + 1));
          Rng rng{SplitMix(&state) | 1};
          for (int64_t i = starts[r]; i < starts[r + 1]; ++i) {
            const int32_t w = tokens[i];
            if (w < 0 || w >= vocab) {
              part.bad = i;
              break;
            }
            const uint64_t u = rng.Next();
            // 24 random bits for the keep test, 32 others for the radius.
            if (static_cast<float>(u >> 40) * (1.0f / 16777216.0f) >= keep[w]) continue;
            part.ids.push_back(w);
            part.rows.push_back(r);
            part.radius.push_back(
                1 + static_cast<int32_t>(((u & 0xffffffffULL) * static_cast<uint64_t>(window_)) >> 32));
          }
        }
      }
    };
    tensorflow::Shard(pool->num_threads, pool->workers, parts, /*cost_per_unit=*/int64_t{1} << 40, work);
    int64_t n = 0;
    for (const Part& part : out) {
      OP_REQUIRES(ctx, part.bad < 0,
                  absl::InvalidArgumentError(absl::StrCat("tokens[", part.bad, "] = ", tokens[part.bad],
                                                          " is outside the vocabulary [0, ", vocab, ")")));
      n += static_cast<int64_t>(part.ids.size());
    }
    Tensor *ids = nullptr, *rows = nullptr, *radius = nullptr, *words = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, {n}, &ids));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, {n}, &rows));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, {n}, &radius));
    int64_t at = 0;
    for (const Part& part : out) {
      std::copy(part.ids.begin(), part.ids.end(), ids->flat<int64_t>().data() + at);
      std::copy(part.rows.begin(), part.rows.end(), rows->flat<int64_t>().data() + at);
      std::copy(part.radius.begin(), part.radius.end(), radius->flat<int32_t>().data() + at);
      at += static_cast<int64_t>(part.ids.size());
    }
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, {}, &words));
    words->scalar<float>()() = static_cast<float>(raw);
  }

 private:
  int window_;
};

REGISTER_KERNEL_BUILDER(Name("EmbedflowDrawBatch").Device(DEVICE_CPU), DrawBatchOp);

}  // namespace embedflow
