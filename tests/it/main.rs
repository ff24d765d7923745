//! The one integration test binary (see STYLE.md §13). Each module says what belongs in it.

mod cli;
mod client;
mod daemon;
mod once;
mod sim;
mod support;
