// 3D convolutions (NDHWC activations, DHWIO kernels) as XLA FFI custom calls into oneDNN.
//
// Three handlers, one per oneDNN primitive kind:
//   MssegOnednnConvFwd         (x, w)   -> y     convolution_forward
//   MssegOnednnConvBwdData     (dy, w)  -> dx    convolution_backward_data
//   MssegOnednnConvBwdWeights  (x, dy)  -> dw    convolution_backward_weights
// Attributes: stride (i64, the same in all three spatial dims), padding (i64[6]: lo0 lo1 lo2
// hi0 hi1 hi2, as lax.padtype_to_pads gives them) and layout (i64: 0 = the plain ndhwc/dhwio
// formats everywhere, 1 = oneDNN picks the kernel's format (reordered per call), 2 = oneDNN
// picks every format). Inputs and results are f32 or bf16; inputs of one call share a dtype,
// accumulation is f32, and the backward-weights result may be f32 for bf16 inputs.
//
// oneDNN 3.2's bf16 backward-weights kernel (jit_bf16:avx512_core_bf16) is wrong for inputs
// thinner than the kernel on some axis at stride 2: it reads scratchpad bytes it never wrote
// (so the kernel gradient held whatever the previous convolution left there: intermittent
// ~1e18 values) and, for inputs one voxel high between odd-sized axes, it misplaces taps (a
// deterministic wrong result). Such thin inputs take oneDNN's gemm implementation instead
// (ThinInput). Poison mode (MssegOnednnSetPoison) fills every result, reorder buffer and
// scratchpad with 0x7F bytes before each call, so a read of memory oneDNN did not write, or
// an output it did not write, shows up as ~3.4e38 every time instead of now and then.
//
// Primitives are built once per (kind, shapes, dtypes, stride, padding, layout) and kept in a
// process-wide cache behind a mutex. Each call passes its own thread-local scratchpad (and
// reorder buffers), so primitives could execute concurrently; calls are nevertheless
// serialised (see exec_mutex) because each one already uses every core. Failures come back
// to XLA as ffi::Error, never abort.

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define MSSEG_EXPORT extern "C" __attribute__((visibility("default")))

MSSEG_EXPORT XLA_FFI_Error* MssegOnednnConvFwd(XLA_FFI_CallFrame* call_frame);
MSSEG_EXPORT XLA_FFI_Error* MssegOnednnConvBwdData(XLA_FFI_CallFrame* call_frame);
MSSEG_EXPORT XLA_FFI_Error* MssegOnednnConvBwdWeights(XLA_FFI_CallFrame* call_frame);
MSSEG_EXPORT int64_t MssegOnednnVersion();
MSSEG_EXPORT int64_t MssegOnednnCacheSize();
MSSEG_EXPORT int64_t MssegOnednnSupports(int64_t bf16);
MSSEG_EXPORT void MssegOnednnSetPoison(int64_t on);

namespace {

using dnnl::memory;
using Tag = memory::format_tag;
using Dt = memory::data_type;

enum Kind : int64_t { kFwd = 0, kBwdData = 1, kBwdWeights = 2 };
enum Layout : int64_t { kPlain = 0, kAnyWeights = 1, kAny = 2 };

dnnl::engine& Engine() {
  static dnnl::engine* engine = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *engine;
}

// One tensor argument of a primitive: the caller's plain memory and the primitive's own
// descriptor; a reorder between them when they differ.
struct Slot {
  int arg = 0;
  bool output = false;
  memory::desc user;
  memory::desc prim;
  bool reordered = false;
  dnnl::reorder reorder;
  size_t reorder_scratchpad_bytes = 0;
};

struct Entry {
  dnnl::primitive primitive;
  std::array<Slot, 3> slots;  // in order: first input, second input, result
  size_t scratchpad_bytes = 0;
};

using Key = std::array<int64_t, 24>;

std::mutex cache_mutex;
std::map<Key, std::shared_ptr<const Entry>>& Cache() {
  static auto* cache = new std::map<Key, std::shared_ptr<const Entry>>();
  return *cache;
}

// Per-thread buffers that grow and are reused: scratchpad and the reordered copies.
struct Arena {
  struct Buffer {
    void* data = nullptr;
    size_t bytes = 0;
  };
  std::array<Buffer, 5> buffers;  // 0-2: reordered tensors, 3: scratchpad, 4: reorder's
  ~Arena() {
    for (auto& b : buffers) std::free(b.data);
  }
  void* Get(int i, size_t bytes) {
    Buffer& b = buffers[i];
    if (bytes > b.bytes) {
      std::free(b.data);
      b.data = nullptr;
      b.bytes = 0;
      size_t rounded = (bytes + 4095) / 4096 * 4096;
      b.data = std::aligned_alloc(4096, rounded);
      if (b.data == nullptr) throw std::bad_alloc();
      b.bytes = rounded;
    }
    return b.data;
  }
};

thread_local Arena arena;

// The convolution's geometry, validated against the buffers of one call.
struct Geometry {
  int64_t batch = 0, c = 0, f = 0, k = 0, stride = 1;
  std::array<int64_t, 3> in{}, out{}, lo{}, hi{};
  Dt dtype = Dt::f32;     // activations and kernel
  Dt result = Dt::f32;    // the result buffer's dtype
  int64_t layout = kAnyWeights;
};

ffi::Error DnnlType(ffi::DataType t, Dt* out) {
  switch (t) {
    case ffi::DataType::F32:
      *out = Dt::f32;
      return ffi::Error::Success();
    case ffi::DataType::BF16:
      *out = Dt::bf16;
      return ffi::Error::Success();
    default:
      return ffi::Error::InvalidArgument("onednn conv3d: dtype must be float32 or bfloat16");
  }
}

std::string Dims(ffi::AnyBuffer::Dimensions d) {
  std::string s = "[";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "]";
}

// Reads the geometry from an activation (B, X, Y, Z, C), a kernel (k, k, k, C, F) and the other
// activation (B, X', Y', Z', F) and checks that they form a SAME-style convolution.
ffi::Error MakeGeometry(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions w,
                        ffi::AnyBuffer::Dimensions y, int64_t stride,
                        ffi::Span<const int64_t> padding, int64_t layout, Geometry* g) {
  if (x.size() != 5 || w.size() != 5 || y.size() != 5) {
    return ffi::Error::InvalidArgument("onednn conv3d: expected rank-5 arrays, got x " +
                                       Dims(x) + ", kernel " + Dims(w) + ", y " + Dims(y));
  }
  if (padding.size() != 6) {
    return ffi::Error::InvalidArgument("onednn conv3d: padding must have 6 entries");
  }
  if (stride < 1) return ffi::Error::InvalidArgument("onednn conv3d: stride must be >= 1");
  if (layout < kPlain || layout > kAny) {
    return ffi::Error::InvalidArgument("onednn conv3d: layout must be 0, 1 or 2");
  }
  g->batch = x[0];
  g->c = x[4];
  g->f = w[4];
  g->k = w[0];
  g->stride = stride;
  g->layout = layout;
  bool ok = w[1] == g->k && w[2] == g->k && w[3] == g->c && y[0] == g->batch && y[4] == g->f;
  for (int i = 0; i < 3; ++i) {
    g->in[i] = x[1 + i];
    g->out[i] = y[1 + i];
    g->lo[i] = padding[i];
    g->hi[i] = padding[3 + i];
    ok = ok && g->lo[i] >= 0 && g->hi[i] >= 0 &&
         g->out[i] == (g->in[i] + g->lo[i] + g->hi[i] - g->k) / stride + 1 &&
         g->in[i] + g->lo[i] + g->hi[i] >= g->k;
  }
  if (!ok) {
    return ffi::Error::InvalidArgument(
        "onednn conv3d: inconsistent shapes x " + Dims(x) + ", kernel " + Dims(w) + ", y " +
        Dims(y) + " for stride " + std::to_string(stride) + " and the given padding");
  }
  return ffi::Error::Success();
}

Key MakeKey(Kind kind, const Geometry& g) {
  return Key{kind,       static_cast<int64_t>(g.dtype), static_cast<int64_t>(g.result),
             g.layout,   g.batch, g.c, g.f, g.k, g.stride,
             g.in[0],    g.in[1], g.in[2], g.out[0], g.out[1], g.out[2],
             g.lo[0],    g.lo[1], g.lo[2], g.hi[0],  g.hi[1],  g.hi[2], 0, 0, 0};
}

memory::desc Md(const memory::dims& dims, Dt dt, Tag tag) { return memory::desc(dims, dt, tag); }

void SetSlot(Slot* s, int arg, bool output, const memory::desc& user, const memory::desc& prim) {
  s->arg = arg;
  s->output = output;
  s->user = user;
  s->prim = prim;
  s->reordered = !(user == prim);
  if (s->reordered) {
    auto& eng = Engine();
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    auto pd = output ? dnnl::reorder::primitive_desc(eng, prim, eng, user, attr)
                     : dnnl::reorder::primitive_desc(eng, user, eng, prim, attr);
    s->reorder_scratchpad_bytes = pd.scratchpad_desc().get_size();
    s->reorder = dnnl::reorder(pd);
  }
}

bool Contains(const char* text, const char* part) {
  return text != nullptr && std::strstr(text, part) != nullptr;
}

// An input thinner than the kernel on some axis (the shapes oneDNN's jit bf16
// backward-weights gets wrong; see the top of this file).
bool ThinInput(const Geometry& g) {
  return std::any_of(g.in.begin(), g.in.end(), [&](int64_t n) { return n < g.k; });
}

std::shared_ptr<const Entry> Build(Kind kind, const Geometry& g) {
  auto& eng = Engine();
  const memory::dims src_dims = {g.batch, g.c, g.in[0], g.in[1], g.in[2]};
  const memory::dims wei_dims = {g.f, g.c, g.k, g.k, g.k};
  const memory::dims dst_dims = {g.batch, g.f, g.out[0], g.out[1], g.out[2]};
  const memory::dims strides = {g.stride, g.stride, g.stride};
  const memory::dims pad_l = {g.lo[0], g.lo[1], g.lo[2]};
  const memory::dims pad_r = {g.hi[0], g.hi[1], g.hi[2]};
  const Tag act_tag = g.layout == kAny ? Tag::any : Tag::ndhwc;
  const Tag wei_tag = g.layout == kPlain ? Tag::dhwio : Tag::any;
  const Dt wei_dt = kind == kBwdWeights ? g.result : g.dtype;

  const auto src_user = Md(src_dims, g.dtype, Tag::ndhwc);
  const auto dst_user = Md(dst_dims, kind == kFwd ? g.result : g.dtype, Tag::ndhwc);
  const auto dsrc_user = Md(src_dims, g.result, Tag::ndhwc);
  const auto wei_user = Md(wei_dims, wei_dt, Tag::dhwio);
  const auto src_md = Md(src_dims, g.dtype, act_tag);
  const auto wei_md = Md(wei_dims, wei_dt, wei_tag);
  const auto dst_md = Md(dst_dims, kind == kFwd ? g.result : g.dtype, act_tag);

  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);

  auto entry = std::make_shared<Entry>();
  const auto algo = dnnl::algorithm::convolution_direct;
  if (kind == kFwd) {
    dnnl::convolution_forward::primitive_desc pd(eng, dnnl::prop_kind::forward_inference, algo,
                                                 src_md, wei_md, dst_md, strides, pad_l, pad_r,
                                                 attr);
    SetSlot(&entry->slots[0], DNNL_ARG_SRC, false, src_user, pd.src_desc());
    SetSlot(&entry->slots[1], DNNL_ARG_WEIGHTS, false, wei_user, pd.weights_desc());
    SetSlot(&entry->slots[2], DNNL_ARG_DST, true, dst_user, pd.dst_desc());
    entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
    entry->primitive = dnnl::convolution_forward(pd);
  } else {
    const auto hint_wei = Md(wei_dims, g.dtype, wei_tag);
    const auto hint_dst = Md(dst_dims, g.dtype, act_tag);
    dnnl::convolution_forward::primitive_desc hint(eng, dnnl::prop_kind::forward_training, algo,
                                                   src_md, hint_wei, hint_dst, strides, pad_l,
                                                   pad_r);
    if (kind == kBwdData) {
      const auto dsrc_md = Md(src_dims, g.result, act_tag);
      dnnl::convolution_backward_data::primitive_desc pd(eng, algo, dsrc_md, wei_md, dst_md,
                                                         strides, pad_l, pad_r, hint, attr);
      SetSlot(&entry->slots[0], DNNL_ARG_DIFF_DST, false, dst_user, pd.diff_dst_desc());
      SetSlot(&entry->slots[1], DNNL_ARG_WEIGHTS, false, wei_user, pd.weights_desc());
      SetSlot(&entry->slots[2], DNNL_ARG_DIFF_SRC, true, dsrc_user, pd.diff_src_desc());
      entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
      entry->primitive = dnnl::convolution_backward_data(pd);
    } else {
      dnnl::convolution_backward_weights::primitive_desc pd(eng, algo, src_md, wei_md, dst_md,
                                                            strides, pad_l, pad_r, hint, attr);
      if (g.dtype == Dt::bf16 && ThinInput(g)) {
        auto gemm = pd;
        while (!Contains(gemm.impl_info_str(), "gemm") && gemm.next_impl()) {
        }
        if (!Contains(gemm.impl_info_str(), "gemm")) {
          throw std::runtime_error("no gemm bf16 backward-weights implementation for an input "
                                   "thinner than the kernel (oneDNN's jit one is wrong there)");
        }
        pd = gemm;
      }
      SetSlot(&entry->slots[0], DNNL_ARG_SRC, false, src_user, pd.src_desc());
      SetSlot(&entry->slots[1], DNNL_ARG_DIFF_DST, false, dst_user, pd.diff_dst_desc());
      SetSlot(&entry->slots[2], DNNL_ARG_DIFF_WEIGHTS, true, wei_user, pd.diff_weights_desc());
      entry->scratchpad_bytes = pd.scratchpad_desc().get_size();
      entry->primitive = dnnl::convolution_backward_weights(pd);
    }
  }
  return entry;
}

std::shared_ptr<const Entry> Lookup(Kind kind, const Geometry& g) {
  const Key key = MakeKey(kind, g);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = Cache().find(key);
    if (it != Cache().end()) return it->second;
  }
  // Built outside the lock (primitive creation can take milliseconds); if two threads race,
  // the first one stored wins and both use it.
  auto entry = Build(kind, g);
  std::lock_guard<std::mutex> lock(cache_mutex);
  return Cache().emplace(key, std::move(entry)).first->second;
}

// One convolution at a time per process: each oneDNN primitive already spreads over every
// core (OpenMP), and XLA's thunk executor would otherwise start independent convolutions
// (a backward-data next to its backward-weights) at once, oversubscribing the cores. On the
// 2-core development machine serialising them took the W1 bf16 denoiser evaluation from
// 0.57 s to 0.36 s.
std::mutex exec_mutex;

std::atomic<bool> poison{false};

void Poison(void* data, size_t bytes) {
  if (poison.load(std::memory_order_relaxed)) std::memset(data, 0x7F, bytes);
}

memory Bytes(size_t bytes, void* data) {
  return memory(memory::desc({static_cast<memory::dim>(bytes)}, Dt::u8, Tag::x), Engine(), data);
}

void RunReorder(const Slot& s, dnnl::stream& stream, const memory& from, const memory& to) {
  std::unordered_map<int, memory> args = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  if (s.reorder_scratchpad_bytes > 0) {
    void* scratchpad = arena.Get(4, s.reorder_scratchpad_bytes);
    Poison(scratchpad, s.reorder_scratchpad_bytes);
    args.emplace(DNNL_ARG_SCRATCHPAD, Bytes(s.reorder_scratchpad_bytes, scratchpad));
  }
  s.reorder.execute(stream, args);
}

void Execute(const Entry& e, std::array<void*, 3> data) {
  std::lock_guard<std::mutex> serial(exec_mutex);
  auto& eng = Engine();
  dnnl::stream stream(eng);
  std::unordered_map<int, memory> args;
  std::array<memory, 3> user, prim;
  for (int i = 0; i < 3; ++i) {
    const Slot& s = e.slots[i];
    user[i] = memory(s.user, eng, data[i]);
    if (s.reordered) {
      prim[i] = memory(s.prim, eng, arena.Get(i, s.prim.get_size()));
      if (!s.output) RunReorder(s, stream, user[i], prim[i]);
    } else {
      prim[i] = user[i];
    }
    if (s.output) {
      Poison(data[i], s.user.get_size());
      if (s.reordered) Poison(prim[i].get_data_handle(), s.prim.get_size());
    }
    args.emplace(s.arg, prim[i]);
  }
  if (e.scratchpad_bytes > 0) {
    void* scratchpad = arena.Get(3, e.scratchpad_bytes);
    Poison(scratchpad, e.scratchpad_bytes);
    args.emplace(DNNL_ARG_SCRATCHPAD, Bytes(e.scratchpad_bytes, scratchpad));
  }
  e.primitive.execute(stream, args);
  const Slot& out = e.slots[2];
  if (out.reordered) RunReorder(out, stream, prim[2], user[2]);
  stream.wait();
}

// Runs one convolution kind. `a` and `b` are the two inputs in the order of the handler,
// `geometry_*` are the three arrays (x, kernel, y) the geometry is read from.
ffi::Error Run(Kind kind, ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::AnyBuffer* r,
               ffi::AnyBuffer::Dimensions xd, ffi::AnyBuffer::Dimensions wd,
               ffi::AnyBuffer::Dimensions yd, int64_t stride, ffi::Span<const int64_t> padding,
               int64_t layout) {
  Geometry g;
  if (auto err = MakeGeometry(xd, wd, yd, stride, padding, layout, &g); !err.success()) {
    return err;
  }
  if (a.element_type() != b.element_type()) {
    return ffi::Error::InvalidArgument("onednn conv3d: both inputs must have the same dtype");
  }
  if (auto err = DnnlType(a.element_type(), &g.dtype); !err.success()) return err;
  if (auto err = DnnlType(r->element_type(), &g.result); !err.success()) return err;
  if (kind != kBwdWeights && g.result != g.dtype) {
    return ffi::Error::InvalidArgument("onednn conv3d: the result dtype must equal the input's");
  }
  if (r->element_count() == 0) return ffi::Error::Success();
  if (a.element_count() == 0 || b.element_count() == 0) {
    std::memset(r->untyped_data(), 0, r->size_bytes());
    return ffi::Error::Success();
  }
  try {
    auto entry = Lookup(kind, g);
    Execute(*entry, {a.untyped_data(), b.untyped_data(), r->untyped_data()});
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv3d: oneDNN error: ") + e.what() +
                                " (status " + std::to_string(static_cast<int>(e.status)) + ")");
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("onednn conv3d: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error ConvFwd(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   int64_t stride, ffi::Span<const int64_t> padding, int64_t layout) {
  return Run(kFwd, x, w, &(*y), x.dimensions(), w.dimensions(), y->dimensions(), stride,
             padding, layout);
}

ffi::Error ConvBwdData(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                       int64_t stride, ffi::Span<const int64_t> padding, int64_t layout) {
  return Run(kBwdData, dy, w, &(*dx), dx->dimensions(), w.dimensions(), dy.dimensions(), stride,
             padding, layout);
}

ffi::Error ConvBwdWeights(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                          int64_t stride, ffi::Span<const int64_t> padding, int64_t layout) {
  return Run(kBwdWeights, x, dy, &(*dw), x.dimensions(), dw->dimensions(), dy.dimensions(),
             stride, padding, layout);
}

}  // namespace

#define MSSEG_BIND                           \
  ffi::Ffi::Bind()                           \
      .Arg<ffi::AnyBuffer>()                 \
      .Arg<ffi::AnyBuffer>()                 \
      .Ret<ffi::AnyBuffer>()                 \
      .Attr<int64_t>("stride")               \
      .Attr<ffi::Span<const int64_t>>("padding") \
      .Attr<int64_t>("layout")

XLA_FFI_DEFINE_HANDLER_SYMBOL(MssegOnednnConvFwd, ConvFwd, MSSEG_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MssegOnednnConvBwdData, ConvBwdData, MSSEG_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(MssegOnednnConvBwdWeights, ConvBwdWeights, MSSEG_BIND);

// The oneDNN library version actually loaded, as major * 10000 + minor * 100 + patch.
int64_t MssegOnednnVersion() {
  const dnnl_version_t* v = dnnl_version();
  return v->major * 10000 + v->minor * 100 + v->patch;
}

// Number of cached primitives (for tests).
int64_t MssegOnednnCacheSize() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return static_cast<int64_t>(Cache().size());
}

// Whether this CPU runs the three primitives for f32 (bf16 = 0) or bf16 (bf16 = 1) operands:
// builds them for a small shape (strides 1 and 2) and reports 0 when oneDNN has no
// implementation (e.g. bf16 on CPUs without AVX-512), so callers can fall back beforehand.
int64_t MssegOnednnSupports(int64_t bf16) {
  try {
    for (int64_t stride : {1, 2}) {
      Geometry g;
      g.batch = 1;
      g.c = 8;
      g.f = 8;
      g.k = 3;
      g.stride = stride;
      g.in = {6, 6, 6};
      g.out = {6 / stride, 6 / stride, 6 / stride};
      g.lo = {stride == 1 ? 1 : 0, stride == 1 ? 1 : 0, stride == 1 ? 1 : 0};
      g.hi = {1, 1, 1};
      g.dtype = bf16 ? Dt::bf16 : Dt::f32;
      g.layout = kAnyWeights;
      for (Kind kind : {kFwd, kBwdData, kBwdWeights}) {
        g.result = kind == kBwdWeights ? Dt::f32 : g.dtype;
        Lookup(kind, g);
      }
    }
  } catch (const std::exception&) {
    return 0;
  }
  return 1;
}

// Poison mode on (1) or off (0), for the tests and tools/stress_onednn.py (see the top).
void MssegOnednnSetPoison(int64_t on) { poison.store(on != 0); }
