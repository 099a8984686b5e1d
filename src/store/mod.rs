//! Reading and writing the rows several roles share: cases (and the lock
//! every writer of a case takes first) and a plan's approvals. Used by the orchestrator, the
//! workers and the API; it decides nothing.

pub mod cases;
pub mod plans;

pub use cases::{
    NewCase, insert_case, insert_case_with, latest_findings, lock_case, lock_case_in, read_case,
    read_case_in,
};
pub use plans::{
    StoredDryRun, approvals, current_dryrun, dryrun_named, make_dryrun_current,
    quorum_on_current_dryrun, required_approvers,
};
