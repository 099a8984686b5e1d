//! Cases: creating one, reading one, and the row lock every writer of a
//! case takes first.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::auth::TenantScope;
use crate::contract::fact::CaseCreated;
use crate::contract::{Fact, Message, Tenant};
use crate::model::Case;
use crate::pubsub::outbox;
use crate::{case_columns, case_in_scope};

#[derive(Debug, Clone)]
pub struct NewCase {
    pub tenant: Tenant,
    pub title: String,
    pub severity: String,
    pub kind: Option<String>,
    pub labels: Value,
}

pub async fn insert_case(
    conn: &mut PgConnection,
    new: &NewCase,
    actor: &str,
) -> Result<Case, sqlx::Error> {
    insert_case_with(conn, new, actor, Uuid::now_v7()).await
}

/// `insert_case` with its `created` timeline entry's id chosen by the
/// caller (an idempotent creation names it in its claim first).
pub async fn insert_case_with(
    conn: &mut PgConnection,
    new: &NewCase,
    actor: &str,
    timeline_id: Uuid,
) -> Result<Case, sqlx::Error> {
    let id = Uuid::now_v7();
    let case: Case = sqlx::query_as(concat!(
        "INSERT INTO ops_case (id, tenant, title, severity, kind, labels, correlation_id, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
        case_columns!()
    ))
    .bind(id)
    .bind(new.tenant.as_str())
    .bind(&new.title)
    .bind(&new.severity)
    .bind(&new.kind)
    .bind(&new.labels)
    .bind(Uuid::now_v7())
    .bind(actor)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO case_timeline (id, case_id, kind, to_status, version, actor, correlation_id) \
         VALUES ($1, $2, 'created', 'NEW', 1, $3, $4)",
    )
    .bind(timeline_id)
    .bind(case.id)
    .bind(actor)
    .bind(case.correlation_id)
    .execute(&mut *conn)
    .await?;
    // Subscribers learn of every case, whoever made it, with its creation.
    let created = Fact::CaseCreated(CaseCreated {
        title: case.title.clone(),
        severity: case.severity.clone(),
        kind: case.kind.clone(),
        labels: case.labels.clone(),
        created_by: actor.to_string(),
        timeline_id,
    });
    let message = Message::for_case(&case, actor, Some(timeline_id), created).to_envelope();
    let trace = Uuid::new_v4().simple().to_string();
    outbox::enqueue(
        conn,
        Some(case.id),
        &[message],
        &outbox::traceparent(&trace),
    )
    .await?;
    Ok(case)
}

/// The analyst's newest findings for the case (kept in the meta of its
/// `analysis_done` transition), if any.
pub async fn latest_findings<'e>(
    db: impl sqlx::PgExecutor<'e>,
    case: Uuid,
) -> Result<Option<crate::contract::fact::FindingsReport>, sqlx::Error> {
    let found: Option<sqlx::types::Json<crate::contract::fact::FindingsReport>> =
        sqlx::query_scalar(
            "SELECT meta #> '{fact,findings}' FROM case_timeline \
             WHERE case_id = $1 AND kind = 'transition' AND event = 'analysis_done' \
               AND meta #> '{fact,findings}' IS NOT NULL ORDER BY seq DESC LIMIT 1",
        )
        .bind(case)
        .fetch_optional(db)
        .await?;
    Ok(found.map(|f| f.0))
}

/// The case as it is now, without a lock (for readers and for workers
/// that only decide whether to start).
pub async fn read_case<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<Case>, sqlx::Error> {
    read_case_in(db, id, &TenantScope::All).await
}

/// The case row lock every writer of a case takes first. It counts itself
/// in `lock_seq` (a HOT update of an unindexed column): a one-statement
/// transition writes only if no locker came between its read and its write
/// (migration 35).
pub async fn lock_case(conn: &mut PgConnection, id: Uuid) -> Result<Option<Case>, sqlx::Error> {
    lock_case_in(conn, id, &TenantScope::All).await
}

/// The case, if it belongs to a tenant of `scope`: another tenant's case is
/// not found, exactly like one that does not exist.
pub async fn read_case_in<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: Uuid,
    scope: &TenantScope,
) -> Result<Option<Case>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        case_columns!(),
        " FROM ops_case WHERE ",
        case_in_scope!()
    ))
    .bind(id)
    .bind(scope.sql())
    .fetch_optional(db)
    .await
}

/// `lock_case` within `scope`.
pub async fn lock_case_in(
    conn: &mut PgConnection,
    id: Uuid,
    scope: &TenantScope,
) -> Result<Option<Case>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE ops_case SET lock_seq = lock_seq + 1 WHERE ",
        case_in_scope!(),
        " RETURNING ",
        case_columns!()
    ))
    .bind(id)
    .bind(scope.sql())
    .fetch_optional(&mut *conn)
    .await
}

/// Which cases a list shows: every filter optional, the scope always.
#[derive(Debug, Clone, Copy)]
pub struct CaseFilter<'a> {
    pub scope: &'a TenantScope,
    pub status: Option<crate::workflow::Status>,
    pub tenant: Option<&'a Tenant>,
    pub severity: Option<&'a str>,
    /// Cases older than this one (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// A page of cases, newest first, and whether older ones follow (the API's
/// `GET /cases` and the console's list).
pub async fn page<'e>(
    db: impl sqlx::PgExecutor<'e>,
    f: CaseFilter<'_>,
) -> Result<(Vec<Case>, bool), sqlx::Error> {
    let mut items: Vec<Case> = sqlx::query_as(concat!(
        "SELECT ",
        case_columns!(),
        " FROM ops_case WHERE ($1::text IS NULL OR status = $1) \
         AND ($2::text IS NULL OR tenant = $2) AND ($3::text IS NULL OR severity = $3) \
         AND ($4::uuid IS NULL OR id < $4) AND ($5::text[] IS NULL OR tenant = ANY($5)) \
         ORDER BY id DESC LIMIT $6"
    ))
    .bind(f.status.map(crate::workflow::Status::as_str))
    .bind(f.tenant.map(Tenant::as_str))
    .bind(f.severity)
    .bind(f.before)
    .bind(f.scope.sql())
    .bind(f.limit + 1)
    .fetch_all(db)
    .await?;
    let more = items.len() as i64 > f.limit;
    items.truncate(usize::try_from(f.limit).unwrap_or(0));
    Ok((items, more))
}
