//! The simulated service's memory: every asset's status machine, evaluated lazily against the
//! tokio clock (no timers per asset, so 100,000 assets cost only their few fields each).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::clock::Clock;
use super::rng::{SplitMix64, hash_str, mix};
use super::scenario::{AnalysisStatus, AssetSpec, DurationRange, Outcome, Status, parse_index_id};

/// A full run done before the simulator started (for `rerun_scene_ids` and initial
/// SUMMARIZE_COMPLETED) is dated an hour before start (times are ms relative to start).
const EARLIER_RUN_MS: i64 = -3_600_000;

/// An index is dated (`createdTime` in the index list) two hours before it was added, so it
/// precedes any earlier run.
const CREATED_BEFORE_MS: i64 = -7_200_000;

/// One index of one asset.
#[derive(Debug)]
pub struct Asset {
    pub workspace: String,
    pub project_id: String,
    pub asset_id: String,
    pub index_id: u64,
    /// The current (latest) summary's id; the index-level routes accept only this one.
    pub summary_id: String,
    pub scenes: u32,
    /// Seeds this asset's texts and durations; derived from the scenario seed and the ids.
    pub seed: u64,
    queue: DurationRange,
    run: DurationRange,
    outcome: Outcome,
    status: Status,
    /// When a waiting job starts running, and when a running job ends.
    run_at: Option<Instant>,
    done_at: Option<Instant>,
    /// The running job's scenes; None for a full run.
    job_scenes: Option<Vec<u32>>,
    /// Times below are milliseconds relative to simulator start (see `Clock::rel_ms`).
    /// The last completed full run: all scenes analyzed then.
    full_run_at: Option<i64>,
    /// Scenes re-analyzed by later partial runs, with their time (sorted by scene).
    overrides: Vec<(u32, i64)>,
    last_analyzed_at: Option<i64>,
    analyzed_scene_ids: Option<Vec<u32>>,
    metadata_changed: Vec<u32>,
    /// Service answers given for this index (auth and fault refusals excluded).
    pub served: u64,
    /// Counts duration draws, so each request draws fresh but repeatable durations.
    draws: u64,
    /// The index (analysis) status, served while this is the asset's latest index.
    pub analysis: AnalysisStatus,
    /// `analyzeStatusMessage`; None: the status's default text.
    pub analysis_message: Option<String>,
    /// `fileName` in the listing (latest index's); None: `{asset_id}.mp4`.
    pub file_name: Option<String>,
    /// When the index was made (relative ms), for the index list's `createdTime`.
    pub created_at: i64,
}

/// What a completed result needs, copied out so the lock is released before rendering.
#[derive(Debug, Clone)]
pub struct ResultSnapshot {
    pub index_id: u64,
    pub scenes: u32,
    pub seed: u64,
    pub full_run_at: Option<i64>,
    pub overrides: Vec<(u32, i64)>,
    pub last_analyzed_at: i64,
    pub analyzed_scene_ids: Option<Vec<u32>>,
    pub metadata_changed: Vec<u32>,
    /// Adds to the relative times above to give wall-clock milliseconds.
    pub wall_base_ms: i64,
}

impl ResultSnapshot {
    /// Wall-clock Unix seconds of a relative time.
    pub fn wall_secs(&self, rel_ms: i64) -> i64 {
        self.wall_base_ms.saturating_add(rel_ms).div_euclid(1000)
    }

    /// When `scene` was last analyzed (relative ms), if ever.
    pub fn analyzed_at(&self, scene: u32) -> Option<i64> {
        match self.overrides.binary_search_by_key(&scene, |o| o.0) {
            Ok(i) => self.overrides.get(i).map(|o| o.1),
            Err(_) => self.full_run_at,
        }
    }
}

/// Why a service operation was refused; mapped to codes in `api.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    InProgress,
    PartialBeforeFull,
    NotCancelable,
    NotReady,
    NeverSummarized,
    BadSceneIds(String),
}

impl Asset {
    pub fn from_spec(spec: &AssetSpec, scenario_seed: u64, summary_id: String) -> Option<Self> {
        let index_id = parse_index_id(&spec.index_id).ok()?;
        let seed = mix(&[scenario_seed, hash_str(&spec.label())]);
        Some(Self {
            workspace: spec.workspace.clone(),
            project_id: spec.project_id.clone(),
            asset_id: spec.asset_id.clone(),
            index_id,
            summary_id,
            scenes: spec.scenes,
            seed,
            queue: spec.queue,
            run: spec.run,
            outcome: spec.outcome,
            status: Status::BeforeSummarize,
            run_at: None,
            done_at: None,
            job_scenes: None,
            full_run_at: None,
            overrides: Vec::new(),
            last_analyzed_at: None,
            analyzed_scene_ids: None,
            metadata_changed: sorted(spec.metadata_changed_scenes.clone()),
            served: 0,
            draws: 0,
            analysis: spec.analysis,
            analysis_message: None,
            file_name: spec.file_name.clone(),
            created_at: 0,
        })
    }

    /// Puts the asset in its scenario `initial` state, with durations counted from `start`.
    pub fn init(&mut self, spec: &AssetSpec, start: Instant, clock: &Clock) {
        let earlier = clock.rel_ms(start) + EARLIER_RUN_MS;
        self.created_at = clock.rel_ms(start) + CREATED_BEFORE_MS;
        if let Some(ids) = &spec.rerun_scene_ids {
            self.full_run_at = Some(earlier);
            self.last_analyzed_at = Some(earlier);
            self.job_scenes = Some(sorted(ids.clone()));
        }
        match spec.initial {
            Status::BeforeSummarize => {}
            Status::WaitSummarize => {
                let scenes = self.job_scenes.take();
                self.start_job(start, scenes);
            }
            Status::Summarizing => {
                let scenes = self.job_scenes.take();
                self.start_job(start, scenes);
                self.advance(start, clock);
            }
            Status::SummarizeCompleted => {
                self.full_run_at = Some(earlier);
                self.last_analyzed_at = Some(earlier);
                self.status = Status::SummarizeCompleted;
            }
            s @ (Status::SummarizeFail | Status::SummarizeCanceled) => self.status = s,
        }
    }

    /// Applies every transition whose time has come, each at its own instant (so
    /// `lastAnalyzedAt` is the completion time, not the time somebody looked).
    pub fn settle(&mut self, now: Instant, clock: &Clock) {
        if self.status == Status::WaitSummarize
            && let Some(at) = self.run_at
            && at <= now
        {
            self.status = Status::Summarizing;
            self.run_at = None;
        }
        if self.status == Status::Summarizing
            && let Some(at) = self.done_at
            && at <= now
        {
            self.finish(at, clock);
        }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    fn draw(&mut self, range: DurationRange) -> Duration {
        self.draws += 1;
        range.draw(&mut SplitMix64::new(mix(&[self.seed, self.draws])))
    }

    /// Queues a job now: WAIT for `queue`, then SUMMARIZING for `run`.
    fn start_job(&mut self, now: Instant, scenes: Option<Vec<u32>>) {
        let queue = self.draw(self.queue);
        let run = self.draw(self.run);
        self.status = Status::WaitSummarize;
        self.run_at = Some(now + queue);
        self.done_at = Some(now + queue + run);
        self.job_scenes = scenes;
    }

    /// Ends the running job at `at` with the asset's outcome.
    fn finish(&mut self, at: Instant, clock: &Clock) {
        self.run_at = None;
        self.done_at = None;
        let scenes = self.job_scenes.take();
        if self.outcome == Outcome::Failed {
            self.status = Status::SummarizeFail;
            return;
        }
        self.complete(clock.rel_ms(at), scenes, clock);
    }

    fn complete(&mut self, at: i64, scenes: Option<Vec<u32>>, clock: &Clock) {
        // A new version must show a new lastAnalyzedAt (second precision; the client keys
        // versions on it), even when tests complete two runs within one second.
        let wall = match self.last_analyzed_at {
            Some(prev) if clock.wall_secs_of(at) <= clock.wall_secs_of(prev) => {
                (clock.wall_secs_of(prev) + 1) * 1000 - clock.start_wall_ms()
            }
            _ => at,
        };
        match scenes {
            None => {
                self.full_run_at = Some(wall);
                self.overrides.clear();
                self.analyzed_scene_ids = None;
                self.metadata_changed.clear();
            }
            Some(ids) => {
                for &s in &ids {
                    match self.overrides.binary_search_by_key(&s, |o| o.0) {
                        Ok(i) => {
                            if let Some(o) = self.overrides.get_mut(i) {
                                o.1 = wall;
                            }
                        }
                        Err(i) => self.overrides.insert(i, (s, wall)),
                    }
                }
                self.metadata_changed.retain(|m| !ids.contains(m));
                self.analyzed_scene_ids = Some(ids);
            }
        }
        self.last_analyzed_at = Some(wall);
        self.status = Status::SummarizeCompleted;
    }

    /// The request operation. Returns the new summary id's owner-visible value.
    pub fn request(
        &mut self,
        now: Instant,
        scene_ids: Option<Vec<u32>>,
        new_summary_id: String,
    ) -> Result<String, Refusal> {
        if self.status.in_progress() {
            return Err(Refusal::InProgress);
        }
        let scenes = match scene_ids {
            None => None,
            Some(ids) => {
                if self.full_run_at.is_none() {
                    return Err(Refusal::PartialBeforeFull);
                }
                if ids.is_empty() {
                    return Err(Refusal::BadSceneIds("sceneIds is empty".into()));
                }
                if let Some(bad) = ids.iter().find(|&&s| s == 0 || s > self.scenes) {
                    return Err(Refusal::BadSceneIds(format!(
                        "scene {bad} does not exist (1..={})",
                        self.scenes
                    )));
                }
                Some(sorted(ids))
            }
        };
        self.summary_id = new_summary_id;
        self.start_job(now, scenes);
        Ok(self.summary_id.clone())
    }

    pub fn cancel(&mut self) -> Result<(), Refusal> {
        if !self.status.in_progress() {
            return Err(Refusal::NotCancelable);
        }
        self.status = Status::SummarizeCanceled;
        self.run_at = None;
        self.done_at = None;
        self.job_scenes = None;
        Ok(())
    }

    /// The result, only in SUMMARIZE_COMPLETED.
    pub fn result(&self, clock: &Clock) -> Result<ResultSnapshot, Refusal> {
        match (self.status, self.last_analyzed_at) {
            (Status::SummarizeCompleted, Some(last)) => Ok(ResultSnapshot {
                index_id: self.index_id,
                scenes: self.scenes,
                seed: self.seed,
                full_run_at: self.full_run_at,
                overrides: self.overrides.clone(),
                last_analyzed_at: last,
                analyzed_scene_ids: self.analyzed_scene_ids.clone(),
                metadata_changed: self.metadata_changed.clone(),
                wall_base_ms: clock.start_wall_ms(),
            }),
            (Status::BeforeSummarize, _) => Err(Refusal::NeverSummarized),
            _ => Err(Refusal::NotReady),
        }
    }

    /// Control route: the next status, now. BEFORE starts a full run; terminal states stay.
    pub fn advance(&mut self, now: Instant, clock: &Clock) -> bool {
        match self.status {
            Status::BeforeSummarize => {
                self.start_job(now, None);
                true
            }
            Status::WaitSummarize => {
                // Keep the drawn run length, counted from now.
                let run = match (self.run_at, self.done_at) {
                    (Some(r), Some(d)) => d.saturating_duration_since(r),
                    _ => self.draw(self.run),
                };
                self.status = Status::Summarizing;
                self.run_at = None;
                self.done_at = Some(now + run);
                true
            }
            Status::Summarizing => {
                self.finish(now, clock);
                true
            }
            _ => false,
        }
    }

    /// Control route: this status, now, whatever the current one.
    pub fn force(&mut self, status: Status, now: Instant, clock: &Clock) {
        match status {
            Status::BeforeSummarize => {
                self.status = status;
                self.run_at = None;
                self.done_at = None;
                self.job_scenes = None;
                self.full_run_at = None;
                self.overrides.clear();
                self.last_analyzed_at = None;
                self.analyzed_scene_ids = None;
            }
            Status::WaitSummarize => {
                let scenes = if self.status.in_progress() {
                    self.job_scenes.take()
                } else {
                    None
                };
                self.start_job(now, scenes);
            }
            Status::Summarizing => {
                if self.status != Status::WaitSummarize {
                    self.start_job(now, None);
                }
                self.advance(now, clock);
            }
            Status::SummarizeCompleted => {
                let scenes = if self.status.in_progress() {
                    self.job_scenes.take()
                } else {
                    None
                };
                self.run_at = None;
                self.done_at = None;
                self.complete(clock.rel_ms(now), scenes, clock);
            }
            Status::SummarizeFail | Status::SummarizeCanceled => {
                self.status = status;
                self.run_at = None;
                self.done_at = None;
                self.job_scenes = None;
            }
        }
    }

    pub fn set_metadata_changed(&mut self, scenes: &[u32]) -> Result<(), String> {
        if let Some(bad) = scenes.iter().find(|&&s| s == 0 || s > self.scenes) {
            return Err(format!("scene {bad} does not exist (1..={})", self.scenes));
        }
        for &s in scenes {
            if let Err(i) = self.metadata_changed.binary_search(&s) {
                self.metadata_changed.insert(i, s);
            }
        }
        Ok(())
    }

    /// `analyzeStatusMessage`.
    pub fn analysis_message(&self) -> &str {
        self.analysis_message
            .as_deref()
            .unwrap_or(self.analysis.default_message())
    }

    /// `fileName` in the asset listing.
    pub fn file_name(&self) -> String {
        self.file_name
            .clone()
            .unwrap_or_else(|| format!("{}.mp4", self.asset_id))
    }

    /// When the index last changed (relative ms), for the index list's `updatedTime`.
    pub fn updated_at(&self) -> i64 {
        self.last_analyzed_at.unwrap_or(self.created_at)
    }

    /// The control routes' view of this index; `latest`: whether it is its asset's latest.
    pub fn to_json(&self, clock: &Clock, latest: bool) -> serde_json::Value {
        serde_json::json!({
            "workspace": self.workspace,
            "project_id": self.project_id,
            "asset_id": self.asset_id,
            "index_id": self.index_id.to_string(),
            "scene_summary_id": self.summary_id,
            "status": self.status.as_str(),
            "scenes": self.scenes,
            "last_analyzed_at": self
                .last_analyzed_at
                .map(|t| super::clock::kst_string(clock.wall_secs_of(t))),
            "analyzed_scene_ids": self.analyzed_scene_ids.as_ref()
                .map(|v| v.iter().map(u32::to_string).collect::<Vec<_>>()),
            "metadata_changed_scenes": self.metadata_changed,
            "requests_served": self.served,
            "analysis": self.analysis.as_str(),
            "latest": latest,
        })
    }
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v.dedup();
    v
}

pub fn asset_key(workspace: &str, project_id: &str, asset_id: &str) -> String {
    format!("{workspace}/{project_id}/{asset_id}")
}

pub fn project_key(workspace: &str, project_id: &str) -> String {
    format!("{workspace}/{project_id}")
}

/// What a re-index may set (`POST /__sim/assets/{…}/reindex`); the rest comes from the asset's
/// current latest index.
#[derive(Debug, Default)]
pub struct Reindex {
    pub index_id: Option<String>,
    pub scene_summary_id: Option<String>,
    pub scenes: Option<u32>,
    pub initial: Option<Status>,
    pub analysis: Option<AnalysisStatus>,
}

/// Why a re-index was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReindexError {
    NoSuchAsset,
    Invalid(String),
    Exists(String),
}

/// Every index of every asset: `assets` holds the indexes (one entry per asset and index, the
/// name kept from when each asset had one), `by_asset` an asset's indexes (latest last), and
/// `projects` each project's distinct asset ids in the order they first appeared (the listing's
/// stable order).
#[derive(Debug, Default)]
pub struct Store {
    pub assets: Vec<Asset>,
    by_asset: HashMap<String, Vec<usize>>,
    projects: HashMap<String, Vec<String>>,
    next_summary_id: u64,
    /// One more than the largest index id seen, so allocated index ids are new everywhere.
    next_index_id: u64,
}

impl Store {
    pub fn new() -> Self {
        Self {
            assets: Vec::new(),
            by_asset: HashMap::new(),
            projects: HashMap::new(),
            // Allocated ids are numbers far from any hand-written demo id.
            next_summary_id: 9_000_001,
            next_index_id: 1,
        }
    }

    pub fn alloc_summary_id(&mut self) -> String {
        let id = self.next_summary_id;
        self.next_summary_id += 1;
        id.to_string()
    }

    /// Adds an asset in its initial state; Err when the same index exists already.
    pub fn add(
        &mut self,
        spec: &AssetSpec,
        seed: u64,
        start: Instant,
        clock: &Clock,
    ) -> Result<usize, String> {
        let index_id = parse_index_id(&spec.index_id)?;
        let key = asset_key(&spec.workspace, &spec.project_id, &spec.asset_id);
        if self.find_index(&key, index_id).is_some() {
            return Err(format!("{} exists already", spec.label()));
        }
        let summary_id = match &spec.scene_summary_id {
            Some(s) => s.clone(),
            None => self.alloc_summary_id(),
        };
        let mut asset = Asset::from_spec(spec, seed, summary_id)
            .ok_or_else(|| format!("{}: bad index_id", spec.label()))?;
        asset.init(spec, start, clock);
        let i = self.assets.len();
        self.assets.push(asset);
        let indexes = self.by_asset.entry(key).or_default();
        if indexes.is_empty() {
            self.projects
                .entry(project_key(&spec.workspace, &spec.project_id))
                .or_default()
                .push(spec.asset_id.clone());
        }
        indexes.push(i);
        self.next_index_id = self.next_index_id.max(index_id.saturating_add(1));
        Ok(i)
    }

    /// Adds a new latest index to an existing asset, like a re-analysis: its asset-level calls
    /// and index status now name the new index; the old one keeps answering index-level calls.
    pub fn reindex(
        &mut self,
        (ws, proj, asset): (&str, &str, &str),
        r: Reindex,
        seed: u64,
        now: Instant,
        clock: &Clock,
    ) -> Result<usize, ReindexError> {
        let prev = self
            .latest(ws, proj, asset)
            .and_then(|i| self.assets.get(i))
            .ok_or(ReindexError::NoSuchAsset)?;
        let index_id = match r.index_id {
            Some(id) => id,
            None if self.next_index_id == u64::MAX => {
                return Err(ReindexError::Invalid("no index id left to allocate".into()));
            }
            None => self.next_index_id.to_string(),
        };
        let spec = AssetSpec {
            workspace: prev.workspace.clone(),
            project_id: prev.project_id.clone(),
            asset_id: prev.asset_id.clone(),
            index_id,
            scene_summary_id: r.scene_summary_id,
            scenes: r.scenes.unwrap_or(prev.scenes),
            // A new index has no summary until one is requested.
            initial: r.initial.unwrap_or(Status::BeforeSummarize),
            queue: prev.queue,
            run: prev.run,
            outcome: prev.outcome,
            rerun_scene_ids: None,
            metadata_changed_scenes: Vec::new(),
            analysis: r.analysis.unwrap_or_default(),
            file_name: prev.file_name.clone(),
        };
        spec.validate().map_err(ReindexError::Invalid)?;
        self.add(&spec, seed, now, clock)
            .map_err(ReindexError::Exists)
    }

    /// Whether entry `i` is its asset's latest index.
    pub fn is_latest(&self, i: usize) -> bool {
        self.assets
            .get(i)
            .is_some_and(|a| self.latest(&a.workspace, &a.project_id, &a.asset_id) == Some(i))
    }

    /// Every index of an asset, oldest first.
    pub fn indexes_of(&self, ws: &str, proj: &str, asset: &str) -> &[usize] {
        self.by_asset
            .get(&asset_key(ws, proj, asset))
            .map_or(&[], Vec::as_slice)
    }

    /// A project's distinct asset ids in the order they first appeared; empty when unknown.
    pub fn project_assets(&self, ws: &str, proj: &str) -> &[String] {
        self.projects
            .get(&project_key(ws, proj))
            .map_or(&[], Vec::as_slice)
    }

    fn find_index(&self, key: &str, index_id: u64) -> Option<usize> {
        self.by_asset
            .get(key)?
            .iter()
            .copied()
            .find(|&i| self.assets.get(i).is_some_and(|a| a.index_id == index_id))
    }

    /// An index by its path segments; `index_id` must be the canonical decimal form.
    pub fn find(&self, ws: &str, proj: &str, asset: &str, index_id: &str) -> Option<usize> {
        let n = parse_index_id(index_id).ok()?;
        self.find_index(&asset_key(ws, proj, asset), n)
    }

    /// The asset's latest index (the asset-level API's view).
    pub fn latest(&self, ws: &str, proj: &str, asset: &str) -> Option<usize> {
        self.by_asset
            .get(&asset_key(ws, proj, asset))?
            .last()
            .copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Scenario;

    fn one(extra: &str) -> (Store, Clock, Instant) {
        let toml = format!(
            "[[credentials]]\naccess_key='a'\nsecret_key='b'\n[[asset]]\nworkspace='w'\n\
             project_id='1'\nasset_id='2'\nindex_id='3'\nscenes=10\nqueue='2s'\nrun='3s'\n{extra}"
        );
        let sc = Scenario::from_toml_str(&toml).unwrap();
        let clock = Clock::new();
        let start = clock.start();
        let mut store = Store::new();
        for a in sc.expanded_assets() {
            store.add(&a, sc.seed, start, &clock).unwrap();
        }
        (store, clock, start)
    }

    #[test]
    fn walks_wait_running_completed_lazily() {
        let (mut s, clock, t0) = one("");
        let a = &mut s.assets[0];
        a.settle(t0, &clock);
        assert_eq!(a.status(), Status::WaitSummarize);
        a.settle(t0 + Duration::from_secs(2), &clock);
        assert_eq!(a.status(), Status::Summarizing);
        assert_eq!(a.result(&clock).unwrap_err(), Refusal::NotReady);
        a.settle(t0 + Duration::from_secs(60), &clock);
        assert_eq!(a.status(), Status::SummarizeCompleted);
        // Completed at t0+5s, not at the time of the look.
        let r = a.result(&clock).unwrap();
        assert_eq!(r.last_analyzed_at, 5_000);
        assert_eq!(a.cancel(), Err(Refusal::NotCancelable));
    }

    #[test]
    fn partial_rerun_keeps_other_scenes() {
        let (mut s, clock, t0) = one("rerun_scene_ids=[5,2]");
        let a = &mut s.assets[0];
        let before = a.last_analyzed_at.unwrap();
        a.settle(t0 + Duration::from_secs(10), &clock);
        let r = a.result(&clock).unwrap();
        assert_eq!(r.analyzed_scene_ids, Some(vec![2, 5]));
        assert!(r.last_analyzed_at > before);
        assert_eq!(r.analyzed_at(2), Some(r.last_analyzed_at));
        assert_eq!(r.analyzed_at(3), Some(before));
    }

    #[test]
    fn refusals() {
        let (mut s, clock, t0) = one("initial='BEFORE_SUMMARIZE'");
        let a = &mut s.assets[0];
        assert_eq!(a.result(&clock).unwrap_err(), Refusal::NeverSummarized);
        assert_eq!(
            a.request(t0, Some(vec![1]), "x".into()),
            Err(Refusal::PartialBeforeFull)
        );
        a.request(t0, None, "x".into()).unwrap();
        assert_eq!(a.request(t0, None, "y".into()), Err(Refusal::InProgress));
        a.force(Status::SummarizeCompleted, t0, &clock);
        assert!(matches!(
            a.request(t0, Some(vec![11]), "z".into()),
            Err(Refusal::BadSceneIds(_))
        ));
        assert_eq!(a.request(t0, Some(vec![1]), "z".into()), Ok("z".into()));
        a.cancel().unwrap();
        assert_eq!(a.status(), Status::SummarizeCanceled);
    }
}
