// Reading safetensors: one mmapped file, and checkpoint folders (sharded with an index, a single
// model.safetensors, or loose *.safetensors files).
#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/error.h"
#include "formats/json_util.h"

namespace qserve {

namespace fs = std::filesystem;

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto f = std::shared_ptr<SafetensorsFile>(new SafetensorsFile());
  f->file_ = MappedFile::open(path);
  f->header_ = parse_safetensors_header(f->file_->data(), f->file_->size(), f->file_->size(), path);
  return f;
}

Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = header_.tensors.find(name);
  if (it == header_.tensors.end()) {
    throw Error(path() + ": no tensor named '" + formats_detail::printable(name) + "'");
  }
  const SafetensorsEntry& e = it->second;
  // Offsets were validated against the file size in parse_safetensors_header.
  const uint8_t* p = file_->data() + header_.data_offset + e.begin;
  const size_t align = dtype_size(e.dtype);
  if (reinterpret_cast<uintptr_t>(p) % align != 0) {
    // Files from the reference writer (and ours) keep every tensor naturally aligned, but the
    // format allows any layout; typed access through a misaligned pointer is undefined, so such
    // tensors are copied into aligned storage instead of viewed.
    Tensor t(e.dtype, e.shape);
    if (e.end > e.begin) std::memcpy(t.raw_mut(), p, e.end - e.begin);
    return t;
  }
  return Tensor::view(e.dtype, e.shape, p, file_);
}

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

// Shard names come from a JSON file we do not control: keep them inside the checkpoint folder.
void check_shard_name(const std::string& shard, const std::string& index_path) {
  const fs::path p(shard);
  bool ok = !shard.empty() && !p.is_absolute() && shard.find('\0') == std::string::npos;
  for (const auto& part : p) ok = ok && part != "..";
  if (!ok) {
    throw Error(index_path + ": shard file name '" + formats_detail::printable(shard) +
                "' must be a relative path inside the checkpoint folder");
  }
}

}  // namespace

SafetensorsCheckpoint SafetensorsCheckpoint::open_dir(const std::string& dir) {
  SafetensorsCheckpoint ck;
  ck.source_ = dir;
  std::error_code ec;
  // A single .safetensors file is accepted too; it is its own checkpoint.
  if (fs::is_regular_file(dir, ec)) {
    ck.files_.push_back(SafetensorsFile::open(dir));
    for (const auto& [name, e] : ck.files_[0]->header().tensors) ck.where_.emplace(name, 0);
    return ck;
  }
  if (!fs::is_directory(dir, ec))
    throw Error(dir + ": not a directory (checkpoint folder expected)");

  const fs::path root(dir);
  const std::string index_path = (root / kIndexName).string();
  if (fs::exists(index_path, ec)) {
    const nlohmann::json idx = formats_detail::read_json_file(index_path);
    if (!idx.is_object()) throw Error(index_path + ": the index must be a JSON object");
    auto wm = idx.find("weight_map");
    if (wm == idx.end() || !wm->is_object()) {
      throw Error(index_path + ": missing \"weight_map\" object {tensor name: shard file}");
    }
    std::map<std::string, std::string> tensor_to_shard;
    std::set<std::string> shards;
    for (const auto& [name, shard] : wm->items()) {
      if (!shard.is_string()) {
        throw Error(index_path + ": weight_map entry for '" + formats_detail::printable(name) +
                    "' must be a shard file name, got " + formats_detail::describe_json(shard));
      }
      check_shard_name(shard.get<std::string>(), index_path);
      tensor_to_shard.emplace(name, shard.get<std::string>());
      shards.insert(shard.get<std::string>());
    }
    if (shards.empty()) throw Error(index_path + ": weight_map is empty");
    std::map<std::string, size_t> shard_index;
    for (const std::string& shard : shards) {  // sorted, so the order is deterministic
      const std::string path = (root / shard).string();
      if (!fs::exists(path, ec)) {
        throw Error(path + ": missing shard file (listed in " + index_path + ")");
      }
      shard_index.emplace(shard, ck.files_.size());
      ck.files_.push_back(SafetensorsFile::open(path));
    }
    // The index is the table of contents: every tensor it lists must really be in its shard.
    // Tensors a shard holds beyond the index are not reachable (transformers does the same).
    for (const auto& [name, shard] : tensor_to_shard) {
      const size_t i = shard_index.at(shard);
      if (!ck.files_[i]->has(name)) {
        throw Error(index_path + ": tensor '" + formats_detail::printable(name) +
                    "' is listed for shard " + shard + " but is missing from that file");
      }
      ck.where_.emplace(name, i);
    }
    return ck;
  }

  std::vector<std::string> paths;
  const std::string single = (root / kSingleName).string();
  if (fs::exists(single, ec)) {
    paths.push_back(single);
  } else {
    for (const auto& de : fs::directory_iterator(root, ec)) {
      if (de.path().extension() == ".safetensors" && de.is_regular_file(ec)) {
        paths.push_back(de.path().string());
      }
    }
    if (ec) throw Error(dir + ": cannot list the folder: " + ec.message());
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) throw Error("no safetensors files in " + dir);
  for (const std::string& path : paths) {
    const size_t i = ck.files_.size();
    ck.files_.push_back(SafetensorsFile::open(path));
    for (const auto& [name, e] : ck.files_[i]->header().tensors) {
      auto [it, inserted] = ck.where_.emplace(name, i);
      if (!inserted) {
        throw Error(dir + ": duplicate tensor '" + formats_detail::printable(name) + "' in " +
                    ck.files_[it->second]->path() + " and " + path);
      }
    }
  }
  return ck;
}

Tensor SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    throw Error(source_ + ": checkpoint has no tensor named '" + formats_detail::printable(name) +
                "'");
  }
  return files_[it->second]->get(name);
}

const SafetensorsEntry& SafetensorsCheckpoint::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    throw Error(source_ + ": checkpoint has no tensor named '" + formats_detail::printable(name) +
                "'");
  }
  return files_[it->second]->header().tensors.at(name);
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [name, i] : where_) out.push_back(name);
  return out;  // std::map keeps them sorted
}

std::map<std::string, std::string> SafetensorsCheckpoint::metadata() const {
  std::map<std::string, std::string> out;
  for (const auto& f : files_) {
    for (const auto& [k, v] : f->header().metadata) out.emplace(k, v);  // emplace: first wins
  }
  return out;
}

}  // namespace qserve
