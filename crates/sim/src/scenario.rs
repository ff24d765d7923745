//! The scenario file (TOML): its shape, its value types (durations, ranges, ids) and validation.
//! Everything a scenario can say is checked here, so the server never meets a bad value.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::SimError;
use super::rng::SplitMix64;

/// A whole simulated world. See `docs/simulator.md` for every key with an example.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Seeds every random choice (fault draws, durations, texts), so runs repeat.
    #[serde(default)]
    pub seed: u64,
    /// The only key pairs the gateway accepts.
    #[serde(default)]
    pub credentials: Vec<CredentialSpec>,
    /// Knobs for the parts of the API the document marks [guess].
    #[serde(default)]
    pub api: ApiSpec,
    /// Per-kind fault rates, drawn per API request.
    #[serde(default)]
    pub faults: FaultRates,
    /// The asset listing's [guess] page base and its test quirks.
    #[serde(default)]
    pub listing: ListingSpec,
    /// Hand-written assets (`[[asset]]`).
    #[serde(default, rename = "asset")]
    pub assets: Vec<AssetSpec>,
    /// Bulk-generated assets (`[[generate]]`).
    #[serde(default)]
    pub generate: Vec<GenerateSpec>,
}

/// One accepted key pair. `Debug` hides the secret.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub access_key: String,
    pub secret_key: String,
}

impl fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSpec")
            .field("access_key", &self.access_key)
            .field("secret_key", &"[redacted]")
            .finish()
    }
}

/// Where service errors sit in the body. The doc names `{"code","message"}` at the top and
/// inside `responseError` (§5, §6); older NCP APIs use `returnCode` / `returnMessage`, and the
/// gateway's `error` wrapper may well carry a service error too (§6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
pub enum ErrorEnvelope {
    /// `{"code":"…","message":"…"}`
    #[default]
    #[serde(rename = "top")]
    Top,
    /// `{"responseError":{"code":"…","message":"…"}}`
    #[serde(rename = "responseError")]
    ResponseError,
    /// `{"error":{"code":"…","message":"…"}}`: the service's fields in the gateway's wrapper,
    /// without `errorCode` and without the `x-ncp-apigw-response-origin` header.
    #[serde(rename = "error")]
    Error,
    /// `{"returnCode":"…","returnMessage":"…"}`
    #[serde(rename = "returnCode")]
    ReturnCode,
}

impl ErrorEnvelope {
    pub const ALL: [ErrorEnvelope; 4] = [
        ErrorEnvelope::Top,
        ErrorEnvelope::ResponseError,
        ErrorEnvelope::Error,
        ErrorEnvelope::ReturnCode,
    ];
}

/// A [guess] value that a scenario either pins or leaves to the seed. Absent, or the string
/// `"random"`, means drawn once per simulator run from the scenario seed (`draw.rs`), so that
/// the default is a value the client was not told about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Choice<T> {
    #[default]
    Random,
    Fixed(T),
}

impl<T> Choice<T> {
    /// The pinned value, or `drawn`.
    pub fn or(self, drawn: T) -> T {
        match self {
            Choice::Random => drawn,
            Choice::Fixed(v) => v,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Choice<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a JSON value so that the same code reads TOML scenarios and JSON bodies.
        let v = serde_json::Value::deserialize(d)?;
        if v.as_str() == Some("random") {
            return Ok(Choice::Random);
        }
        serde_json::from_value(v)
            .map(Choice::Fixed)
            .map_err(de::Error::custom)
    }
}

/// A service error code as it goes on the wire: a JSON string, or a JSON number (the doc has
/// seen numeric codes at the gateway; a service may do the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ErrorCode {
    Text(String),
    Number(u64),
}

impl ErrorCode {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            ErrorCode::Text(s) => serde_json::Value::from(s.as_str()),
            ErrorCode::Number(n) => serde_json::Value::from(*n),
        }
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ErrorCode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a code: a string (sent as a JSON string) or an integer (a JSON number)",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ErrorCode, E> {
                Ok(ErrorCode::Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ErrorCode, E> {
                u64::try_from(v)
                    .map(ErrorCode::Number)
                    .map_err(|_| E::custom(format!("negative code {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ErrorCode, E> {
                Ok(ErrorCode::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The configurable [guess] parts of the API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiSpec {
    /// HTTP status of the result endpoint before completion (undocumented): drawn from
    /// 400 / 404 / 409 unless pinned.
    pub result_not_ready_status: Choice<u16>,
    /// Service error code of that answer (undocumented): drawn unless pinned. A TOML string is
    /// sent as a JSON string, a TOML integer as a JSON number.
    pub result_not_ready_code: Choice<ErrorCode>,
    pub result_not_ready_message: Choice<String>,
    /// Absent: every service error is `top` except the not-ready answer, whose envelope is
    /// drawn. Set (a shape or `"random"`): every service error uses it, the not-ready answer
    /// included.
    pub error_envelope: Option<Choice<ErrorEnvelope>>,
    /// The doc has seen gateway `errorCode` as a number sometimes.
    pub gateway_error_code_as_number: bool,
    /// `sceneSummaryId` in the request answer as a JSON number when it is all digits.
    pub scene_summary_id_as_number: bool,
    /// Gateway quota; above it requests get 429 errorCode 420. None: unlimited.
    pub requests_per_second: Option<f64>,
    /// false: every index-level path (deprecated, removal announced) answers the gateway's
    /// unknown-path 404, as after the removal. Also `POST /__sim/api/index-routes`.
    pub index_routes: bool,
}

impl Default for ApiSpec {
    fn default() -> Self {
        Self {
            result_not_ready_status: Choice::Random,
            result_not_ready_code: Choice::Random,
            result_not_ready_message: Choice::Random,
            error_envelope: None,
            gateway_error_code_as_number: false,
            scene_summary_id_as_number: true,
            requests_per_second: None,
            index_routes: true,
        }
    }
}

/// `[listing]`: the list-assets call's undocumented page base and quirks for the client's
/// bad-input tests (also set at run time by `POST /__sim/listing`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListingSpec {
    /// The number of the first page, 0 or 1 (undocumented): drawn unless pinned.
    pub page_base: Choice<u64>,
    /// Every page answers the first page's content, and `totalPage` always promises more.
    pub pages_forever: bool,
    /// `totalCount` / `totalPage` claim more assets than exist (the pages past the real end are
    /// empty).
    pub lying_total_count: bool,
    /// Asset ids listed in every project's listing after the real ones, backed by nothing;
    /// they may be anything, e.g. unsafe ones such as `"../x"` or `"a b"`.
    pub injected_asset_ids: Vec<String>,
}

/// Bounds on injected listing entries, so a scenario or control body cannot eat memory.
pub const MAX_INJECTED_IDS: usize = 100;
pub const MAX_INJECTED_ID_BYTES: usize = 256;

/// Checks a page base and injected ids (scenario and control route alike).
pub fn check_listing(page_base: Option<u64>, injected: &[String]) -> Result<(), String> {
    if let Some(b) = page_base
        && b > 1
    {
        return Err(format!("listing.page_base = {b} is neither 0 nor 1"));
    }
    if injected.len() > MAX_INJECTED_IDS {
        return Err(format!(
            "listing.injected_asset_ids has {} ids, more than {MAX_INJECTED_IDS}",
            injected.len()
        ));
    }
    if injected.iter().any(|i| i.len() > MAX_INJECTED_ID_BYTES) {
        return Err(format!(
            "listing.injected_asset_ids: an id is longer than {MAX_INJECTED_ID_BYTES} bytes"
        ));
    }
    Ok(())
}

/// Per-kind fault probabilities (each 0.0..=1.0, summing to at most 1) and their knobs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultRates {
    pub throttle_400: f64,
    pub throttle_410: f64,
    pub throttle_420: f64,
    pub throttle_retry_after: f64,
    pub http_500: f64,
    pub http_503: f64,
    pub http_504: f64,
    pub reset: f64,
    pub slow: f64,
    pub malformed_json: f64,
    pub truncated: f64,
    pub oversized: f64,
    /// How long a `slow` answer waits before it is sent.
    pub slow_delay: HumanDuration,
    /// The `Retry-After` value of `throttle_retry_after`, sent in whole seconds (at least 1).
    pub retry_after: HumanDuration,
    /// Size of an `oversized` body; streamed, never held in memory.
    pub oversized_bytes: u64,
}

impl Default for FaultRates {
    fn default() -> Self {
        Self {
            throttle_400: 0.0,
            throttle_410: 0.0,
            throttle_420: 0.0,
            throttle_retry_after: 0.0,
            http_500: 0.0,
            http_503: 0.0,
            http_504: 0.0,
            reset: 0.0,
            slow: 0.0,
            malformed_json: 0.0,
            truncated: 0.0,
            oversized: 0.0,
            slow_delay: HumanDuration(Duration::from_secs(30)),
            retry_after: HumanDuration(Duration::from_secs(2)),
            oversized_bytes: 64 * 1024 * 1024,
        }
    }
}

impl FaultRates {
    /// (kind name, rate) in the fixed order the draw walks them.
    pub fn table(&self) -> [(&'static str, f64); 12] {
        [
            ("throttle_400", self.throttle_400),
            ("throttle_410", self.throttle_410),
            ("throttle_420", self.throttle_420),
            ("throttle_retry_after", self.throttle_retry_after),
            ("http_500", self.http_500),
            ("http_503", self.http_503),
            ("http_504", self.http_504),
            ("reset", self.reset),
            ("slow", self.slow),
            ("malformed_json", self.malformed_json),
            ("truncated", self.truncated),
            ("oversized", self.oversized),
        ]
    }

    pub fn validate(&self) -> Result<(), SimError> {
        let mut sum = 0.0;
        for (name, rate) in self.table() {
            if !(0.0..=1.0).contains(&rate) {
                return Err(SimError::Invalid(format!(
                    "faults.{name} = {rate} is not between 0.0 and 1.0"
                )));
            }
            sum += rate;
        }
        if sum > 1.0 + 1e-9 {
            return Err(SimError::Invalid(format!(
                "fault rates sum to {sum}, more than 1.0"
            )));
        }
        Ok(())
    }
}

/// The documented statuses (§2), spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    BeforeSummarize,
    #[default]
    WaitSummarize,
    Summarizing,
    SummarizeCompleted,
    SummarizeFail,
    SummarizeCanceled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::BeforeSummarize => "BEFORE_SUMMARIZE",
            Status::WaitSummarize => "WAIT_SUMMARIZE",
            Status::Summarizing => "SUMMARIZING",
            Status::SummarizeCompleted => "SUMMARIZE_COMPLETED",
            Status::SummarizeFail => "SUMMARIZE_FAIL",
            Status::SummarizeCanceled => "SUMMARIZE_CANCELED",
        }
    }

    /// Waiting or running: the only states where cancel is allowed and a new request is not.
    pub fn in_progress(self) -> bool {
        matches!(self, Status::WaitSummarize | Status::Summarizing)
    }
}

/// How a run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Completed,
    Failed,
}

/// The index (analysis) statuses of §6 and §7, spelled as on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnalysisStatus {
    BeforeAnalyze,
    WaitAnalyze,
    Analyzing,
    #[default]
    AnalyzeCompleted,
    AnalyzeFail,
    AnalyzeCancel,
}

impl AnalysisStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisStatus::BeforeAnalyze => "BEFORE_ANALYZE",
            AnalysisStatus::WaitAnalyze => "WAIT_ANALYZE",
            AnalysisStatus::Analyzing => "ANALYZING",
            AnalysisStatus::AnalyzeCompleted => "ANALYZE_COMPLETED",
            AnalysisStatus::AnalyzeFail => "ANALYZE_FAIL",
            AnalysisStatus::AnalyzeCancel => "ANALYZE_CANCEL",
        }
    }

    /// `analyzeStatusMessage` when the scenario gives none (the real texts are not documented).
    pub fn default_message(self) -> &'static str {
        match self {
            AnalysisStatus::BeforeAnalyze => "Analysis has not been requested.",
            AnalysisStatus::WaitAnalyze => "Waiting for analysis.",
            AnalysisStatus::Analyzing => "Analyzing.",
            AnalysisStatus::AnalyzeCompleted => "Analysis completed.",
            AnalysisStatus::AnalyzeFail => "Analysis failed.",
            AnalysisStatus::AnalyzeCancel => "Analysis canceled.",
        }
    }
}

/// Bound on texts echoed in answers: `file_name`, analysis messages, the not-ready code and
/// message.
pub const MAX_TEXT_BYTES: usize = 1024;

/// One `[[asset]]`: an asset and one of its indexes (repeat the asset for more indexes; the
/// asset-level API uses the last one declared, its "latest").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssetSpec {
    #[serde(deserialize_with = "id_string")]
    pub workspace: String,
    #[serde(deserialize_with = "id_string")]
    pub project_id: String,
    #[serde(deserialize_with = "id_string")]
    pub asset_id: String,
    /// Digits only: the API returns it as an integer `indexId`.
    #[serde(deserialize_with = "id_string")]
    pub index_id: String,
    #[serde(default, deserialize_with = "opt_id_string")]
    pub scene_summary_id: Option<String>,
    pub scenes: u32,
    #[serde(default)]
    pub initial: Status,
    #[serde(default = "default_queue")]
    pub queue: DurationRange,
    #[serde(default = "default_run")]
    pub run: DurationRange,
    #[serde(default)]
    pub outcome: Outcome,
    /// A full run completed before start, and a partial re-run of these scenes was requested at
    /// start (the asset starts in `initial`, WAIT_SUMMARIZE by default).
    #[serde(default)]
    pub rerun_scene_ids: Option<Vec<u32>>,
    /// Scenes whose labels or script changed after their summary.
    #[serde(default)]
    pub metadata_changed_scenes: Vec<u32>,
    /// The index (analysis) status of this index, served by `…/index/status` while it is the
    /// asset's latest.
    #[serde(default)]
    pub analysis: AnalysisStatus,
    /// `fileName` in the asset listing (default `{asset_id}.mp4`); any text, unsafe ones too.
    #[serde(default)]
    pub file_name: Option<String>,
}

fn default_queue() -> DurationRange {
    DurationRange::fixed(Duration::from_secs(5))
}
fn default_run() -> DurationRange {
    DurationRange::fixed(Duration::from_secs(10))
}

/// One `[[generate]]`: `count` assets made deterministically from the seed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    pub count: u32,
    #[serde(deserialize_with = "id_string")]
    pub workspace: String,
    #[serde(deserialize_with = "id_string")]
    pub project_id: String,
    /// Asset ids are this prefix followed by 1, 2, …
    #[serde(default = "default_prefix")]
    pub asset_id_prefix: String,
    /// Index ids are this number, plus 1, plus 2, … (numbers: `indexId` is an integer).
    #[serde(default = "default_index_start")]
    pub index_id_start: u64,
    /// Scene summary ids likewise; absent: allocated by the simulator.
    #[serde(default)]
    pub scene_summary_id_start: Option<u64>,
    #[serde(default = "default_scenes")]
    pub scenes: CountRange,
    #[serde(default)]
    pub initial: Status,
    #[serde(default = "default_gen_queue")]
    pub queue: DurationRange,
    #[serde(default = "default_gen_run")]
    pub run: DurationRange,
    /// Share of generated assets whose runs fail.
    #[serde(default)]
    pub fail_rate: f64,
}

fn default_prefix() -> String {
    "gen-".into()
}
fn default_index_start() -> u64 {
    1_000_000
}
fn default_scenes() -> CountRange {
    CountRange { lo: 5, hi: 50 }
}
fn default_gen_queue() -> DurationRange {
    DurationRange {
        lo: Duration::from_secs(5),
        hi: Duration::from_secs(60),
    }
}
fn default_gen_run() -> DurationRange {
    DurationRange {
        lo: Duration::from_secs(10),
        hi: Duration::from_secs(120),
    }
}

/// A humantime duration such as `"30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim())
            .map(HumanDuration)
            .map_err(|e| de::Error::custom(format!("bad duration {s:?}: {e}")))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// `"3s"` (fixed) or `"5s..60s"` (drawn uniformly, to the millisecond, with the seed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub lo: Duration,
    pub hi: Duration,
}

impl DurationRange {
    pub fn fixed(d: Duration) -> Self {
        Self { lo: d, hi: d }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let one = |p: &str| {
            humantime::parse_duration(p.trim()).map_err(|e| format!("bad duration {p:?}: {e}"))
        };
        let r = match s.split_once("..") {
            Some((a, b)) => Self {
                lo: one(a)?,
                hi: one(b)?,
            },
            None => Self::fixed(one(s)?),
        };
        if r.lo > r.hi {
            return Err(format!("range {s:?} runs backwards"));
        }
        Ok(r)
    }

    pub fn draw(&self, rng: &mut SplitMix64) -> Duration {
        let lo = u64::try_from(self.lo.as_millis()).unwrap_or(u64::MAX);
        let hi = u64::try_from(self.hi.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.between(lo, hi))
    }
}

impl<'de> Deserialize<'de> for DurationRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DurationRange::parse(&s).map_err(de::Error::custom)
    }
}

/// A count, `40`, or a range, `"10..3000"` (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountRange {
    pub lo: u32,
    pub hi: u32,
}

impl CountRange {
    pub fn draw(&self, rng: &mut SplitMix64) -> u32 {
        u32::try_from(rng.between(u64::from(self.lo), u64::from(self.hi))).unwrap_or(self.lo)
    }
}

impl<'de> Deserialize<'de> for CountRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CountRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a count such as 40 or a range such as \"10..3000\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CountRange, E> {
                let n = u32::try_from(v).map_err(|_| E::custom(format!("bad count {v}")))?;
                Ok(CountRange { lo: n, hi: n })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CountRange, E> {
                let n = u32::try_from(v).map_err(|_| E::custom(format!("bad count {v}")))?;
                Ok(CountRange { lo: n, hi: n })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CountRange, E> {
                let num = |p: &str| {
                    p.trim()
                        .parse::<u32>()
                        .map_err(|_| E::custom(format!("bad count {p:?} in {s:?}")))
                };
                let r = match s.split_once("..") {
                    Some((a, b)) => CountRange {
                        lo: num(a)?,
                        hi: num(b)?,
                    },
                    None => {
                        let n = num(s)?;
                        CountRange { lo: n, hi: n }
                    }
                };
                if r.lo > r.hi {
                    return Err(E::custom(format!("range {s:?} runs backwards")));
                }
                Ok(r)
            }
        }
        d.deserialize_any(V)
    }
}

/// Ids may be written as strings or, for convenience, as integers (`project_id = 100`).
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an id (string or non-negative integer)")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            u64::try_from(v)
                .map(|v| v.to_string())
                .map_err(|_| E::custom(format!("negative id {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
    }
    d.deserialize_any(V)
}

fn opt_id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    id_string(d).map(Some)
}

/// The DESIGN.md rule for ids: non-empty, at most 128 bytes, `[A-Za-z0-9._-]`, no `..`.
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.contains("..")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} {id:?} is not a valid id (1-128 of A-Z a-z 0-9 . _ -, no \"..\")"
        ))
    }
}

/// Index ids are integers on the wire; canonical digits keep path and body forms equal.
pub fn parse_index_id(id: &str) -> Result<u64, String> {
    let n: u64 = id
        .parse()
        .map_err(|_| format!("index_id {id:?} is not a number (indexId is an integer)"))?;
    if n.to_string() != id {
        return Err(format!("index_id {id:?} has leading zeros"));
    }
    Ok(n)
}

/// Upper bounds that keep a typo from allocating the machine away.
pub const MAX_SCENES: u32 = 100_000;
pub const MAX_ASSETS: u64 = 1_000_000;

impl AssetSpec {
    /// `workspace/project/asset/index`, for error messages.
    pub fn label(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.workspace, self.project_id, self.asset_id, self.index_id
        )
    }

    /// Checks one asset on its own (duplicates are checked by the caller).
    pub fn validate(&self) -> Result<(), String> {
        check_id("workspace", &self.workspace)?;
        check_id("project_id", &self.project_id)?;
        check_id("asset_id", &self.asset_id)?;
        check_id("index_id", &self.index_id)?;
        parse_index_id(&self.index_id)?;
        if let Some(s) = &self.scene_summary_id {
            check_id("scene_summary_id", s)?;
        }
        if self.scenes == 0 || self.scenes > MAX_SCENES {
            return Err(format!(
                "scenes = {} is not between 1 and {MAX_SCENES}",
                self.scenes
            ));
        }
        let in_range = |key: &str, ids: &[u32]| -> Result<(), String> {
            match ids.iter().find(|&&s| s == 0 || s > self.scenes) {
                Some(bad) => Err(format!(
                    "{key} contains scene {bad}, outside 1..={}",
                    self.scenes
                )),
                None => Ok(()),
            }
        };
        if let Some(ids) = &self.rerun_scene_ids {
            if ids.is_empty() {
                return Err("rerun_scene_ids is empty".into());
            }
            in_range("rerun_scene_ids", ids)?;
            if !self.initial.in_progress() {
                return Err(format!(
                    "rerun_scene_ids needs initial WAIT_SUMMARIZE or SUMMARIZING, not {}",
                    self.initial.as_str()
                ));
            }
        }
        in_range("metadata_changed_scenes", &self.metadata_changed_scenes)?;
        if self
            .file_name
            .as_ref()
            .is_some_and(|f| f.len() > MAX_TEXT_BYTES)
        {
            return Err(format!("file_name is longer than {MAX_TEXT_BYTES} bytes"));
        }
        Ok(())
    }
}

impl Scenario {
    /// Parses and validates; errors name the bad key or asset.
    pub fn from_toml_str(s: &str) -> Result<Scenario, SimError> {
        let scenario: Scenario = toml::from_str(s).map_err(|e| SimError::Toml(e.to_string()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Reads, parses and validates a file; errors name the file.
    pub fn load(path: &std::path::Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
            path: path.to_owned(),
            source,
        })?;
        Scenario::from_toml_str(&text).map_err(|e| SimError::InFile {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Every check that does not need the running server.
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |m: String| Err(SimError::Invalid(m));
        if self.credentials.is_empty() {
            return bad("no [[credentials]]: the simulator would refuse every request".into());
        }
        for (i, c) in self.credentials.iter().enumerate() {
            if c.access_key.is_empty() || c.secret_key.is_empty() {
                return bad(format!(
                    "credentials[{i}]: access_key and secret_key must be non-empty"
                ));
            }
        }
        let api = &self.api;
        if let Choice::Fixed(status) = api.result_not_ready_status
            && !(400..=599).contains(&status)
        {
            return bad(format!(
                "api.result_not_ready_status = {status} is not a 4xx or 5xx status"
            ));
        }
        match &api.result_not_ready_code {
            Choice::Fixed(ErrorCode::Text(c)) if c.is_empty() || c == "0" => {
                return bad("api.result_not_ready_code must be a non-zero code".into());
            }
            Choice::Fixed(ErrorCode::Number(0)) => {
                return bad("api.result_not_ready_code must be a non-zero code".into());
            }
            Choice::Fixed(ErrorCode::Text(c)) if c.len() > MAX_TEXT_BYTES => {
                return bad(format!(
                    "api.result_not_ready_code is longer than {MAX_TEXT_BYTES} bytes"
                ));
            }
            _ => {}
        }
        if let Choice::Fixed(m) = &api.result_not_ready_message
            && m.len() > MAX_TEXT_BYTES
        {
            return bad(format!(
                "api.result_not_ready_message is longer than {MAX_TEXT_BYTES} bytes"
            ));
        }
        let base = match self.listing.page_base {
            Choice::Fixed(b) => Some(b),
            Choice::Random => None,
        };
        check_listing(base, &self.listing.injected_asset_ids).map_err(SimError::Invalid)?;
        if let Some(rps) = api.requests_per_second
            && !(rps.is_finite() && rps > 0.0)
        {
            return bad(format!(
                "api.requests_per_second = {rps} must be a positive number"
            ));
        }
        self.faults.validate()?;
        let mut seen = HashSet::new();
        for (i, a) in self.assets.iter().enumerate() {
            a.validate()
                .map_err(|m| SimError::Invalid(format!("asset[{i}] ({}): {m}", a.label())))?;
            if !seen.insert(a.label()) {
                return bad(format!("asset[{i}] ({}) is declared twice", a.label()));
            }
        }
        let mut total = self.assets.len() as u64;
        for (i, g) in self.generate.iter().enumerate() {
            let ctx = |m: String| SimError::Invalid(format!("generate[{i}]: {m}"));
            check_id("workspace", &g.workspace).map_err(ctx)?;
            check_id("project_id", &g.project_id).map_err(ctx)?;
            check_id("asset_id_prefix", &format!("{}1", g.asset_id_prefix)).map_err(ctx)?;
            if g.scenes.lo == 0 || g.scenes.hi > MAX_SCENES {
                return Err(ctx(format!("scenes must lie within 1..={MAX_SCENES}")));
            }
            if !(0.0..=1.0).contains(&g.fail_rate) {
                return Err(ctx(format!(
                    "fail_rate = {} is not between 0.0 and 1.0",
                    g.fail_rate
                )));
            }
            if g.index_id_start.checked_add(u64::from(g.count)).is_none() {
                return Err(ctx("index_id_start + count overflows".into()));
            }
            total += u64::from(g.count);
        }
        if total > MAX_ASSETS {
            return bad(format!("{total} assets in all, more than {MAX_ASSETS}"));
        }
        Ok(())
    }

    /// Every asset, hand-written ones first, then the generated ones in order. Generated assets
    /// draw their scene count, durations and outcome from (seed, generator, ordinal) only.
    pub fn expanded_assets(&self) -> impl Iterator<Item = AssetSpec> + '_ {
        let generated = self.generate.iter().enumerate().flat_map(move |(gi, g)| {
            (1..=g.count).map(move |n| {
                let mut rng = SplitMix64::new(super::rng::mix(&[
                    self.seed,
                    gi as u64,
                    u64::from(n),
                    0x6E4E,
                ]));
                let scenes = g.scenes.draw(&mut rng);
                let queue = DurationRange::fixed(g.queue.draw(&mut rng));
                let run = DurationRange::fixed(g.run.draw(&mut rng));
                let outcome = if rng.next_f64() < g.fail_rate {
                    Outcome::Failed
                } else {
                    Outcome::Completed
                };
                AssetSpec {
                    workspace: g.workspace.clone(),
                    project_id: g.project_id.clone(),
                    asset_id: format!("{}{n}", g.asset_id_prefix),
                    index_id: (g.index_id_start + u64::from(n) - 1).to_string(),
                    scene_summary_id: g
                        .scene_summary_id_start
                        .map(|s| s.saturating_add(u64::from(n) - 1).to_string()),
                    scenes,
                    initial: g.initial,
                    queue,
                    run,
                    outcome,
                    rerun_scene_ids: None,
                    metadata_changed_scenes: Vec::new(),
                    analysis: AnalysisStatus::AnalyzeCompleted,
                    file_name: None,
                }
            })
        });
        self.assets.iter().cloned().chain(generated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_ranges() {
        let r = DurationRange::parse("3s").unwrap();
        assert_eq!(
            (r.lo, r.hi),
            (Duration::from_secs(3), Duration::from_secs(3))
        );
        let r = DurationRange::parse("5s..1m").unwrap();
        assert_eq!(r.hi, Duration::from_secs(60));
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            let d = r.draw(&mut rng);
            assert!(d >= r.lo && d <= r.hi);
        }
        assert!(DurationRange::parse("1m..5s").is_err());
        assert!(DurationRange::parse("soon").is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("x", "my-workspace_1.2").is_ok());
        assert!(check_id("x", "a/b").is_err());
        assert!(check_id("x", "..").is_err());
        assert!(check_id("x", "").is_err());
        assert!(parse_index_id("0301").is_err());
        assert_eq!(parse_index_id("301"), Ok(301));
    }
}
