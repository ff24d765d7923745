//! The one integration test binary (see STYLE.md §13). Each module says what belongs in it.

mod api_truth;
mod cli;
mod client;
mod crash;
mod daemon;
mod deploy;
mod logs;
mod nats;
mod once;
mod once_flags;
mod ops;
mod postgres;
mod s3;
mod sim;
mod support;
mod view;
mod webhook;
