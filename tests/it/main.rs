//! The one integration test binary (see STYLE.md §13). Each module says what belongs in it.

#![allow(
    clippy::disallowed_methods,
    reason = "these drive the real binary in real time; clippy.toml's clock rule is for the crate"
)]

mod api_truth;
mod big_result;
mod cli;
mod client;
mod crash;
mod daemon;
mod deploy;
mod faults;
mod logs;
#[cfg(feature = "nats")]
mod nats;
mod once;
mod once_flags;
mod ops;
mod parity;
#[cfg(feature = "postgres")]
mod pg_ledger;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod replicas;
#[cfg(feature = "s3")]
mod s3;
mod sim;
mod support;
mod view;
mod webhook;
