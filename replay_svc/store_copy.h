// Copies every record of one replay store into another: how a hub moves from its SQLite file to
// PostgreSQL (replay_svc --import_from), or back.
//
//   absl::StatusOr<CopyCount> copied = CopyStore(*sqlite, *postgres, {.page_size = 500});
//
// Records go oldest first (the order the source wrote them in), a page per Import, and keep
// their times; a record the target holds already is replaced only by a newer one, so a copy can
// run again after a failure, and never undoes what the lanes wrote to the target meanwhile.
#ifndef ESS_REPLAY_SVC_STORE_COPY_H_
#define ESS_REPLAY_SVC_STORE_COPY_H_

#include <cstddef>
#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "replay_svc/replay_store.h"

namespace ess::replay {

struct CopyCount {
  uint64_t read = 0;     // records read from the source
  uint64_t written = 0;  // of them, written to the target (the rest it held, as new or newer)
};

struct CopyOptions {
  size_t page_size = 500;
  // Called after each page with the counts so far.
  std::function<void(const CopyCount&)> progress;
};

// The counts once every record was read (and, when any was written, the target's statistics
// refreshed: ReplayStore::RefreshStatistics). An error names the record the target refused
// (direction, partner, message id); the pages before it stay copied.
absl::StatusOr<CopyCount> CopyStore(ReplayStore& from, ReplayStore& to, const CopyOptions& options);

}  // namespace ess::replay

#endif  // ESS_REPLAY_SVC_STORE_COPY_H_
