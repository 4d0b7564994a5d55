//! Putting an environment to sleep: the programs of its resources that sleep (the catalogue's
//! `Capabilities::sleeps`: processes) are stopped, everything else stays as it is (data,
//! files, databases, ports, resource records). Waking is an ordinary apply: the stopped
//! processes are observed gone and started again, an exposed one beside its stopped slot
//! and switched to once healthy, as after any replacement.

use slipway_core::EnvName;

use crate::{Engine, EngineError, EnvLock, Envelope};

impl Engine {
    /// Stops every sleeping-capable resource of `lock`'s environment (and, isolated by uid,
    /// whatever else runs as its uid), keeping its records, ports and files; returns the
    /// names of those stopped. The environment record's activity is the caller's to write.
    ///
    /// # Guarantees
    /// - Idempotent: a resource already stopped is stopped again at no cost.
    /// - Nothing is deleted from the store: the next apply finds the processes gone and
    ///   starts them again at the ports they had.
    ///
    /// # Errors
    /// A process that could not be stopped (the others are still stopped): the message names
    /// each with its provider's reason.
    pub fn sleep(&self, lock: &EnvLock) -> Result<Vec<String>, EngineError> {
        let env: &EnvName = lock.environment();
        let mut stopped = Vec::new();
        let mut failed = Vec::new();
        for record in self.store.resources(env)? {
            if !slipway_core::types::capabilities(&record.type_name).sleeps {
                continue;
            }
            let envelope = Envelope::of(&record);
            match self.stop_resource(env, &record, &envelope) {
                Ok(()) => stopped.push(record.name),
                Err(e) => failed.push(format!("{}: {}", record.name, e.message)),
            }
        }
        // What its code started outside the processes' groups sleeps too: the uid is the
        // environment's alone.
        if let (slipway_providers::sandbox::Isolation::Uid, Some(uid)) =
            (self.isolation, self.store.environment_uid(env)?)
        {
            self.kill_everything_of(env, uid)?;
        }
        if !failed.is_empty() {
            return Err(EngineError::Environment(format!(
                "`{env}` could not be put to sleep: {}",
                failed.join("; ")
            )));
        }
        Ok(stopped)
    }
}
