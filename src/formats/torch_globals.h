// The allow-list of pickle globals for torch checkpoints: which (module, name) pairs the
// unpickler may name, and what each one is. Anything not listed here is refused.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "formats/torch_pickle.h"

namespace qserve {

struct TorchGlobalInfo {
  TorchGlobal global;
  DType dtype = DType::U8;        // StorageType, DTypeObject
  int64_t elem_size = 1;          // StorageType, DTypeObject, UntypedStorage
  std::string unsupported_dtype;  // StorageType, DTypeObject: a torch dtype qserve cannot hold
};

// The global `module.name`, or nullopt when it is not allowed.
std::optional<TorchGlobalInfo> find_torch_global(std::string_view module, std::string_view name);

}  // namespace qserve
