// `rwr tokenizer info|encode|decode`: check that a tokenizer.json is one rwr supports, and see what
// it does to a text (ids, tokens, tokens per word) or to a list of ids — the same ids as Hugging
// Face `tokenizers` (docs/tokenizer.md).
#include <cctype>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/command.h"
#include "common/status.h"
#include "distill/tokenizer.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::cli {
namespace {

struct TokenizerFlags {
  CommonOptions common;
  std::string tokenizer;
  CLI::Option* tokenizer_opt = nullptr;
  // encode
  std::string text, input;
  bool json = false, tokens = false, stats = false;
  // decode
  std::string ids;
  bool skip_special = false, bytes = false;
};

void AddTokenizerOption(CLI::App* cmd, TokenizerFlags* f) {
  f->common.log_level = "warn";  // before AddCommonOptions, which shows the default in --help
  AddCommonOptions(cmd, &f->common);
  f->tokenizer_opt = cmd->add_option(
      "--tokenizer", f->tokenizer,
      fmt::format("Hugging Face tokenizer.json (config tokenizer.path; {})",
                  kBundledTokenizerHelp));
}

absl::StatusOr<distill::Tokenizer> LoadTokenizer(TokenizerFlags& f, std::string_view command) {
  FlagToOverride(f.tokenizer_opt, f.tokenizer, "tokenizer.path", &f.common);
  RWR_ASSIGN_OR_RETURN(Config config, ResolveConfig(f.common, Config(), command));
  RWR_ASSIGN_OR_RETURN(std::string path, TokenizerPath(config, "tokenizer.path"));
  return distill::Tokenizer::Load(path);
}

absl::Status RunInfo(TokenizerFlags& f) {
  RWR_ASSIGN_OR_RETURN(distill::Tokenizer tok, LoadTokenizer(f, "tokenizer info"));
  const std::optional<int32_t> eos = tok.eos_id();
  const std::optional<int32_t> pad = tok.token_to_id("<|padding|>");
  if (f.json) {
    nlohmann::json j = {{"vocab_size", tok.vocab_size()}, {"describe", tok.Describe()}};
    j["eos_id"] = eos ? nlohmann::json(*eos) : nlohmann::json(nullptr);
    j["padding_id"] = pad ? nlohmann::json(*pad) : nlohmann::json(nullptr);
    std::cout << j.dump(2) << "\n";
    return absl::OkStatus();
  }
  std::cout << tok.Describe() << "\n"
            << "vocab_size (embedding rows): " << tok.vocab_size() << "\n"
            << "eos <|endoftext|>: " << (eos ? std::to_string(*eos) : "none") << "\n"
            << "<|padding|>: " << (pad ? std::to_string(*pad) : "none") << "\n";
  return absl::OkStatus();
}

size_t CountWords(std::string_view text) {
  size_t words = 0;
  bool in_word = false;
  for (unsigned char c : text) {
    const bool space = std::isspace(c) != 0;
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

absl::Status RunEncode(TokenizerFlags& f) {
  if (f.text.empty() == f.input.empty()) {
    return absl::InvalidArgumentError("give exactly one of --text and --input");
  }
  RWR_ASSIGN_OR_RETURN(distill::Tokenizer tok, LoadTokenizer(f, "tokenizer encode"));
  std::string text = f.text;
  if (!f.input.empty()) {
    if (std::filesystem::is_directory(f.input)) {  // opens, then reads as empty: 0 tokens, exit 0
      return absl::InvalidArgumentError(fmt::format("--input {}: is a directory", f.input));
    }
    std::ifstream in(f.input, std::ios::binary);
    if (!in) return absl::NotFoundError(fmt::format("--input {}: cannot open", f.input));
    std::stringstream buffer;
    buffer << in.rdbuf();
    text = buffer.str();
  }
  // One call over the whole text: chunking it would change ids where a chunk boundary falls
  // inside a white-space run or with add_prefix_space. At tens of MB/s a progress bar would
  // rarely show.
  const std::vector<int32_t> ids = tok.Encode(text);
  const size_t words = CountWords(text);
  const std::string stats = fmt::format(
      "{} bytes, {} words, {} tokens: {:.3f} tokens per word, {:.2f} bytes per token", text.size(),
      words, ids.size(), words ? static_cast<double>(ids.size()) / words : 0.0,
      ids.empty() ? 0.0 : static_cast<double>(text.size()) / ids.size());
  if (f.json) {
    nlohmann::json j = {{"ids", ids}, {"bytes", text.size()}, {"words", words}};
    if (f.tokens) {
      std::vector<std::string> tokens;
      for (int32_t id : ids) tokens.push_back(tok.id_to_token(id).value_or(""));
      j["tokens"] = tokens;
    }
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else if (f.stats) {
    std::cout << stats << "\n";
  } else if (f.tokens) {
    for (int32_t id : ids) std::cout << id << "\t" << tok.id_to_token(id).value_or("") << "\n";
  } else {
    for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
    std::cout << "\n";
  }
  if (!f.json && !f.stats) std::cerr << stats << "\n";
  return absl::OkStatus();
}

absl::Status RunDecode(TokenizerFlags& f) {
  std::vector<int32_t> ids;
  std::string token;
  for (char c : f.ids + " ") {
    if (std::isdigit(static_cast<unsigned char>(c)) || (c == '-' && token.empty())) {
      token.push_back(c);
    } else if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '[' || c == ']') {
      if (!token.empty()) {
        int id = -1;
        try {
          id = std::stoi(token);
        } catch (const std::exception&) {
        }
        if (id < 0) {  // as HF's decode, which refuses a negative id
          return absl::InvalidArgumentError(
              fmt::format("--ids: '{}' is not a token id (ids are 0 or more)", token));
        }
        ids.push_back(id);
      }
      token.clear();
    } else {
      return absl::InvalidArgumentError(
          fmt::format("--ids: unexpected '{}'; give ids separated by spaces or commas", c));
    }
  }
  RWR_ASSIGN_OR_RETURN(distill::Tokenizer tok, LoadTokenizer(f, "tokenizer decode"));
  std::cout << (f.bytes ? tok.DecodeBytes(ids, f.skip_special) : tok.Decode(ids, f.skip_special));
  if (!f.bytes) std::cout << "\n";
  return absl::OkStatus();
}

}  // namespace

void RegisterTokenizerCommands(CLI::App& app) {
  CLI::App* group = app.add_subcommand(
      "tokenizer", "Byte-level BPE tokenizer (Hugging Face tokenizer.json, same ids as HF)");
  group->require_subcommand(1);

  auto* info = NewFlags<TokenizerFlags>();
  CLI::App* info_cmd = group->add_subcommand(
      "info", "Load a tokenizer.json (a clear error if rwr does not support it) and describe it: "
              "vocab size, eos and padding ids, normalizer, pre-tokenizer");
  AddTokenizerOption(info_cmd, info);
  info_cmd->add_flag("--json", info->json, "Print JSON");
  SetAction(info_cmd, [info] { return RunInfo(*info); });

  auto* encode = NewFlags<TokenizerFlags>();
  CLI::App* encode_cmd = group->add_subcommand(
      "encode", "Token ids of a text (one line, space-separated; statistics on stderr)");
  AddTokenizerOption(encode_cmd, encode);
  encode_cmd->add_option("--text", encode->text, "The text to encode");
  encode_cmd->add_option("--input", encode->input, "A UTF-8 file to encode instead");
  encode_cmd->add_flag("--tokens", encode->tokens, "One line per token: id, tab, token string");
  encode_cmd->add_flag("--stats", encode->stats,
                       "Only the statistics: bytes, words, tokens, tokens per word "
                       "(e.g. for `rwr data synth --tokens-per-word`)");
  encode_cmd->add_flag("--json", encode->json, "Print JSON {ids, bytes, words[, tokens]}");
  SetAction(encode_cmd, [encode] { return RunEncode(*encode); });

  auto* decode = NewFlags<TokenizerFlags>();
  CLI::App* decode_cmd =
      group->add_subcommand("decode", "Text of token ids (as HF's decode; ids with no token skipped)");
  AddTokenizerOption(decode_cmd, decode);
  decode_cmd->add_option("--ids", decode->ids, "Ids separated by spaces or commas, e.g. \"15496 995\"")
      ->required();
  decode_cmd->add_flag("--skip-special", decode->skip_special, "Leave out special tokens");
  decode_cmd->add_flag("--bytes", decode->bytes,
                       "Write the raw bytes (no U+FFFD repair of partial UTF-8, no newline)");
  SetAction(decode_cmd, [decode] { return RunDecode(*decode); });
}

}  // namespace rwr::cli
