// OpenAI-style API errors: an HTTP status plus the {"error": {...}} object OpenAI and vLLM send.
// Request parsing and the handlers throw ApiError; the server turns it into the response.
#pragma once

#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace qserve::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, const std::string& message, std::string param = {}, std::string type = {})
      : std::runtime_error(message),
        status_(status),
        param_(std::move(param)),
        type_(type.empty() ? default_type(status) : std::move(type)) {}

  int status() const { return status_; }
  const std::string& param() const { return param_; }  // the offending field, "" if none
  const std::string& type() const { return type_; }

  // {"error": {"message", "type", "param", "code"}} (param null when unknown).
  nlohmann::json to_json() const;

 private:
  static std::string default_type(int status);
  int status_;
  std::string param_;
  std::string type_;
};

}  // namespace qserve::server
