//! The calls the engine makes, as a trait: [`super::Client`] implements it over HTTP, and engine
//! tests implement it with a script, so the engine runs under paused time without sockets.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::{
    AssetPage, Client, ClientBuildError, Generation, IndexStatus, SummaryResult, SummaryStatus,
    Target, Verdict,
};
use crate::config::ApiConfig;

/// What the engine asks Media Intelligence. Every answer is already classified.
pub trait Api: Send + Sync {
    /// The summary status of `t`.
    fn status<'a>(
        &'a self,
        generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryStatus>>;

    /// The summary result of `t`.
    fn result<'a>(
        &'a self,
        generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryResult>>;

    /// The index (analysis) status of `t`'s asset: its latest index.
    fn index_status<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Verdict<IndexStatus>>;

    /// Page `page_num` of a project's assets.
    fn list_assets<'a>(
        &'a self,
        workspace: &'a str,
        project_id: &'a str,
        page_num: u64,
        page_size: u64,
    ) -> BoxFuture<'a, Verdict<AssetPage>>;
}

impl Api for Client {
    fn status<'a>(
        &'a self,
        generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryStatus>> {
        Box::pin(Client::status(self, generation, t))
    }

    fn result<'a>(
        &'a self,
        generation: Generation,
        t: &'a Target,
    ) -> BoxFuture<'a, Verdict<SummaryResult>> {
        Box::pin(Client::result(self, generation, t))
    }

    fn index_status<'a>(&'a self, t: &'a Target) -> BoxFuture<'a, Verdict<IndexStatus>> {
        Box::pin(Client::index_status(self, t))
    }

    fn list_assets<'a>(
        &'a self,
        workspace: &'a str,
        project_id: &'a str,
        page_num: u64,
        page_size: u64,
    ) -> BoxFuture<'a, Verdict<AssetPage>> {
        Box::pin(Client::list_assets(
            self, workspace, project_id, page_num, page_size,
        ))
    }
}

/// Builds the API a configuration names (a reload builds a new one, with new credentials).
pub type ApiFactory =
    Arc<dyn Fn(&ApiConfig) -> Result<Arc<dyn Api>, ClientBuildError> + Send + Sync>;

/// The real thing: an HTTP client per configuration.
pub fn http_api() -> ApiFactory {
    Arc::new(|c: &ApiConfig| Ok(Arc::new(Client::new(c.client_options())?) as Arc<dyn Api>))
}
