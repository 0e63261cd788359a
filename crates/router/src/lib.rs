//! The shardline router (work in progress).

pub mod pg;
