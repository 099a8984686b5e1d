//! The roles an `opsloop serve` process can run, and what each worker role
//! consumes: the one registry `main.rs`, the tests and the benchmarks wire
//! their consumers from (stream, durable name, subjects, concurrency).

use std::collections::{BTreeMap, BTreeSet};

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

/// Messages one process handles at once, per role, where the registry's
/// default does not suit: `OPSLOOP_ROLE_CONCURRENCY=planner=8,executor=16`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Concurrency(BTreeMap<Role, usize>);

/// More would hold more messages with their ack deadline running than a
/// process can start soon, and more database connections than a pool has.
pub const MAX_CONCURRENCY: usize = 256;

impl Concurrency {
    /// `role=n` pairs separated by commas; empty means every default.
    pub fn parse(text: &str) -> Result<Concurrency, String> {
        let mut map = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, n) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not role=number"))?;
            let role = Roles::parse(&[name.to_string()])?
                .0
                .into_iter()
                .next()
                .filter(|_| name.trim() != "all")
                .ok_or_else(|| format!("{pair:?} names no single role"))?;
            if role.consumer().is_none() {
                return Err(format!(
                    "the {role} role reads no stream: it has no concurrency"
                ));
            }
            if ordered(role) {
                return Err(format!(
                    "the {role} role handles one message at a time to keep the feed's order; \
                     run more processes with it instead"
                ));
            }
            let n: usize = n
                .trim()
                .parse()
                .map_err(|_| format!("{pair:?}: the concurrency must be a whole number"))?;
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(format!(
                    "{pair:?}: the concurrency must be 1 to {MAX_CONCURRENCY}"
                ));
            }
            if map.insert(role, n).is_some() {
                return Err(format!("the {role} role is named twice"));
            }
        }
        Ok(Concurrency(map))
    }

    /// `role`'s consumer with this setting applied.
    pub fn consumer(&self, role: Role) -> Option<ConsumerSpec> {
        let spec = role.consumer()?;
        Some(match self.0.get(&role) {
            Some(&n) => spec.with_concurrency(n),
            None => spec,
        })
    }
}

impl std::str::FromStr for Concurrency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Concurrency::parse(s)
    }
}

/// Roles whose consumer must apply messages in the feed's order.
fn ordered(role: Role) -> bool {
    matches!(role, Role::Orchestrator | Role::Librarian)
}

/// Creates (or updates) `spec`'s durable consumer and runs `handler` on it
/// until `shutdown`, then gives the messages in hand up to `grace`.
pub async fn spawn_consumer<H: Handler + 'static>(
    js: &async_nats::jetstream::Context,
    spec: &ConsumerSpec,
    pool: &sqlx::PgPool,
    handler: H,
    shutdown: &CancellationToken,
    grace: std::time::Duration,
) -> Result<tokio::task::JoinHandle<()>, async_nats::Error> {
    let consumer = consumer::durable(js, spec).await?;
    Ok(tokio::spawn(consumer::run(
        consumer,
        pool.clone(),
        handler,
        spec.concurrency,
        shutdown.clone(),
        grace,
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
    fn concurrency_is_set_per_role_and_refused_where_order_matters() {
        let c = Concurrency::parse(" planner=8, executor=16 ").unwrap();
        assert_eq!(c.consumer(Role::Planner).unwrap().concurrency, 8);
        assert_eq!(c.consumer(Role::Executor).unwrap().concurrency, 16);
        assert_eq!(
            c.consumer(Role::Verifier).unwrap().concurrency,
            8,
            "the default stays"
        );
        assert_eq!(Concurrency::parse("").unwrap(), Concurrency::default());
        for (bad, why) in [
            ("planner", "not role=number"),
            ("planer=2", "unknown role"),
            ("all=2", "no single role"),
            ("relay=2", "reads no stream"),
            ("orchestrator=4", "one message at a time"),
            ("librarian=2", "one message at a time"),
            ("planner=0", "1 to 256"),
            ("planner=257", "1 to 256"),
            ("planner=x", "whole number"),
            ("planner=2,planner=3", "named twice"),
        ] {
            let err = Concurrency::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn every_worker_role_but_the_relay_has_one_consumer() {
        for role in Role::iter() {
            let expected = !matches!(role, Role::Api | Role::Relay);
            assert_eq!(role.consumer().is_some(), expected, "{role}");
        }
    }
}
