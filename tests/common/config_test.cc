// Config: parsing, deep merging, --set overrides and the errors users see for bad config.
#include "common/config.h"

#include <algorithm>
#include <fstream>

#include "gtest/gtest.h"

namespace rwr {
namespace {

TEST(ConfigTest, MergeIsDeepAndOverlayWins) {
  auto base = Config::Parse("train: {lr: 0.001, steps: 10}\nmodel: {d_model: 64}\n", "base");
  auto overlay = Config::Parse("train: {lr: 0.01}\nseed: 7\n", "overlay");
  ASSERT_TRUE(base.ok() && overlay.ok());
  base->Merge(*overlay);
  EXPECT_DOUBLE_EQ(*base->Get<double>("train.lr"), 0.01);
  EXPECT_EQ(*base->Get<int>("train.steps"), 10);
  EXPECT_EQ(*base->Get<int>("model.d_model"), 64);
  EXPECT_EQ(*base->Get<int>("seed"), 7);
}

TEST(ConfigTest, SetOverridesParseYamlValuesAndCreateSections) {
  Config config;
  ASSERT_TRUE(config.Set("train.lr=3e-4").ok());
  ASSERT_TRUE(config.Set("train.batch=4").ok());
  ASSERT_TRUE(config.Set("data.shuffle=false").ok());
  ASSERT_TRUE(config.Set("data.name=hello world").ok());
  ASSERT_TRUE(config.Set("data.sizes=[1, 2, 3]").ok());
  EXPECT_DOUBLE_EQ(*config.Get<double>("train.lr"), 3e-4);
  EXPECT_EQ(*config.Get<int>("train.batch"), 4);
  EXPECT_FALSE(*config.Get<bool>("data.shuffle"));
  EXPECT_EQ(*config.Get<std::string>("data.name"), "hello world");
  EXPECT_EQ(config.Get<std::vector<int>>("data.sizes")->size(), 3u);
  // Later overrides win.
  ASSERT_TRUE(config.Set("train.batch=8").ok());
  EXPECT_EQ(*config.Get<int>("train.batch"), 8);
}

TEST(ConfigTest, SetRejectsMalformedAssignments) {
  Config config;
  ASSERT_TRUE(config.Set("train.lr=1").ok());
  EXPECT_EQ(config.Set("no_equals_sign").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.Set("=3").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(config.Set("a..b=3").code(), absl::StatusCode::kInvalidArgument);
  absl::Status into_scalar = config.Set("train.lr.x=3");
  EXPECT_EQ(into_scalar.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(into_scalar.message().find("not a section"), std::string::npos) << into_scalar;
}

TEST(ConfigTest, LeafKeysAndUnknownKeysWithASuggestion) {
  auto config = Config::Parse("train: {lr: 0.1, stpes: 3}\ndata: {sizes: [1, 2]}\n", "c.yaml");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->LeafKeys(),
            (std::vector<std::string>{"train.lr", "train.stpes", "data.sizes"}));
  const std::vector<std::string> known = {"train.lr", "train.steps", "data.sizes"};
  auto accept = [&](const std::string& key) {
    return std::find(known.begin(), known.end(), key) != known.end();
  };
  absl::Status status = config->CheckKeys(accept, known, "train");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "unknown config key 'train.stpes' for rwr train (did you mean 'train.steps'?)");
  // Nothing close: no suggestion.
  auto far = Config::Parse("zzz: 1\n", "c.yaml");
  EXPECT_EQ(far->CheckKeys(accept, known, "train").message(),
            "unknown config key 'zzz' for rwr train");
  ASSERT_TRUE(config->Set("train.stpes=null").ok());  // still a key: still unknown
  EXPECT_FALSE(config->CheckKeys(accept, known, "train").ok());
  auto good = Config::Parse("train: {lr: 0.1, steps: 3}\n", "c.yaml");
  EXPECT_TRUE(good->CheckKeys(accept, known, "train").ok());
}

TEST(ConfigTest, WrongTypeAndMissingKeyNameTheKey) {
  auto config = Config::Parse("train: {lr: fast, steps: 2.5}\n", "c.yaml");
  ASSERT_TRUE(config.ok());
  absl::StatusOr<double> lr = config->Get<double>("train.lr");
  ASSERT_FALSE(lr.ok());
  EXPECT_NE(lr.status().message().find("train.lr"), std::string::npos);
  EXPECT_NE(lr.status().message().find("a number"), std::string::npos);
  EXPECT_FALSE(config->Get<int>("train.steps").ok());
  absl::StatusOr<int> missing = config->Get<int>("train.warmup");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("missing"), std::string::npos);
  EXPECT_EQ(*config->GetOr<int>("train.warmup", 5), 5);
  EXPECT_FALSE(config->GetOr<int>("train.lr", 5).ok()) << "present with the wrong type";
}

TEST(ConfigTest, InvalidYamlReportsSourceAndLine) {
  auto bad = Config::Parse("train:\n  lr: [1, 2\n", "run.yaml");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("run.yaml:"), std::string::npos) << bad.status();
  auto not_a_map = Config::Parse("- 1\n- 2\n", "list.yaml");
  ASSERT_FALSE(not_a_map.ok());
  EXPECT_NE(not_a_map.status().message().find("mapping"), std::string::npos);
}

TEST(ConfigTest, LoadFileRoundTripsAndMissingFileIsNotFound) {
  const std::string path = testing::TempDir() + "/config_test.yaml";
  std::ofstream(path) << "model:\n  layers: 3\n";
  auto config = Config::LoadFile(path);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(*config->Get<int>("model.layers"), 3);
  auto again = Config::Parse(config->ToYaml(), "round trip");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again->Get<int>("model.layers"), 3);
  EXPECT_EQ(Config::LoadFile(path + ".nope").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rwr
