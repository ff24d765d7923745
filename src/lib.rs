//! scenewatch: watches NAVER Cloud Media Intelligence scene summaries until they reach a terminal
//! state and delivers the results to sinks. See ARCHITECTURE.md for the map.

pub mod cause;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod domain;
pub mod dry_run;
pub mod engine;
pub mod events;
pub mod exit;
pub mod forecast;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub(crate) mod key_index;
pub mod memory;
pub mod metrics;
pub mod ncp;
pub mod once;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod policy;
pub mod progress;
pub mod server;
pub mod signals;
/// The simulator, a crate of its own (`crates/sim`) so that it cannot share code with `ncp`;
/// re-exported so that `scenewatch::sim::…` keeps naming it.
pub use scenewatch_sim as sim;
pub mod sink;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod watch;
