// TorchCheckpoint end to end: the fixtures written by real torch.save (tests/data/torch/, made by
// tools/gen_torch_fixtures.py) read back with the names, dtypes, shapes and bytes that torch.load
// sees (expected.json); views are zero-copy; hostile and unsupported files fail with a message
// naming the file and the problem.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "core/half.h"
#include "formats/formats_test_util.h"
#include "formats/torch_checkpoint.h"
#include "formats/torch_test_util.h"

namespace qserve {
namespace {

using nlohmann::json;
using test::checkpoint_from;
using test::Pickle;
using test::torch_archive;
using test::torch_fixture;

const json& expected() {
  static const json j = json::parse(test::read_file(torch_fixture("expected.json")));
  return j;
}

uint32_t crc_of(const Tensor& t) {
  return zip_crc32(static_cast<const uint8_t*>(t.raw()), t.nbytes());
}

// Element i of an integer or bool tensor.
int64_t int_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::I8:
      return t.data<int8_t>()[i];
    case DType::U8:
      return t.data<uint8_t>()[i];
    case DType::BOOL:
      return t.data<uint8_t>()[i];
    case DType::I16:
      return t.data<int16_t>()[i];
    case DType::I32:
      return t.data<int32_t>()[i];
    case DType::I64:
      return t.data<int64_t>()[i];
    default:
      throw std::runtime_error("not an integer tensor");
  }
}

void check_scalar(const TorchScalar& got, const json& want, const std::string& name) {
  SCOPED_TRACE(name);
  if (want.is_null()) {
    EXPECT_TRUE(std::holds_alternative<std::monostate>(got));
  } else if (want.is_boolean()) {
    ASSERT_TRUE(std::holds_alternative<bool>(got));
    EXPECT_EQ(std::get<bool>(got), want.get<bool>());
  } else if (want.is_number_integer()) {
    ASSERT_TRUE(std::holds_alternative<int64_t>(got));
    EXPECT_EQ(std::get<int64_t>(got), want.get<int64_t>());
  } else if (want.is_number_float()) {
    ASSERT_TRUE(std::holds_alternative<double>(got));
    EXPECT_EQ(std::get<double>(got), want.get<double>());
  } else {
    ASSERT_TRUE(std::holds_alternative<std::string>(got));
    EXPECT_EQ(std::get<std::string>(got), want.get<std::string>());
  }
}

TEST(TorchCheckpoint, FixturesMatchWhatTorchLoads) {
  ASSERT_EQ(expected().at("valid").size(), 7u);
  size_t checked = 0;
  for (const auto& [file, want] : expected().at("valid").items()) {
    SCOPED_TRACE(file);
    const TorchCheckpoint ck = TorchCheckpoint::open(torch_fixture(file));
    std::vector<std::string> names;
    for (const auto& [name, t] : want.at("tensors").items()) names.push_back(name);
    EXPECT_EQ(ck.names(), names);  // json objects iterate sorted, as names() is
    for (const auto& [name, w] : want.at("tensors").items()) {
      SCOPED_TRACE(name);
      ASSERT_TRUE(ck.has(name));
      const Tensor t = ck.get(name);
      ++checked;
      EXPECT_EQ(dtype_name(t.dtype()), w.at("dtype").get<std::string>());
      EXPECT_EQ(t.shape(), w.at("shape").get<std::vector<int64_t>>());
      EXPECT_EQ(ck.info(name).shape, t.shape());
      EXPECT_EQ(crc_of(t), w.at("crc32").get<uint32_t>());
      const json& values = w.at("values");
      for (size_t i = 0; i < values.size(); ++i) {
        if (dtype_is_float(t.dtype())) {
          EXPECT_EQ(float_at(t, static_cast<int64_t>(i)), values[i].get<double>()) << i;
        } else {
          EXPECT_EQ(int_at(t, static_cast<int64_t>(i)), values[i].get<int64_t>()) << i;
        }
      }
    }
    EXPECT_EQ(ck.scalars().size(), want.at("scalars").size());
    for (const auto& [name, w] : want.at("scalars").items()) {
      ASSERT_TRUE(ck.has_scalar(name)) << name;
      check_scalar(ck.scalar(name), w, name);
    }
    std::map<std::string, std::string> unsupported;
    for (const auto& [name, w] : want.at("unsupported").items()) unsupported[name] = w;
    EXPECT_EQ(ck.unsupported(), unsupported);
  }
  EXPECT_EQ(checked, 4 * 20 + 9 + 2 + 1u);  // dtypes x 4 variants, state_dict, wrapped, unsupported
}

TEST(TorchCheckpoint, HostileAndUnsupportedFilesAreRefused) {
  ASSERT_EQ(expected().at("hostile").size(), 8u);
  for (const auto& [file, needles] : expected().at("hostile").items()) {
    SCOPED_TRACE(file);
    const std::string path = torch_fixture(file);
    try {
      (void)TorchCheckpoint::open(path);
      ADD_FAILURE() << "opened";
    } catch (const Error& e) {
      const std::string msg = e.what();
      EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;  // the message starts with the file
      for (const auto& n : needles) {
        EXPECT_NE(msg.find(n.get<std::string>()), std::string::npos) << msg;
      }
    }
  }
}

TEST(TorchCheckpoint, ContiguousTensorsAreViewsIntoTheFile) {
  auto bytes = std::make_shared<std::string>(test::read_file(torch_fixture("dtypes.pt")));
  const uint8_t* begin = reinterpret_cast<const uint8_t*>(bytes->data());
  const TorchCheckpoint ck = TorchCheckpoint::from_bytes(begin, bytes->size(), bytes, "dtypes.pt");
  auto inside = [&](const Tensor& t) {
    const uint8_t* p = static_cast<const uint8_t*>(t.raw());
    return p >= begin && p + t.nbytes() <= begin + bytes->size();
  };
  Tensor f16 = ck.get("f16");
  EXPECT_TRUE(inside(f16));
  EXPECT_THROW(f16.raw_mut(), Error);  // read-only view
  // Three tensors over one storage: the slices point into base at their storage_offset.
  const Tensor base = ck.get("base"), a = ck.get("slice_a"), b = ck.get("slice_b");
  EXPECT_EQ(ck.info("base").storage_key, ck.info("slice_a").storage_key);
  EXPECT_EQ(a.data<float>(), base.data<float>() + 2);
  EXPECT_EQ(b.data<float>(), base.data<float>() + 8);
  EXPECT_EQ(b.shape(), (std::vector<int64_t>{4}));
  EXPECT_EQ(b.data<float>()[0], 2.0f);
  // The transposed tensor is strided in the file: a contiguous copy with the right values.
  EXPECT_FALSE(ck.info("transposed").contiguous);
  const Tensor tr = ck.get("transposed");
  EXPECT_FALSE(inside(tr));
  EXPECT_EQ(tr.shape(), (std::vector<int64_t>{3, 2}));
  const std::vector<int32_t> want = {-5, 16, 2, 23, 9, 30};
  EXPECT_EQ(std::vector<int32_t>(tr.data<int32_t>(), tr.data<int32_t>() + 6), want);
  // 0-dim and empty tensors.
  EXPECT_EQ(ck.get("scalar0d").ndim(), 0u);
  EXPECT_EQ(ck.get("scalar0d").data<float>()[0], 3.25f);
  const Tensor empty = ck.get("empty");
  EXPECT_EQ(empty.shape(), (std::vector<int64_t>{0, 3}));
  EXPECT_FALSE(empty.empty());  // has (zero bytes of) storage
}

TEST(TorchCheckpoint, ViewsOutliveTheCheckpoint) {
  Tensor t;
  {
    const TorchCheckpoint ck = TorchCheckpoint::open(torch_fixture("state_dict.bin"));
    t = ck.get("model.embed_tokens.weight");
  }
  EXPECT_EQ(t.dtype(), DType::F16);
  EXPECT_EQ(t.shape(), (std::vector<int64_t>{10, 8}));
  const json& w =
      expected().at("valid").at("state_dict.bin").at("tensors").at("model.embed_tokens.weight");
  EXPECT_EQ(crc_of(t), w.at("crc32").get<uint32_t>());
}

TEST(TorchCheckpoint, LoadStateDict) {
  const std::map<std::string, Tensor> sd = load_torch_state_dict(torch_fixture("state_dict.bin"));
  EXPECT_EQ(sd.size(), 9u);
  EXPECT_EQ(sd.at("model.layers.0.self_attn.q_proj.qweight").dtype(), DType::I8);
  EXPECT_EQ(sd.at("model.layers.0.self_attn.q_proj.qweight").shape(), (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(sd.at("model.layers.0.self_attn.q_proj.s1_scales").dtype(), DType::F16);
}

TEST(TorchCheckpoint, UnsupportedDTypesAreListedNotReadable) {
  const std::string path = torch_fixture("unsupported.pt");
  const TorchCheckpoint ck = TorchCheckpoint::open(path);
  EXPECT_TRUE(ck.has("ok"));
  EXPECT_FALSE(ck.has("dbl"));
  EXPECT_QSERVE_ERROR((void)ck.get("dbl"), path, "tensor 'dbl' has dtype torch.float64",
                      "qserve does not support");
  EXPECT_QSERVE_ERROR((void)ck.info("u16"), path, "torch.uint16");
  EXPECT_QSERVE_ERROR((void)ck.get("nope"), path, "no tensor named 'nope'");
  EXPECT_QSERVE_ERROR((void)ck.scalar("nope"), path, "no scalar value named 'nope'");
}

// ---- crafted archives ----

const std::string kFour = std::string(
    "\x00\x00\x80\x3f\x00\x00\x00\x40\x00\x00\x40\x40\x00\x00\x80\x40", 16);  // 1,2,3,4 f32

std::string dict_of_one(const std::string& key, Pickle& value) {
  Pickle p;
  p.proto(2).empty_dict().str(key).raw(value.data()).setitem().stop();
  return p.data();
}

TEST(TorchCheckpoint, StorageRecordMustMatchTheDeclaredSize) {
  Pickle t;
  t.tensor("FloatStorage", "0", 4, 0, {4}, {1});
  EXPECT_NO_THROW(checkpoint_from(torch_archive(dict_of_one("w", t), {{"0", kFour}})));
  EXPECT_QSERVE_ERROR(
      checkpoint_from(torch_archive(dict_of_one("w", t), {{"0", kFour + "x"}})),
      "mem.pt: storage '0' holds 17 bytes, but the pickle declares 4 elements of 4 bytes");
  EXPECT_QSERVE_ERROR(checkpoint_from(torch_archive(dict_of_one("w", t), {{"1", kFour}})),
                      "mem.pt: storage '0' is missing from the archive", "ck/data/0");
}

TEST(TorchCheckpoint, StridedAndMisalignedTensorsAreCopied) {
  // A (2, 3, 2) tensor with permuted strides over arange(12), and an expanded one (stride 0).
  std::string storage;
  for (int32_t i = 0; i < 12; ++i) test::put_le(storage, static_cast<uint32_t>(i), 4);
  Pickle p;
  p.proto(2).empty_dict().mark();
  p.str("perm").tensor("IntStorage", "0", 12, 0, {2, 3, 2}, {1, 4, 2});
  p.str("expand").tensor("IntStorage", "0", 12, 1, {3, 2}, {0, 1});
  p.str("flat").tensor("IntStorage", "0", 12, 3, {2}, {1});
  p.setitems().stop();
  const TorchCheckpoint ck = checkpoint_from(torch_archive(p.data(), {{"0", storage}}));
  const Tensor perm = ck.get("perm");
  std::vector<int32_t> want;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 2; ++k) want.push_back(i * 1 + j * 4 + k * 2);
  EXPECT_EQ(std::vector<int32_t>(perm.data<int32_t>(), perm.data<int32_t>() + 12), want);
  const Tensor ex = ck.get("expand");
  EXPECT_EQ(std::vector<int32_t>(ex.data<int32_t>(), ex.data<int32_t>() + 6),
            (std::vector<int32_t>{1, 2, 1, 2, 1, 2}));
  EXPECT_TRUE(ck.info("flat").contiguous);

  // Expanded views whose copy would dwarf their storage are refused, not allocated.
  Pickle huge;
  huge.proto(2).empty_dict().str("e").tensor("IntStorage", "0", 12, 0, {1 << 20, 1 << 20}, {0, 0});
  huge.setitem().stop();
  EXPECT_QSERVE_ERROR(checkpoint_from(torch_archive(huge.data(), {{"0", storage}})),
                      "mem.pt: tensor 'e' is a strided view of storage '0'",
                      "would take 4398046511104 bytes");

  // A storage record at an odd address (another zip writer could do that): copied, since
  // typed access through a misaligned pointer is undefined.
  Pickle t;
  t.tensor("FloatStorage", "0", 4, 0, {4}, {1});
  test::ZipWriter::Options odd;
  odd.misalign = true;
  const std::string z = test::ZipWriter()
                            .add("ck/data.pkl", dict_of_one("w", t))
                            .add("ck/data/0", kFour, odd)
                            .build();
  const TorchCheckpoint mis = checkpoint_from(z);
  const Tensor w = mis.get("w");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(w.raw()) % 4, 0u);
  EXPECT_EQ(std::vector<float>(w.data<float>(), w.data<float>() + 4),
            (std::vector<float>{1, 2, 3, 4}));
}

TEST(TorchCheckpoint, ContainerErrors) {
  EXPECT_QSERVE_ERROR(checkpoint_from(""), "mem.pt: not a PyTorch checkpoint", "empty");
  EXPECT_QSERVE_ERROR(checkpoint_from("hello world"), "mem.pt: not a PyTorch checkpoint",
                      "missing the zip signature");
  EXPECT_QSERVE_ERROR(checkpoint_from("\x80\x04K\x01."), "mem.pt: a bare pickle");
  std::string tar(1024, '\0');
  tar.replace(257, 5, "ustar");
  EXPECT_QSERVE_ERROR(checkpoint_from(tar), "legacy tar-based");
  EXPECT_QSERVE_ERROR(checkpoint_from(test::ZipWriter().add("x/other", "").build()),
                      "without <archive>/data.pkl");
  EXPECT_QSERVE_ERROR(checkpoint_from(test::ZipWriter().add("data.pkl", "").build()),
                      "without <archive>/data.pkl");
  EXPECT_QSERVE_ERROR(
      checkpoint_from(test::ZipWriter().add("a/data.pkl", "").add("b/data.pkl", "").build()),
      "more than one data.pkl");
  Pickle empty;
  empty.proto(2).empty_dict().stop();
  test::ZipWriter be;
  be.add("ck/data.pkl", empty.data()).add("ck/byteorder", "big");
  EXPECT_QSERVE_ERROR(checkpoint_from(be.build()), "byte order 'big' is not supported");
  EXPECT_EQ(
      checkpoint_from(test::ZipWriter().add("ck/data.pkl", empty.data()).build()).names().size(),
      0u);  // byteorder is optional (older torch)
  // data.pkl is checksummed: a flipped byte is reported as corruption, not as a pickle error.
  std::string z = torch_archive(empty.data(), {});
  z[z.find("\x80\x02}") + 2] = '~';
  EXPECT_QSERVE_ERROR(checkpoint_from(z), "data.pkl' is corrupt (CRC-32 mismatch)");
  // Pickle errors carry the file and the record.
  Pickle os;
  os.proto(2).global("os", "system").stop();
  EXPECT_QSERVE_ERROR(checkpoint_from(torch_archive(os.data(), {})),
                      "mem.pt: data.pkl: refusing to load pickle global os.system");
}

TEST(TorchCheckpoint, NamesAndNesting) {
  Pickle t;
  t.tensor("FloatStorage", "0", 4, 0, {4}, {1});
  const std::string tensor = t.data();
  Pickle p;
  p.proto(2).empty_dict().mark();
  p.int32(5).raw(tensor);  // int key -> "5"
  p.none().raw(tensor);    // None key -> skipped
  p.str("deep").empty_dict().str("a").empty_dict().str("b").raw(tensor).setitem().setitem();
  p.str("tup").mark().raw(tensor).float64(0.25).tuple();  // "tup.0", "tup.1"
  p.str("bytes").bytes("xy");                             // not exposed
  p.setitems().stop();
  const TorchCheckpoint ck = checkpoint_from(torch_archive(p.data(), {{"0", kFour}}));
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"5", "tup.0"}));
  ASSERT_TRUE(ck.has_scalar("tup.1"));
  EXPECT_EQ(std::get<double>(ck.scalar("tup.1")), 0.25);
  EXPECT_EQ(ck.scalars().size(), 1u);

  Pickle clash;  // "a.b" directly and "a" -> {"b"}: the same flattened name
  clash.proto(2).empty_dict().mark().str("a.b").int32(1).str("a").empty_dict().str("b").int32(2);
  clash.setitem().setitems().stop();
  EXPECT_QSERVE_ERROR(checkpoint_from(torch_archive(clash.data(), {})),
                      "mem.pt: name 'a.b' occurs twice");

  Pickle list;
  list.proto(2).empty_list().stop();
  EXPECT_QSERVE_ERROR(checkpoint_from(torch_archive(list.data(), {})),
                      "mem.pt: the checkpoint holds a list, not a dict");
}

// Every prefix and random mutations of real checkpoints: only qserve::Errors, and every tensor of
// a checkpoint that opens can be read in full (ASan would catch an escaped bound).
void sweep(const std::string& fixture) {
  const std::string bytes = test::read_file(torch_fixture(fixture));
  auto check = [](std::string m) {
    try {
      const TorchCheckpoint ck = checkpoint_from(std::move(m));
      for (const std::string& n : ck.names()) (void)crc_of(ck.get(n));
    } catch (const Error&) {
    }
  };
  for (size_t n = 0; n < bytes.size(); n += 3) check(bytes.substr(0, n));
  std::mt19937 rng(5);
  for (int i = 0; i < 2000; ++i) {
    std::string m = bytes;
    for (int k = 0; k < 1 + static_cast<int>(rng() % 3); ++k)
      m[rng() % m.size()] = static_cast<char>(rng());
    check(std::move(m));
  }
}

TEST(TorchCheckpoint, TruncatedAndMutatedFilesFailCleanly) {
  sweep("dtypes.pt");
  sweep("state_dict.bin");
  sweep("zip64.pt");
}

}  // namespace
}  // namespace qserve
