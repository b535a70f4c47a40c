// Synthetic long-context QA generator (see distill/synth.h).
#include "distill/synth.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "common/progress.h"
#include "common/shutdown.h"
#include "common/status.h"
#include "fmt/format.h"
#include "nlohmann/json.hpp"

namespace rwr::distill {
namespace {

// xoshiro256** seeded through splitmix64: fixed output on every platform.
class Rng {
 public:
  Rng(uint64_t seed, uint64_t stream) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL ^ (stream + 0x632BE59BD9B4E019ULL);
    for (auto& word : state_) word = SplitMix(s);
  }
  uint64_t Next() {
    const uint64_t result = Rotl(state_[1] * 5, 7) * 9;
    const uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = Rotl(state_[3], 45);
    return result;
  }
  // Uniform in [0, n).
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(Next()) * n) >> 64);
  }
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Below(hi - lo + 1)); }
  double Unit() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  bool Chance(double p) { return Unit() < p; }
  template <typename T, size_t N>
  const T& Pick(const std::array<T, N>& items) { return items[Below(N)]; }

 private:
  static uint64_t SplitMix(uint64_t& s) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::array<uint64_t, 4> state_;
};

using sv = std::string_view;

constexpr std::array<sv, 64> kFirstNames = {
    "Maria", "James", "Aisha", "Daniel", "Priya", "Lukas", "Sofia", "Kenji", "Elena", "Omar",
    "Hannah", "Mateo", "Chloe", "Ravi", "Ingrid", "Samuel", "Leila", "Victor", "Nadia", "Felix",
    "Grace", "Tomas", "Amara", "Oliver", "Yuki", "Diego", "Freya", "Hassan", "Clara", "Anton",
    "Mei", "Jonas", "Zara", "Patrick", "Lucia", "Emeka", "Rosa", "Henrik", "Ayla", "Marcus",
    "Nora", "Pablo", "Selin", "Arjun", "Ruth", "Mikhail", "Esther", "Kwame", "Ivy", "Rafael",
    "Astrid", "Tariq", "Beatriz", "Simon", "Farah", "Oscar", "Helena", "Malik", "Vera", "Caleb",
    "Dalia", "Gustav", "Imani", "Theo"};
constexpr std::array<sv, 64> kLastNames = {
    "Lopez", "Chen", "Okafor", "Novak", "Sharma", "Fischer", "Rossi", "Tanaka", "Petrova",
    "Haddad", "Berg", "Alvarez", "Dubois", "Mehta", "Larsen", "Adeyemi", "Karimi", "Moreau",
    "Ivanova", "Keller", "Walsh", "Silva", "Mensah", "Brooks", "Sato", "Herrera", "Lindqvist",
    "Aziz", "Weber", "Kowalski", "Huang", "Schmidt", "Nasser", "O'Brien", "Romano", "Eze",
    "Castro", "Nilsen", "Yilmaz", "Bennett", "Holm", "Ortega", "Demir", "Iyer", "Cohen", "Volkov",
    "Levi", "Asante", "Park", "Moreno", "Dahl", "Rahman", "Costa", "Wright", "Qureshi", "Ramos",
    "Engel", "Diallo", "Varga", "Foster", "Haddon", "Strand", "Obi", "Marsh"};
constexpr std::array<sv, 48> kCities = {
    "Lisbon", "Denver", "Osaka", "Nairobi", "Krakow", "Montreal", "Valencia", "Hamburg",
    "Auckland", "Porto", "Austin", "Lyon", "Seoul", "Accra", "Tallinn", "Bologna", "Perth",
    "Quito", "Bergen", "Tucson", "Ghent", "Cusco", "Dublin", "Malmo", "Halifax", "Leipzig",
    "Nagoya", "Tbilisi", "Cork", "Graz", "Boise", "Seville", "Utrecht", "Kyoto", "Aarhus",
    "Izmir", "Madison", "Galway", "Bilbao", "Turku", "Oaxaca", "Durban", "Trieste", "Bremen",
    "Savannah", "Lucerne", "Riga", "Fresno"};
constexpr std::array<sv, 24> kDepartments = {
    "logistics", "finance", "research", "support", "design", "legal", "marketing", "facilities",
    "procurement", "data", "security", "training", "sales", "quality", "platform", "payroll",
    "outreach", "editorial", "compliance", "operations", "hardware", "mobile", "archives", "audit"};
constexpr std::array<sv, 32> kCodeAdjectives = {
    "Silver", "Amber", "Quiet", "Northern", "Crimson", "Hollow", "Velvet", "Iron", "Golden",
    "Paper", "Distant", "Copper", "Bright", "Salt", "Cobalt", "Winter", "Lucky", "Granite",
    "Swift", "Hidden", "Scarlet", "Electric", "Misty", "Brave", "Jade", "Polar", "Rusty",
    "Gentle", "Marble", "Solar", "Wild", "Ivory"};
constexpr std::array<sv, 32> kCodeNouns = {
    "Heron", "Lantern", "Harbor", "Falcon", "Meadow", "Anchor", "Orchid", "Comet", "Badger",
    "Compass", "Willow", "Beacon", "Otter", "Summit", "Cinder", "Pelican", "Glacier", "Fox",
    "Quarry", "Sparrow", "Tundra", "Maple", "Raven", "Canyon", "Dolphin", "Thistle", "Ember",
    "Lynx", "Juniper", "Kestrel", "Bison", "Prairie"};
constexpr std::array<sv, 12> kMonths = {"January", "February", "March",     "April",
                                        "May",     "June",     "July",      "August",
                                        "September", "October", "November", "December"};
constexpr std::array<sv, 24> kCars = {
    "Subaru Outback", "Toyota Corolla", "Honda Civic", "Volvo V60", "Ford Focus", "Mazda CX-5",
    "Kia Niro", "Skoda Octavia", "Tesla Model 3", "Renault Clio", "Hyundai Ioniq", "Audi A4",
    "Fiat Panda", "Nissan Leaf", "Peugeot 308", "Jeep Wrangler", "Mini Cooper", "Volkswagen Golf",
    "BMW i3", "Toyota Prius", "Honda Jazz", "Seat Leon", "Ford Ranger", "Citroen C4"};
// No colour starts with a vowel: statements say "a {v}".
constexpr std::array<sv, 16> kCarColors = {"green", "silver", "red", "white", "black", "blue",
                                           "grey", "yellow", "maroon", "dark green", "teal", "beige",
                                           "bronze", "navy", "purple", "copper"};
constexpr std::array<sv, 40> kPetNames = {
    "Biscuit", "Pepper", "Juniper", "Waffles", "Mochi", "Barnaby", "Clementine", "Ziggy",
    "Pickles", "Nutmeg", "Gizmo", "Marmalade", "Rocket", "Truffle", "Bramble", "Pretzel",
    "Dumpling", "Noodle", "Sprocket", "Tinsel", "Cobble", "Fennel", "Muffin", "Pippin", "Dusty",
    "Scout", "Tofu", "Chutney", "Whiskers", "Button", "Ginger", "Sherlock", "Kiwi", "Bagel",
    "Crumpet", "Domino", "Echo", "Fable", "Gumbo", "Hazel"};
constexpr std::array<sv, 20> kInstruments = {
    "cello", "oboe", "banjo", "trombone", "harp", "accordion", "clarinet", "viola", "bassoon",
    "ukulele", "mandolin", "flute", "saxophone", "tuba", "marimba", "harmonica", "sitar",
    "double bass", "French horn", "piccolo"};
constexpr std::array<sv, 16> kAllergies = {
    "peanuts", "shellfish", "penicillin", "bee stings", "latex", "sesame", "kiwi fruit",
    "cat dander", "walnuts", "soy", "mustard", "celery", "lupin", "pollen", "eggs", "buckwheat"};
constexpr std::array<sv, 12> kAirlines = {"UA", "LH", "AF", "KL", "BA", "DL",
                                          "IB", "SK", "AY", "TP", "OS", "LX"};

// Ambient sentences: the connective tissue of every kind of paragraph. {a} and {b} are names.
constexpr std::array<sv, 40> kAmbient = {
    "The quarterly review was pushed back a week because of the holidays.",
    "Everyone agreed that the new coffee machine on the third floor was an improvement.",
    "{a} asked whether the shared calendar could be cleaned up before the next sprint.",
    "The heating in the east wing stopped working again on Tuesday morning.",
    "{a} and {b} spent most of the afternoon untangling the vendor contracts.",
    "Someone left a tray of lemon cake in the kitchen, and it was gone within ten minutes.",
    "The printer on the second floor is still jammed, despite three service tickets.",
    "{a} suggested moving the weekly sync to Thursdays so that fewer people miss it.",
    "There was a long discussion about whether the onboarding guide should be rewritten.",
    "{b} joked that the parking garage has become a maze since the renovation.",
    "The team finally closed the backlog of support requests from last month.",
    "A fire drill interrupted the planning meeting just as it was getting interesting.",
    "{a} brought up the idea of a mentoring program for new hires.",
    "Several people complained that the meeting rooms are always double booked.",
    "The new badge readers at the entrance caused a small queue on Monday.",
    "{b} reminded everyone to submit travel receipts before the end of the month.",
    "It rained all week, so the outdoor lunch was moved into the atrium.",
    "{a} shared a few photos from the company picnic by the lake.",
    "The budget spreadsheet had two conflicting versions, which took an hour to reconcile.",
    "There is a rumor that the cafeteria will start serving breakfast again.",
    "{a} and {b} volunteered to organize the charity run in the autumn.",
    "The internet connection dropped twice during the all-hands call.",
    "{b} recommended a podcast about urban planning that several people enjoyed.",
    "The style guide for reports was updated with a section on charts.",
    "Nobody could remember who had booked the large conference room for Friday.",
    "{a} noted that the quarterly numbers looked better than expected.",
    "The office plants are thriving now that someone finally waters them regularly.",
    "{b} asked for volunteers to test the new expense tool before it rolls out.",
    "A delivery of standing desks arrived, but half of them were missing screws.",
    "The elevator inspection is scheduled for the first week of next month.",
    "{a} mentioned that the train strike made the commute take twice as long.",
    "The design review went smoothly and only a few small changes were requested.",
    "{b} wondered aloud whether anyone actually reads the monthly newsletter.",
    "The security team reminded everyone to lock their screens when leaving their desks.",
    "A visiting delegation toured the lab and asked a lot of good questions.",
    "{a} is training for a half marathon and has started running to work.",
    "The old archive boxes in the basement were finally sent for recycling.",
    "{b} thanked the facilities crew for fixing the leaking skylight.",
    "The team lunch at the new Thai place got mixed reviews.",
    "{a} promised to circulate the meeting notes by the end of the day."};

enum class Genre { kSession, kRecord, kReport };

struct Attribute {
  sv key;
  sv question;                    // {name}
  std::array<sv, 3> statements;   // {name}, {first}, {v}
};

// The asked-for value is always the literal {v}; statements never put other digits next to it.
constexpr std::array<Attribute, 12> kAttributes = {{
    {"badge_number", "What is {name}'s employee badge number?",
     {"{name} mentioned that the new employee badge number is {v}.",
      "The reissued badge for {name} carries the number {v}.",
      "According to the front desk, {first}'s badge number is now {v}."}},
    {"home_city", "Which city did {name} move to?",
     {"{name} moved to {v} at the start of the year.",
      "After a lot of back and forth, {first} finally relocated to {v}.",
      "{name} now lives in {v} and works remotely most days."}},
    {"project_codename", "What is the code name of the project {name} leads?",
     {"{name} leads the project code-named {v}.",
      "The project that {first} runs goes by the code name {v}.",
      "{name} was put in charge of the initiative code-named {v}."}},
    {"start_date", "On what date did {name} start in the new role?",
     {"{name} started in the new role on {v}.",
      "{first}'s first day in the new position was {v}.",
      "HR confirmed that {name} began the new role on {v}."}},
    {"salary", "What annual salary was {name} offered?",
     {"{name} was offered an annual salary of {v}.",
      "The offer letter for {first} listed a yearly salary of {v}.",
      "In the end, {name} accepted an annual salary of {v}."}},
    {"car", "What car does {name} drive?",
     {"{name} drives a {v} these days.",
      "{first} recently bought a {v} and is very proud of it.",
      "Most mornings {name} arrives in a {v}."}},
    {"pet_name", "What is the name of {name}'s dog?",
     {"{name} adopted a dog named {v} over the summer.",
      "{first}'s dog, {v}, has become a regular at the office on Fridays.",
      "{name} keeps a photo of the family dog {v} on the desk."}},
    {"flight_number", "Which flight is {name} taking to the conference?",
     {"{name} is booked on flight {v} to the conference.",
      "For the conference trip, {first} will take flight {v}.",
      "The travel desk put {name} on flight {v} for the conference."}},
    {"office_room", "In which room does {name} hold office hours?",
     {"{name} holds office hours in room {v}.",
      "If you need {first}, the office hours are in room {v}.",
      "{name} moved the weekly office hours to room {v}."}},
    {"phone_extension", "What is {name}'s phone extension?",
     {"{name} can be reached at phone extension {v}.",
      "The directory lists {first} under extension {v}.",
      "{name}'s desk phone is on extension {v}."}},
    {"instrument", "Which instrument does {name} play?",
     {"{name} plays the {v} in a community orchestra.",
      "On weekends {first} practices the {v} for hours.",
      "{name} has been learning the {v} since last winter."}},
    {"allergy", "What is {name} allergic to?",
     {"{name} is allergic to {v}, so the caterers were told in advance.",
      "{first} carries medication because of an allergy to {v}.",
      "The event form notes that {name} is allergic to {v}."}},
}};

std::string Digits(Rng& rng, int n) {
  std::string s;
  s += static_cast<char>('1' + rng.Below(9));
  for (int i = 1; i < n; ++i) s += static_cast<char>('0' + rng.Below(10));
  return s;
}

std::string MakeValue(size_t attribute, Rng& rng) {
  switch (attribute) {
    case 0: return Digits(rng, 5);
    case 1: return std::string(rng.Pick(kCities));
    case 2: return fmt::format("{} {}", rng.Pick(kCodeAdjectives), rng.Pick(kCodeNouns));
    case 3:
      return fmt::format("{} {}, {}", rng.Pick(kMonths), rng.Range(1, 28), rng.Range(2009, 2024));
    case 4: return fmt::format("${},{}00", rng.Range(41, 189), rng.Below(10));
    case 5:
      return fmt::format("{} {} {}", rng.Pick(kCarColors), rng.Range(2004, 2023), rng.Pick(kCars));
    case 6: return std::string(rng.Pick(kPetNames));
    case 7: return fmt::format("{} {}", rng.Pick(kAirlines), Digits(rng, 4));
    case 8:
      return fmt::format("{}{}-{}", rng.Range(1, 9), static_cast<char>('A' + rng.Below(6)),
                         Digits(rng, 3));
    case 9: return Digits(rng, 4);
    case 10: return std::string(rng.Pick(kInstruments));
    default: return std::string(rng.Pick(kAllergies));
  }
}

struct Person {
  std::string first, last;
  std::string Name() const { return first + " " + last; }
};

void ReplaceAll(std::string& text, sv from, sv to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

// `first_is_unique`: the first name alone names the person; otherwise {first} becomes the full name
// so that no statement is ambiguous between namesakes.
std::string Statement(const Attribute& attribute, const Person& person, const std::string& value,
                      bool first_is_unique, Rng& rng) {
  std::string s(attribute.statements[rng.Below(attribute.statements.size())]);
  ReplaceAll(s, "{name}", person.Name());
  ReplaceAll(s, "{first}", first_is_unique ? person.first : person.Name());
  ReplaceAll(s, "{v}", value);
  return s;
}

std::string Ambient(size_t which, Rng& rng, const std::vector<Person>& people) {
  std::string s(kAmbient[which]);
  ReplaceAll(s, "{a}", people[rng.Below(people.size())].first);
  ReplaceAll(s, "{b}", people[rng.Below(people.size())].Name());
  return s;
}

int64_t CountWords(sv text) {
  int64_t words = 0;
  bool in_word = false;
  for (char c : text) {
    const bool space = c == ' ' || c == '\n' || c == '\t';
    if (!space && !in_word) ++words;
    in_word = !space;
  }
  return words;
}

// Everything needed to write one item.
class ItemBuilder {
 public:
  ItemBuilder(const SynthOptions& options, int64_t index)
      : options_(options), index_(index), rng_(options.seed, static_cast<uint64_t>(index)) {}

  SynthItem Build() {
    // Target length for this item.
    int64_t target = options_.context_tokens;
    if (options_.min_context_tokens > 0 && options_.min_context_tokens < target) {
      target = rng_.Range(options_.min_context_tokens, options_.context_tokens);
    }
    // People: enough for variety; some share the subject's first or last name.
    const int64_t people_count = std::clamp<int64_t>(target / 150, 12, 400);
    subject_ = {std::string(rng_.Pick(kFirstNames)), std::string(rng_.Pick(kLastNames))};
    people_.push_back(subject_);
    while (static_cast<int64_t>(people_.size()) < people_count) {
      Person p{std::string(rng_.Pick(kFirstNames)), std::string(rng_.Pick(kLastNames))};
      if (people_.size() < 4) {  // namesakes: the hardest same-attribute distractors
        if (people_.size() % 2 == 1) p.first = subject_.first;
        else p.last = subject_.last;
      }
      if (std::any_of(people_.begin(), people_.end(),
                      [&](const Person& q) { return q.Name() == p.Name(); })) {
        continue;
      }
      people_.push_back(p);
    }
    attribute_ = rng_.Below(kAttributes.size());
    answer_ = MakeValue(attribute_, rng_);
    values_[{0, attribute_}] = answer_;

    // The fact paragraph, the distractors, then filler until the target length is reached.
    const Genre fact_genre = static_cast<Genre>(rng_.Below(3));
    std::string fact_sentence =
        Statement(kAttributes[attribute_], subject_, answer_, FirstIsUnique(0), rng_);
    std::string fact = Paragraph(fact_genre, 0, &fact_sentence);
    while (Occurrences(fact, answer_) != 1) fact = Paragraph(fact_genre, 0, &fact_sentence);
    std::vector<std::string> paragraphs;
    const double target_words = static_cast<double>(target) / options_.tokens_per_word;
    // Short contexts take fewer distractors: they may fill at most half of the words.
    int64_t words = CountWords(fact);
    int64_t distractor_words = 0;
    for (int d = 0; d < options_.distractors; ++d) {
      std::string p = DistractorParagraph(d % 2 == 0);
      distractor_words += CountWords(p);
      if (d > 0 && static_cast<double>(distractor_words) > target_words / 2) break;
      paragraphs.push_back(std::move(p));
    }
    for (const auto& p : paragraphs) words += CountWords(p);
    distractors_ = static_cast<int>(paragraphs.size());
    while (static_cast<double>(words) < target_words) {
      std::string p = FillerParagraph();
      words += CountWords(p);
      // Filler goes at a random place among what is there, so distractors spread out.
      paragraphs.insert(paragraphs.begin() + static_cast<ptrdiff_t>(rng_.Below(paragraphs.size() + 1)),
                        std::move(p));
    }

    // Place the fact at the requested depth (by words before it).
    const double depth = options_.answer_position >= 0 ? options_.answer_position : rng_.Unit();
    const double words_before = depth * static_cast<double>(words - CountWords(fact));
    size_t insert_at = 0;
    double seen = 0;
    while (insert_at < paragraphs.size() &&
           seen + CountWords(paragraphs[insert_at]) / 2.0 <= words_before) {
      seen += CountWords(paragraphs[insert_at]);
      ++insert_at;
    }
    paragraphs.insert(paragraphs.begin() + static_cast<ptrdiff_t>(insert_at), fact);

    SynthItem item;
    item.id = fmt::format("synth-{}-{:06d}", options_.seed, index_);
    size_t total = 0;
    for (const auto& p : paragraphs) total += p.size() + 2;
    item.context.reserve(total);
    for (size_t i = 0; i < paragraphs.size(); ++i) {
      if (i > 0) item.context += "\n\n";
      if (i == insert_at) {
        item.answer_offset = static_cast<int64_t>(item.context.size() + paragraphs[i].find(fact_sentence) +
                                                  fact_sentence.find(answer_));
      }
      item.context += paragraphs[i];
    }
    std::string question(kAttributes[attribute_].question);
    ReplaceAll(question, "{name}", subject_.Name());
    item.question = std::move(question);
    item.answer = answer_;
    item.answer_position =
        static_cast<double>(item.answer_offset) / static_cast<double>(item.context.size());
    item.context_tokens = EstimateTokens(item.context, options_.tokens_per_word);
    item.paragraphs = static_cast<int64_t>(paragraphs.size());
    item.distractors = distractors_;
    item.entity = subject_.Name();
    item.attribute = std::string(kAttributes[attribute_].key);
    return item;
  }

 private:
  // The value of (person, attribute), fixed once drawn, never equal to or containing the answer.
  const std::string& ValueOf(size_t person, size_t attribute) {
    auto [it, inserted] = values_.try_emplace({person, attribute});
    if (inserted) {
      do {
        it->second = MakeValue(attribute, rng_);
      } while (it->second.find(answer_) != std::string::npos ||
               answer_.find(it->second) != std::string::npos);
    }
    return it->second;
  }

  bool FirstIsUnique(size_t person) const {
    int n = 0;
    for (const Person& p : people_) n += p.first == people_[person].first;
    return n == 1;
  }

  // A statement about a random (person, attribute) other than the asked pair.
  std::string RandomStatement() {
    for (;;) {
      const size_t person = rng_.Below(people_.size());
      const size_t attribute = rng_.Below(kAttributes.size());
      if (person == 0 && attribute == attribute_) continue;
      return Statement(kAttributes[attribute], people_[person], ValueOf(person, attribute),
                       FirstIsUnique(person), rng_);
    }
  }

  std::string DistractorParagraph(bool same_attribute) {
    std::string sentence;
    if (same_attribute) {
      const size_t person = 1 + rng_.Below(std::min<size_t>(people_.size() - 1, 6));
      sentence = Statement(kAttributes[attribute_], people_[person], ValueOf(person, attribute_),
                           FirstIsUnique(person), rng_);
    } else {
      size_t attribute = rng_.Below(kAttributes.size() - 1);
      if (attribute >= attribute_) ++attribute;
      sentence = Statement(kAttributes[attribute], subject_, ValueOf(0, attribute), FirstIsUnique(0),
                           rng_);
    }
    for (;;) {
      std::string p = Paragraph(static_cast<Genre>(rng_.Below(3)), 0, &sentence);
      if (p.find(answer_) == std::string::npos) return p;
    }
  }

  // Paragraphs other than the fact never contain the answer string (a record number or date could
  // spell it by chance): redraw until they do not.
  std::string FillerParagraph() {
    for (;;) {
      const int statements = static_cast<int>(rng_.Range(0, 2));
      std::string p = Paragraph(static_cast<Genre>(rng_.Below(3)), statements, nullptr);
      if (p.find(answer_) == std::string::npos) return p;
    }
  }

  static int Occurrences(const std::string& text, const std::string& needle) {
    int n = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
    return n;
  }

  std::string Date() {
    return fmt::format("{}-{:02d}-{:02d}", rng_.Range(2019, 2024), rng_.Range(1, 12),
                       rng_.Range(1, 28));
  }

  // Sentences of a paragraph: ambient text with `statements` random statements and, if given, the
  // one `key` sentence mixed in at random places.
  std::vector<std::string> Sentences(int ambient, int statements, const std::string* key) {
    std::vector<std::string> out;
    // Distinct ambient sentences within one paragraph.
    size_t picked[8];
    for (int i = 0; i < ambient; ++i) {
      size_t which;
      do {
        which = rng_.Below(kAmbient.size());
      } while (std::find(picked, picked + i, which) != picked + i);
      picked[i] = which;
      out.push_back(Ambient(which, rng_, people_));
    }
    for (int i = 0; i < statements; ++i) {
      out.insert(out.begin() + static_cast<ptrdiff_t>(rng_.Below(out.size() + 1)), RandomStatement());
    }
    if (key != nullptr) {
      out.insert(out.begin() + static_cast<ptrdiff_t>(rng_.Below(out.size() + 1)), *key);
    }
    return out;
  }

  std::string Paragraph(Genre genre, int statements, const std::string* key) {
    std::string p;
    const int ambient = static_cast<int>(rng_.Range(2, 5));
    std::vector<std::string> sentences = Sentences(ambient, statements, key);
    switch (genre) {
      case Genre::kSession: {
        p = fmt::format("[Chat session {}, {}]", rng_.Range(1, 999), Date());
        // Alternate turns; a turn holds one or two sentences.
        bool user = true;
        for (size_t i = 0; i < sentences.size();) {
          p += user ? "\nUser: " : "\nAssistant: ";
          const size_t take = std::min<size_t>(sentences.size() - i, 1 + rng_.Below(2));
          for (size_t k = 0; k < take; ++k, ++i) {
            if (k > 0) p += ' ';
            p += sentences[i];
          }
          user = !user;
        }
        break;
      }
      case Genre::kRecord: {
        const Person& person = people_[rng_.Below(people_.size())];
        p = fmt::format("Record {} ({} department, updated {}). Contact: {}.", rng_.Range(100, 9999),
                        rng_.Pick(kDepartments), Date(), person.Name());
        for (const auto& s : sentences) {
          p += ' ';
          p += s;
        }
        break;
      }
      case Genre::kReport: {
        p = fmt::format("Weekly report from the {} team, week of {}.", rng_.Pick(kDepartments),
                        Date());
        for (const auto& s : sentences) {
          p += ' ';
          p += s;
        }
        break;
      }
    }
    return p;
  }

  const SynthOptions& options_;
  int64_t index_;
  Rng rng_;
  Person subject_;
  std::vector<Person> people_;
  size_t attribute_ = 0;
  int distractors_ = 0;
  std::string answer_;
  std::map<std::pair<size_t, size_t>, std::string> values_;
};

}  // namespace

int64_t EstimateTokens(std::string_view text, double tokens_per_word) {
  return static_cast<int64_t>(std::ceil(static_cast<double>(CountWords(text)) * tokens_per_word));
}

absl::Status ValidateSynthOptions(const SynthOptions& options) {
  if (options.count < 1) return absl::InvalidArgumentError("--count must be at least 1");
  if (options.context_tokens < 100 || options.context_tokens > 4'000'000) {
    return absl::InvalidArgumentError(fmt::format(
        "--context-tokens {} out of range; use 100 to 4000000", options.context_tokens));
  }
  if (options.min_context_tokens < 0 || options.min_context_tokens > options.context_tokens) {
    return absl::InvalidArgumentError("--min-context-tokens must be between 0 and --context-tokens");
  }
  if (options.distractors < 0 || options.distractors > 1000) {
    return absl::InvalidArgumentError("--distractors must be between 0 and 1000");
  }
  if (!(options.answer_position <= 1)) {  // NaN too ("--answer-position nan" parses as a number)
    return absl::InvalidArgumentError(
        "--answer-position must be in [0, 1] (relative depth), or 'uniform'");
  }
  if (!(options.tokens_per_word > 0.1 && options.tokens_per_word < 10)) {
    return absl::InvalidArgumentError("--tokens-per-word must be in (0.1, 10)");
  }
  return absl::OkStatus();
}

SynthItem GenerateSynthItem(const SynthOptions& options, int64_t index) {
  return ItemBuilder(options, index).Build();
}

std::string SynthItemToJson(const SynthItem& item) {
  nlohmann::ordered_json j;
  j["id"] = item.id;
  j["context"] = item.context;
  j["question"] = item.question;
  j["answer"] = item.answer;
  j["answer_position"] = std::round(item.answer_position * 10000) / 10000;
  j["answer_offset"] = item.answer_offset;
  j["context_tokens"] = item.context_tokens;
  j["paragraphs"] = item.paragraphs;
  j["distractors"] = item.distractors;
  j["entity"] = item.entity;
  j["attribute"] = item.attribute;
  return j.dump();
}

absl::Status WriteSynthJsonl(const std::string& path, const SynthOptions& options) {
  RWR_RETURN_IF_ERROR(ValidateSynthOptions(options));
  // This process's own: two runs writing one --out must not interleave in one file (the last
  // rename wins, whole).
  const std::string tmp = fmt::format("{}.tmp.{}", path, ::getpid());
  std::FILE* out = std::fopen(tmp.c_str(), "wb");
  if (out == nullptr) {
    return absl::UnavailableError(fmt::format("cannot create {}: {}", tmp, std::strerror(errno)));
  }
  Progress progress({.label = "data synth", .total = options.count, .unit = "items"});
  for (int64_t i = 0; i < options.count; ++i) {
    if (ShutdownRequested()) {
      std::fclose(out);
      std::remove(tmp.c_str());
      return absl::CancelledError("data synth: interrupted; nothing written");
    }
    std::string line = SynthItemToJson(GenerateSynthItem(options, i));
    line += '\n';
    if (std::fwrite(line.data(), 1, line.size(), out) != line.size()) {
      std::fclose(out);
      std::remove(tmp.c_str());
      return absl::UnavailableError(fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
    }
    progress.Advance();
  }
  progress.Finish();
  const bool flushed = std::fflush(out) == 0 && ::fsync(::fileno(out)) == 0;
  if (std::fclose(out) != 0 || !flushed) {
    const int error = errno;
    std::remove(tmp.c_str());
    return absl::UnavailableError(fmt::format("cannot write {}: {}", tmp, std::strerror(error)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int error = errno;
    std::remove(tmp.c_str());  // every failure leaves nothing behind
    errno = error;
    return absl::UnavailableError(fmt::format("cannot rename {} to {}: {}", tmp, path,
                                              std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace rwr::distill
