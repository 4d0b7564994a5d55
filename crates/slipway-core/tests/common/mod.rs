//! What the core's tests share: the store's records after a successful apply.
//!
//! The cargo-fuzz target `fuzz/fuzz_targets/load.rs` keeps its own copy: it is built outside
//! this crate's tests.

use std::collections::BTreeMap;

use slipway_core::plan::{Recorded, ResourceStatus};
use slipway_core::render::DesiredState;

/// What the store would hold after applying `desired` successfully.
pub fn applied(desired: &DesiredState) -> BTreeMap<String, Recorded> {
    desired
        .resources
        .iter()
        .map(|(name, r)| {
            (
                name.clone(),
                Recorded {
                    type_name: r.type_name.clone(),
                    status: ResourceStatus::Ready,
                    config: Some(r.config.clone()),
                    depends_on: r.depends_on.clone(),
                    resolved_hash: None,
                    source: r.source.clone(),
                },
            )
        })
        .collect()
}
