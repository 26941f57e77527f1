// Element types of tensors on disk and in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace qserve {

enum class DType : uint8_t { F32, F16, BF16, I8, U8, I16, I32, I64, BOOL };

// Bytes per element.
size_t dtype_size(DType t);
// Safetensors spelling ("F32", "F16", "BF16", "I8", "U8", "I16", "I32", "I64", "BOOL").
std::string_view dtype_name(DType t);
// Inverse of dtype_name; nullopt for types we do not support (F64, F8_*, U16, ...).
std::optional<DType> dtype_from_name(std::string_view name);
bool dtype_is_float(DType t);

}  // namespace qserve
