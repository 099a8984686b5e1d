//! The librarian role: follows `evt.case.transition.v1` with its own
//! durable consumer and, whenever a case reaches CLOSED or PARKED, writes
//! (or replaces) that case's `past_case` document with its outcome.
//!
//! Idempotent and eventually consistent: the document is built from the
//! database as it stands, stored under `case:<id>`, and an unchanged one is
//! not written again, so redeliveries, a replayed feed or two endings
//! handled out of order all leave the newest ending's text. Never changes a
//! case.

use std::sync::Arc;

use sqlx::PgPool;

use super::Librarian;
use super::past_case;
use super::store::ingest;
use crate::contract::fact::EVT_CASE_TRANSITION;
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
        if d.envelope.kind != EVT_CASE_TRANSITION {
            return Disposition::Done;
        }
        let m = match Message::<Fact>::from_envelope(&d.envelope) {
            Ok(m) => m,
            Err(e) => return Disposition::DeadLetter(DeadReason::InvalidData, e.to_string()),
        };
        let Fact::CaseTransition(t) = &m.body else {
            return Disposition::DeadLetter(
                DeadReason::InvalidData,
                format!("{EVT_CASE_TRANSITION} carries another fact"),
            );
        };
        if !matches!(t.to, Status::Closed | Status::Parked) {
            return Disposition::Done;
        }
        match self.write(&m).await {
            Ok(()) => Disposition::Done,
            Err(e) => Disposition::Retry(format!("{e:#}")),
        }
    }
}
