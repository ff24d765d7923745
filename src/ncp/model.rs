//! Typed wire models of Media Intelligence answers, tolerant of unknown fields and missing optional ones.
//!
//! Only `ncp` knows this JSON (ARCHITECTURE.md). Every struct here ignores unknown fields, since
//! most of the API's `result` fields are undocumented, and every field the docs mark as sometimes
//! absent is an `Option` or defaults. Where the docs say "string" but public code has seen numbers
//! (`errorCode`, ids), both are accepted and normalised to strings.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::value::RawValue;

/// Which endpoint family a watch uses (API doc §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Generation {
    /// The original index-level API (`…/indexes/{index_id}/scene-summaries`), deprecated upstream.
    Index,
    /// The current asset-level API (`…/scene-summary`), always the asset's latest index.
    Asset,
}

impl Generation {
    /// The config spelling: `index` or `asset`.
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Index => "index",
            Generation::Asset => "asset",
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ids that address one summary. Validated upstream (config) to `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub workspace: String,
    pub project_id: String,
    pub asset_id: String,
    pub index_id: String,
    /// Returned by the index-level request call; only the index-level status and cancel need it.
    pub scene_summary_id: Option<String>,
}

/// `result.status` of the status endpoint (API doc §2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteStatus {
    BeforeSummarize,
    WaitSummarize,
    Summarizing,
    Completed,
    Failed,
    Canceled,
    /// A status string this build does not know, kept verbatim so the caller can log and decide.
    Unknown(String),
}

impl RemoteStatus {
    /// Maps the wire spelling; anything else (including other capitalisations) is `Unknown`, so
    /// what the server really sent stays visible.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "BEFORE_SUMMARIZE" => Self::BeforeSummarize,
            "WAIT_SUMMARIZE" => Self::WaitSummarize,
            "SUMMARIZING" => Self::Summarizing,
            "SUMMARIZE_COMPLETED" => Self::Completed,
            "SUMMARIZE_FAIL" => Self::Failed,
            "SUMMARIZE_CANCELED" => Self::Canceled,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The wire spelling (`SUMMARIZE_FAIL`, `SUMMARIZE_CANCELED`, …), or the unknown string as received.
    pub fn as_str(&self) -> &str {
        match self {
            Self::BeforeSummarize => "BEFORE_SUMMARIZE",
            Self::WaitSummarize => "WAIT_SUMMARIZE",
            Self::Summarizing => "SUMMARIZING",
            Self::Completed => "SUMMARIZE_COMPLETED",
            Self::Failed => "SUMMARIZE_FAIL",
            Self::Canceled => "SUMMARIZE_CANCELED",
            Self::Unknown(s) => s,
        }
    }

    /// Completed, failed or canceled. `BEFORE_SUMMARIZE` is not terminal (a request may come) and
    /// neither is an unknown status: the caller decides how long to tolerate it.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

impl fmt::Display for RemoteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Serialised as the wire spelling, so ledgers and events store what the API says.
impl serde::Serialize for RemoteStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RemoteStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::from_wire(&s))
    }
}

/// The status endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryStatus {
    pub status: RemoteStatus,
}

/// The result endpoint's answer.
///
/// Only what the engine decides on is decoded into fields (the scene count, the stale scenes,
/// `sceneSummaryInfo`); the scenes themselves stay in `raw` and are read from it, borrowing its
/// text, by the one sink that needs them ([`SummaryResult::scenes`]). A result of 20,000 scenes
/// then lives once in memory, not twice (docs/benchmarks.md, "One large result").
#[derive(Debug, Clone)]
pub struct SummaryResult {
    /// The API's `result` object, byte for byte, for sinks that store it unchanged.
    pub raw: Box<RawValue>,
    pub index_id: Option<i64>,
    /// `None` until summarization has completed.
    pub info: Option<SceneSummaryInfo>,
    /// How many entries `sceneSummaries` has.
    pub scene_count: usize,
    /// Scene numbers whose summary says `metadataChangedAfterSummary: true`, in their order.
    pub stale: Vec<u64>,
}

/// `result.sceneSummaryInfo`: present once a summary has completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneSummaryInfo {
    /// Identifies a result version (DESIGN.md "Delivery guarantee"), kept as sent.
    pub last_analyzed_at: String,
    /// `None` after a full run; the scene ids of the last partial run otherwise (numbers
    /// normalised to strings, since the docs say strings but we do not trust that).
    pub analyzed_scene_ids: Option<Vec<String>>,
}

/// One entry of `result.sceneSummaries`, its texts borrowed from the result where they need no
/// unescaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scene<'a> {
    pub scene: u64,
    pub start_ms: Option<u64>,
    pub end_ms: Option<u64>,
    /// `None` for scenes that were never analyzed.
    pub summary: Option<SceneSummary<'a>>,
}

/// `sceneSummary` of one scene.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SceneSummary<'a> {
    pub description: Cow<'a, str>,
    /// Person labels or the script changed since this summary was made.
    pub metadata_changed_after_summary: bool,
    pub analyzed_at: Option<Cow<'a, str>>,
}

/// `result.status` of the index (analysis) status call (API doc §6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AnalysisStatus {
    BeforeAnalyze,
    WaitAnalyze,
    Analyzing,
    Completed,
    Failed,
    Canceled,
    /// A status this build does not know, kept verbatim.
    Unknown(String),
}

impl AnalysisStatus {
    /// Maps the wire spelling; anything else is `Unknown`.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "BEFORE_ANALYZE" => Self::BeforeAnalyze,
            "WAIT_ANALYZE" => Self::WaitAnalyze,
            "ANALYZING" => Self::Analyzing,
            "ANALYZE_COMPLETED" => Self::Completed,
            "ANALYZE_FAIL" => Self::Failed,
            "ANALYZE_CANCEL" => Self::Canceled,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::BeforeAnalyze => "BEFORE_ANALYZE",
            Self::WaitAnalyze => "WAIT_ANALYZE",
            Self::Analyzing => "ANALYZING",
            Self::Completed => "ANALYZE_COMPLETED",
            Self::Failed => "ANALYZE_FAIL",
            Self::Canceled => "ANALYZE_CANCEL",
            Self::Unknown(s) => s,
        }
    }
}

/// The index (analysis) status of an asset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStatus {
    /// Where its analysis is.
    pub status: AnalysisStatus,
    /// Its latest index, once analysis completed ("only one latest index is kept per asset"),
    /// normalised to a string.
    pub index_id: Option<String>,
    /// `analyzeStatusMessage`, when sent.
    pub message: Option<String>,
}

/// One page of a project's assets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetPage {
    /// The asset ids on this page, normalised to strings, as sent (not validated here: the
    /// caller checks each before using it in a path).
    pub asset_ids: Vec<String>,
    /// Entries without a usable `assetId`.
    pub malformed: usize,
    /// `totalCount`, when sent.
    pub total_count: Option<u64>,
    /// `totalPage`, when sent.
    pub total_page: Option<u64>,
    /// `pageNo`, when sent.
    pub page_no: Option<u64>,
}

/// The request endpoint's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAccepted {
    /// Needed by the index-level status and cancel calls. The field name is a guess
    /// (`sceneSummaryId`, API doc §1), so `None` is a normal outcome, not an error.
    pub scene_summary_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Wire shapes. Private: the rest of the crate sees only the types above.

/// The success envelope `{"code":"0","message":"success","result":{…}}`, borrowing `result`
/// so a large body is parsed once and never copied before we know it is wanted.
#[derive(Deserialize)]
pub(crate) struct Envelope<'a> {
    #[serde(default, deserialize_with = "opt_str_or_num")]
    pub code: Option<String>,
    #[serde(default, deserialize_with = "opt_lenient_string")]
    pub message: Option<String>,
    /// Older NCP APIs' spelling of `code` / `message` (API doc §6).
    #[serde(default, rename = "returnCode", deserialize_with = "opt_str_or_num")]
    pub return_code: Option<String>,
    #[serde(
        default,
        rename = "returnMessage",
        deserialize_with = "opt_lenient_string"
    )]
    pub return_message: Option<String>,
    #[serde(default, borrow)]
    pub result: Option<&'a RawValue>,
    /// A gateway error object inside a 2xx answer: should never happen, but is not success.
    #[serde(default, borrow)]
    pub error: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "responseError")]
    pub response_error: Option<&'a RawValue>,
}

/// The parts of an error body that classification uses, from any of the documented shapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ErrorBody {
    /// True when the body had the gateway's `{"error":{…}}` shape.
    pub gateway: bool,
    pub code: Option<String>,
    pub message: Option<String>,
    pub details: Option<String>,
}

/// One error object: the gateway's (`errorCode`) or the service's (`code`, or `returnCode` as
/// older NCP APIs spell it), fields under any of their names (API doc §5, §6).
#[derive(Deserialize, Default)]
struct ErrorFields {
    #[serde(default, deserialize_with = "opt_str_or_num")]
    code: Option<String>,
    #[serde(default, rename = "errorCode", deserialize_with = "opt_str_or_num")]
    error_code: Option<String>,
    #[serde(default, rename = "returnCode", deserialize_with = "opt_str_or_num")]
    return_code: Option<String>,
    #[serde(default, deserialize_with = "opt_lenient_string")]
    message: Option<String>,
    #[serde(
        default,
        rename = "errorMessage",
        deserialize_with = "opt_lenient_string"
    )]
    error_message: Option<String>,
    #[serde(
        default,
        rename = "returnMessage",
        deserialize_with = "opt_lenient_string"
    )]
    return_message: Option<String>,
    #[serde(default, deserialize_with = "opt_lenient_string")]
    details: Option<String>,
}

impl ErrorFields {
    /// `in_error`: the fields sat under `{"error":{…}}`. That is the gateway's shape only when it
    /// carries the gateway's `errorCode`; a `{"error":{"code":…}}` is the service speaking.
    fn into_body(self, in_error: bool) -> ErrorBody {
        ErrorBody {
            gateway: in_error && self.error_code.is_some(),
            code: self.error_code.or(self.code).or(self.return_code),
            message: self.message.or(self.error_message).or(self.return_message),
            details: self.details,
        }
    }
}

#[derive(Deserialize)]
struct ErrorTop<'a> {
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "responseError")]
    response_error: Option<&'a RawValue>,
    #[serde(flatten)]
    fields: ErrorFields,
}

impl ErrorBody {
    /// Reads `{"error":{"errorCode":…}}` (gateway), `{"error":{"code":…}}`,
    /// `{"responseError":{…}}`, `{"code":…,"message":…}` or `{"returnCode":…,"returnMessage":…}`
    /// (service). `None` when the body is not a JSON object at all (an HTML page from a proxy).
    pub(crate) fn parse(body: &[u8]) -> Option<ErrorBody> {
        let top: ErrorTop<'_> = serde_json::from_slice(body).ok()?;
        Some(Self::from_parts(top.error, top.response_error, top.fields))
    }

    /// The same, from the raw `error` / `responseError` members of an already parsed envelope.
    pub(crate) fn from_nested(
        error: Option<&RawValue>,
        response_error: Option<&RawValue>,
    ) -> ErrorBody {
        Self::from_parts(error, response_error, ErrorFields::default())
    }

    fn from_parts(
        error: Option<&RawValue>,
        response_error: Option<&RawValue>,
        top: ErrorFields,
    ) -> ErrorBody {
        let nested = |raw: Option<&RawValue>| -> Option<ErrorFields> {
            serde_json::from_str::<ErrorFields>(raw?.get()).ok()
        };
        if let Some(f) = nested(error) {
            return f.into_body(true);
        }
        if let Some(f) = nested(response_error) {
            return f.into_body(false);
        }
        top.into_body(false)
    }
}

#[derive(Deserialize)]
struct StatusWire {
    status: String,
}

#[derive(Deserialize)]
struct IndexStatusWire {
    #[serde(deserialize_with = "str_or_num")]
    status: String,
    #[serde(default, rename = "indexId", deserialize_with = "opt_str_or_num")]
    index_id: Option<String>,
    #[serde(
        default,
        rename = "analyzeStatusMessage",
        deserialize_with = "opt_lenient_string"
    )]
    message: Option<String>,
}

#[derive(Deserialize)]
struct AssetPageWire {
    #[serde(default, deserialize_with = "null_as_empty")]
    content: Vec<serde_json::Value>,
    #[serde(default, rename = "totalCount", deserialize_with = "opt_u64_lenient")]
    total_count: Option<u64>,
    #[serde(default, rename = "totalPage", deserialize_with = "opt_u64_lenient")]
    total_page: Option<u64>,
    #[serde(default, rename = "pageNo", deserialize_with = "opt_u64_lenient")]
    page_no: Option<u64>,
}

/// Decodes the index (analysis) status call's `result`.
pub(crate) fn decode_index_status(result: &RawValue) -> Result<IndexStatus, serde_json::Error> {
    let w: IndexStatusWire = serde_json::from_str(result.get())?;
    Ok(IndexStatus {
        status: AnalysisStatus::from_wire(&w.status),
        index_id: w.index_id.filter(|i| !i.is_empty()),
        message: w.message,
    })
}

/// Decodes one page of the list-assets call. An entry whose `assetId` is missing or not a
/// scalar is counted as malformed, not fatal: the other assets are still watched.
pub(crate) fn decode_asset_page(result: &RawValue) -> Result<AssetPage, serde_json::Error> {
    let w: AssetPageWire = serde_json::from_str(result.get())?;
    let mut asset_ids = Vec::with_capacity(w.content.len());
    let mut malformed = 0;
    for entry in &w.content {
        match entry.get("assetId") {
            Some(serde_json::Value::String(s)) => asset_ids.push(s.clone()),
            Some(serde_json::Value::Number(n)) => asset_ids.push(n.to_string()),
            _ => malformed += 1,
        }
    }
    Ok(AssetPage {
        asset_ids,
        malformed,
        total_count: w.total_count,
        total_page: w.total_page,
        page_no: w.page_no,
    })
}

/// The fields of `result` the engine decides on; the scenes are checked one by one (the same
/// checks as [`SceneWire`]) and counted, and only the numbers of stale ones are kept.
#[derive(Deserialize)]
struct ResultWire {
    #[serde(default, rename = "indexId", deserialize_with = "opt_i64_lenient")]
    index_id: Option<i64>,
    #[serde(default, rename = "sceneSummaryInfo")]
    info: Option<InfoWire>,
    #[serde(default, rename = "sceneSummaries")]
    scenes: SceneTally,
}

/// The scenes of a result, as `ResultWire` sees them: how many, and which are stale.
#[derive(Default)]
struct SceneTally {
    count: usize,
    stale: Vec<u64>,
}

impl<'de> Deserialize<'de> for SceneTally {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Scenes;
        impl<'de> de::Visitor<'de> for Scenes {
            type Value = SceneTally;
            // The wording of `Vec`'s own visitor, so a garbled result reads as it always did.
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<SceneTally, A::Error> {
                let mut tally = SceneTally::default();
                while let Some(s) = seq.next_element::<SceneWire<'de>>()? {
                    tally.count += 1;
                    if s.summary
                        .is_some_and(|m| m.metadata_changed_after_summary == Some(true))
                    {
                        tally.stale.push(s.scene);
                    }
                }
                Ok(tally)
            }
        }
        struct OrNull;
        impl<'de> de::Visitor<'de> for OrNull {
            type Value = SceneTally;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("option")
            }
            fn visit_none<E: de::Error>(self) -> Result<SceneTally, E> {
                Ok(SceneTally::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<SceneTally, E> {
                Ok(SceneTally::default())
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<SceneTally, D2::Error> {
                d.deserialize_seq(Scenes)
            }
        }
        d.deserialize_option(OrNull)
    }
}

/// `result` with its scenes, for [`SummaryResult::scenes`].
#[derive(Deserialize)]
struct ScenesWire<'a> {
    #[serde(
        default,
        borrow,
        rename = "sceneSummaries",
        deserialize_with = "null_as_empty"
    )]
    scenes: Vec<SceneWire<'a>>,
}

#[derive(Deserialize)]
struct InfoWire {
    #[serde(rename = "lastAnalyzedAt", deserialize_with = "str_or_num")]
    last_analyzed_at: String,
    #[serde(default, rename = "analyzedSceneIds", deserialize_with = "opt_id_list")]
    analyzed_scene_ids: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct SceneWire<'a> {
    #[serde(deserialize_with = "u64_lenient")]
    scene: u64,
    #[serde(default, rename = "startMs", deserialize_with = "opt_u64_lenient")]
    start_ms: Option<u64>,
    #[serde(default, rename = "endMs", deserialize_with = "opt_u64_lenient")]
    end_ms: Option<u64>,
    #[serde(default, borrow, rename = "sceneSummary")]
    summary: Option<SceneSummaryWire<'a>>,
}

#[derive(Deserialize)]
struct SceneSummaryWire<'a> {
    // A summary without a description is odd but not worth rejecting the whole result for.
    #[serde(default, borrow, deserialize_with = "opt_lenient_cow")]
    description: Option<Cow<'a, str>>,
    #[serde(default, rename = "metadataChangedAfterSummary")]
    metadata_changed_after_summary: Option<bool>,
    #[serde(
        default,
        borrow,
        rename = "analyzedAt",
        deserialize_with = "opt_lenient_cow"
    )]
    analyzed_at: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AcceptedWire {
    #[serde(
        default,
        rename = "sceneSummaryId",
        deserialize_with = "opt_str_or_num"
    )]
    scene_summary_id: Option<String>,
}

/// Decodes the status endpoint's `result`.
pub(crate) fn decode_status(result: &RawValue) -> Result<SummaryStatus, serde_json::Error> {
    let w: StatusWire = serde_json::from_str(result.get())?;
    Ok(SummaryStatus {
        status: RemoteStatus::from_wire(&w.status),
    })
}

impl SummaryResult {
    /// Rebuilds a result from the text of its `result` object, as stored by the ledger. The
    /// text becomes `raw` as it is, without a copy.
    pub fn from_result_json(text: String) -> Result<SummaryResult, serde_json::Error> {
        let raw = RawValue::from_string(text)?;
        decode_into(raw)
    }

    /// Scene numbers whose summary says `metadataChangedAfterSummary: true`.
    pub fn stale_scenes(&self) -> &[u64] {
        &self.stale
    }

    /// The scenes, read from `raw` (texts borrowed from it where they need no unescaping). `raw`
    /// decoded once already, so this fails only if `raw` was changed since.
    pub fn scenes(&self) -> Result<Vec<Scene<'_>>, serde_json::Error> {
        let w: ScenesWire<'_> = serde_json::from_str(self.raw.get())?;
        Ok(w.scenes
            .into_iter()
            .map(|s| Scene {
                scene: s.scene,
                start_ms: s.start_ms,
                end_ms: s.end_ms,
                summary: s.summary.map(|m| SceneSummary {
                    description: m.description.unwrap_or_default(),
                    metadata_changed_after_summary: m
                        .metadata_changed_after_summary
                        .unwrap_or(false),
                    analyzed_at: m.analyzed_at,
                }),
            })
            .collect())
    }
}

/// Decodes the result endpoint's `result`, keeping its exact bytes in `raw` (a copy of them).
pub(crate) fn decode_result(result: &RawValue) -> Result<SummaryResult, serde_json::Error> {
    decode_into(result.to_owned())
}

/// Decodes the `result` that lies at `at` in an answer's `body` (as [`Envelope`] found it), and
/// makes `raw` of that same buffer: the result's bytes move to its front and the rest is cut
/// off, so a result of megabytes is never copied.
pub(crate) fn decode_result_in(
    body: Vec<u8>,
    at: Range<usize>,
) -> Result<SummaryResult, serde_json::Error> {
    let mut body = body;
    if at.end > body.len() || at.start > at.end {
        return Err(de::Error::custom("the result lies outside the answer body"));
    }
    body.copy_within(at.clone(), 0);
    body.truncate(at.len());
    let text = String::from_utf8(body)
        .map_err(|_| <serde_json::Error as de::Error>::custom("the result is not UTF-8"))?;
    // `from_string` keeps the String's buffer when the text is exactly one JSON value, which
    // the envelope's parser guarantees (no whitespace around it).
    decode_into(RawValue::from_string(text)?)
}

/// Where `inner` (borrowed from `outer`) lies in `outer`, as a byte range.
pub(crate) fn range_in(outer: &[u8], inner: &str) -> Option<Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

fn decode_into(raw: Box<RawValue>) -> Result<SummaryResult, serde_json::Error> {
    let w: ResultWire = serde_json::from_str(raw.get())?;
    Ok(SummaryResult {
        index_id: w.index_id,
        info: w.info.map(|i| SceneSummaryInfo {
            last_analyzed_at: i.last_analyzed_at,
            analyzed_scene_ids: i.analyzed_scene_ids,
        }),
        scene_count: w.scenes.count,
        stale: w.scenes.stale,
        raw,
    })
}

/// Decodes the request endpoint's answer. The id may sit in `result` or at the top level; a
/// `result` that is not an object (or absent) simply yields no id.
pub(crate) fn decode_accepted(result: Option<&RawValue>, body: &[u8]) -> RequestAccepted {
    let from = |text: &[u8]| {
        serde_json::from_slice::<AcceptedWire>(text)
            .ok()
            .and_then(|w| w.scene_summary_id)
    };
    let scene_summary_id = result
        .and_then(|r| from(r.get().as_bytes()))
        .or_else(|| from(body));
    RequestAccepted { scene_summary_id }
}

// ---------------------------------------------------------------------------------------------
// Lenient field decoders.

/// A JSON scalar the docs call a string but that has been seen as a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Str(String),
    U(u64),
    I(i64),
    F(f64),
    B(bool),
}

impl Scalar {
    fn into_string(self) -> String {
        match self {
            Scalar::Str(s) => s,
            Scalar::U(n) => n.to_string(),
            Scalar::I(n) => n.to_string(),
            Scalar::F(n) => n.to_string(),
            Scalar::B(b) => b.to_string(),
        }
    }
}

fn str_or_num<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Scalar::deserialize(d).map(Scalar::into_string)
}

fn opt_str_or_num<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Scalar>::deserialize(d)?.map(Scalar::into_string))
}

/// Any JSON value as an optional string: text fields that should not fail a whole answer if a
/// server sends a number or an object there. Non-scalars are kept as their JSON text.
fn opt_lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(opt_lenient_cow(d)?.map(Cow::into_owned))
}

/// [`opt_lenient_string`], borrowing the text when it needs no unescaping: any JSON value, a
/// string as itself (`null` as `None`), anything else as its JSON text.
fn opt_lenient_cow<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct Lenient;
    impl<'de> de::Visitor<'de> for Lenient {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any valid JSON value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(serde_json::Value::from(v).to_string())))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(serde_json::Value::from(v).to_string())))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(serde_json::Value::from(v).to_string())))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(serde_json::Value::from(v).to_string())))
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
            Ok(Some(Cow::Owned(v.to_string())))
        }
    }
    d.deserialize_any(Lenient)
}

fn scalar_to_u64<E: de::Error>(s: Scalar) -> Result<u64, E> {
    match s {
        Scalar::U(n) => Ok(n),
        Scalar::Str(t) => t
            .trim()
            .parse()
            .map_err(|_| E::custom(format!("expected a non-negative integer, got {t:?}"))),
        Scalar::F(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
        Scalar::I(n) => Err(E::custom(format!(
            "expected a non-negative integer, got {n}"
        ))),
        Scalar::F(f) => Err(E::custom(format!("expected an integer, got {f}"))),
        Scalar::B(b) => Err(E::custom(format!("expected an integer, got {b}"))),
    }
}

fn u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    scalar_to_u64(Scalar::deserialize(d)?)
}

fn opt_u64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Option::<Scalar>::deserialize(d)?
        .map(scalar_to_u64)
        .transpose()
}

fn opt_i64_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Scalar>::deserialize(d)? {
        None => Ok(None),
        Some(Scalar::I(n)) => Ok(Some(n)),
        Some(Scalar::U(n)) => i64::try_from(n)
            .map(Some)
            .map_err(|_| de::Error::custom(format!("indexId out of range: {n}"))),
        Some(Scalar::Str(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| de::Error::custom(format!("indexId is not an integer: {t:?}"))),
        Some(other) => Err(de::Error::custom(format!(
            "indexId is not an integer: {}",
            other.into_string()
        ))),
    }
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// `analyzedSceneIds`: null, a list of strings or numbers, or (defensively) one comma-separated
/// string.
fn opt_id_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ids {
        List(Vec<Scalar>),
        One(Scalar),
    }
    Ok(match Option::<Ids>::deserialize(d)? {
        None => None,
        Some(Ids::List(v)) => Some(v.into_iter().map(Scalar::into_string).collect()),
        Some(Ids::One(Scalar::Str(s))) => Some(
            s.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        ),
        Some(Ids::One(other)) => Some(vec![other.into_string()]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    const DOC_RESULT: &str = r#"{
  "indexId":1001,
  "sceneSummaryInfo":{"lastAnalyzedAt":"2026-04-17T10:30:00","analyzedSceneIds":null},
  "sceneSummaries":[{"scene":1,"startMs":1000,"endMs":3000,
    "sceneSummary":{"description":"A \"quoted\" remark.","metadataChangedAfterSummary":false,"analyzedAt":"2026-04-17T10:30:00"}}]}"#;

    #[test]
    fn documented_result_decodes() {
        let r = decode_result(&raw(DOC_RESULT)).unwrap();
        assert_eq!(r.index_id, Some(1001));
        let info = r.info.clone().unwrap();
        assert_eq!(info.last_analyzed_at, "2026-04-17T10:30:00");
        assert_eq!(info.analyzed_scene_ids, None);
        assert_eq!(r.scene_count, 1);
        assert!(r.stale.is_empty());
        assert_eq!(
            r.scenes().unwrap(),
            vec![Scene {
                scene: 1,
                start_ms: Some(1000),
                end_ms: Some(3000),
                summary: Some(SceneSummary {
                    description: "A \"quoted\" remark.".into(),
                    metadata_changed_after_summary: false,
                    analyzed_at: Some("2026-04-17T10:30:00".into()),
                }),
            }]
        );
    }

    /// `raw` must be the API's bytes unchanged (whitespace, key order, escapes) because sinks
    /// store it as the canonical result.
    #[test]
    fn raw_is_byte_identical_to_the_result_object() {
        let body = format!(
            "{{\"code\":\"0\",\"message\":\"success\",\"result\":{DOC_RESULT} , \"extra\":1}}"
        );
        let env: Envelope<'_> = serde_json::from_str(&body).unwrap();
        let r = decode_result(env.result.unwrap()).unwrap();
        assert_eq!(r.raw.get(), DOC_RESULT);
    }

    #[test]
    fn scene_summary_info_absent_or_null_before_completion() {
        for body in [
            r#"{"indexId":1001,"sceneSummaries":[]}"#,
            r#"{"indexId":1001,"sceneSummaryInfo":null,"sceneSummaries":null}"#,
            r#"{}"#,
        ] {
            let r = decode_result(&raw(body)).unwrap();
            assert!(r.info.is_none(), "{body}");
            assert_eq!(r.scene_count, 0, "{body}");
            assert!(r.scenes().unwrap().is_empty(), "{body}");
        }
    }

    #[test]
    fn scene_summary_absent_for_unanalyzed_scenes() {
        let r = decode_result(&raw(
            r#"{"sceneSummaries":[{"scene":1},{"scene":2,"sceneSummary":null},
                {"scene":"3","startMs":"10","endMs":null,"sceneSummary":{}}]}"#,
        ))
        .unwrap();
        assert_eq!(r.scene_count, 3);
        let scenes = r.scenes().unwrap();
        assert!(scenes[0].summary.is_none());
        assert!(scenes[1].summary.is_none());
        assert_eq!(scenes[2].scene, 3);
        assert_eq!(scenes[2].start_ms, Some(10));
        assert_eq!(scenes[2].end_ms, None);
        let s = scenes[2].summary.as_ref().unwrap();
        assert_eq!(s.description, "");
        assert!(!s.metadata_changed_after_summary);
        assert_eq!(s.analyzed_at, None);
    }

    #[test]
    fn analyzed_scene_ids_null_strings_numbers() {
        let cases: [(&str, Option<Vec<&str>>); 6] = [
            ("null", None),
            (r#"["1","3","5"]"#, Some(vec!["1", "3", "5"])),
            ("[1,3,5]", Some(vec!["1", "3", "5"])),
            (r#"[1,"3"]"#, Some(vec!["1", "3"])),
            (r#""1, 3,5""#, Some(vec!["1", "3", "5"])),
            ("[]", Some(vec![])),
        ];
        for (ids, want) in cases {
            let body = format!(
                r#"{{"sceneSummaryInfo":{{"lastAnalyzedAt":"t","analyzedSceneIds":{ids}}}}}"#
            );
            let r = decode_result(&raw(&body)).unwrap();
            let got = r.info.unwrap().analyzed_scene_ids;
            let want = want.map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
            assert_eq!(got, want, "{ids}");
        }
        // Absent is the same as null.
        let r = decode_result(&raw(r#"{"sceneSummaryInfo":{"lastAnalyzedAt":"t"}}"#)).unwrap();
        assert_eq!(r.info.unwrap().analyzed_scene_ids, None);
    }

    #[test]
    fn unknown_fields_everywhere_are_ignored() {
        let r = decode_result(&raw(
            r#"{"new":{"deep":[1,2]},"indexId":"7","sceneSummaryInfo":{"lastAnalyzedAt":"t","x":1},
                "sceneSummaries":[{"scene":2,"y":null,"sceneSummary":{"description":"d","z":[],"metadataChangedAfterSummary":true}}]}"#,
        ))
        .unwrap();
        assert_eq!(r.index_id, Some(7));
        assert_eq!(r.stale_scenes(), [2]);
        let scenes = r.scenes().unwrap();
        assert_eq!(scenes[0].scene, 2);
        assert!(
            scenes[0]
                .summary
                .as_ref()
                .unwrap()
                .metadata_changed_after_summary
        );
        let s = decode_status(&raw(r#"{"status":"SUMMARIZING","progress":40,"more":{}}"#)).unwrap();
        assert_eq!(s.status, RemoteStatus::Summarizing);
    }

    #[test]
    fn missing_required_fields_are_errors_not_panics() {
        assert!(decode_status(&raw("{}")).is_err());
        assert!(decode_status(&raw("[]")).is_err());
        assert!(decode_result(&raw(r#"{"sceneSummaryInfo":{}}"#)).is_err());
        assert!(decode_result(&raw(r#"{"sceneSummaries":[{"scene":-1}]}"#)).is_err());
        assert!(decode_result(&raw(r#"{"sceneSummaries":{}}"#)).is_err());
        assert!(decode_result(&raw("null")).is_err());
    }

    #[test]
    fn statuses_round_trip_and_unknown_is_kept() {
        let all = [
            ("BEFORE_SUMMARIZE", RemoteStatus::BeforeSummarize, false),
            ("WAIT_SUMMARIZE", RemoteStatus::WaitSummarize, false),
            ("SUMMARIZING", RemoteStatus::Summarizing, false),
            ("SUMMARIZE_COMPLETED", RemoteStatus::Completed, true),
            ("SUMMARIZE_FAIL", RemoteStatus::Failed, true),
            ("SUMMARIZE_CANCELED", RemoteStatus::Canceled, true),
        ];
        for (wire, st, terminal) in all {
            assert_eq!(RemoteStatus::from_wire(wire), st);
            assert_eq!(st.as_str(), wire);
            assert_eq!(st.is_terminal(), terminal, "{wire}");
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{wire}\""));
        }
        let u = RemoteStatus::from_wire("SUMMARIZE_PAUSED");
        assert_eq!(u, RemoteStatus::Unknown("SUMMARIZE_PAUSED".into()));
        assert_eq!(u.as_str(), "SUMMARIZE_PAUSED");
        assert!(!u.is_terminal());
    }

    #[test]
    fn error_code_string_or_number_and_both_wrappers() {
        let gw = ErrorBody::parse(
            br#"{"error":{"errorCode":200,"message":"Authentication Failed","details":"bad sig"}}"#,
        )
        .unwrap();
        assert!(gw.gateway);
        assert_eq!(gw.code.as_deref(), Some("200"));
        assert_eq!(gw.message.as_deref(), Some("Authentication Failed"));
        assert_eq!(gw.details.as_deref(), Some("bad sig"));

        let gw = ErrorBody::parse(br#"{"error":{"errorCode":"410","message":"Throttle Limited"}}"#)
            .unwrap();
        assert_eq!(gw.code.as_deref(), Some("410"));

        let top =
            ErrorBody::parse(br#"{"code":"10001","message":"Invalid Request.","x":1}"#).unwrap();
        assert!(!top.gateway);
        assert_eq!(top.code.as_deref(), Some("10001"));

        let num = ErrorBody::parse(br#"{"code":10100,"message":"not completed"}"#).unwrap();
        assert_eq!(num.code.as_deref(), Some("10100"));

        let wrapped =
            ErrorBody::parse(br#"{"responseError":{"code":"10014","message":"no asset"}}"#)
                .unwrap();
        assert!(!wrapped.gateway);
        assert_eq!(wrapped.code.as_deref(), Some("10014"));
        assert_eq!(wrapped.message.as_deref(), Some("no asset"));

        let alt =
            ErrorBody::parse(br#"{"responseError":{"errorCode":5,"errorMessage":"m"}}"#).unwrap();
        assert_eq!(alt.code.as_deref(), Some("5"));
        assert_eq!(alt.message.as_deref(), Some("m"));

        assert!(ErrorBody::parse(b"<html>bad gateway</html>").is_none());
        assert!(ErrorBody::parse(b"").is_none());
        assert_eq!(ErrorBody::parse(b"{}"), Some(ErrorBody::default()));
        // A `message` that is not a string does not lose the code.
        let odd = ErrorBody::parse(br#"{"code":"1","message":{"ko":"x"}}"#).unwrap();
        assert_eq!(odd.code.as_deref(), Some("1"));
        assert_eq!(odd.message.as_deref(), Some(r#"{"ko":"x"}"#));
    }

    #[test]
    fn accepted_id_string_number_or_absent() {
        let r = raw(r#"{"sceneSummaryId":101}"#);
        assert_eq!(
            decode_accepted(Some(&r), b"").scene_summary_id.as_deref(),
            Some("101")
        );
        let r = raw(r#"{"sceneSummaryId":"abc","other":true}"#);
        assert_eq!(
            decode_accepted(Some(&r), b"").scene_summary_id.as_deref(),
            Some("abc")
        );
        assert_eq!(decode_accepted(None, b"{}").scene_summary_id, None);
        assert_eq!(
            decode_accepted(None, br#"{"code":"0","sceneSummaryId":9}"#)
                .scene_summary_id
                .as_deref(),
            Some("9")
        );
        let r = raw("true");
        assert_eq!(decode_accepted(Some(&r), b"garbage").scene_summary_id, None);
    }

    /// The result decoded where it lies in the answer body is the same as decoded from a copy:
    /// the same `raw`, counts, stale scenes and errors.
    #[test]
    fn a_result_decoded_in_its_body_is_the_one_decoded_from_a_copy() {
        let results = [
            DOC_RESULT.to_string(),
            r#"{"sceneSummaryInfo":{"lastAnalyzedAt":"t"},"sceneSummaries":[{"scene":4,"sceneSummary":{"description":{"ko":"\u00e9"},"metadataChangedAfterSummary":true,"analyzedAt":7}},{"scene":5}]}"#.to_string(),
            r#"{"sceneSummaries":[{"scene":-1}]}"#.to_string(),
            r#"{"sceneSummaries":{}}"#.to_string(),
            r#"{"sceneSummaries":[{"scene":1,"sceneSummary":{"metadataChangedAfterSummary":"yes"}}]}"#.to_string(),
            r#"{"sceneSummaries":[{"scene":1,"sceneSummary":{"description":1e400}}]}"#.to_string(),
        ];
        for result in results {
            let body = format!("{{\"code\":\"0\",\"result\":{result} }}");
            let env: Envelope<'_> = serde_json::from_str(&body).unwrap();
            let inner = env.result.unwrap();
            let copied = decode_result(inner);
            let at = range_in(body.as_bytes(), inner.get()).unwrap();
            let moved = decode_result_in(body.clone().into_bytes(), at);
            match (copied, moved) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.raw.get(), b.raw.get());
                    assert_eq!(b.raw.get(), result);
                    assert_eq!(a.scene_count, b.scene_count);
                    assert_eq!(a.stale, b.stale);
                    assert_eq!(a.info, b.info);
                    assert_eq!(a.scenes().unwrap(), b.scenes().unwrap());
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{result}"),
                (a, b) => panic!("{result}: {a:?} vs {b:?}"),
            }
        }
        assert!(decode_result_in(b"{}".to_vec(), 1..5).is_err());
        assert!(range_in(b"abc", "xyz").is_none());
    }

    #[test]
    fn scenes_borrow_plain_texts_and_unescape_the_others() {
        let r = SummaryResult::from_result_json(
            r#"{"sceneSummaries":[{"scene":1,"sceneSummary":{"description":"plain","analyzedAt":"a\"b"}},{"scene":2,"sceneSummary":{"description":[1,true]}}]}"#.to_string(),
        )
        .unwrap();
        let scenes = r.scenes().unwrap();
        let first = scenes[0].summary.as_ref().unwrap();
        assert!(matches!(first.description, Cow::Borrowed("plain")));
        assert_eq!(first.analyzed_at.as_deref(), Some("a\"b"));
        assert_eq!(scenes[1].summary.as_ref().unwrap().description, "[1,true]");
    }

    #[test]
    fn generation_config_spelling() {
        assert_eq!(
            serde_json::to_string(&Generation::Index).unwrap(),
            "\"index\""
        );
        assert_eq!(
            serde_json::from_str::<Generation>("\"asset\"").unwrap(),
            Generation::Asset
        );
    }
}
