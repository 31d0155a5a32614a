//! The embedded approval store: two tables in the gateway's SQLite file, so one gateway
//! needs nothing else and a restart keeps pending requests and their history.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatehouse_audit::Actor;
use gatehouse_identity::Identity;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::{ApprovalError, ApprovalRequest, ApprovalState, ApprovalStore, Vote};
use crate::gateway::Protocol;

/// [`ApprovalStore`] on SQLite (`{state_dir}/gatehouse.db`, next to the credentials).
pub struct SqliteApprovalStore {
    // One connection behind a mutex, like the credential store: every statement is a
    // single indexed lookup or write.
    conn: Mutex<Connection>,
}

const COLUMNS: &str = "id, requester, session, request_number, target, target_kind, target_labels, protocol, \
     action, request, request_sha256, approver_group, approvals_required, created_at_ms, expires_at_ms, state";

impl SqliteApprovalStore {
    pub fn open(path: &Path) -> Result<Self, ApprovalError> {
        let conn = Connection::open(path)?;
        // The credential store shares this file and may hold its write lock for a moment.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS approvals (
                 id TEXT PRIMARY KEY,
                 requester TEXT NOT NULL,
                 session TEXT NOT NULL,
                 request_number INTEGER NOT NULL,
                 target TEXT NOT NULL,
                 target_kind TEXT NOT NULL,
                 target_labels TEXT NOT NULL,
                 protocol TEXT NOT NULL,
                 action TEXT NOT NULL,
                 request TEXT NOT NULL,
                 request_sha256 TEXT NOT NULL,
                 approver_group TEXT NOT NULL,
                 approvals_required INTEGER NOT NULL,
                 created_at_ms INTEGER NOT NULL,
                 expires_at_ms INTEGER NOT NULL,
                 state TEXT NOT NULL
             );
             CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, created_at_ms);
             CREATE TABLE IF NOT EXISTS approval_votes (
                 approval TEXT NOT NULL REFERENCES approvals (id),
                 issuer TEXT NOT NULL,
                 subject TEXT NOT NULL,
                 approver TEXT NOT NULL,
                 approved INTEGER NOT NULL,
                 reason TEXT,
                 at_ms INTEGER NOT NULL,
                 UNIQUE (approval, issuer, subject)
             );",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite's own state consistent; carry on.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn votes(conn: &Connection, id: &str) -> Result<Vec<Vote>, ApprovalError> {
        let mut stmt = conn.prepare_cached(
            "SELECT approver, approved, reason, at_ms FROM approval_votes WHERE approval = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map(params![id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut votes = Vec::new();
        for row in rows {
            let (approver, approved, reason, at) = row?;
            votes.push(Vote {
                approver: serde_json::from_str::<Actor>(&approver).map_err(corrupt)?,
                approved,
                reason,
                at: from_ms(at),
            });
        }
        Ok(votes)
    }

    fn load(conn: &Connection, row: StoredRow) -> Result<ApprovalRequest, ApprovalError> {
        let votes = Self::votes(conn, &row.id)?;
        let requester: Identity = serde_json::from_str(&row.requester).map_err(corrupt)?;
        Ok(ApprovalRequest {
            requester,
            session: row.session,
            request_number: u64::try_from(row.request_number).map_err(corrupt)?,
            target: row.target,
            target_kind: row.target_kind.parse().map_err(|e: String| ApprovalError::Corrupt(e))?,
            target_labels: serde_json::from_str(&row.target_labels).map_err(corrupt)?,
            protocol: Protocol::parse(&row.protocol)
                .ok_or_else(|| ApprovalError::Corrupt(format!("unknown protocol {:?}", row.protocol)))?,
            action: row.action,
            request: row.request,
            request_sha256: row.request_sha256,
            approver_group: row.approver_group,
            approvals_required: u32::try_from(row.approvals_required).map_err(corrupt)?,
            created_at: from_ms(row.created_at),
            expires_at: from_ms(row.expires_at),
            state: ApprovalState::parse(&row.state)
                .ok_or_else(|| ApprovalError::Corrupt(format!("unknown state {:?}", row.state)))?,
            votes,
            id: row.id,
        })
    }
}

/// A row as stored, before its JSON columns are parsed.
struct StoredRow {
    id: String,
    requester: String,
    session: String,
    request_number: i64,
    target: String,
    target_kind: String,
    target_labels: String,
    protocol: String,
    action: String,
    request: String,
    request_sha256: String,
    approver_group: String,
    approvals_required: i64,
    created_at: i64,
    expires_at: i64,
    state: String,
}

impl StoredRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            requester: r.get(1)?,
            session: r.get(2)?,
            request_number: r.get(3)?,
            target: r.get(4)?,
            target_kind: r.get(5)?,
            target_labels: r.get(6)?,
            protocol: r.get(7)?,
            action: r.get(8)?,
            request: r.get(9)?,
            request_sha256: r.get(10)?,
            approver_group: r.get(11)?,
            approvals_required: r.get(12)?,
            created_at: r.get(13)?,
            expires_at: r.get(14)?,
            state: r.get(15)?,
        })
    }
}

impl ApprovalStore for SqliteApprovalStore {
    fn insert(&self, request: &ApprovalRequest) -> Result<(), ApprovalError> {
        self.conn().execute(
            &format!("INSERT INTO approvals ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
            params![
                request.id,
                serde_json::to_string(&request.requester).map_err(corrupt)?,
                request.session,
                i64::try_from(request.request_number).map_err(corrupt)?,
                request.target,
                request.target_kind.as_str(),
                serde_json::to_string(&request.target_labels).map_err(corrupt)?,
                request.protocol.as_str(),
                request.action,
                request.request,
                request.request_sha256,
                request.approver_group,
                i64::from(request.approvals_required),
                to_ms(request.created_at),
                to_ms(request.expires_at),
                request.state.as_str(),
            ],
        )?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<ApprovalRequest>, ApprovalError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1"),
                params![id],
                StoredRow::read,
            )
            .optional()?;
        row.map(|row| Self::load(&conn, row)).transpose()
    }

    fn list(&self, state: Option<ApprovalState>) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        let conn = self.conn();
        let rows = {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM approvals WHERE ?1 IS NULL OR state = ?1 ORDER BY created_at_ms, id"
            ))?;
            stmt.query_map(params![state.map(ApprovalState::as_str)], StoredRow::read)?
                .collect::<Result<Vec<_>, _>>()?
        };
        rows.into_iter().map(|row| Self::load(&conn, row)).collect()
    }

    fn record_vote(&self, id: &str, vote: &Vote) -> Result<bool, ApprovalError> {
        let inserted = self.conn().execute(
            "INSERT INTO approval_votes (approval, issuer, subject, approver, approved, reason, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (approval, issuer, subject) DO NOTHING",
            params![
                id,
                vote.approver.issuer,
                vote.approver.subject,
                serde_json::to_string(&vote.approver).map_err(corrupt)?,
                vote.approved,
                vote.reason,
                to_ms(vote.at),
            ],
        )?;
        Ok(inserted == 1)
    }

    fn set_state(&self, id: &str, from: ApprovalState, to: ApprovalState) -> Result<bool, ApprovalError> {
        let changed = self.conn().execute(
            "UPDATE approvals SET state = ?3 WHERE id = ?1 AND state = ?2",
            params![id, from.as_str(), to.as_str()],
        )?;
        Ok(changed == 1)
    }
}

fn corrupt(e: impl std::fmt::Display) -> ApprovalError {
    ApprovalError::Corrupt(e.to_string())
}

fn to_ms(t: SystemTime) -> i64 {
    // Times before 1970 cannot occur here; clamp rather than fail.
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}
