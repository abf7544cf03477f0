#include "violation.h"

namespace at::mps::threadsafe::sim {

const char* toString(ViolationKind kind) {
  switch (kind) {
    case ViolationKind::EncoderAlreadyEncoding:
      return "EncoderAlreadyEncoding";
    case ViolationKind::CommitCommitted:
      return "CommitCommitted";
    case ViolationKind::HandlerAfterCommit:
      return "HandlerAfterCommit";
    case ViolationKind::EncodeAfterCommit:
      return "EncodeAfterCommit";
    case ViolationKind::EndEncodingTwice:
      return "EndEncodingTwice";
    case ViolationKind::EncodeAfterEnd:
      return "EncodeAfterEnd";
    case ViolationKind::CommitWithOpenEncoder:
      return "CommitWithOpenEncoder";
    case ViolationKind::ConcurrentUse:
      return "ConcurrentUse";
    case ViolationKind::UseAfterRelease:
      return "UseAfterRelease";
    case ViolationKind::kCount:
      break;
  }
  return "unknown ViolationKind";
}

} // namespace at::mps::threadsafe::sim
