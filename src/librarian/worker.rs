//! The librarian role: follows the feed with its own durable consumer and,
//! whenever a case reaches CLOSED or PARKED, writes (or replaces) that
//! case's `past_case` document with its outcome; and again when a rollback
//! ends (`evt.exec.rolled_back.v1`), which comes after the case parked on a
//! failed verification.
//!
//! Idempotent and eventually consistent: the document is built from the
//! database as it stands when the message is handled, stored under
//! `case:<id>`, and an unchanged one is not written again. One message at a
//! time: two handled at once could let the older state's text, built
//! first but embedded slower, overwrite the newer one; handled in turn, a
//! late or redelivered message still writes the state as it is now. Never
//! changes a case.

use std::sync::Arc;

use sqlx::PgPool;

use super::Librarian;
use super::past_case;
use super::store::ingest;
use crate::contract::fact::{EVT_CASE_TRANSITION, EVT_ROLLED_BACK};
use crate::contract::{Fact, Message};
use crate::pubsub::consumer::{DeadReason, Delivery, Disposition, Handler};
use crate::workflow::Status;

pub const CONSUMER: &str = "librarian";

pub struct PastCaseWriter {
    pub pool: PgPool,
    pub librarian: Arc<Librarian>,
}

impl PastCaseWriter {
    async fn write(&self, m: &Message<Fact>) -> anyhow::Result<()> {
        let case = m.case_id.uuid();
        let Some(doc) = past_case::document(&self.pool, case).await? else {
            return Ok(());
        };
        // A message names its tenant; a case of another tenant is not
        // written under it.
        if doc.tenant.as_ref() != Some(&m.tenant) {
            tracing::warn!(case.id = %case, message.tenant = %m.tenant,
                           "A feed message names another tenant than its case's; nothing written.");
            return Ok(());
        }
        let embedder = self.librarian.embedder().await?;
        let stored = ingest(&self.pool, embedder, &doc).await?;
        crate::telemetry::past_case_written(if stored.unchanged {
            "unchanged"
        } else {
            "written"
        });
        tracing::info!(case.id = %case, doc.id = %stored.id, chunks = stored.chunks,
                       unchanged = stored.unchanged, "Past case recorded.");
        Ok(())
    }
}

impl Handler for PastCaseWriter {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn handle(&self, d: &Delivery) -> Disposition {
        if d.envelope.kind != EVT_CASE_TRANSITION && d.envelope.kind != EVT_ROLLED_BACK {
            return Disposition::Done;
        }
        let m = match Message::<Fact>::from_envelope(&d.envelope) {
            Ok(m) => m,
            Err(e) => return Disposition::DeadLetter(DeadReason::InvalidData, e.to_string()),
        };
        let ends = match &m.body {
            Fact::CaseTransition(t) => matches!(t.to, Status::Closed | Status::Parked),
            Fact::RolledBack(_) => true,
            _ => {
                return Disposition::DeadLetter(
                    DeadReason::InvalidData,
                    format!("{} carries another fact", d.envelope.kind),
                );
            }
        };
        if !ends {
            return Disposition::Done;
        }
        match self.write(&m).await {
            Ok(()) => Disposition::Done,
            Err(e) => Disposition::Retry(format!("{e:#}")),
        }
    }
}
