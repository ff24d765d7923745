//! Everything that speaks NAVER Cloud Media Intelligence: signing, the client and its wire models.
//!
//! Callers use the re-exports here (`crate::ncp::{Client, Verdict, …}`), not the submodules.

pub mod api;
pub(crate) mod classify;
pub mod client;
pub mod error;
pub mod model;
pub mod signing;

pub use api::{Api, ApiFactory, http_api};
pub use client::{
    Client, ClientBuildError, ClientOptions, DEFAULT_MAX_BODY_BYTES, DEFAULT_PENDING_CODES,
    DEFAULT_TIMEOUT, DEFAULT_USER_AGENT, HEADER_APIGW_ORIGIN, HEADER_TRACE_ID,
};
pub use error::{ApiError, ErrorOrigin, Operation, Verdict};
pub use model::{
    AnalysisStatus, AssetPage, Generation, IndexStatus, RemoteStatus, RequestAccepted, Scene,
    SceneSummary, SceneSummaryInfo, SummaryResult, SummaryStatus, Target,
};
pub use signing::{Credentials, SignedHeaders, sign};
