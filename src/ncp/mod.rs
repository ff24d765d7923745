//! Everything that speaks NAVER Cloud Media Intelligence: signing, the client and its wire models.

pub mod client;
pub mod model;
pub mod signing;
