// The allow-list mirrors what torch.save writes for state dicts (and what
// torch.load(weights_only=True) accepts for them): tensor and parameter rebuilds, the legacy
// typed storage classes (one per dtype) and UntypedStorage, dtype objects, OrderedDict, and the
// _codecs.encode that protocol 2 uses for bytes. Storage classes and dtypes that torch has but
// qserve's DType lacks are still recognised, so that the error names the dtype rather than
// calling the file hostile.
#include "formats/torch_globals.h"

#include <array>

namespace qserve {

namespace {

struct DTypeName {
  std::string_view storage;  // legacy storage class name ("" if none)
  std::string_view dtype;    // torch dtype attribute name (canonical: what pickling writes)
  std::optional<DType> ours;
  int64_t elem_size;
};

constexpr std::array<DTypeName, 22> kDTypes{{
    {"FloatStorage", "float32", DType::F32, 4},
    {"HalfStorage", "float16", DType::F16, 2},
    {"BFloat16Storage", "bfloat16", DType::BF16, 2},
    {"CharStorage", "int8", DType::I8, 1},
    {"ByteStorage", "uint8", DType::U8, 1},
    {"ShortStorage", "int16", DType::I16, 2},
    {"IntStorage", "int32", DType::I32, 4},
    {"LongStorage", "int64", DType::I64, 8},
    {"BoolStorage", "bool", DType::BOOL, 1},
    {"DoubleStorage", "float64", std::nullopt, 8},
    {"ComplexFloatStorage", "complex64", std::nullopt, 8},
    {"ComplexDoubleStorage", "complex128", std::nullopt, 16},
    {"", "complex32", std::nullopt, 4},
    {"", "uint16", std::nullopt, 2},
    {"", "uint32", std::nullopt, 4},
    {"", "uint64", std::nullopt, 8},
    {"", "float8_e4m3fn", std::nullopt, 1},
    {"", "float8_e5m2", std::nullopt, 1},
    {"", "float8_e4m3fnuz", std::nullopt, 1},
    {"", "float8_e5m2fnuz", std::nullopt, 1},
    {"", "float8_e8m0fnu", std::nullopt, 1},
    {"", "float4_e2m1fn_x2", std::nullopt, 1},
}};

TorchGlobalInfo dtype_info(TorchGlobal g, const DTypeName& d) {
  TorchGlobalInfo info{g};
  info.elem_size = d.elem_size;
  if (d.ours) {
    info.dtype = *d.ours;
  } else {
    info.unsupported_dtype = std::string(d.dtype);
  }
  return info;
}

}  // namespace

std::optional<TorchGlobalInfo> find_torch_global(std::string_view module, std::string_view name) {
  if (module == "collections" && name == "OrderedDict")
    return TorchGlobalInfo{TorchGlobal::OrderedDict};
  if (module == "_codecs" && name == "encode") return TorchGlobalInfo{TorchGlobal::CodecsEncode};
  if (module == "torch._utils") {
    if (name == "_rebuild_tensor_v2") return TorchGlobalInfo{TorchGlobal::RebuildTensorV2};
    if (name == "_rebuild_tensor_v3") return TorchGlobalInfo{TorchGlobal::RebuildTensorV3};
    if (name == "_rebuild_parameter") return TorchGlobalInfo{TorchGlobal::RebuildParameter};
    if (name == "_rebuild_parameter_with_state")
      return TorchGlobalInfo{TorchGlobal::RebuildParameterWithState};
    return std::nullopt;
  }
  // torch 2.x pickles UntypedStorage under its defining module.
  if ((module == "torch" || module == "torch.storage") && name == "UntypedStorage")
    return TorchGlobalInfo{TorchGlobal::UntypedStorage};
  // Older torch wrote the storage class of the tensor's device: torch.cuda.HalfStorage for CUDA
  // tensors. The bytes are the same; we load everything to host memory anyway.
  if (module == "torch" || module == "torch.cuda") {
    for (const DTypeName& d : kDTypes) {
      if (!d.storage.empty() && name == d.storage) return dtype_info(TorchGlobal::StorageType, d);
    }
  }
  if (module != "torch") return std::nullopt;
  if (name == "Size") return TorchGlobalInfo{TorchGlobal::TorchSize};
  for (const DTypeName& d : kDTypes) {
    if (name == d.dtype) return dtype_info(TorchGlobal::DTypeObject, d);
  }
  return std::nullopt;
}

}  // namespace qserve
