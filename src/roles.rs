//! The roles an `opsloop serve` process can run, and what each worker role
//! consumes: the one registry `main.rs`, the tests and the benchmarks wire
//! their consumers from (stream, durable name, subjects, concurrency).

use std::collections::BTreeSet;

use strum::IntoEnumIterator;
use tokio_util::sync::CancellationToken;

use crate::contract::Fact;
use crate::contract::command::{
    CMD_ANALYSIS_RUN, CMD_GATE_EVAL, CMD_PLAN_GENERATE, CMD_VERIFY_RUN,
};
use crate::contract::fact::PlanSource;
use crate::pubsub::consumer::{self, ConsumerSpec, Handler};
use crate::pubsub::streams::{CMD_STREAM, EVT_STREAM};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::EnumString,
    strum::EnumIter,
    strum::Display,
    strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Role {
    /// The HTTP API.
    Api,
    /// Publishes the outbox.
    Relay,
    /// Applies the workers' facts to cases.
    Orchestrator,
    Gatekeeper,
    Planner,
    Analyst,
    Executor,
    Verifier,
    /// Tells the tenants' chat channels when people are needed or a case
    /// ends (ChatOps).
    Notifier,
    /// Writes each ended case's `past_case` document (its outcome) for the
    /// planner and for people.
    Librarian,
}

impl Role {
    /// The durable consumer this role reads, for the roles that consume.
    pub fn consumer(self) -> Option<ConsumerSpec> {
        let spec = |stream, subject: &str, concurrency| {
            ConsumerSpec::new(stream, self.into(), subject).with_concurrency(concurrency)
        };
        Some(match self {
            Role::Api | Role::Relay => return None,
            // One at a time: facts are applied in the order the relay
            // published them (per-case order, docs/events.md).
            Role::Orchestrator => spec(EVT_STREAM, "evt.>", 1),
            Role::Gatekeeper => spec(CMD_STREAM, CMD_GATE_EVAL, 4),
            // Handlers that wait on the outside world (an LLM, a script, a
            // rollout, a verification window) take several at once, or one
            // slow case holds up every other.
            Role::Planner => spec(CMD_STREAM, CMD_PLAN_GENERATE, 4),
            Role::Analyst => spec(CMD_STREAM, CMD_ANALYSIS_RUN, 4),
            // Both exec subjects on one consumer: a rollback and a run of the
            // same target share the executor's target locks.
            Role::Executor => spec(CMD_STREAM, "cmd.exec.>", 8),
            Role::Verifier => spec(CMD_STREAM, CMD_VERIFY_RUN, 8),
            // Its own cursor on the feed: a slow or dead webhook holds up
            // no other role, and several messages post at once. Created at
            // the feed's end: a first start tells no channel of last week.
            Role::Notifier => ConsumerSpec {
                deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
                ..spec(EVT_STREAM, "evt.>", 4)
            },
            // From the feed's start: a case that ended while the role was
            // down is still remembered. One at a time, so that an older
            // ending's text never lands after a newer one's (cases end at
            // a person's pace; embedding has its own pool).
            Role::Librarian => spec(EVT_STREAM, "evt.>", 1),
        })
    }

    /// The worker role that alone sends `fact`: the only envelope `actor`
    /// the orchestrator accepts for it (DESIGN §10; workers sign their
    /// facts with their role's name). `None` for a person's plan (posted
    /// through the API, `source: human`, whose actor is that person) and for
    /// informational facts.
    pub fn owning(fact: &Fact) -> Option<Role> {
        Some(match fact {
            Fact::Findings(_) => Role::Analyst,
            Fact::PlanProposed(p) if p.source == PlanSource::Human => return None,
            Fact::PlanProposed(_) | Fact::PlanFailed(_) => Role::Planner,
            Fact::PlanApproved(_) | Fact::PlanRejected(_) => Role::Gatekeeper,
            Fact::DryRun(_) | Fact::ExecDone(_) | Fact::ExecFailed(_) => Role::Executor,
            Fact::VerifyPass(_) | Fact::VerifyFailed(_) => Role::Verifier,
            Fact::CaseTransition(_)
            | Fact::CaseCreated(_)
            | Fact::GatePending(_)
            | Fact::GateVote(_)
            | Fact::StepResult(_)
            | Fact::RolledBack(_) => return None,
        })
    }

    /// Whether the role needs NATS.
    pub fn is_worker(self) -> bool {
        self != Role::Api
    }

    /// Whether the role embeds text (and so needs the librarian's model or
    /// embeddings server): the API (`/kb`), the planner (its context) and
    /// the librarian.
    pub fn embeds(self) -> bool {
        matches!(self, Role::Api | Role::Planner | Role::Librarian)
    }
}

/// The roles of one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roles(BTreeSet<Role>);

impl Roles {
    /// Comma-separated names as `--roles` takes them; `all` is every role.
    pub fn parse(names: &[String]) -> Result<Roles, String> {
        let mut roles = BTreeSet::new();
        for name in names.iter().map(|n| n.trim()) {
            if name == "all" {
                roles.extend(Role::iter());
                continue;
            }
            let role = name.parse::<Role>().map_err(|_| {
                let known: Vec<&str> = Role::iter().map(<&'static str>::from).collect();
                format!(
                    "unknown role {name:?}: expected {} or all",
                    known.join(", ")
                )
            })?;
            roles.insert(role);
        }
        Ok(Roles(roles))
    }

    pub fn has(&self, role: Role) -> bool {
        self.0.contains(&role)
    }

    pub fn any_worker(&self) -> bool {
        self.0.iter().any(|r| r.is_worker())
    }

    pub fn any_embeds(&self) -> bool {
        self.0.iter().any(|r| r.embeds())
    }
}

/// Creates (or updates) `spec`'s durable consumer and runs `handler` on it
/// until `shutdown`.
pub async fn spawn_consumer<H: Handler + 'static>(
    js: &async_nats::jetstream::Context,
    spec: &ConsumerSpec,
    pool: &sqlx::PgPool,
    handler: H,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
    let consumer = consumer::durable(js, spec).await?;
    Ok(tokio::spawn(consumer::run(
        consumer,
        pool.clone(),
        handler,
        spec.concurrency,
        shutdown.clone(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_by_name_and_all_means_every_one() {
        let all = Roles::parse(&["all".into()]).unwrap();
        assert!(Role::iter().all(|r| all.has(r)));
        let some = Roles::parse(&["api".into(), " relay".into()]).unwrap();
        assert!(some.has(Role::Relay) && !some.has(Role::Planner));
        assert!(some.any_worker());
        assert!(!Roles::parse(&["api".into()]).unwrap().any_worker());
        let err = Roles::parse(&["planer".into()]).unwrap_err();
        assert!(err.contains("unknown role \"planer\""), "{err}");
    }

    #[test]
    fn every_worker_role_but_the_relay_has_one_consumer() {
        for role in Role::iter() {
            let expected = !matches!(role, Role::Api | Role::Relay);
            assert_eq!(role.consumer().is_some(), expected, "{role}");
        }
    }
}
