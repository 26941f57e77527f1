// The restricted unpickler: what torch.save writes is understood (every opcode of protocols 2-5
// that it uses, memo sharing, OrderedDict with _metadata, tensor and parameter rebuilds), and
// everything else -- other globals, code-running opcodes, malformed or oversized input -- is a
// qserve::Error naming the input and the problem.
#include <gtest/gtest.h>

#include <random>

#include "formats/formats_test_util.h"
#include "formats/torch_pickle.h"
#include "formats/torch_test_util.h"
#include "formats/torch_zip.h"

namespace qserve {
namespace {

using test::Pickle;

PickleGraph up(const std::string& s, const PickleLimits& limits = {}) {
  return unpickle_torch(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "mem.pkl", limits);
}

#define EXPECT_PICKLE_ERROR(bytes, ...) EXPECT_QSERVE_ERROR((void)up(bytes), "mem.pkl", __VA_ARGS__)

const PyNode& at_key(const PickleGraph& g, std::string_view key) {
  const std::optional<uint32_t> v = g.dict_get(g.root(), key);
  if (!v) throw std::runtime_error("no key " + std::string(key));
  return g.node(*v);
}

TEST(TorchPickle, Scalars) {
  Pickle p;
  p.proto(2).empty_dict().put(0).mark();
  p.str("n").none().str("t").boolean(true).str("f").boolean(false);
  p.str("i").int32(-7).str("b1").op('K').op(200).str("b2").op('M').op(0x60).op(0xea);
  p.str("neg").long1("\xff").str("big").long1(std::string("\x00\x00\x00\x00\x00\x00\x00\x40", 8));
  p.str("small").long1(std::string("\x80\x00", 2)).str("zero").long1("");
  p.str("g").float64(1.5).str("s").str("h\xc3\xa9llo").str("by").bytes(std::string("\x00\xff", 2));
  p.setitems().stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).kind, PyKind::Dict);
  EXPECT_EQ(g.node(g.root()).entries.size(), 13u);
  EXPECT_EQ(at_key(g, "n").kind, PyKind::None);
  EXPECT_EQ(at_key(g, "t").kind, PyKind::Bool);
  EXPECT_EQ(at_key(g, "t").i, 1);
  EXPECT_EQ(at_key(g, "f").i, 0);
  EXPECT_EQ(at_key(g, "i").i, -7);
  EXPECT_EQ(at_key(g, "b1").i, 200);
  EXPECT_EQ(at_key(g, "b2").i, 60000);
  EXPECT_EQ(at_key(g, "neg").i, -1);
  EXPECT_EQ(at_key(g, "big").i, int64_t{1} << 62);
  EXPECT_EQ(at_key(g, "small").i, 128);  // 0x0080: the sign byte keeps it positive
  EXPECT_EQ(at_key(g, "zero").i, 0);
  EXPECT_EQ(at_key(g, "g").kind, PyKind::Float);
  EXPECT_EQ(at_key(g, "g").f, 1.5);
  EXPECT_EQ(at_key(g, "s").s, "h\xc3\xa9llo");
  EXPECT_EQ(at_key(g, "by").kind, PyKind::Bytes);
  EXPECT_EQ(at_key(g, "by").s, std::string("\x00\xff", 2));
}

TEST(TorchPickle, MemoSharesMutableObjects) {
  // d = {}; l = [d]; d["k"] = 1; l.append(d)  -- the mutation after the memo put must be seen
  // through every reference, as in Python.
  Pickle p;
  p.proto(2).empty_list().put(1).empty_dict().put(0).append();
  p.get(0).str("k").int32(1).setitem().append().stop();
  const PickleGraph g = up(p.data());
  const PyNode& l = g.node(g.root());
  ASSERT_EQ(l.kind, PyKind::List);
  ASSERT_EQ(l.items.size(), 2u);
  EXPECT_EQ(l.items[0], l.items[1]);
  EXPECT_EQ(g.dict_get(l.items[0], "k").has_value(), true);
}

TEST(TorchPickle, CyclesAreHarmless) {
  Pickle p;  // l = []; l.append(l)
  p.proto(2).empty_list().put(0).get(0).append().stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).items.at(0), g.root());
}

TEST(TorchPickle, DictKeysFollowPython) {
  Pickle p;  // {"a": 1, "a": 2, True: 3, 1: 4, None: 5, b"x": 6}
  p.proto(2).empty_dict().mark().str("a").int32(1).str("a").int32(2).boolean(true).int32(3);
  p.int32(1).int32(4).none().int32(5).bytes("x").int32(6).setitems().stop();
  const PickleGraph g = up(p.data());
  const PyNode& d = g.node(g.root());
  ASSERT_EQ(d.entries.size(), 4u);
  EXPECT_EQ(g.node(d.entries[0].second).i, 2);               // last value wins, first position kept
  EXPECT_EQ(g.node(d.entries[1].first).kind, PyKind::Bool);  // first key object kept
  EXPECT_EQ(g.node(d.entries[1].second).i, 4);
}

TEST(TorchPickle, OrderedDictWithMetadataState) {
  // What state_dict() pickles as: OrderedDict(), items, then BUILD with {'_metadata': ...}.
  Pickle p;
  p.proto(2).global("collections", "OrderedDict").put(0).empty_tuple().reduce().put(1);
  p.mark().str("w").int32(3).setitems();
  p.empty_dict().str("_metadata").get(0).empty_tuple().reduce().str("").empty_dict();
  p.str("version").int32(1).setitem().setitem().setitem().build().stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).kind, PyKind::Dict);
  EXPECT_EQ(at_key(g, "w").i, 3);
  EXPECT_FALSE(g.dict_get(g.root(), "_metadata").has_value());
}

TEST(TorchPickle, Protocol4And5Opcodes) {
  Pickle p;
  p.proto(5).op(0x95).raw(std::string(8, '\0'));  // FRAME (length not enforced)
  p.stack_global("collections", "OrderedDict").memoize().empty_tuple().reduce().memoize();
  p.mark();
  p.short_str("u8").op(0x8d).raw(std::string("\x02\0\0\0\0\0\0\0ab", 10));  // BINUNICODE8
  p.short_str("b8").op(0x8e).raw(std::string("\x01\0\0\0\0\0\0\0z", 9));    // BINBYTES8
  p.short_str("ba").op(0x96).raw(std::string("\x01\0\0\0\0\0\0\0y", 9));    // BYTEARRAY8
  p.short_str("bb").op('B').raw(std::string("\x01\0\0\0q", 5));             // BINBYTES
  p.short_str("again").op('j').raw(std::string("\x00\0\0\0", 4));           // LONG_BINGET 0
  p.setitems().stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(at_key(g, "u8").s, "ab");
  EXPECT_EQ(at_key(g, "b8").s, "z");
  EXPECT_EQ(at_key(g, "ba").kind, PyKind::Bytes);
  EXPECT_EQ(at_key(g, "bb").s, "q");
  EXPECT_EQ(at_key(g, "again").kind, PyKind::Global);
}

TEST(TorchPickle, CodecsEncodeMakesBytes) {
  Pickle p;  // _codecs.encode("\xff\x00a", "latin1"), how protocol 2 writes b"\xff\x00a"
  p.proto(2).empty_dict().str("b").global("_codecs", "encode");
  p.str(std::string("\xc3\xbf\x00"
                    "a",
                    4))
      .str("latin1")
      .tuple2()
      .reduce()
      .setitem()
      .stop();
  EXPECT_EQ(at_key(up(p.data()), "b").s, std::string("\xff\x00"
                                                     "a",
                                                     3));

  Pickle bad;
  bad.proto(2)
      .global("_codecs", "encode")
      .str("\xe2\x82\xac")
      .str("latin1")
      .tuple2()
      .reduce()
      .stop();
  EXPECT_PICKLE_ERROR(bad.data(), "outside latin1");
  Pickle enc;
  enc.proto(2).global("_codecs", "encode").str("a").str("utf-8").tuple2().reduce().stop();
  EXPECT_PICKLE_ERROR(enc.data(), "only latin1");
}

TEST(TorchPickle, TorchSizeIsATuple) {
  Pickle p;
  p.proto(2).global("torch", "Size").ints({2, 3}).tuple1().reduce().stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).kind, PyKind::Tuple);
  EXPECT_EQ(g.node(g.root()).items.size(), 2u);
}

TEST(TorchPickle, TensorRebuildV2) {
  Pickle p;
  p.proto(2).tensor("HalfStorage", "0", 6, 2, {2, 2}, {2, 1}).stop();
  const PickleGraph g = up(p.data());
  const PyNode& t = g.node(g.root());
  ASSERT_EQ(t.kind, PyKind::Tensor);
  EXPECT_EQ(t.dtype, DType::F16);
  EXPECT_EQ(t.tensor.offset, 2);
  EXPECT_EQ(t.tensor.shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(t.tensor.stride, (std::vector<int64_t>{2, 1}));
  const PyNode& s = g.node(t.tensor.storage);
  EXPECT_EQ(s.kind, PyKind::Storage);
  EXPECT_EQ(s.s, "0");
  EXPECT_EQ(s.location, "cpu");
  EXPECT_EQ(s.numel, 6);
  EXPECT_TRUE(t.unsupported_dtype.empty());
}

TEST(TorchPickle, EveryStorageClassAndCudaSpelling) {
  const std::vector<std::pair<std::string, DType>> types = {
      {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16}, {"BFloat16Storage", DType::BF16},
      {"CharStorage", DType::I8},   {"ByteStorage", DType::U8},  {"ShortStorage", DType::I16},
      {"IntStorage", DType::I32},   {"LongStorage", DType::I64}, {"BoolStorage", DType::BOOL}};
  for (const auto& [name, dtype] : types) {
    for (const char* module : {"torch", "torch.cuda"}) {
      Pickle p;
      p.proto(2).global("torch._utils", "_rebuild_tensor_v2").mark();
      p.storage(name, "k", 1, module).int32(0).ints({1}).ints({1});
      p.boolean(false).ordered_dict().tuple().reduce().stop();
      const PickleGraph g = up(p.data());
      EXPECT_EQ(g.node(g.root()).dtype, dtype) << module << "." << name;
    }
  }
}

TEST(TorchPickle, ParameterIsItsTensor) {
  Pickle p;
  p.proto(2).global("torch._utils", "_rebuild_parameter");
  p.tensor("FloatStorage", "0", 3, 0, {3}, {1})
      .boolean(true)
      .ordered_dict()
      .tuple3()
      .reduce()
      .stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).kind, PyKind::Tensor);

  Pickle s;
  s.proto(2).global("torch._utils", "_rebuild_parameter_with_state").mark();
  s.tensor("FloatStorage", "0", 3, 0, {3}, {1}).boolean(true).ordered_dict().empty_dict();
  s.tuple().reduce().stop();
  const PickleGraph gs = up(s.data());
  EXPECT_EQ(gs.node(gs.root()).kind, PyKind::Tensor);

  Pickle bad;
  bad.proto(2).global("torch._utils", "_rebuild_parameter").int32(1).boolean(true).none();
  bad.tuple3().reduce().stop();
  EXPECT_PICKLE_ERROR(bad.data(), "parameter data", "expected tensor");
}

// _rebuild_tensor_v3(UntypedStorage, offset, size, stride, requires_grad, hooks, dtype).
std::string v3_tensor(const char* dtype, int64_t nbytes, int64_t offset, int64_t n) {
  Pickle p;
  p.proto(2).global("torch._utils", "_rebuild_tensor_v3").mark();
  p.storage("UntypedStorage", "0", nbytes, "torch.storage").int32(static_cast<int32_t>(offset));
  p.ints({n}).ints({1}).boolean(false).ordered_dict().global("torch", dtype).tuple().reduce();
  return p.stop().data();
}

TEST(TorchPickle, TensorRebuildV3) {
  const PickleGraph g = up(v3_tensor("float16", 12, 1, 5));
  const PyNode& t = g.node(g.root());
  EXPECT_EQ(t.dtype, DType::F16);
  EXPECT_EQ(t.tensor.offset, 1);
  EXPECT_PICKLE_ERROR(v3_tensor("float16", 12, 1, 6), "reaches past the end of its storage '0'");
  const PickleGraph u = up(v3_tensor("uint16", 12, 0, 6));
  EXPECT_EQ(u.node(u.root()).unsupported_dtype, "uint16");
}

TEST(TorchPickle, UnsupportedDTypesAreDescribedNotRefused) {
  Pickle p;
  p.proto(2).tensor("DoubleStorage", "0", 2, 0, {2}, {1}).stop();
  const PickleGraph g = up(p.data());
  EXPECT_EQ(g.node(g.root()).unsupported_dtype, "float64");
  Pickle big;  // bounds use float64's 8 bytes
  big.proto(2).tensor("DoubleStorage", "0", 2, 0, {3}, {1}).stop();
  EXPECT_PICKLE_ERROR(big.data(), "reaches past");
}

TEST(TorchPickle, RefusesForeignGlobals) {
  Pickle os;
  os.proto(2).global("os", "system").str("echo pwned").tuple1().reduce().stop();
  EXPECT_PICKLE_ERROR(os.data(), "refusing to load pickle global os.system",
                      "only torch tensor rebuilds are allowed", "at byte 2");
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"builtins", "eval"},
      {"posix", "system"},
      {"subprocess", "Popen"},
      {"torch._utils", "_rebuild_qtensor"},
      {"torch", "load"},
      {"torch.nn", "Module"},
      {"collections", "defaultdict"},
      {"torch._tensor", "_rebuild_from_type_v2"},
      {"torch.cuda", "float16"},
      {"torch.storage", "FloatStorage"},
      {"", ""}};
  for (const auto& [m, n] : refused) {
    Pickle g;
    g.proto(2).global(m, n).stop();
    EXPECT_PICKLE_ERROR(g.data(), "refusing to load pickle global " + m + "." + n);
    Pickle s;
    s.proto(4).stack_global(m, n).stop();
    EXPECT_PICKLE_ERROR(s.data(), "refusing to load pickle global " + m + "." + n);
  }
  Pickle esc;  // hostile text in the name is made printable in the message
  esc.proto(2).global("os\x1b[31m", "x").stop();
  EXPECT_PICKLE_ERROR(esc.data(), "os?[31m.x");
}

TEST(TorchPickle, RefusesToCallNonFunctions) {
  Pickle p;
  p.proto(2).global("torch", "HalfStorage").empty_tuple().reduce().stop();
  EXPECT_PICKLE_ERROR(p.data(), "refusing to call torch.HalfStorage");
  Pickle s;
  s.proto(2).str("x").empty_tuple().reduce().stop();
  EXPECT_PICKLE_ERROR(s.data(), "REDUCE on a str");
  Pickle a;
  a.proto(2)
      .ordered_dict()
      .op(0x94)
      .global("collections", "OrderedDict")
      .empty_list()
      .reduce()
      .stop();
  EXPECT_PICKLE_ERROR(a.data(), "REDUCE arguments", "expected tuple");
  Pickle o;
  o.proto(2).global("collections", "OrderedDict").empty_list().tuple1().reduce().stop();
  EXPECT_PICKLE_ERROR(o.data(), "OrderedDict with arguments");
}

TEST(TorchPickle, RefusesOpcodesTorchDoesNotWrite) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"\x80\x02i"
       "os\nsystem\n",
       "INST"},
      {"\x80\x02(o", "OBJ"},
      {"\x80\x02\x81", "NEWOBJ"},
      {"\x80\x02\x92", "NEWOBJ_EX"},
      {"\x80\x02\x82\x01", "EXT"},
      {"\x80\x02P0\n", "PERSID"},
      {"\x80\x02I1\n.", "INT (protocol 0)"},
      {"\x80\x05\x97", "NEXT_BUFFER"},
      {"\x80\x04\x8f", "EMPTY_SET"},
      {"\x80\x02\xff", "unsupported pickle opcode 0xff"},
      {"\x80\x06N.", "unsupported pickle protocol 6"},
  };
  for (const auto& [bytes, what] : cases) EXPECT_PICKLE_ERROR(bytes, what);
}

TEST(TorchPickle, MalformedInput) {
  using namespace std::string_literals;
  auto S = [](std::string s) { return s; };
  EXPECT_PICKLE_ERROR(S(""s), "without a STOP");
  EXPECT_PICKLE_ERROR(S("\x80\x02N"s), "without a STOP");
  EXPECT_PICKLE_ERROR(S("\x80\x02."s), "stack underflow");
  EXPECT_PICKLE_ERROR(S("\x80\x02Na."s), "stack underflow");
  EXPECT_PICKLE_ERROR(S("\x80\x02](Na."s), "stack underflow");  // a MARK hides what is below
  EXPECT_PICKLE_ERROR(S("\x80\x02"
                        "X\xe8\x03\x00\x00"
                        "abc."s),
                      "truncated", "1000 more bytes");
  EXPECT_PICKLE_ERROR(S("\x80\x02"
                        "X\xff\xff\xff\xff"
                        "abc."s),
                      "truncated");
  EXPECT_PICKLE_ERROR(S("\x80\x05\x8d\xff\xff\xff\xff\xff\xff\xff\xff."s), "truncated");
  EXPECT_PICKLE_ERROR(S("\x80\x05\x95\xff\xff\xff\xff\xff\xff\xff\xffN."s), "truncated: frame");
  EXPECT_PICKLE_ERROR(S("\x80\x02X\x02\x00\x00\x00\xc3\x28."s), "not valid UTF-8");
  EXPECT_PICKLE_ERROR(S("\x80\x02X\x02\x00\x00\x00\xc0\x80."s), "not valid UTF-8");  // overlong
  EXPECT_PICKLE_ERROR(S("\x80\x02\x8a\x09"
                        "123456789."s),
                      "wider than 64 bits");
  EXPECT_PICKLE_ERROR(S("\x80\x02\x8b\xff\xff\xff\xff."s), "negative LONG4");
  EXPECT_PICKLE_ERROR(S("\x80\x02h\x05."s), "memo key 5 is not defined");
  EXPECT_PICKLE_ERROR(S("\x80\x02q\x00."s), "stack underflow");
  EXPECT_PICKLE_ERROR(S("\x80\x02}(Nu."s), "odd number of items");
  EXPECT_PICKLE_ERROR(S("\x80\x02]NNs."s), "SETITEM target", "expected dict");
  EXPECT_PICKLE_ERROR(S("\x80\x02}Na."s), "APPEND target", "expected list");
  EXPECT_PICKLE_ERROR(S("\x80\x02]N(Ne."s), "APPENDS target");
  EXPECT_PICKLE_ERROR(S("\x80\x02t."s), "no MARK");
  EXPECT_PICKLE_ERROR(S("\x80\x02}]]s."s), "unsupported dict key type list");
  EXPECT_PICKLE_ERROR(S("\x80\x02}G\x3f\xf8\x00\x00\x00\x00\x00\x00Ns."s),
                      "unsupported dict key type float");
  EXPECT_PICKLE_ERROR(S("\x80\x02]}b."s), "BUILD on a list");
  EXPECT_PICKLE_ERROR(S("\x80\x02"
                        "cos"s),
                      "GLOBAL name without a newline");
  EXPECT_PICKLE_ERROR(S("\x80\x02"
                        "N\x93."s),
                      "stack underflow");
  EXPECT_PICKLE_ERROR(S("\x80\x04NN\x93."s), "STACK_GLOBAL module", "expected str");
  // POP on an empty MARK frame discards the frame (Python 3 behaviour), then STOP sees None.
  EXPECT_EQ(up(S("\x80\x02N(0."s)).node(0).kind, PyKind::None);
  EXPECT_EQ(up(S("\x80\x02NN0."s)).size(), 2u);
  const PickleGraph dup = up(S("\x80\x02N2\x86."s));  // DUP: the same object twice
  EXPECT_EQ(dup.node(dup.root()).items, (std::vector<uint32_t>{0, 0}));
  EXPECT_EQ(up(S("\x80\x02(N1N."s)).size(), 2u);
}

TEST(TorchPickle, BadTensorDescriptions) {
  auto tensor = [](const std::vector<int64_t>& shape, const std::vector<int64_t>& stride,
                   int64_t offset, int64_t numel) {
    return Pickle()
        .proto(2)
        .tensor("FloatStorage", "0", numel, offset, shape, stride)
        .stop()
        .data();
  };
  EXPECT_PICKLE_ERROR(tensor({2, 3}, {3, 1}, 0, 5), "reaches past the end of its storage '0'",
                      "size (2, 3), stride (3, 1)");
  EXPECT_PICKLE_ERROR(tensor({2, 3}, {3, 1}, 1, 6), "reaches past the end");
  EXPECT_PICKLE_ERROR(tensor({3}, {4}, 0, 8), "reaches past the end");
  EXPECT_PICKLE_ERROR(tensor({0}, {1}, 9, 8), "reaches past the end");  // empty but offset past end
  EXPECT_NO_THROW(up(tensor({0}, {1}, 8, 8)));
  EXPECT_NO_THROW(up(tensor({2, 0}, {0, 100}, 0, 0)));
  EXPECT_NO_THROW(up(tensor({}, {}, 7, 8)));  // 0-dim: one element at the offset
  EXPECT_PICKLE_ERROR(tensor({-1}, {1}, 0, 8), "tensor size has a negative entry -1");
  EXPECT_PICKLE_ERROR(tensor({2}, {-1}, 0, 8), "tensor stride has a negative entry");
  EXPECT_PICKLE_ERROR(tensor({2}, {1}, -1, 8), "negative tensor storage_offset");
  EXPECT_PICKLE_ERROR(tensor({2, 2}, {1}, 0, 8), "size and stride differ");
  EXPECT_PICKLE_ERROR(tensor(std::vector<int64_t>(65, 1), std::vector<int64_t>(65, 1), 0, 8),
                      "65 dimensions");
  EXPECT_PICKLE_ERROR(tensor({2}, {1}, 0, -1), "bad storage numel");
  // Sizes whose products overflow int64: must not wrap around into a small, "valid" span.
  Pickle big;
  big.proto(2).global("torch._utils", "_rebuild_tensor_v2").mark().storage("FloatStorage", "0", 8);
  big.int32(0).mark().long1(std::string("\x00\x00\x00\x00\x00\x00\x00\x40", 8));
  big.long1(std::string("\x00\x00\x00\x00\x00\x00\x00\x40", 8)).tuple().ints({1, 1});
  big.boolean(false).ordered_dict().tuple().reduce().stop();
  EXPECT_PICKLE_ERROR(big.data(), "overflow");
  Pickle huge_numel;
  huge_numel.proto(2).global("torch._utils", "_rebuild_tensor_v2").mark();
  huge_numel.mark().str("storage").global("torch", "LongStorage").str("0").str("cpu");
  huge_numel.long1(std::string("\xff\xff\xff\xff\xff\xff\xff\x3f", 8)).tuple().persid().stop();
  EXPECT_PICKLE_ERROR(huge_numel.data(), "bad storage numel");
  // Wrong argument count, wrong storage argument.
  Pickle args;
  args.proto(2).global("torch._utils", "_rebuild_tensor_v2").empty_tuple().reduce().stop();
  EXPECT_PICKLE_ERROR(args.data(), "_rebuild_tensor_v2 takes 6 or 7 arguments, got 0");
  Pickle not_storage;
  not_storage.proto(2).global("torch._utils", "_rebuild_tensor_v2").mark().none().int32(0);
  not_storage.ints({1}).ints({1}).boolean(false).none().tuple().reduce().stop();
  EXPECT_PICKLE_ERROR(not_storage.data(), "tensor storage: expected storage, got None");
}

TEST(TorchPickle, BadPersistentIds) {
  auto pid = [](Pickle& p) { return p.persid().stop().data(); };
  Pickle a;
  a.proto(2).none();
  EXPECT_PICKLE_ERROR(pid(a), "persistent id: expected tuple");
  Pickle b;
  b.proto(2).mark().str("storage").global("torch", "HalfStorage").str("0").str("cpu").tuple();
  EXPECT_PICKLE_ERROR(pid(b), "not a ('storage', type, key, location, numel) tuple");
  Pickle c;
  c.proto(2)
      .mark()
      .str("module")
      .global("torch", "HalfStorage")
      .str("0")
      .str("cpu")
      .int32(1)
      .tuple();
  EXPECT_PICKLE_ERROR(pid(c), "not a ('storage'");
  Pickle d;
  d.proto(2).mark().str("storage").global("torch", "float16").str("0").str("cpu").int32(1).tuple();
  EXPECT_PICKLE_ERROR(pid(d), "torch.float16 is not a storage class");
  Pickle e;
  e.proto(2)
      .mark()
      .str("storage")
      .global("torch", "HalfStorage")
      .str("")
      .str("cpu")
      .int32(1)
      .tuple();
  EXPECT_PICKLE_ERROR(pid(e), "storage key or location is empty or too long");
  // One key, two declarations that disagree (torch.save cannot write this).
  Pickle f;
  f.proto(2).mark().storage("HalfStorage", "0", 4).storage("FloatStorage", "0", 4).tuple().stop();
  EXPECT_PICKLE_ERROR(f.data(), "storage '0' is declared twice");
  Pickle same;
  same.proto(2)
      .mark()
      .storage("HalfStorage", "0", 4)
      .storage("HalfStorage", "0", 4)
      .tuple2()
      .stop();
  const PickleGraph g = up(same.data());
  EXPECT_EQ(g.node(g.root()).items[0], g.node(g.root()).items[1]);
}

TEST(TorchPickle, Limits) {
  std::string deep = "\x80\x02" + std::string(1001, '(');
  EXPECT_PICKLE_ERROR(deep, "MARKs nested too deeply");
  EXPECT_NO_THROW(up("\x80\x02" + std::string(1000, '(') + "N."));
  // Amplification: one memoized 1000-byte string encoded again and again.
  Pickle p;
  p.proto(2).global("_codecs", "encode").put(0).str(std::string(1000, 'a')).str("latin1");
  p.tuple2().put(1).reduce();
  for (int i = 0; i < 200; ++i) p.get(0).get(1).reduce().op('0');
  p.stop();
  PickleLimits small;
  small.max_extra_bytes = 100000;
  EXPECT_QSERVE_ERROR((void)up(p.data(), small), "mem.pkl", "beyond the memory limit");
  EXPECT_NO_THROW(up(p.data()));
}

// The data.pkl that torch wrote for the dtypes fixture.
std::string torch_data_pkl() {
  const std::string zip = test::read_file(test::torch_fixture("dtypes.pt"));
  const ZipArchive z =
      ZipArchive::parse(reinterpret_cast<const uint8_t*>(zip.data()), zip.size(), "dtypes.pt");
  const std::span<const uint8_t> d = z.data(*z.find("dtypes/data.pkl"));
  return std::string(d.begin(), d.end());
}

TEST(TorchPickle, EveryTruncationOfARealPickleFailsCleanly) {
  const std::string pkl = torch_data_pkl();
  EXPECT_NO_THROW(up(pkl));
  for (size_t n = 0; n < pkl.size(); ++n) {
    try {
      (void)up(pkl.substr(0, n));
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mem.pkl"), std::string::npos);
    }
  }
}

TEST(TorchPickle, MutatedPicklesOnlyEverThrowQserveErrors) {
  const std::string pkl = torch_data_pkl();
  std::mt19937 rng(7);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string m = pkl;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) m[rng() % m.size()] = static_cast<char>(rng());
    try {
      (void)up(m);
    } catch (const Error&) {
    }
  }
}

}  // namespace
}  // namespace qserve
