//! One policy per file, each a plain function (or a small struct) over parts of an
//! `http::Request`, with its own table of good and bad inputs. `pipeline.rs` composes them.

pub mod auth;
pub mod body;
pub mod concurrency;
pub mod content;
pub mod framing;
pub mod header_limits;
pub mod host;
pub mod json;
pub mod path;
pub mod rate;
pub mod reserved;
