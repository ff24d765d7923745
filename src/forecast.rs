//! Completion times learned from history, for the adaptive poll policy (`poll.policy =
//! "adaptive"`, DESIGN.md "Polling policy").
//!
//! For each workspace and project, two compact distributions: how long jobs stayed in
//! `WAIT_SUMMARIZE` (the queue) and how long in `SUMMARIZING` (the run), as the daemon observed
//! them (from the poll that first saw a status to the poll that first saw the next one). Each is
//! a [`Sketch`]: a histogram over log-spaced buckets, eight to an octave (each bucket about 9 %
//! wide) from 1 s to 2^22 s (48 days), 176 counters, halved when they hold [`DECAY_AT`] samples
//! so that recent jobs weigh more and no counter grows without bound. No per-job storage: the
//! whole [`History`] is at most [`MAX_GROUPS`] groups of two sketches (about 1.4 KiB each), kept
//! in the ledger as one fact ([`HISTORY_FACT`]) and saved once a minute.
//!
//! A waiting job's next poll comes from the conditional distribution of its remaining time
//! ([`History::forecast`]): summarizing, the run's distribution given the time already spent
//! in it; queued, the remaining queue time plus a run (the two distributions convolved). The
//! next poll is the later of two times: when the chance that the job has completed reaches
//! [`UNLIKELY`], and [`DELAY_SHARE`] of the job's age from now. So polls are sparse while
//! completion is unlikely, and where it is likely they come often enough that a completion is
//! seen within about 4.5 % of the job's length. The caller bounds the delay by
//! `initial_interval` and `max_interval`. A job already longer in its status than almost every
//! job of its project before is overdue: polled every [`OVERDUE_SHARE`] of its age. With too
//! little history (fewer than [`MIN_SAMPLES`] jobs of the project) there is no forecast and the
//! backoff series applies.
//!
//! Pure: no clock, no IO. Durations in, delays out.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ncp::RemoteStatus;

/// The ledger fact that holds the serialized [`History`].
pub const HISTORY_FACT: &str = "poll.history";
/// Buckets per doubling of duration.
pub const PER_OCTAVE: u32 = 8;
/// Buckets of a sketch: 1 s to 2^22 s.
pub const BUCKETS: usize = 22 * PER_OCTAVE as usize;
/// Jobs of a project needed before its sketch is used.
pub const MIN_SAMPLES: u64 = 8;
/// A sketch's counters are halved when they hold this many samples.
pub const DECAY_AT: u64 = 2_000;
/// Groups (workspace and project) kept; the one seen least recently goes first.
pub const MAX_GROUPS: usize = 1_024;
/// Longer observations are taken for clock jumps and discarded.
pub const MAX_SAMPLE: Duration = Duration::from_secs(30 * 24 * 3600);
/// In the stretch where the history gives a job a real chance of completing, the gap between
/// polls is at most this share of the job's age (time since its wait began), so a completion
/// there is seen within this share of the job's length.
pub const DELAY_SHARE: f64 = 0.045;
/// Where the chance that the job completes before the next poll is below this, the poll is put
/// off (up to `max_interval`): this is how sparse the policy is while completion is unlikely.
pub const UNLIKELY: f64 = 0.02;
/// A job that has been in its status longer than this share of its history is overdue: the
/// history cannot say when it ends, and it is polled every [`OVERDUE_SHARE`] of its age.
const BEYOND: f64 = 0.98;
/// The gap between polls of an overdue job, as a share of its age.
pub const OVERDUE_SHARE: f64 = 0.1;

/// A distribution of durations over log-spaced buckets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    /// `BUCKETS` counters once the first sample arrives (empty before).
    counts: Vec<u32>,
    /// Their sum.
    total: u64,
}

impl Sketch {
    /// Samples held (after decay).
    pub fn len(&self) -> u64 {
        self.total
    }

    /// No sample yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Adds one observed duration (at least 1 s is assumed; shorter ones count as 1 s).
    pub fn add(&mut self, d: Duration) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        let i = (position(d.as_secs_f64()) as usize).min(BUCKETS - 1);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
        if self.total >= DECAY_AT {
            for c in &mut self.counts {
                *c /= 2;
            }
            self.total = self.counts.iter().map(|c| u64::from(*c)).sum();
        }
    }

    /// P(duration ≤ `secs`), with the mass of a bucket spread evenly over its log width.
    pub fn cdf(&self, secs: f64) -> f64 {
        self.cdf_by(secs, |i| {
            self.counts[..i].iter().map(|c| u64::from(*c)).sum()
        })
    }

    /// [`Sketch::cdf`], with `below(i)` the samples in the buckets below `i` (summed, or read
    /// from [`Sketch::prefix`] in constant time).
    fn cdf_by(&self, secs: f64, below: impl Fn(usize) -> u64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let p = position(secs);
        let i = p.floor() as usize;
        if i >= BUCKETS {
            return 1.0;
        }
        let v = below(i) as f64 + f64::from(self.counts[i]) * (p - i as f64);
        (v / self.total as f64).clamp(0.0, 1.0)
    }

    /// The duration (seconds) below which a share `q` of the samples lies.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let target = q.clamp(0.0, 1.0) * self.total as f64;
        let mut below = 0.0;
        for (i, c) in self.counts.iter().enumerate() {
            let c = f64::from(*c);
            if c > 0.0 && below + c >= target {
                let frac = ((target - below) / c).clamp(0.0, 1.0);
                return seconds_at(i as f64 + frac);
            }
            below += c;
        }
        seconds_at(BUCKETS as f64)
    }

    /// How long after `elapsed` (seconds already spent) until the chance of having ended
    /// reaches `q`, from this distribution conditioned on not having ended yet; `None` with too
    /// few samples, or when `elapsed` is beyond almost all of them.
    pub fn step(&self, elapsed: f64, q: f64) -> Option<f64> {
        let f = self.usable()?.cdf(elapsed);
        if f > BEYOND {
            return None;
        }
        let at = self.quantile(f + q * (1.0 - f));
        Some((at - elapsed).max(0.0))
    }

    /// The median remaining time (seconds) after `elapsed`, as [`Sketch::step`] conditions it.
    pub fn median_remaining(&self, elapsed: f64) -> Option<f64> {
        self.step(elapsed, 0.5)
    }

    /// Cumulative counts: `prefix[i]` samples in the buckets below `i`.
    fn prefix(&self) -> Vec<u64> {
        let mut prefix = Vec::with_capacity(BUCKETS + 1);
        let mut sum = 0;
        prefix.push(0);
        for c in &self.counts {
            sum += u64::from(*c);
            prefix.push(sum);
        }
        prefix
    }
}

/// How long after `elapsed` (seconds spent queued) until the chance that the job has left the
/// queue *and* completed its run reaches each of `levels`: the queue's remaining time
/// (conditioned on `elapsed`) plus a run, convolved over the queue's buckets (built once for
/// all levels); `None` when either sketch cannot tell.
fn queued_steps<const N: usize>(
    queue: &Sketch,
    run: &Sketch,
    elapsed: f64,
    levels: [f64; N],
) -> Option<[f64; N]> {
    let queue = queue.usable()?;
    let run = run.usable()?;
    let f = queue.cdf(elapsed);
    if f > BEYOND {
        return None;
    }
    // The queue's remaining time: one point per bucket (the middle of its part above
    // `elapsed`), weighted by its mass there.
    let mut points: Vec<(f64, f64)> = Vec::new();
    for (i, c) in queue.counts.iter().enumerate() {
        let (lo, hi) = (seconds_at(i as f64), seconds_at(i as f64 + 1.0));
        if *c == 0 || hi <= elapsed {
            continue;
        }
        let from = lo.max(elapsed);
        let share = if lo >= elapsed {
            1.0
        } else {
            (position(hi) - position(elapsed)).clamp(0.0, 1.0)
        };
        let mid = (from * hi).sqrt();
        points.push((mid - elapsed, f64::from(*c) * share));
    }
    let mass: f64 = points.iter().map(|(_, w)| w).sum();
    if mass <= 0.0 {
        return None;
    }
    let prefix = run.prefix();
    let chance = |s: f64| -> f64 {
        points
            .iter()
            .map(|(x, w)| w * run.cdf_by(s - x, |i| prefix[i]))
            .sum::<f64>()
            / mass
    };
    // Bisection on the (monotone) chance, for each level.
    Some(levels.map(|q| {
        let (mut lo, mut hi) = (0.0, seconds_at(BUCKETS as f64) * 2.0);
        for _ in 0..48 {
            let mid = 0.5 * (lo + hi);
            if chance(mid) >= q {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    }))
}

impl Sketch {
    fn usable(&self) -> Option<&Self> {
        (self.total >= MIN_SAMPLES).then_some(self)
    }

    fn to_wire(&self) -> Vec<[u32; 2]> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| [i as u32, *c])
            .collect()
    }

    fn from_wire(pairs: &[[u32; 2]]) -> Self {
        let mut s = Sketch::default();
        for [i, c] in pairs {
            if (*i as usize) < BUCKETS && *c > 0 {
                if s.counts.is_empty() {
                    s.counts = vec![0; BUCKETS];
                }
                let slot = &mut s.counts[*i as usize];
                *slot = slot.saturating_add((*c).min(DECAY_AT as u32));
            }
        }
        s.total = s.counts.iter().map(|c| u64::from(*c)).sum();
        s
    }
}

/// Continuous bucket position of a duration in seconds (0 at 1 s and below).
fn position(secs: f64) -> f64 {
    if secs.is_nan() || secs <= 1.0 {
        return 0.0;
    }
    (secs.log2() * f64::from(PER_OCTAVE)).min(BUCKETS as f64)
}

fn seconds_at(position: f64) -> f64 {
    (position / f64::from(PER_OCTAVE)).exp2()
}

/// The stage of a waiting job a duration belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// `WAIT_SUMMARIZE`.
    Queue,
    /// `SUMMARIZING`.
    Run,
}

impl Stage {
    /// `queue` or `run`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Run => "run",
        }
    }
}

/// The stage a poll saw end, if any: `was` is the status before the poll, first seen at
/// `seen_ms`; `is` the status the poll saw; `started_ms` when the watch's current wait began
/// (its first poll). A queue ends when `WAIT_SUMMARIZE` gives way to `SUMMARIZING` or
/// completion; a run ends at completion, and counts only when its start was seen (a watch whose
/// first poll found the job already summarizing saw only part of the run).
pub fn observed_stage(
    was: Option<&RemoteStatus>,
    is: Option<&RemoteStatus>,
    started_ms: Option<u64>,
    seen_ms: Option<u64>,
) -> Option<Stage> {
    match (was?, is?) {
        (RemoteStatus::WaitSummarize, RemoteStatus::Summarizing | RemoteStatus::Completed) => {
            Some(Stage::Queue)
        }
        (RemoteStatus::Summarizing, RemoteStatus::Completed)
            if started_ms.is_some_and(|s| seen_ms.is_some_and(|seen| s < seen)) =>
        {
            Some(Stage::Run)
        }
        _ => None,
    }
}

/// When a status change that a poll at `seen_ms` saw most likely happened: the middle of the
/// gap since the poll before (`last_poll_ms`), or `seen_ms` when that poll is not known. Both
/// ends of an observed queue or run time are taken this way, so the error of sparse polls
/// averages out instead of biasing the history.
pub fn change_time(last_poll_ms: Option<u64>, seen_ms: u64) -> u64 {
    match last_poll_ms {
        Some(last) if last < seen_ms => last + (seen_ms - last) / 2,
        _ => seen_ms,
    }
}

/// What is remembered of a watch's recent polls, in memory only: when it was last polled, and
/// the best estimate of when its remote status last changed ([`change_time`]). After a restart
/// both are unknown until the next poll, and the ledger's time of the change as seen stands in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// When it was last polled (ms on the caller's clock).
    pub last_poll_ms: Option<u64>,
    /// When its current remote status most likely began.
    pub change_est_ms: Option<u64>,
}

/// A watch's poll, as the history sees it.
#[derive(Debug, Clone, Copy)]
pub struct Polled<'a> {
    /// Its workspace and project.
    pub workspace: &'a str,
    /// Its project id.
    pub project: &'a str,
    /// The remote status before the poll.
    pub was: Option<&'a RemoteStatus>,
    /// When that status was first seen (the ledger's `last_change_at_ms`).
    pub was_seen_ms: Option<u64>,
    /// The remote status the poll saw.
    pub is: Option<&'a RemoteStatus>,
    /// When the watch's current wait began (its first poll, or a re-analysis's).
    pub started_ms: Option<u64>,
    /// When the poll was answered.
    pub now_ms: u64,
    /// The step polls again (the job is still waiting).
    pub polls_again: bool,
    /// The API answered (a failed call saw no status: it neither ends a stage nor counts as
    /// the poll before a change).
    pub answered: bool,
}

/// What [`History::learn`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learned {
    /// The watch's timing from now on.
    pub timing: Timing,
    /// A stage time seen end and learned (or discarded).
    pub observed: Option<(Stage, Duration, Observed)>,
    /// When the job still waits and its project's history can tell: its forecast.
    pub forecast: Option<Forecast>,
}

impl History {
    /// The history's part in one poll of a watch: a queue or run time the poll saw end is
    /// learned (both ends estimated by [`change_time`]), and, when the job still waits, the
    /// forecast of its remaining time. Used by the engine for every poll step, and by the
    /// polling benchmark, so the two cannot drift apart.
    pub fn learn(&mut self, p: Polled<'_>, timing: Timing) -> Learned {
        if !p.answered {
            return Learned {
                timing,
                observed: None,
                forecast: None,
            };
        }
        let changed = p.was != p.is;
        let began = timing.change_est_ms.or(p.was_seen_ms);
        let boundary = change_time(timing.last_poll_ms, p.now_ms);
        let next = Timing {
            last_poll_ms: Some(p.now_ms),
            change_est_ms: if changed {
                Some(boundary)
            } else {
                timing.change_est_ms
            },
        };
        let mut observed = None;
        if let (Some(stage), Some(began)) = (
            observed_stage(p.was, p.is, p.started_ms, p.was_seen_ms),
            began,
        ) {
            let took = Duration::from_millis(boundary.saturating_sub(began));
            observed = Some((
                stage,
                took,
                self.observe(p.workspace, p.project, stage, took),
            ));
        }
        let forecast = match p.is {
            Some(status) if p.polls_again => {
                let since = if changed {
                    boundary
                } else {
                    began.unwrap_or(p.now_ms)
                };
                let in_status = Duration::from_millis(p.now_ms.saturating_sub(since));
                let age =
                    Duration::from_millis(p.now_ms.saturating_sub(p.started_ms.unwrap_or(since)));
                self.forecast(p.workspace, p.project, status, in_status, age)
            }
            _ => None,
        };
        Learned {
            timing: next,
            observed,
            forecast,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Group {
    queue: Sketch,
    run: Sketch,
    /// When it last learned something, in samples since the history began (for eviction).
    seen: u64,
}

/// What [`History::observe`] did with a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Added to its project's sketch.
    Kept,
    /// Longer than [`MAX_SAMPLE`] (a clock jump?): not learned from.
    Discarded,
}

/// A forecast for one waiting job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// When to poll next (before the caller's bounds).
    pub delay: Duration,
    /// The median time until the job completes; `None` for a job overdue (longer in its status
    /// than almost every job of its project before).
    pub remaining: Option<Duration>,
    /// Jobs of its project the forecast rests on.
    pub samples: u64,
}

/// Queue and run distributions per workspace and project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    groups: HashMap<(String, String), Group>,
    /// Samples learned since the history began (orders groups by recency).
    clock: u64,
    /// Changed since [`History::take_dirty`].
    dirty: bool,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u32,
    groups: Vec<WireGroup>,
}

#[derive(Serialize, Deserialize)]
struct WireGroup {
    workspace: String,
    project: String,
    #[serde(default)]
    queue: Vec<[u32; 2]>,
    #[serde(default)]
    run: Vec<[u32; 2]>,
}

impl History {
    /// Learns one observed duration of `stage` for the project.
    pub fn observe(
        &mut self,
        workspace: &str,
        project: &str,
        stage: Stage,
        d: Duration,
    ) -> Observed {
        if d > MAX_SAMPLE {
            return Observed::Discarded;
        }
        self.clock += 1;
        let key = (workspace.to_owned(), project.to_owned());
        if !self.groups.contains_key(&key) && self.groups.len() >= MAX_GROUPS {
            self.evict();
        }
        let g = self.groups.entry(key).or_default();
        g.seen = self.clock;
        match stage {
            Stage::Queue => g.queue.add(d),
            Stage::Run => g.run.add(d),
        }
        self.dirty = true;
        Observed::Kept
    }

    fn evict(&mut self) {
        if let Some(oldest) = self
            .groups
            .iter()
            .min_by_key(|(_, g)| g.seen)
            .map(|(k, _)| k.clone())
        {
            self.groups.remove(&oldest);
        }
    }

    /// The forecast for a job of the project that has been in `status` for `in_status`, and
    /// waiting for `age` in all (since its first poll, or since a re-analysis began); `None`
    /// when its history cannot tell (too few jobs of the project, a status other than queued
    /// or summarizing): the backoff series applies.
    pub fn forecast(
        &self,
        workspace: &str,
        project: &str,
        status: &RemoteStatus,
        in_status: Duration,
        age: Duration,
    ) -> Option<Forecast> {
        let g = self
            .groups
            .get(&(workspace.to_owned(), project.to_owned()))?;
        let e = in_status.as_secs_f64();
        let age = age.max(in_status).as_secs_f64();
        let cap = MAX_SAMPLE.as_secs_f64();
        let (stage, samples) = match status {
            RemoteStatus::Summarizing => (&g.run, g.run.len()),
            RemoteStatus::WaitSummarize => (&g.queue, g.queue.len()),
            _ => return None,
        };
        if stage.usable().is_some_and(|s| s.cdf(e) > BEYOND) {
            // Longer in this status than almost every job before: overdue, polled at a share
            // of its age (the history cannot say when it ends).
            return Some(Forecast {
                delay: Duration::from_secs_f64((OVERDUE_SHARE * age).min(cap)),
                remaining: None,
                samples,
            });
        }
        let (unlikely_until, remaining) = match status {
            RemoteStatus::Summarizing => (g.run.step(e, UNLIKELY)?, g.run.median_remaining(e)?),
            // Without a run history (runs too short to be seen starting), the queue alone:
            // a job cannot complete before it leaves the queue.
            _ if g.run.usable().is_none() => {
                (g.queue.step(e, UNLIKELY)?, g.queue.median_remaining(e)?)
            }
            _ => {
                let [unlikely_until, median] = queued_steps(&g.queue, &g.run, e, [UNLIKELY, 0.5])?;
                (unlikely_until, median)
            }
        };
        let delay = unlikely_until.max(DELAY_SHARE * age);
        Some(Forecast {
            delay: Duration::from_secs_f64(delay.min(cap)),
            remaining: Some(Duration::from_secs_f64(remaining.min(cap))),
            samples,
        })
    }

    /// Projects with history.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// True once, after each change (the caller saves it then).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks it changed (a save that failed is tried again).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// The compact JSON kept in the ledger (non-zero buckets only).
    pub fn to_json(&self) -> String {
        let mut groups: Vec<WireGroup> = self
            .groups
            .iter()
            .map(|((w, p), g)| WireGroup {
                workspace: w.clone(),
                project: p.clone(),
                queue: g.queue.to_wire(),
                run: g.run.to_wire(),
            })
            .collect();
        groups.sort_by(|a, b| (&a.workspace, &a.project).cmp(&(&b.workspace, &b.project)));
        serde_json::to_string(&Wire { v: 1, groups }).unwrap_or_default()
    }

    /// Reads [`History::to_json`]. Buckets out of range and groups past [`MAX_GROUPS`] are
    /// dropped; anything else that is not a history is an error that says what it found.
    pub fn from_json(s: &str) -> Result<History, String> {
        let wire: Wire = serde_json::from_str(s)
            .map_err(|e| format!("the stored poll history is not readable ({e})"))?;
        if wire.v != 1 {
            return Err(format!(
                "the stored poll history has format {} (this scenewatch reads 1)",
                wire.v
            ));
        }
        let mut h = History::default();
        for g in wire.groups.into_iter().take(MAX_GROUPS) {
            let group = Group {
                queue: Sketch::from_wire(&g.queue),
                run: Sketch::from_wire(&g.run),
                seen: 0,
            };
            h.groups.insert((g.workspace, g.project), group);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A project whose runs take about an hour (±5 %) after about 5 minutes in the queue.
    fn hourly() -> History {
        let mut h = History::default();
        for i in 0..40 {
            let wobble = f64::from(i % 11) / 10.0 - 0.5; // -0.5 ..= 0.5
            h.observe("w", "p", Stage::Run, secs(3600.0 * (1.0 + 0.1 * wobble)));
            h.observe("w", "p", Stage::Queue, secs(300.0 * (1.0 + wobble)));
        }
        h
    }

    #[test]
    fn quantiles_and_cdf_agree_within_a_bucket() {
        let mut s = Sketch::default();
        for d in 1..=1000 {
            s.add(secs(f64::from(d)));
        }
        let median = s.quantile(0.5);
        assert!((450.0..560.0).contains(&median), "{median}");
        assert!((s.cdf(median) - 0.5).abs() < 0.01);
        assert_eq!(s.cdf(0.0), 0.0);
        assert_eq!(s.cdf(1e12), 1.0);
        assert!(s.quantile(1.0) <= 1100.0);
    }

    #[test]
    fn a_run_is_polled_sparsely_early_and_densely_near_its_likely_end() {
        let h = hourly();
        let run = |e: f64| {
            h.forecast("w", "p", &RemoteStatus::Summarizing, secs(e), secs(e))
                .unwrap()
        };
        // Just started: the next poll is late in the run (the caller caps it at max_interval).
        let early = run(10.0);
        assert!(early.delay > secs(2400.0), "{early:?}");
        let end = early.remaining.unwrap().as_secs_f64() + 10.0;
        assert!((3300.0..3900.0).contains(&end), "{early:?}");
        // Near the end: a short step, a small share of the job.
        let late = run(3500.0);
        assert!(late.delay < secs(180.0), "{late:?}");
        assert!(late.delay > Duration::ZERO);
        assert_eq!(late.samples, 40);
    }

    #[test]
    fn no_forecast_without_enough_history_and_overdue_jobs_polled_at_a_share_of_their_age() {
        let mut h = History::default();
        let s = RemoteStatus::Summarizing;
        assert_eq!(h.forecast("w", "p", &s, secs(1.0), secs(1.0)), None);
        for _ in 0..MIN_SAMPLES - 1 {
            h.observe("w", "p", Stage::Run, secs(600.0));
        }
        assert_eq!(
            h.forecast("w", "p", &s, secs(1.0), secs(1.0)),
            None,
            "too few"
        );
        h.observe("w", "p", Stage::Run, secs(600.0));
        assert!(h.forecast("w", "p", &s, secs(1.0), secs(1.0)).is_some());
        // Another project learns nothing from this one.
        assert_eq!(h.forecast("w", "q", &s, secs(1.0), secs(1.0)), None);
        // Running three times longer than any job before: overdue, polled at a tenth of its
        // age, with no expected end.
        let overdue = h
            .forecast("w", "p", &s, secs(1800.0), secs(2000.0))
            .unwrap();
        assert_eq!(overdue.delay, secs(200.0));
        assert_eq!(overdue.remaining, None);
        // Statuses other than queued and summarizing have no forecast.
        assert_eq!(
            h.forecast(
                "w",
                "p",
                &RemoteStatus::BeforeSummarize,
                secs(1.0),
                secs(1.0)
            ),
            None
        );
    }

    #[test]
    fn absurd_durations_are_discarded_or_bounded() {
        let mut h = History::default();
        assert_eq!(
            h.observe("w", "p", Stage::Run, Duration::from_secs(365 * 24 * 3600)),
            Observed::Discarded
        );
        assert_eq!(h.groups(), 0);
        // Zero-length and just-under-the-limit samples are kept, within the sketch's range.
        for _ in 0..MIN_SAMPLES {
            assert_eq!(
                h.observe("w", "p", Stage::Run, Duration::ZERO),
                Observed::Kept
            );
            h.observe("w", "p", Stage::Run, MAX_SAMPLE);
        }
        for e in [0.0, 0.5, 5.0, 1e5, 2.5e6] {
            if let Some(f) = h.forecast("w", "p", &RemoteStatus::Summarizing, secs(e), secs(e)) {
                assert!(f.delay <= MAX_SAMPLE, "{f:?}");
                assert!(f.remaining.is_none_or(|r| r <= MAX_SAMPLE), "{f:?}");
            }
        }
        // Elapsed times beyond any duration (a clock jump forward) do not panic.
        let _ = h.forecast(
            "w",
            "p",
            &RemoteStatus::Summarizing,
            Duration::MAX,
            Duration::MAX,
        );
    }

    #[test]
    fn counters_decay_and_groups_are_bounded() {
        let mut h = History::default();
        for _ in 0..(3 * DECAY_AT) {
            h.observe("w", "p", Stage::Run, secs(60.0));
        }
        let g = &h.groups[&("w".to_owned(), "p".to_owned())];
        assert!(g.run.len() < DECAY_AT, "{}", g.run.len());
        for i in 0..(MAX_GROUPS + 10) {
            h.observe("w", &format!("p{i}"), Stage::Queue, secs(5.0));
        }
        assert_eq!(h.groups(), MAX_GROUPS);
        // The most recent project stayed; the first one seen went.
        assert!(
            h.groups
                .contains_key(&("w".to_owned(), format!("p{}", MAX_GROUPS + 9)))
        );
        assert!(!h.groups.contains_key(&("w".to_owned(), "p".to_owned())));
    }

    #[test]
    fn the_history_survives_its_json_and_garbage_is_refused() {
        let mut h = hourly();
        assert!(h.take_dirty());
        assert!(!h.take_dirty());
        let back = History::from_json(&h.to_json()).unwrap();
        let s = RemoteStatus::Summarizing;
        assert_eq!(
            back.forecast("w", "p", &s, secs(100.0), secs(100.0)),
            h.forecast("w", "p", &s, secs(100.0), secs(100.0))
        );
        assert!(h.to_json().len() < 1_000, "{}", h.to_json());
        for bad in ["", "{", "[]", r#"{"v":2,"groups":[]}"#, "null"] {
            let e = History::from_json(bad).unwrap_err();
            assert!(e.contains("poll history"), "{e}");
        }
        // Out-of-range buckets and oversized counts are dropped or bounded, not trusted.
        let odd = r#"{"v":1,"groups":[{"workspace":"w","project":"p","run":[[9999,5],[10,4294967295]]}]}"#;
        let h = History::from_json(odd).unwrap();
        let g = &h.groups[&("w".to_owned(), "p".to_owned())];
        assert_eq!(g.run.len(), DECAY_AT);
    }

    #[test]
    fn a_stage_is_measured_between_the_middles_of_the_gaps_that_saw_it_begin_and_end() {
        let mut h = History::default();
        let (wait, run, done) = (
            RemoteStatus::WaitSummarize,
            RemoteStatus::Summarizing,
            RemoteStatus::Completed,
        );
        // `seen`: when the status before the poll was first seen (the ledger's last change).
        let poll = |h: &mut History, t: Timing, (was, seen), is, now_ms, answered| {
            h.learn(
                Polled {
                    workspace: "w",
                    project: "p",
                    was,
                    was_seen_ms: seen,
                    is,
                    started_ms: Some(0),
                    now_ms,
                    polls_again: true,
                    answered,
                },
                t,
            )
        };
        // Queued at 0; polls at 100 s (queued) and 300 s (running): the run began at about 200 s.
        let t = poll(
            &mut h,
            Timing::default(),
            (None, None),
            Some(&wait),
            0,
            true,
        )
        .timing;
        let queued = (Some(&wait), Some(0));
        let t = poll(&mut h, t, queued, Some(&wait), 100_000, true).timing;
        let l = poll(&mut h, t, queued, Some(&run), 300_000, true);
        assert_eq!(l.timing.change_est_ms, Some(200_000));
        assert_eq!(
            l.observed.map(|o| (o.0, o.1)),
            Some((Stage::Queue, secs(200.0)))
        );
        // A failed poll at 900 s saw nothing: the timing stays, nothing is learned.
        let running = (Some(&run), Some(300_000));
        let failed = poll(&mut h, l.timing, running, Some(&run), 900_000, false);
        assert_eq!(failed.timing, l.timing);
        assert_eq!(failed.observed, None);
        // Seen done at 1,000 s after a poll at 300 s: it ended at about 650 s, a 450 s run.
        let l = poll(&mut h, failed.timing, running, Some(&done), 1_000_000, true);
        assert_eq!(
            l.observed.map(|o| (o.0, o.1)),
            Some((Stage::Run, secs(450.0)))
        );
    }

    proptest::proptest! {
        /// Any history (durations from nothing to a year, garbage JSON) and any elapsed time give
        /// a forecast within bounds, or none, without panicking.
        #[test]
        fn any_history_forecasts_within_bounds(
            samples in proptest::collection::vec((0u64..400 * 86_400_000, proptest::bool::ANY), 0..60),
            in_status_ms in 0u64..u64::MAX / 2,
            age_ms in 0u64..u64::MAX / 2,
            junk in ".{0,64}",
        ) {
            let mut h = History::default();
            for (ms, run) in &samples {
                let stage = if *run { Stage::Run } else { Stage::Queue };
                h.observe("w", "p", stage, Duration::from_millis(*ms));
            }
            for status in [RemoteStatus::WaitSummarize, RemoteStatus::Summarizing] {
                let f = h.forecast(
                    "w",
                    "p",
                    &status,
                    Duration::from_millis(in_status_ms),
                    Duration::from_millis(age_ms),
                );
                if let Some(f) = f {
                    proptest::prop_assert!(f.delay <= MAX_SAMPLE);
                    proptest::prop_assert!(f.remaining.is_none_or(|r| r <= MAX_SAMPLE));
                }
            }
            let back = History::from_json(&h.to_json()).unwrap();
            proptest::prop_assert_eq!(back.groups(), h.groups());
            let _ = History::from_json(&junk);
        }
    }
}
