// demo_partner: "the prison calendar", a stand-in partner REST API for ./run.sh and demos.
//
//   POST /api/slots        takes a JSON object with an "id"; 201 {"accepted":true,"id":...}
//                          (200 for an Idempotency-Key seen before), 400 with a reason when
//                          the body is not such an object. A new slot is confirmed later by
//                          POSTing {"id":ID,"status":STATUS} to --callback_url with the
//                          request's X-Correlation-ID.
//   GET  /api/slots/count  {"received":N,"unique":M}: accepted POSTs, and distinct slots
//                          among them (by Idempotency-Key, else by id).
//   GET  /health           200 {"status":"ok"}
//
// With --secret_env, every callback is signed the Standard Webhooks way with the secret in that
// environment variable: webhook-id "cb-ID" (the same on every retry, so the hub sees a repeat),
// webhook-timestamp (now, per attempt) and webhook-signature.
//
//   demo_partner --listen 127.0.0.1:8091
//       --callback_url http://127.0.0.1:8080/webhook/prison --callback_delay_ms 50
#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/flags/flag.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/cli.h"
#include "common/http_client.h"
#include "common/http_server.h"
#include "common/log.h"
#include "common/webhook_signature.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:8091", "host:port to serve on (port 0 picks one)");
ABSL_FLAG(std::string, callback_url, "",
          "where confirmations are POSTed, e.g. http://127.0.0.1:8080/webhook/prison; "
          "empty: no callbacks");
ABSL_FLAG(int, callback_delay_ms, 50, "delay between accepting a slot and confirming it");
ABSL_FLAG(std::string, status, "confirmed", "the status value sent in each callback");
ABSL_FLAG(std::string, secret_env, "",
          "environment variable holding the secret (\"whsec_...\") that signs each callback "
          "(Standard Webhooks); empty: callbacks are not signed");
ABSL_FLAG(int, callback_attempts, 3,
          "tries per callback when the receiver is unreachable or answers 429/5xx");

namespace {

using ess::http::Responder;
using ess::http::ServerRequest;
using ess::http::ServerResponse;

// Runs tasks at (or soon after) their due time on one thread of its own.
class Timer {
 public:
  using Task = absl::AnyInvocable<void() &&>;

  Timer() : thread_([this] { Run(); }) {}
  ~Timer() { Stop(); }

  void After(absl::Duration delay, Task task) {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    tasks_.emplace(absl::Now() + delay, std::move(task));
    wake_.Signal();
  }

  // Drops tasks not yet due and joins. Returns how many were dropped.
  size_t Stop() {
    size_t dropped = 0;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return 0;
      stopping_ = true;
      dropped = tasks_.size();
      tasks_.clear();
      wake_.Signal();
    }
    thread_.join();
    return dropped;
  }

 private:
  void Run() {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      if (tasks_.empty()) {
        wake_.Wait(&mu_);
        continue;
      }
      auto first = tasks_.begin();
      if (absl::Now() < first->first) {
        wake_.WaitWithDeadline(&mu_, first->first);
        continue;
      }
      Task task = std::move(first->second);
      tasks_.erase(first);
      mu_.Unlock();
      std::move(task)();
      mu_.Lock();
    }
  }

  absl::Mutex mu_;
  absl::CondVar wake_;
  std::multimap<absl::Time, Task> tasks_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

template <typename Fill>
std::string Json(Fill fill) {
  rapidjson::StringBuffer out;
  JsonWriter writer(out);
  writer.StartObject();
  fill(writer);
  writer.EndObject();
  return std::string(out.GetString(), out.GetSize());
}

ServerResponse Error(int status, std::string_view reason) {
  return {.status = status, .body = Json([&](JsonWriter& w) {
                              w.Key("error");
                              w.String(reason.data(),
                                       static_cast<rapidjson::SizeType>(reason.size()));
                            })};
}

// Worth another try: the receiver was unreachable, slow, overloaded or failing.
bool IsRetryable(const absl::StatusOr<ess::http::Response>& r) {
  if (!r.ok()) {
    return r.status().code() == absl::StatusCode::kUnavailable ||
           r.status().code() == absl::StatusCode::kDeadlineExceeded;
  }
  return r->status == 429 || r->status >= 500;
}

class Calendar {
 public:
  struct Options {
    std::string callback_url;
    absl::Duration callback_delay;
    std::string status;
    int callback_attempts;
    std::optional<ess::webhook::SignatureVerifier> signer;  // set: callbacks are signed
  };

  explicit Calendar(Options options) : options_(std::move(options)), client_({}) {}
  ~Calendar() { Stop(); }

  // Idempotent. The timer stops first, so no callback is sent to a stopped client.
  void Stop() {
    if (size_t dropped = timer_.Stop(); dropped > 0) {
      ess::log::Warn("", "callbacks dropped at shutdown", {{"count", std::to_string(dropped)}});
    }
    client_.Stop();
  }

  // Server loop thread.
  void Handle(ServerRequest req, Responder r) {
    if (req.path == "/health") {
      std::move(r).Send({.status = 200, .body = R"({"status":"ok"})"});
    } else if (req.path == "/api/slots/count" && req.method == "GET") {
      std::move(r).Send({.status = 200, .body = Count()});
    } else if (req.path == "/api/slots") {
      if (req.method != "POST") {
        ServerResponse resp = Error(405, "use POST");
        resp.headers.emplace_back("Allow", "POST");
        std::move(r).Send(std::move(resp));
        return;
      }
      std::move(r).Send(AcceptSlot(req));
    } else {
      std::move(r).Send(Error(404, "no such route"));
    }
  }

 private:
  std::string Count() {
    absl::MutexLock lock(&mu_);
    return Json([&](JsonWriter& w) {
      w.Key("received");
      w.Uint64(received_);
      w.Key("unique");
      w.Uint64(seen_keys_.size());
    });
  }

  ServerResponse AcceptSlot(const ServerRequest& req) {
    const std::string correlation(req.Header("x-correlation-id"));
    auto reject = [&](std::string_view reason) {
      ess::log::Warn(correlation, "slot rejected", {{"reason", reason}, {"peer", req.peer}});
      return Error(400, reason);
    };
    rapidjson::Document doc;
    doc.Parse(req.body.data(), req.body.size());
    if (doc.HasParseError()) {
      return reject(
          absl::StrCat("body is not JSON: ", rapidjson::GetParseError_En(doc.GetParseError()),
                       " at offset ", doc.GetErrorOffset()));
    }
    if (!doc.IsObject()) return reject("body must be a JSON object");
    auto id_it = doc.FindMember("id");
    if (id_it == doc.MemberEnd()) return reject("missing \"id\"");
    const rapidjson::Value& id = id_it->value;
    std::string id_text;
    if (id.IsString()) {
      id_text.assign(id.GetString(), id.GetStringLength());
    } else if (id.IsInt64()) {
      id_text = std::to_string(id.GetInt64());
    }
    if (id_text.empty()) return reject("\"id\" must be a non-empty string or an integer");

    const std::string idempotency_key(req.Header("idempotency-key"));
    const std::string& cid = correlation.empty() ? id_text : correlation;
    bool fresh = false;
    {
      absl::MutexLock lock(&mu_);
      ++received_;
      fresh = seen_keys_.insert(idempotency_key.empty() ? id_text : idempotency_key).second;
    }
    ess::log::Info(cid, fresh ? "slot received" : "duplicate slot (idempotent replay)",
                   {{"id", id_text},
                    {"x_correlation_id", correlation},
                    {"idempotency_key", idempotency_key},
                    {"peer", req.peer}});

    auto write_id = [&](JsonWriter& w) {
      w.Key("id");
      id.Accept(w);
    };
    if (fresh && !options_.callback_url.empty()) {
      std::string callback_body = Json([&](JsonWriter& w) {
        write_id(w);
        w.Key("status");
        w.String(options_.status.c_str(), static_cast<rapidjson::SizeType>(options_.status.size()));
      });
      ScheduleCallback(cid, std::move(callback_body), 1, options_.callback_delay);
    }
    return {.status = fresh ? 201 : 200, .body = Json([&](JsonWriter& w) {
                                           w.Key("accepted");
                                           w.Bool(true);
                                           write_id(w);
                                         })};
  }

  void ScheduleCallback(std::string cid, std::string body, int attempt, absl::Duration delay) {
    timer_.After(delay, [this, cid = std::move(cid), body = std::move(body), attempt]() mutable {
      SendCallback(std::move(cid), std::move(body), attempt);
    });
  }

  // Timer thread; the completion runs on the client thread.
  void SendCallback(std::string cid, std::string body, int attempt) {
    ess::http::Request request{
        .method = "POST",
        .url = options_.callback_url,
        .headers = {{"Content-Type", "application/json"}, {"X-Correlation-ID", cid}},
        .body = body,
    };
    if (options_.signer) {
      const std::string id = absl::StrCat("cb-", cid);
      const std::string ts = absl::StrCat(absl::ToUnixSeconds(absl::Now()));
      request.headers.emplace_back(ess::webhook::kSignatureHeader,
                                   options_.signer->Sign(id, ts, body));
      request.headers.emplace_back(ess::webhook::kIdHeader, id);
      request.headers.emplace_back(ess::webhook::kTimestampHeader, ts);
    }
    client_.Send(std::move(request), [this, cid = std::move(cid), body = std::move(body),
                                      attempt](absl::StatusOr<ess::http::Response> r) mutable {
      const bool retryable = IsRetryable(r);
      const std::string attempt_text = std::to_string(attempt);
      if (r.ok() && !retryable) {
        const std::string status = std::to_string(r->status);
        const std::string elapsed_ms = std::to_string(absl::ToInt64Milliseconds(r->elapsed));
        auto log = r->status < 300 ? &ess::log::Info : &ess::log::Warn;
        log(cid, "callback answered",
            {{"status", status}, {"attempt", attempt_text}, {"elapsed_ms", elapsed_ms}});
        return;
      }
      const std::string outcome = r.ok() ? absl::StrCat("HTTP ", r->status) : r.status().ToString();
      if (retryable && attempt < options_.callback_attempts) {
        ess::log::Warn(cid, "callback failed, will retry",
                       {{"outcome", outcome}, {"attempt", attempt_text}});
        ScheduleCallback(std::move(cid), std::move(body), attempt + 1,
                         absl::Milliseconds(200) * (1 << std::min(attempt - 1, 5)));
        return;
      }
      ess::log::Error(cid, "callback failed", {{"outcome", outcome}, {"attempt", attempt_text}});
    });
  }

  const Options options_;
  ess::http::Client client_;
  Timer timer_;
  absl::Mutex mu_;
  uint64_t received_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<std::string> seen_keys_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

int main(int argc, char** argv) {
  ess::cli::BlockTerminationSignals();
  ess::cli::Parse(argc, argv,
                  "demo_partner [--listen HOST:PORT] [--callback_url URL] "
                  "[--callback_delay_ms MS] [--status confirmed] [--secret_env NAME]\n"
                  "A stand-in partner (the prison calendar): POST /api/slots, "
                  "GET /api/slots/count, GET /health.");
  ess::log::Init("demo_partner");

  Calendar::Options options{
      .callback_url = absl::GetFlag(FLAGS_callback_url),
      .callback_delay = absl::Milliseconds(absl::GetFlag(FLAGS_callback_delay_ms)),
      .status = absl::GetFlag(FLAGS_status),
      .callback_attempts = absl::GetFlag(FLAGS_callback_attempts),
  };
  if (absl::GetFlag(FLAGS_callback_delay_ms) < 0 || options.status.empty() ||
      options.callback_attempts < 1 ||
      (!options.callback_url.empty() && !absl::StartsWith(options.callback_url, "http://") &&
       !absl::StartsWith(options.callback_url, "https://"))) {
    ess::log::Error("",
                    "bad flags: need --callback_delay_ms >= 0, a non-empty --status, "
                    "--callback_attempts >= 1 and an http(s) --callback_url");
    return 2;
  }
  if (const std::string env = absl::GetFlag(FLAGS_secret_env); !env.empty()) {
    const char* secret = std::getenv(env.c_str());
    absl::StatusOr<ess::webhook::SignatureVerifier> signer =
        secret == nullptr ? absl::FailedPreconditionError("is not set")
                          : ess::webhook::SignatureVerifier::Create({secret}, absl::Minutes(5));
    if (!signer.ok()) {
      ess::log::Error("", "bad flags: --secret_env",
                      {{"variable", env}, {"error", std::string(signer.status().message())}});
      return 2;
    }
    options.signer = *std::move(signer);
  }

  Calendar calendar(std::move(options));
  ess::http::Server server({.listen = absl::GetFlag(FLAGS_listen)},
                           [&calendar](ServerRequest req, Responder r) {
                             calendar.Handle(std::move(req), std::move(r));
                           });
  if (absl::Status s = server.Start(); !s.ok()) {
    ess::log::Error("", "cannot start", {{"error", s.ToString()}});
    return 1;
  }
  ess::log::Info("", "listening",
                 {{"port", std::to_string(server.port())},
                  {"callback_url", absl::GetFlag(FLAGS_callback_url)}});

  const int sig = ess::cli::WaitForTerminationSignal();
  ess::log::Info("", "stopping", {{"signal", ess::cli::SignalName(sig)}});
  server.Stop();
  calendar.Stop();
  return 0;
}
