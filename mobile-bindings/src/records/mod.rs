//! The records and enums of `cairn_core::app` (and the cairn-sync enums they carry), and
//! `CairnError`, declared as uniffi remote types: each declaration repeats the original's
//! fields or variants and the compiler checks it against the original.

mod config;
mod error;
mod group;
mod journal;
mod meeting;
mod membership;
mod minutes;
mod my_data;
mod presence;
mod resources;
mod roles;
mod series;
mod sync;
mod thread;
mod workspace;
