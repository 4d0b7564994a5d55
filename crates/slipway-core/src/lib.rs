//! Slipway's pure core: the repository format, its diagnostics, render and plan. No IO.
//!
//! Data flows one way: [`stack::load`] reads `slipway.yaml` through the [`stack::Files`] trait
//! and returns a [`stack::Stack`] plus every [`diag::Diagnostic`] found; [`render::render`]
//! turns a stack, an environment and a commit into a [`render::DesiredState`] (canonical JSON
//! and its hash); [`plan::plan`] compares that with what the store recorded and the engine
//! observed, and returns a [`plan::Plan`]. Start with `stack::load`.
//!
//! # Architecture invariant
//! Nothing in this crate touches the file system, the network, a clock or a process. Every
//! function returns the best result it can plus diagnostics instead of failing on bad input,
//! and none panics on any input (a fuzz target checks the loader).
#![deny(missing_docs)]

pub mod compare;
pub mod diag;
pub mod duration;
pub mod env_name;
pub mod graph;
pub mod names;
pub mod plan;
pub mod preview_link;
pub mod redact;
pub mod render;
pub mod schema;
pub mod secrets;
pub mod stack;
pub mod template;
pub mod types;
pub mod vocab;
pub mod windows;
pub mod yaml;

pub use env_name::EnvName;
