//! Which environments should exist: the engine's [`slipway_engine::discover`], so that the
//! controller's discovery and a command naming a generated environment (`slipway plan --env
//! br-feature-x`) resolve names the same way.

pub use slipway_engine::discover::{PullHead, Wanted, wanted};
