// RWR_GRPC / RWR_ROCKSDB: outside results become statuses naming call, file, line and rank.
#include <grpcpp/support/status.h>
#include <rocksdb/status.h>

#include "common/call_status_grpc.h"
#include "common/call_status_rocksdb.h"
#include "common/process.h"
#include "gtest/gtest.h"

namespace rwr {
namespace {

absl::Status GrpcCall(grpc::Status result) {
  RWR_GRPC(result);
  return absl::OkStatus();
}
absl::Status RocksCall(rocksdb::Status result) {
  RWR_ROCKSDB(result);
  return absl::OkStatus();
}
TEST(CallStatusTest, NamesCallFileLineAndRank) {
  SetProcessRank(3, 4);
  absl::Status s = GrpcCall(grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused"));
  SetProcessRank(0, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  const std::string message(s.message());
  EXPECT_NE(message.find("result failed: connection refused"), std::string::npos) << message;
  EXPECT_NE(message.find("call_status_services_test.cc:"), std::string::npos) << message;
  EXPECT_NE(message.find("rank 3"), std::string::npos) << message;
  EXPECT_NE(message.find("[grpc"), std::string::npos) << message;
  EXPECT_TRUE(GrpcCall(grpc::Status::OK).ok());
}

TEST(CallStatusTest, RocksdbCodesMapToMeaningfulStatusCodes) {
  EXPECT_TRUE(RocksCall(rocksdb::Status::OK()).ok());
  EXPECT_EQ(RocksCall(rocksdb::Status::NotFound("k")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(RocksCall(rocksdb::Status::Corruption("bad block")).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(RocksCall(rocksdb::Status::IOError("disk")).code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace rwr
