//! The blue/green replacement of a resource that exposes a port: the new version starts
//! beside the old one, in the other instance slot and on its own ports, and takes the preview
//! URL over once healthy; only then is the old one stopped.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use slipway_core::plan::Change;
use slipway_core::vocab::EventKind;
use slipway_providers::ResourceContext;
use slipway_state::ResourceRecord;

use super::StepError;
use super::step::record_applied;
use crate::{Engine, Envelope, Prepared};

/// How long the old instance of an exposed process keeps running after traffic switched.
const DRAIN: Duration = Duration::from_millis(300);

impl Engine {
    /// The blue/green replacement of an exposed process: start the new instance in the other
    /// slot, wait until it is ready, record it (the preview router switches on the record),
    /// give in-flight requests a moment, then stop the old instance.
    #[allow(
        clippy::too_many_arguments,
        reason = "one private step of apply_change, called once"
    )]
    pub(super) fn swap(
        &self,
        prepared: &Prepared,
        change: &Change,
        provider: &dyn slipway_providers::DynProvider,
        ctx: ResourceContext<'_>,
        resolved: &Json,
        resolved_hash: String,
        previous: &Envelope,
        mut record: ResourceRecord,
        envelope_of: impl Fn(Json) -> Json,
        redactor: &crate::secrets::Redactor,
    ) -> Result<(Json, Vec<String>), StepError> {
        let env = &prepared.desired.environment.name;
        let fail = |record: &mut ResourceRecord, error: slipway_providers::ProviderError| {
            let error = StepError::from(error).redacted(redactor);
            // The old instance is still recorded as live and still serving.
            let recorded = format!(
                "the new version did not replace the running one: {}",
                error.message
            );
            Err(self.record_failed(record, recorded, error))
        };
        if let Err(e) = provider.delete(ctx, None) {
            return fail(&mut record, e);
        }
        let applied = match provider.create(ctx, resolved) {
            Ok(applied) => applied,
            Err(e) => return fail(&mut record, e),
        };
        let deadline = Instant::now() + self.settings.ready_timeout.max(Duration::from_secs(1));
        if let Err(e) = provider.wait_ready(ctx, resolved, &applied, deadline) {
            let _ = provider.delete(ctx, Some(&applied.live));
            return fail(&mut record, e);
        }
        record_applied(&mut record, &applied, envelope_of);
        let ready = self.record_ready(record, resolved_hash)?;
        // Requests routed to the old instance just before the switch finish on it.
        std::thread::sleep(DRAIN);
        let old_dirs = self.env_dirs(env, &previous.src_commit, "");
        let old_ctx = ResourceContext {
            dirs: &old_dirs,
            resource: previous.instance(&change.resource),
            ..ctx
        };
        if let Err(e) = provider.delete(old_ctx, Some(&previous.handle)) {
            // The new version serves; the old one is left in its slot, where the next swap
            // or destroy removes it.
            let _ = self.store.record_event(
                Some(env),
                EventKind::SwapCleanupFailed,
                &format!(
                    "{}: the previous instance could not be stopped: {}",
                    change.resource,
                    StepError::from(e).redacted(redactor).message
                ),
                &json!({}),
                slipway_state::now_ms(),
            );
        }
        Ok(ready)
    }
}
