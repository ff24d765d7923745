//! Finding the watches of `[[watch]]` tables that name no index: one asset's latest index, or
//! every asset of a project. A project is listed (`GET …/projects/{p}/assets`, pages of 1,000)
//! at start and every `poll.discovery_interval`; each asset not known yet gets its latest index
//! read (`GET …/assets/{a}/index/status`) and becomes a watch of its own, with its real ids.
//! An asset gone from a complete listing is removed (kept in the ledger, not polled).
//!
//! Pure bookkeeping: this module says which call is due and takes in what the calls answered;
//! the engine makes the calls (inside the request budget) and keeps the watches.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use crate::config::{Selector, SelectorKind};
use crate::domain::validate_id;
use crate::ncp::{AnalysisStatus, AssetPage, IndexStatus};
use crate::policy::backoff;

/// Assets per page asked for (the documented maximum).
pub const PAGE_SIZE: u64 = 1000;
/// Pages read per listing at most, whatever the answers claim: a listing that pages forever
/// stops here.
const MAX_PAGES: u64 = 10_000;
/// Pages in a row that bring no asset not seen in this listing: the list repeats itself.
const STALE_PAGES: u32 = 3;

/// An asset, by its three ids.
pub type AssetRef = (String, String, String);

/// One call discovery wants made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A page of a project's assets.
    List {
        /// The selector (index into the configured selectors).
        selector: usize,
        /// `pageNum`.
        page: u64,
    },
    /// The index status of an asset.
    Resolve {
        /// The selector that wants it.
        selector: usize,
        /// The asset.
        asset: AssetRef,
    },
}

/// What discovery found that the engine acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The asset's latest index: a watch of (asset, index) with the selector's settings.
    Index {
        selector: usize,
        asset: AssetRef,
        index_id: String,
    },
    /// A complete listing no longer has these assets: their watches are removed.
    Gone {
        selector: usize,
        assets: Vec<AssetRef>,
    },
}

#[derive(Debug, Clone)]
struct Listing {
    /// The page to ask for next.
    next_page: u64,
    pages: u64,
    stale: u32,
    seen: HashSet<String>,
    /// Bounds from the answers, if any.
    total_page: Option<u64>,
    unsafe_ids: usize,
    malformed: usize,
}

#[derive(Debug, Clone)]
struct ProjectState {
    selector: usize,
    due_ms: u64,
    listing: Option<Listing>,
    /// A listing is in flight.
    busy: bool,
    /// The first complete (or given-up) listing is done.
    first_done: bool,
    /// Listing errors in a row (for the retry backoff).
    errors: u32,
}

#[derive(Debug, Clone)]
struct Pending {
    selector: usize,
    due_ms: u64,
    tries: u32,
    busy: bool,
    /// When it was first wanted, for `once`'s give-up.
    since_ms: u64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Discovery {
    selectors: Vec<Selector>,
    projects: Vec<ProjectState>,
    /// Assets whose latest index is to be read.
    pending: BTreeMap<AssetRef, Pending>,
    /// Assets with a watch (of their latest known index), by asset.
    known: HashMap<AssetRef, usize>,
    /// Assets covered by an asset selector: a project listing leaves them to it.
    asset_selected: HashSet<AssetRef>,
    /// Once: assets given up on, with why.
    given_up: Vec<String>,
    /// How long to wait between listings, and the base of retries.
    interval: Duration,
    retry_initial: Duration,
}

/// What a listing page or an index status answered.
pub enum Answer<'a> {
    Page(&'a AssetPage),
    Index(&'a IndexStatus),
    /// The call failed (transient, or refused); it is tried again later.
    Failed,
    /// The call failed for good (an unknown asset or project).
    Permanent(&'a str),
}

impl Discovery {
    /// Discovery for `selectors`; `interval` is `poll.discovery_interval`, retries start at
    /// `retry_initial` (`poll.initial_interval`).
    pub fn new(
        selectors: Vec<Selector>,
        interval: Duration,
        retry_initial: Duration,
        now_ms: u64,
    ) -> Self {
        let mut d = Discovery {
            interval,
            retry_initial,
            ..Discovery::default()
        };
        d.set_selectors(selectors, now_ms);
        d
    }

    /// The configured selectors.
    pub fn selectors(&self) -> &[Selector] {
        &self.selectors
    }

    /// Replaces the selectors (start, reload): new projects are listed now, new assets read;
    /// kept ones keep their timers. Returns the origins of the selectors that went away.
    pub fn set_selectors(&mut self, selectors: Vec<Selector>, now_ms: u64) -> Vec<String> {
        let old: HashMap<String, usize> = self
            .selectors
            .iter()
            .enumerate()
            .map(|(i, s)| (s.origin(), i))
            .collect();
        let new_origins: HashSet<String> = selectors.iter().map(Selector::origin).collect();
        let gone: Vec<String> = old
            .keys()
            .filter(|o| !new_origins.contains(*o))
            .cloned()
            .collect();
        let mut projects = Vec::new();
        self.asset_selected.clear();
        for (i, s) in selectors.iter().enumerate() {
            match &s.kind {
                SelectorKind::Project { .. } => {
                    let kept = old
                        .get(&s.origin())
                        .and_then(|&o| self.projects.iter().find(|p| p.selector == o));
                    projects.push(match kept {
                        Some(p) => ProjectState {
                            selector: i,
                            ..p.clone()
                        },
                        None => ProjectState {
                            selector: i,
                            due_ms: now_ms,
                            listing: None,
                            busy: false,
                            first_done: false,
                            errors: 0,
                        },
                    });
                }
                SelectorKind::Asset {
                    workspace,
                    project_id,
                    asset_id,
                } => {
                    self.asset_selected.insert((
                        workspace.clone(),
                        project_id.clone(),
                        asset_id.clone(),
                    ));
                }
            }
        }
        // Renumber what stays; drop what belongs to selectors that went away.
        let renumber: HashMap<usize, usize> = old
            .iter()
            .filter_map(|(o, &i)| {
                selectors
                    .iter()
                    .position(|s| &s.origin() == o)
                    .map(|j| (i, j))
            })
            .collect();
        self.pending.retain(|_, p| match renumber.get(&p.selector) {
            Some(&j) => {
                p.selector = j;
                true
            }
            None => false,
        });
        self.known.retain(|_, s| match renumber.get(s) {
            Some(&j) => {
                *s = j;
                true
            }
            None => false,
        });
        self.projects = projects;
        self.selectors = selectors;
        // Asset selectors whose asset has no watch yet: read its latest index now.
        for (i, s) in self.selectors.iter().enumerate() {
            if let SelectorKind::Asset {
                workspace,
                project_id,
                asset_id,
            } = &s.kind
            {
                let a = (workspace.clone(), project_id.clone(), asset_id.clone());
                if !self.known.contains_key(&a) {
                    self.pending.entry(a).or_insert(Pending {
                        selector: i,
                        due_ms: now_ms,
                        tries: 0,
                        busy: false,
                        since_ms: now_ms,
                    });
                }
            }
        }
        gone
    }

    /// The asset has a watch already (loaded from the ledger, or just found), for `origin`.
    pub fn known(&mut self, asset: AssetRef, origin: &str) {
        if let Some(i) = self.selectors.iter().position(|s| s.origin() == origin) {
            self.pending.remove(&asset);
            self.known.insert(asset, i);
        }
    }

    /// The asset's watch ended superseded and goes on as a watch of another index, or its watch
    /// was removed: either way it is not pending.
    pub fn forget(&mut self, asset: &AssetRef) {
        self.known.remove(asset);
        self.pending.remove(asset);
    }

    /// The next call due at `now_ms`, marked in flight, if any.
    pub fn next_call(&mut self, now_ms: u64) -> Option<Call> {
        for p in &mut self.projects {
            if !p.busy && p.due_ms <= now_ms {
                p.busy = true;
                let page = p.listing.get_or_insert_with(|| Listing {
                    next_page: 0,
                    pages: 0,
                    stale: 0,
                    seen: HashSet::new(),
                    total_page: None,
                    unsafe_ids: 0,
                    malformed: 0,
                });
                return Some(Call::List {
                    selector: p.selector,
                    page: page.next_page,
                });
            }
        }
        for (asset, p) in &mut self.pending {
            if !p.busy && p.due_ms <= now_ms {
                p.busy = true;
                return Some(Call::Resolve {
                    selector: p.selector,
                    asset: asset.clone(),
                });
            }
        }
        None
    }

    /// When the next call is due, if any is waiting (none in flight counts).
    pub fn next_due(&self) -> Option<u64> {
        let projects = self.projects.iter().filter(|p| !p.busy).map(|p| p.due_ms);
        let pending = self.pending.values().filter(|p| !p.busy).map(|p| p.due_ms);
        projects.chain(pending).min()
    }

    /// `once`: every first listing is done and no asset is left to read.
    pub fn settled(&self) -> bool {
        self.projects.iter().all(|p| p.first_done) && self.pending.is_empty()
    }

    /// `once`: gives up on assets that have had no index for `max_wait` (their analysis never
    /// completed); returns what was given up on, for the report.
    pub fn give_up_older_than(&mut self, now_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        let selectors = &self.selectors;
        self.pending.retain(|(w, p, a), pend| {
            let max_wait = selectors
                .get(pend.selector)
                .map_or(Duration::ZERO, |s| s.max_wait);
            let keep = pend.busy || now_ms.saturating_sub(pend.since_ms) < ms(max_wait);
            if !keep {
                out.push(format!(
                    "asset {w}/{p}/{a}: no index to watch after {} (its analysis has not completed)",
                    humantime::format_duration(max_wait)
                ));
            }
            keep
        });
        self.given_up.extend(out.clone());
        out
    }

    /// What `once` gave up on.
    pub fn given_up(&self) -> &[String] {
        &self.given_up
    }

    /// Takes in a call's answer; returns what it found.
    pub fn answered(&mut self, call: &Call, answer: Answer<'_>, now_ms: u64) -> Vec<Found> {
        match call {
            Call::List { selector, page } => self.listed(*selector, *page, answer, now_ms),
            Call::Resolve { selector, asset } => self.resolved(*selector, asset, answer, now_ms),
        }
    }

    fn retry_delay(&self, errors: u32) -> u64 {
        ms(backoff(
            self.retry_initial,
            self.interval.max(self.retry_initial),
            errors.saturating_sub(1),
            u64::from(errors),
        ))
    }

    fn listed(
        &mut self,
        selector: usize,
        page: u64,
        answer: Answer<'_>,
        now_ms: u64,
    ) -> Vec<Found> {
        let retry_after = |d: &Discovery, errors| now_ms.saturating_add(d.retry_delay(errors));
        let Some(pi) = self.projects.iter().position(|p| p.selector == selector) else {
            return Vec::new();
        };
        let Some(sel) = self.selectors.get(selector).cloned() else {
            return Vec::new();
        };
        let (workspace, project_id) = sel.project();
        let (workspace, project_id) = (workspace.to_string(), project_id.to_string());
        let page_result = match answer {
            Answer::Page(p) => p,
            Answer::Failed => {
                let p = &mut self.projects[pi];
                p.busy = false;
                p.errors += 1;
                let errors = p.errors;
                self.projects[pi].due_ms = retry_after(self, errors);
                return Vec::new();
            }
            Answer::Permanent(why) => {
                tracing::warn!(project = %format!("{workspace}/{project_id}"), error = why, "Listing the project's assets failed for good; tried again at the next discovery interval.");
                self.finish_listing(pi, now_ms);
                return Vec::new();
            }
            Answer::Index(_) => return Vec::new(),
        };
        let p = &mut self.projects[pi];
        p.busy = false;
        p.errors = 0;
        let Some(l) = p.listing.as_mut() else {
            return Vec::new();
        };
        l.pages += 1;
        l.malformed += page_result.malformed;
        if let Some(tp) = page_result.total_page {
            l.total_page = Some(tp);
        }
        let mut fresh = 0;
        let mut new_assets = Vec::new();
        for id in &page_result.asset_ids {
            if validate_id(id).is_err() {
                l.unsafe_ids += 1;
                continue;
            }
            if l.seen.insert(id.clone()) {
                fresh += 1;
                new_assets.push(id.clone());
            }
        }
        l.stale = if fresh == 0 { l.stale + 1 } else { 0 };
        // The answer says which page it was (the base, 0 or 1, is undocumented): go on from
        // there, not from what was asked.
        let this_page = page_result.page_no.unwrap_or(page);
        l.next_page = this_page.saturating_add(1);
        let empty = page_result.asset_ids.is_empty() && page_result.malformed == 0;
        // With base 1 the last page is `totalPage`; with base 0 it is one before, and the page
        // after it comes back empty.
        let past_total = l.total_page.is_some_and(|tp| l.next_page > tp);
        let complete = empty || past_total;
        let cut_off = l.stale >= STALE_PAGES || l.pages >= MAX_PAGES;
        let (pages, unsafe_ids, malformed, seen_total) =
            (l.pages, l.unsafe_ids, l.malformed, l.seen.len());
        for id in new_assets {
            let a = (workspace.clone(), project_id.clone(), id);
            if self.asset_selected.contains(&a) || self.known.contains_key(&a) {
                continue;
            }
            self.pending.entry(a).or_insert(Pending {
                selector,
                due_ms: now_ms,
                tries: 0,
                busy: false,
                since_ms: now_ms,
            });
        }
        if !(complete || cut_off) {
            self.projects[pi].due_ms = now_ms; // the next page at once, inside the budget
            return Vec::new();
        }
        if unsafe_ids > 0 || malformed > 0 {
            tracing::warn!(
                project = %format!("{workspace}/{project_id}"),
                unsafe_ids,
                malformed,
                "The project's asset list holds entries that are not usable asset ids (not letters, digits, '-', '_', '.'; or no assetId); they are skipped."
            );
        }
        if cut_off && !complete {
            tracing::warn!(
                project = %format!("{workspace}/{project_id}"),
                pages,
                assets = seen_total,
                "The project's asset list does not end (pages repeat, or more than {MAX_PAGES} pages); listing stopped, and no asset is removed on this listing."
            );
        }
        let mut found = Vec::new();
        if complete {
            let listed: HashSet<String> = self.projects[pi]
                .listing
                .as_ref()
                .map(|l| l.seen.clone())
                .unwrap_or_default();
            let gone: Vec<AssetRef> = self
                .known
                .iter()
                .filter(|((w, p, a), s)| {
                    **s == selector && *w == workspace && *p == project_id && !listed.contains(a)
                })
                .map(|(a, _)| a.clone())
                .collect();
            for a in &gone {
                self.known.remove(a);
            }
            self.pending.retain(|(w, p, a), pend| {
                pend.selector != selector
                    || *w != workspace
                    || *p != project_id
                    || listed.contains(a)
            });
            if !gone.is_empty() {
                found.push(Found::Gone {
                    selector,
                    assets: gone,
                });
            }
        }
        self.finish_listing(pi, now_ms);
        found
    }

    fn finish_listing(&mut self, pi: usize, now_ms: u64) {
        let interval = ms(self.interval);
        let p = &mut self.projects[pi];
        p.busy = false;
        p.listing = None;
        p.first_done = true;
        p.due_ms = now_ms.saturating_add(interval);
    }

    fn resolved(
        &mut self,
        selector: usize,
        asset: &AssetRef,
        answer: Answer<'_>,
        now_ms: u64,
    ) -> Vec<Found> {
        let interval = ms(self.interval);
        let Some(p) = self.pending.get_mut(asset) else {
            return Vec::new();
        };
        p.busy = false;
        let (w, pr, a) = asset;
        match answer {
            Answer::Index(st) => match (&st.status, &st.index_id) {
                (AnalysisStatus::Completed, Some(i)) if validate_id(i).is_ok() => {
                    let index_id = i.clone();
                    self.pending.remove(asset);
                    self.known.insert(asset.clone(), selector);
                    vec![Found::Index {
                        selector,
                        asset: asset.clone(),
                        index_id,
                    }]
                }
                (AnalysisStatus::Completed, Some(i)) => {
                    tracing::warn!(asset = %format!("{w}/{pr}/{a}"), index_id = %i.escape_debug(), "The asset's index status names an index id that is not a usable id; the asset is looked at again later.");
                    p.due_ms = now_ms.saturating_add(interval);
                    Vec::new()
                }
                (status, _) => {
                    // Not analysed (yet): look again, sooner at first.
                    p.tries += 1;
                    let tries = p.tries;
                    if tries == 1 {
                        tracing::info!(asset = %format!("{w}/{pr}/{a}"), analysis = status.as_str(), "The asset has no index to watch yet (its analysis has not completed); looking again later.");
                    }
                    let delay = self.retry_delay(tries);
                    if let Some(p) = self.pending.get_mut(asset) {
                        p.due_ms = now_ms.saturating_add(delay);
                    }
                    Vec::new()
                }
            },
            Answer::Failed => {
                p.tries += 1;
                let tries = p.tries;
                let delay = self.retry_delay(tries);
                if let Some(p) = self.pending.get_mut(asset) {
                    p.due_ms = now_ms.saturating_add(delay);
                }
                Vec::new()
            }
            Answer::Permanent(why) => {
                tracing::warn!(asset = %format!("{w}/{pr}/{a}"), error = why, "Reading the asset's index status failed for good; the asset is looked at again after the discovery interval.");
                p.due_ms = now_ms.saturating_add(interval);
                p.tries += 1;
                Vec::new()
            }
            Answer::Page(_) => Vec::new(),
        }
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Selector {
        Selector {
            kind: SelectorKind::Project {
                workspace: "w".into(),
                project_id: "p".into(),
            },
            generation: crate::config::GenerationChoice::Auto,
            max_wait: Duration::from_secs(60),
            declared_at: "watch[0]".into(),
        }
    }

    fn page(ids: &[&str], page_no: Option<u64>, total_page: Option<u64>) -> AssetPage {
        AssetPage {
            asset_ids: ids.iter().map(|s| s.to_string()).collect(),
            malformed: 0,
            total_count: None,
            total_page,
            page_no,
        }
    }

    fn d() -> Discovery {
        Discovery::new(
            vec![project()],
            Duration::from_secs(300),
            Duration::from_secs(1),
            0,
        )
    }

    fn list(d: &mut Discovery, now: u64, p: AssetPage) -> (Call, Vec<Found>) {
        let call = d.next_call(now).expect("a listing is due");
        assert!(matches!(call, Call::List { .. }), "{call:?}");
        let found = d.answered(&call, Answer::Page(&p), now);
        (call, found)
    }

    #[test]
    fn pages_follow_the_answer_until_the_end_and_each_asset_is_read() {
        let mut d = d();
        // Base 1: asking for 0 gets page 1.
        let (c, _) = list(&mut d, 0, page(&["1", "2"], Some(1), Some(2)));
        assert_eq!(
            c,
            Call::List {
                selector: 0,
                page: 0
            }
        );
        let (c, _) = list(&mut d, 0, page(&["3"], Some(2), Some(2)));
        assert_eq!(
            c,
            Call::List {
                selector: 0,
                page: 2
            }
        );
        assert!(!d.settled(), "the assets are still to be read");
        let mut resolved = Vec::new();
        while let Some(c @ Call::Resolve { .. }) = d.next_call(0) {
            let Call::Resolve { asset, .. } = &c else {
                unreachable!()
            };
            let st = IndexStatus {
                status: AnalysisStatus::Completed,
                index_id: Some(format!("9{}", asset.2)),
                message: None,
            };
            resolved.extend(d.answered(&c, Answer::Index(&st), 0));
        }
        assert_eq!(resolved.len(), 3, "{resolved:?}");
        assert!(d.settled());
        assert_eq!(
            d.next_due(),
            Some(300_000),
            "listed again after the interval"
        );
    }

    #[test]
    fn an_asset_gone_from_a_complete_listing_is_removed() {
        let mut d = d();
        d.known(("w".into(), "p".into(), "1".into()), "project:w/p");
        d.known(("w".into(), "p".into(), "2".into()), "project:w/p");
        let (_, found) = list(&mut d, 0, page(&["1"], None, None));
        assert!(found.is_empty(), "not complete yet");
        let (_, found) = list(&mut d, 0, page(&[], None, None));
        assert_eq!(
            found,
            vec![Found::Gone {
                selector: 0,
                assets: vec![("w".into(), "p".into(), "2".into())]
            }]
        );
    }

    #[test]
    fn a_list_that_never_ends_stops_and_removes_nothing() {
        let mut d = d();
        d.known(("w".into(), "p".into(), "old".into()), "project:w/p");
        let mut rounds = 0;
        while let Some(c @ Call::List { .. }) = d.next_call(0) {
            rounds += 1;
            assert!(rounds < 20, "stops");
            // Same content every time, and a total that keeps growing.
            let found = d.answered(&c, Answer::Page(&page(&["a"], None, Some(rounds + 5))), 0);
            assert!(found.is_empty());
        }
        assert_eq!(rounds, 1 + STALE_PAGES as u64);
        assert!(
            d.known
                .contains_key(&("w".into(), "p".into(), "old".into()))
        );
    }

    #[test]
    fn unsafe_ids_are_skipped() {
        let mut d = d();
        list(&mut d, 0, page(&["../x", "a b", "ok"], None, Some(1)));
        let pending: Vec<_> = d.pending.keys().map(|k| k.2.clone()).collect();
        assert_eq!(pending, ["ok"]);
    }

    #[test]
    fn assets_without_an_index_are_asked_again_and_once_gives_up() {
        let sel = Selector {
            kind: SelectorKind::Asset {
                workspace: "w".into(),
                project_id: "p".into(),
                asset_id: "a".into(),
            },
            ..project()
        };
        let mut d = Discovery::new(
            vec![sel],
            Duration::from_secs(300),
            Duration::from_secs(1),
            0,
        );
        let c = d.next_call(0).unwrap();
        let st = IndexStatus {
            status: AnalysisStatus::Analyzing,
            index_id: None,
            message: None,
        };
        assert!(d.answered(&c, Answer::Index(&st), 0).is_empty());
        let due = d.next_due().unwrap();
        assert!((1..=2_000).contains(&due), "{due}");
        assert!(d.give_up_older_than(59_000).is_empty());
        assert_eq!(d.give_up_older_than(60_000).len(), 1);
        assert!(d.settled());
    }
}
