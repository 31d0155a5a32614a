//! The two-way message loop between a client (already past startup) and the target:
//! every statement is classified and put to a gate before it may reach the target, and
//! result values pass the gate's masking on their way back, row by row.
//!
//! One task owns the connection state. Messages are framed by length and decoded only
//! where the relay must look; everything else is copied through. Output is batched:
//! each side is written once per read that produced complete messages.
//!
//! A refusal keeps the session's state what PostgreSQL would make it: when nothing is
//! outstanding at the target and no transaction is open, the relay answers by itself and
//! nothing is sent; otherwise the refused message is replaced by one that fails to parse
//! at the target, so the target aborts the transaction / skips to Sync exactly as it does
//! for any error, and its error is replaced by the refusal on the way back. The refused
//! statement's text never reaches the target.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::data::RowDescription;
use pgwire::messages::extendedquery::{Bind, Close, Describe, Execute, Parse};
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use gatehouse_mask::{ColumnRules, DataClass, MaskCounts, Masker};

use crate::classify::{self, Statement};
use crate::completion::{self, Outcome};
use crate::provenance::{ColumnTrace, Named, Provenance};
use crate::upstream::{MAX_BACKEND_MESSAGE, Upstream};
use crate::wire::{self, Frame};

/// Largest client message accepted (PostgreSQL's own limit).
pub const MAX_CLIENT_MESSAGE: usize = 0x4000_0000;

/// Text sent in place of a refused statement: fails in the target's parser.
const REFUSED_PLACEHOLDER: &str = "GATEHOUSE REFUSED STATEMENT";

/// Read buffers grow by this much when full, which bounds each batch.
const READ_CHUNK: usize = 64 * 1024;

/// The decision point the relay consults; the enforcement core implements it.
pub trait StatementGate: Send + Sync + 'static {
    /// Proof that a batch was allowed (the core's permits). The relay consumes it in the
    /// one place that forwards statement text, so nothing is forwarded undecided.
    type Grant: Send;
    /// A batch held for someone's approval; waiting on it yields the grant or a refusal.
    type Hold: Send;
    /// Decide a batch of statements (all statements of one simple Query, or the one of a
    /// Parse). Return a grant to forward, a hold to wait on, a refusal to refuse.
    fn decide(
        &self,
        sql: &str,
        statements: &[classify::Statement],
    ) -> impl Future<Output = Result<Gated<Self::Grant, Self::Hold>, Refusal>> + Send;
    /// Waits for a held batch to be approved or refused. The relay has sent the hold's
    /// notice to the client and keeps relaying the target's output meanwhile; dropping the
    /// future (the client went away) must withdraw the hold.
    fn wait(&self, hold: Self::Hold) -> impl Future<Output = Result<Self::Grant, Refusal>> + Send;
    /// Called for each result value whose wire form is text with its column name: may
    /// return a replacement (masking). Text-format DataRow values, binary-format values of
    /// string types (their binary form is the string), the JSON text inside binary jsonb,
    /// each element of binary string/JSON arrays, and each field of text-format COPY TO
    /// STDOUT rows all come here. The column name is empty when the relay could not learn
    /// it (always for COPY, which does not describe its columns).
    fn mask_value<'a>(&self, column: &str, value: &'a [u8]) -> Cow<'a, [u8]>;
    /// Column rules from configuration (and those the gate derived for views): with the
    /// name hints they say which source columns hold which class when the relay traces
    /// result columns to the columns they read.
    fn column_rules(&self) -> Arc<ColumnRules> {
        Arc::default()
    }
    /// Like `mask_value`, for a value of a column the relay traced to data classes (a column
    /// computed from `email`, a whole row, a column named by a rule). The default masks by
    /// name and content only.
    fn mask_traced<'a>(&self, column: &str, trace: &ColumnTrace, value: &'a [u8]) -> Cow<'a, [u8]> {
        let _ = trace;
        self.mask_value(column, value)
    }
    /// How every text value of one result column is masked, resolved once per result (at
    /// RowDescription, Describe or CopyOutResponse): the relay then masks the column's values
    /// itself, counting into its own [`MaskCounts`] that it hands over with `add_masked`,
    /// with no call into the gate per value. Must mask exactly as `mask_traced` (with a trace)
    /// or `mask_value` (without) would. `None`: the relay calls those per value.
    fn column_mask(&self, column: &str, trace: Option<&ColumnTrace>) -> Option<ColumnMask> {
        let _ = (column, trace);
        None
    }
    /// Masking counts of values the relay masked by a `column_mask`: called at least once per
    /// batch of target messages and always before `completed`, so a statement's counts are
    /// there by the time its completion is reported.
    fn add_masked(&self, counts: &MaskCounts) {
        let _ = counts;
    }
    /// Whether values of a traced column are masked for this session at all: binary values
    /// whose form the relay cannot rewrite are then sent as NULL, never as they are.
    fn masks_traced(&self, trace: &ColumnTrace) -> bool {
        let _ = trace;
        false
    }
    /// A binary value of a traced column was sent as NULL (for the masking counts).
    fn count_nulled(&self, trace: &ColumnTrace) {
        let _ = trace;
    }
    /// The request number of the first statement of a granted batch; the batch's other
    /// statements follow it in order (`first + i`). `None`: no completions are reported.
    fn first_request(&self, grant: &Self::Grant) -> Option<u64> {
        let _ = grant;
        None
    }
    /// The target answered a forwarded statement: called once per statement of a simple
    /// Query that ran (a statement after one that failed never ran and is not reported), and
    /// once per Execute (or for the Parse or Bind the target refused), after the answer was
    /// relayed to the client and its values passed the masking. Must not wait.
    fn completed(&self, request: u64, outcome: Outcome<'_>) {
        let _ = (request, outcome);
    }
    /// False when what runs now could not be recorded (the audit log failed): an Execute
    /// of a statement decided earlier is not forwarded then, the session ends.
    fn recording(&self) -> bool {
        true
    }
}

/// A column's masking as the gate resolved it: the relay applies it to each text value with
/// [`Masker::mask_hinted_bytes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnMask {
    /// The session's masker.
    pub masker: Masker,
    /// The class every value of the column is masked as (its name, a rule, its trace).
    pub class: Option<DataClass>,
}

impl ColumnMask {
    fn apply<'a>(&self, value: &'a [u8], counts: &mut MaskCounts) -> Cow<'a, [u8]> {
        self.masker.mask_hinted_bytes(self.class, value, counts)
    }
}

/// The gate's answer to a batch it does not refuse.
pub enum Gated<G, H> {
    /// Forward now.
    Granted(G),
    /// Tell the client `notice` (a NoticeResponse), then wait on `hold`.
    Held { notice: String, hold: H },
}

/// A refusal, sent to the client as an ErrorResponse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE ("42501" for a policy denial).
    pub sqlstate: String,
    /// Primary message.
    pub message: String,
    /// Optional DETAIL.
    pub detail: Option<String>,
    /// Optional HINT: what the client can do about it.
    pub hint: Option<String>,
}

/// What one relayed session did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Bytes read from the client.
    pub bytes_from_client: u64,
    /// Bytes written to the client.
    pub bytes_to_client: u64,
    /// Statement batches forwarded (Query or Parse).
    pub batches_forwarded: u64,
    /// Statement batches refused.
    pub batches_refused: u64,
    /// DataRow values replaced by the gate.
    pub values_masked: u64,
    /// Whether the client ended with Terminate (rather than by closing).
    pub terminated: bool,
}

/// Why a relayed session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to the client failed.
    #[error("client connection failed: {0}")]
    Client(std::io::Error),
    /// Reading from or writing to the target failed.
    #[error("target connection failed: {0}")]
    Target(std::io::Error),
    /// The client broke the protocol; it was told so before the connection closed.
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    /// The target broke the protocol or closed the connection.
    #[error("target protocol violation: {0}")]
    TargetProtocol(String),
    /// The gateway cannot go on (its audit log failed); the client was told so.
    #[error("{0}")]
    Unavailable(String),
}

/// One column of a result, as far as masking cares.
#[derive(Clone, Debug)]
struct Column {
    name: String,
    /// Result format: binary values are masked only where their type's binary form is known.
    binary: bool,
    /// Type OID from RowDescription (domains are reported as their base type).
    type_oid: u32,
    /// Where the column's values come from, when that adds classes to its name's.
    trace: Option<Arc<ColumnTrace>>,
    /// The session masks the traced classes: a binary value the relay cannot rewrite as
    /// text is sent as NULL.
    null_binary: bool,
    /// How its text values are masked, once resolved by the gate (`None`: per value).
    mask: Option<ColumnMask>,
}

/// What the next target messages answer, in request order.
#[derive(Debug)]
enum Pending {
    Query {
        refusal: Option<Refusal>,
        /// Provenance of each statement of the string, in order.
        traces: Vec<Arc<Provenance>>,
        /// The statement whose results stream now (counted by CommandComplete).
        next: usize,
        /// Request number of the first statement (`None`: a refusal's placeholder).
        request: Option<u64>,
        /// When the statement `next` began: forwarding, or the previous one's answer.
        since: Instant,
    },
    Parse {
        refusal: Option<Refusal>,
        name: String,
        trace: Option<Arc<Provenance>>,
        /// The request its decision was recorded under (`None`: a refusal's placeholder).
        request: Option<u64>,
        /// Parameter types the client gave (0: unspecified).
        param_types: Vec<u32>,
        since: Instant,
    },
    Bind {
        portal: String,
        statement: String,
        formats: Vec<i16>,
        /// The parameter values and their formats, turned into text once the target has
        /// bound them (the statement's parameter types are known by then).
        parameters: Vec<Option<Bytes>>,
        param_formats: Vec<i16>,
        since: Instant,
    },
    Describe {
        portal: bool,
        name: String,
        /// Sent by the relay itself: the answer is kept, not forwarded.
        injected: bool,
    },
    Execute {
        portal: String,
        columns: Option<Vec<Column>>,
        since: Instant,
        /// DataRows relayed for it (the count of a suspended execution).
        rows: u64,
    },
    Close {
        statement: bool,
        name: String,
    },
    Sync,
}

#[derive(Debug, Default)]
struct Portal {
    statement: String,
    formats: Vec<i16>,
    described: Option<Vec<Column>>,
    /// The request of its statement's Parse.
    request: Option<u64>,
    /// Its Bind parameters as text, for the audit record of its first execution.
    parameters: Vec<Option<String>>,
}

/// A prepared statement the target confirmed: the request its Parse was decided under and
/// its parameter types (from Parse, then from the target's ParameterDescription).
#[derive(Debug)]
struct Prepared {
    request: Option<u64>,
    param_types: Vec<u32>,
}

/// What to do after a batch of messages.
enum Flow<H> {
    Continue,
    Terminate,
    /// A Query or Parse is held for approval; the messages after it wait in the buffer.
    Hold(Held<H>),
}

/// A held Query or Parse, with what the relay needs to finish it once decided.
struct Held<H> {
    hold: H,
    frame: Frame,
    /// The prepared statement's name for a Parse; `None` for a Query.
    parse_name: Option<String>,
    /// Parameter types a held Parse gave.
    param_types: Vec<u32>,
    /// Provenance of the held statements.
    traces: Vec<Arc<Provenance>>,
}

/// A statement the target answered, to report once the answer is relayed.
struct Done {
    request: u64,
    since: Instant,
    /// DataRows relayed (for a suspended execution).
    rows: u64,
    parameters: Vec<Option<String>>,
    suspended: bool,
}

/// SQL-level cursors and prepared statements remembered per connection; past this the
/// memory is emptied (their rows are then masked by name and content only).
const MAX_NAMED_ROWS: usize = 256;

/// Client bytes buffered while a statement is held; beyond this the relay stops reading.
const MAX_HELD_INPUT: usize = 1024 * 1024;

struct Relay<'g, G> {
    gate: &'g G,
    /// Classifications of this connection's recent statement shapes.
    classified: classify::ClassifyCache,
    pending: VecDeque<Pending>,
    statements: HashMap<String, Vec<Column>>,
    /// Provenance of each prepared statement, by name.
    traced: HashMap<String, Arc<Provenance>>,
    /// Rows of SQL-level cursors (`DECLARE`) and prepared statements (`PREPARE`), by name:
    /// what a later `FETCH` or `EXECUTE` returns.
    named_rows: HashMap<(Named, String), Arc<Provenance>>,
    portals: HashMap<String, Portal>,
    /// Prepared statements the target confirmed, by name: what their executions answer.
    prepared: HashMap<String, Prepared>,
    /// Columns of the simple-query result now streaming.
    current: Option<Vec<Column>>,
    /// A text-format COPY TO STDOUT is streaming: its CopyData rows are masked.
    copy_out_text: bool,
    /// Traces of the streaming COPY's fields, by position.
    copy_traces: Vec<Option<Arc<ColumnTrace>>>,
    /// Every field's trace together, for rows that do not split into the expected fields.
    copy_union: Option<Arc<ColumnTrace>>,
    /// How the streaming COPY's fields are masked, by position, as the gate resolved it.
    copy_masks: CopyMasks,
    /// Counts of values masked by a resolved `ColumnMask`, not yet handed to the gate.
    masked: MaskCounts,
    /// Last transaction status the target reported.
    status: u8,
    /// After a refused Parse: drop client messages until Sync.
    discarding: bool,
    /// The Sync that ends the discard is answered by the relay, not the target.
    answer_sync_locally: bool,
    /// Extended-protocol messages went to the target since the last Sync.
    extended_open: bool,
    /// Statements the client asked the target to describe (client order: a statement
    /// named here will be described before any later Bind to it runs).
    client_described_statements: HashSet<String>,
    /// Portals whose result columns the relay will know before their Execute runs.
    client_described_portals: HashSet<String>,
    to_client: BytesMut,
    to_upstream: BytesMut,
    stats: RelayStats,
}

/// Relay a client session to the target through `gate` until either side ends it.
pub async fn run<C, G>(client: C, upstream: Upstream, gate: &G) -> Result<RelayStats, RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    G: StatementGate,
{
    let Upstream {
        stream: mut target,
        read_buf: mut tbuf,
        ..
    } = upstream;
    let mut client = client;
    let mut cbuf = BytesMut::with_capacity(READ_CHUNK);
    let mut relay = Relay {
        gate,
        classified: classify::ClassifyCache::default(),
        pending: VecDeque::new(),
        statements: HashMap::new(),
        traced: HashMap::new(),
        named_rows: HashMap::new(),
        portals: HashMap::new(),
        prepared: HashMap::new(),
        current: None,
        copy_out_text: false,
        copy_traces: Vec::new(),
        copy_union: None,
        copy_masks: CopyMasks::default(),
        masked: MaskCounts::default(),
        status: b'I',
        discarding: false,
        answer_sync_locally: false,
        extended_open: false,
        client_described_statements: HashSet::new(),
        client_described_portals: HashSet::new(),
        to_client: BytesMut::with_capacity(READ_CHUNK),
        to_upstream: BytesMut::with_capacity(READ_CHUNK),
        stats: RelayStats::default(),
    };
    // Bytes the target sent right after login (rare) are relayed first.
    relay.target_batch(&mut tbuf)?;
    relay.flush(&mut client, &mut target).await?;
    loop {
        if cbuf.capacity() - cbuf.len() < READ_CHUNK / 4 {
            cbuf.reserve(READ_CHUNK);
        }
        if tbuf.capacity() - tbuf.len() < READ_CHUNK / 4 {
            tbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = client.read_buf(&mut cbuf) => {
                let n = read.map_err(RelayError::Client)?;
                if n == 0 {
                    let _ = target.shutdown().await;
                    return Ok(relay.stats);
                }
                relay.stats.bytes_from_client += n as u64;
                loop {
                    let flow = match relay.client_batch(&mut cbuf).await {
                        Ok(flow) => flow,
                        Err(e) => {
                            let _ = relay.flush(&mut client, &mut target).await;
                            return Err(e);
                        }
                    };
                    relay.flush(&mut client, &mut target).await?;
                    match flow {
                        Flow::Continue => break,
                        Flow::Terminate => {
                            let _ = target.shutdown().await;
                            let _ = client.shutdown().await;
                            relay.stats.terminated = true;
                            return Ok(relay.stats);
                        }
                        Flow::Hold(held) => {
                            let Held {
                                hold,
                                frame,
                                parse_name,
                                param_types,
                                traces,
                            } = held;
                            let decided = {
                                let waiting = gate.wait(hold);
                                tokio::pin!(waiting);
                                loop {
                                    let room = cbuf.len() < MAX_HELD_INPUT;
                                    tokio::select! {
                                        decided = &mut waiting => break decided,
                                        // Later client messages wait their turn in the buffer;
                                        // a client that leaves withdraws the held statement.
                                        read = client.read_buf(&mut cbuf), if room => {
                                            let n = read.map_err(RelayError::Client)?;
                                            if n == 0 {
                                                let _ = target.shutdown().await;
                                                return Ok(relay.stats);
                                            }
                                            relay.stats.bytes_from_client += n as u64;
                                        }
                                        // Results of earlier statements keep flowing.
                                        read = target.read_buf(&mut tbuf) => {
                                            let n = read.map_err(RelayError::Target)?;
                                            relay.target_batch(&mut tbuf)?;
                                            relay.flush(&mut client, &mut target).await?;
                                            if n == 0 {
                                                let _ = client.shutdown().await;
                                                return Err(RelayError::TargetProtocol(
                                                    "the target closed the connection".to_owned(),
                                                ));
                                            }
                                        }
                                    }
                                }
                            };
                            match parse_name {
                                None => relay.query_decided(&frame, decided, traces)?,
                                Some(name) => relay.parse_decided(&frame, name, param_types, decided, traces)?,
                            }
                            relay.flush(&mut client, &mut target).await?;
                        }
                    }
                }
            }
            read = target.read_buf(&mut tbuf) => {
                let n = read.map_err(RelayError::Target)?;
                if n == 0 {
                    relay.target_batch(&mut tbuf)?;
                    relay.flush(&mut client, &mut target).await?;
                    let _ = client.shutdown().await;
                    return Err(RelayError::TargetProtocol(
                        "the target closed the connection".to_owned(),
                    ));
                }
                relay.target_batch(&mut tbuf)?;
                relay.flush(&mut client, &mut target).await?;
            }
        }
    }
}

impl<G: StatementGate> Relay<'_, G> {
    async fn flush<C, T>(&mut self, client: &mut C, target: &mut T) -> Result<(), RelayError>
    where
        C: AsyncWrite + Unpin,
        T: AsyncWrite + Unpin,
    {
        if !self.to_upstream.is_empty() {
            target.write_all(&self.to_upstream).await.map_err(RelayError::Target)?;
            target.flush().await.map_err(RelayError::Target)?;
            self.to_upstream.clear();
        }
        if !self.to_client.is_empty() {
            self.stats.bytes_to_client += self.to_client.len() as u64;
            client.write_all(&self.to_client).await.map_err(RelayError::Client)?;
            client.flush().await.map_err(RelayError::Client)?;
            self.to_client.clear();
        }
        Ok(())
    }

    /// Handle every complete client message in `buf`.
    async fn client_batch(&mut self, buf: &mut BytesMut) -> Result<Flow<G::Hold>, RelayError> {
        loop {
            let frame = match wire::try_frame(buf, MAX_CLIENT_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Ok(Flow::Continue),
                Err(e) => return Err(self.client_violation(e.to_string())),
            };
            match self.client_message(frame).await? {
                Flow::Continue => {}
                flow => return Ok(flow),
            }
        }
    }

    async fn client_message(&mut self, frame: Frame) -> Result<Flow<G::Hold>, RelayError> {
        match frame.tag {
            b'Q' => {
                let query: Query = self.decode_client(&frame)?;
                let (decided, traces) = self.decide(&query.query).await;
                match decided {
                    Ok(Gated::Held { notice, hold }) => {
                        self.push_notice(&notice)?;
                        return Ok(Flow::Hold(Held {
                            hold,
                            frame,
                            parse_name: None,
                            param_types: Vec::new(),
                            traces,
                        }));
                    }
                    Ok(Gated::Granted(grant)) => self.query_decided(&frame, Ok(grant), traces)?,
                    Err(refusal) => self.query_decided(&frame, Err(refusal), traces)?,
                }
            }
            b'F' => {
                // FunctionCall (libpq large objects, fast-path): not decodable by pgwire,
                // and a call by OID cannot be classified. Refused, connection kept.
                self.refuse_whole(Refusal {
                    sqlstate: "0A000".to_owned(),
                    message: "function call messages (fast-path, large objects) are not \
                              supported through the gateway"
                        .to_owned(),
                    detail: None,
                    hint: Some("use SQL functions (lo_get, lo_put, ...) instead of the fast-path API".to_owned()),
                })?;
            }
            b'P' => {
                if self.discarding {
                    return Ok(Flow::Continue);
                }
                let parse: Parse = self.decode_client(&frame)?;
                let name = parse.name.clone().unwrap_or_default();
                let (decided, traces) = self.decide(&parse.query).await;
                match decided {
                    Ok(Gated::Held { notice, hold }) => {
                        self.push_notice(&notice)?;
                        return Ok(Flow::Hold(Held {
                            hold,
                            frame,
                            parse_name: Some(name),
                            param_types: parse.type_oids,
                            traces,
                        }));
                    }
                    Ok(Gated::Granted(grant)) => {
                        self.parse_decided(&frame, name, parse.type_oids, Ok(grant), traces)?;
                    }
                    Err(refusal) => self.parse_decided(&frame, name, Vec::new(), Err(refusal), traces)?,
                }
            }
            b'B' => {
                if self.discarding {
                    return Ok(Flow::Continue);
                }
                let bind: Bind = self.decode_client(&frame)?;
                // Names are bound when the target confirms, in response order: a later
                // message in the same batch may reuse the unnamed portal.
                let portal = bind.portal_name.unwrap_or_default();
                let statement = bind.statement_name.unwrap_or_default();
                if self.client_described_statements.contains(&statement) {
                    self.client_described_portals.insert(portal.clone());
                } else {
                    self.client_described_portals.remove(&portal);
                }
                let pending = Pending::Bind {
                    portal,
                    statement,
                    formats: bind.result_column_format_codes,
                    parameters: bind.parameters,
                    param_formats: bind.parameter_format_codes,
                    since: Instant::now(),
                };
                self.forward_extended(frame, Some(pending));
            }
            b'D' => {
                if self.discarding {
                    return Ok(Flow::Continue);
                }
                let describe: Describe = self.decode_client(&frame)?;
                let portal = describe.target_type == b'P';
                let name = describe.name.unwrap_or_default();
                if portal {
                    self.client_described_portals.insert(name.clone());
                } else {
                    self.client_described_statements.insert(name.clone());
                }
                let pending = Pending::Describe {
                    portal,
                    name,
                    injected: false,
                };
                self.forward_extended(frame, Some(pending));
            }
            b'E' => {
                if self.discarding {
                    return Ok(Flow::Continue);
                }
                if !self.gate.recording() {
                    return Err(self.fatal(
                        "58000",
                        "gatehouse cannot write its audit log, so it runs no more statements; the session ends".into(),
                    ));
                }
                let execute: Execute = self.decode_client(&frame)?;
                let portal = execute.name.unwrap_or_default();
                if !self.client_described_portals.contains(&portal) {
                    self.inject_describe_portal(&portal)?;
                }
                let pending = Pending::Execute {
                    portal,
                    columns: None,
                    since: Instant::now(),
                    rows: 0,
                };
                self.forward_extended(frame, Some(pending));
            }
            b'C' => {
                if self.discarding {
                    return Ok(Flow::Continue);
                }
                let close: Close = self.decode_client(&frame)?;
                let statement = close.target_type == b'S';
                let name = close.name.unwrap_or_default();
                if statement {
                    self.client_described_statements.remove(&name);
                } else {
                    self.client_described_portals.remove(&name);
                }
                let pending = Pending::Close { statement, name };
                self.forward_extended(frame, Some(pending));
            }
            b'H' => {
                if !self.discarding {
                    self.forward_extended(frame, None);
                }
            }
            b'S' => {
                let local = self.discarding && self.answer_sync_locally;
                self.discarding = false;
                self.answer_sync_locally = false;
                self.extended_open = false;
                if local {
                    self.push_ready(self.status)?;
                } else {
                    self.to_upstream.put_slice(&frame.bytes);
                    self.pending.push_back(Pending::Sync);
                }
            }
            b'd' | b'c' | b'f' => self.to_upstream.put_slice(&frame.bytes),
            b'X' => {
                self.to_upstream.put_slice(&frame.bytes);
                return Ok(Flow::Terminate);
            }
            other => {
                return Err(self.client_violation(format!("invalid frontend message type {}", other)));
            }
        }
        Ok(Flow::Continue)
    }

    /// A simple Query, decided: forwarded with its grant, or refused whole.
    fn query_decided(
        &mut self,
        frame: &Frame,
        decided: Result<G::Grant, Refusal>,
        traces: Vec<Arc<Provenance>>,
    ) -> Result<(), RelayError> {
        match decided {
            Ok(grant) => {
                let request = self.gate.first_request(&grant);
                self.forward_decided(grant, &frame.bytes);
                self.remember_named(&traces);
                self.pending.push_back(Pending::Query {
                    refusal: None,
                    traces,
                    next: 0,
                    request,
                    since: Instant::now(),
                });
                Ok(())
            }
            Err(refusal) => self.refuse_whole(refusal),
        }
    }

    /// A Parse, decided: forwarded with its grant, or refused with the rest of its
    /// extended-protocol batch discarded up to Sync, as PostgreSQL does after an error.
    fn parse_decided(
        &mut self,
        frame: &Frame,
        name: String,
        param_types: Vec<u32>,
        decided: Result<G::Grant, Refusal>,
        traces: Vec<Arc<Provenance>>,
    ) -> Result<(), RelayError> {
        match decided {
            Ok(grant) => {
                let request = self.gate.first_request(&grant);
                self.forward_decided(grant, &frame.bytes);
                self.remember_named(&traces);
                self.client_described_statements.remove(&name);
                // A Parse holds one statement (PostgreSQL refuses more).
                let trace = traces.into_iter().next();
                self.pending.push_back(Pending::Parse {
                    refusal: None,
                    name,
                    trace,
                    request,
                    param_types,
                    since: Instant::now(),
                });
                self.extended_open = true;
            }
            Err(refusal) => {
                self.stats.batches_refused += 1;
                self.discarding = true;
                if self.can_answer_locally() {
                    self.answer_sync_locally = true;
                    self.push_refusal(&refusal)?;
                } else {
                    let placeholder = Parse::new(None, REFUSED_PLACEHOLDER.to_owned(), Vec::new());
                    wire::encode(&placeholder, &mut self.to_upstream)
                        .map_err(|e| RelayError::ClientProtocol(e.to_string()))?;
                    self.pending.push_back(Pending::Parse {
                        refusal: Some(refusal),
                        name: String::new(),
                        trace: None,
                        request: None,
                        param_types: Vec::new(),
                        since: Instant::now(),
                    });
                    self.extended_open = true;
                }
            }
        }
        Ok(())
    }

    /// Without a description the relay knows neither the names nor the formats of a
    /// portal's columns, and a client that skips Describe would get values past the
    /// column-name masking (and binary values past masking altogether). The relay asks
    /// the target itself and keeps the answer.
    fn inject_describe_portal(&mut self, portal: &str) -> Result<(), RelayError> {
        let name = (!portal.is_empty()).then(|| portal.to_owned());
        wire::encode(&Describe::new(b'P', name), &mut self.to_upstream)
            .map_err(|e| RelayError::ClientProtocol(e.to_string()))?;
        self.pending.push_back(Pending::Describe {
            portal: true,
            name: portal.to_owned(),
            injected: true,
        });
        self.client_described_portals.insert(portal.to_owned());
        Ok(())
    }

    fn forward_extended(&mut self, frame: Frame, pending: Option<Pending>) {
        self.to_upstream.put_slice(&frame.bytes);
        if let Some(p) = pending {
            self.pending.push_back(p);
        }
        self.extended_open = true;
    }

    /// The only way statement text reaches the target: with the gate's grant for it.
    fn forward_decided(&mut self, grant: G::Grant, bytes: &[u8]) {
        self.stats.batches_forwarded += 1;
        self.to_upstream.put_slice(bytes);
        drop(grant);
    }

    /// The gate's decision on a query string, and the provenance of its statements.
    async fn decide(&mut self, sql: &str) -> (Result<Gated<G::Grant, G::Hold>, Refusal>, Vec<Arc<Provenance>>) {
        let statements: Vec<Statement> = match self.classified.classify(sql) {
            Ok(statements) => statements,
            Err(e) => {
                let refusal = Refusal {
                    sqlstate: "42601".to_owned(),
                    message: e.to_string(),
                    detail: Some("the gateway refuses statements it cannot parse".to_owned()),
                    hint: None,
                };
                return (Err(refusal), Vec::new());
            }
        };
        let traces = statements.iter().map(|s| Arc::clone(&s.provenance)).collect();
        (self.gate.decide(sql, &statements).await, traces)
    }

    /// Remembers the rows of the cursors and prepared statements a forwarded batch defines
    /// (a refused one is never created: its name does not name these rows).
    fn remember_named(&mut self, traces: &[Arc<Provenance>]) {
        for trace in traces {
            if let Provenance::Defines { kind, name, rows } = &**trace {
                if self.named_rows.len() >= MAX_NAMED_ROWS {
                    self.named_rows.clear();
                }
                self.named_rows
                    .insert((*kind, name.clone()), Arc::new(Provenance::Rows(rows.clone())));
            }
        }
    }

    /// A NoticeResponse to the client (psql prints it at once, as `NOTICE:  ...`).
    fn push_notice(&mut self, message: &str) -> Result<(), RelayError> {
        let fields = vec![
            (b'S', "NOTICE".to_owned()),
            (b'V', "NOTICE".to_owned()),
            (b'C', "00000".to_owned()),
            (b'M', message.to_owned()),
        ];
        wire::encode(&NoticeResponse::new(fields), &mut self.to_client)
            .map_err(|e| RelayError::ClientProtocol(e.to_string()))
    }

    fn can_answer_locally(&self) -> bool {
        self.pending.is_empty() && self.status == b'I' && !self.extended_open
    }

    /// Refuse a simple Query or FunctionCall (answered by ErrorResponse + ReadyForQuery).
    fn refuse_whole(&mut self, refusal: Refusal) -> Result<(), RelayError> {
        self.stats.batches_refused += 1;
        if self.can_answer_locally() {
            self.push_refusal(&refusal)?;
            self.push_ready(self.status)
        } else {
            let placeholder = Query::new(REFUSED_PLACEHOLDER.to_owned());
            wire::encode(&placeholder, &mut self.to_upstream).map_err(|e| RelayError::ClientProtocol(e.to_string()))?;
            self.pending.push_back(Pending::Query {
                refusal: Some(refusal),
                traces: Vec::new(),
                next: 0,
                request: None,
                since: Instant::now(),
            });
            Ok(())
        }
    }

    fn push_refusal(&mut self, refusal: &Refusal) -> Result<(), RelayError> {
        let mut fields = vec![
            (b'S', "ERROR".to_owned()),
            (b'V', "ERROR".to_owned()),
            (b'C', refusal.sqlstate.clone()),
            (b'M', refusal.message.clone()),
        ];
        if let Some(detail) = &refusal.detail {
            fields.push((b'D', detail.clone()));
        }
        if let Some(hint) = &refusal.hint {
            fields.push((b'H', hint.clone()));
        }
        wire::encode(&ErrorResponse::new(fields), &mut self.to_client)
            .map_err(|e| RelayError::ClientProtocol(e.to_string()))
    }

    fn push_ready(&mut self, status: u8) -> Result<(), RelayError> {
        let status = TransactionStatus::try_from(status).map_err(|e| RelayError::TargetProtocol(e.to_string()))?;
        wire::encode(&ReadyForQuery::new(status), &mut self.to_client)
            .map_err(|e| RelayError::TargetProtocol(e.to_string()))
    }

    fn decode_client<M: pgwire::messages::Message>(&mut self, frame: &Frame) -> Result<M, RelayError> {
        wire::decode(frame).map_err(|e| self.client_violation(e.to_string()))
    }

    /// Tell the client what it did wrong (FATAL 08P01), as PostgreSQL does before closing.
    fn client_violation(&mut self, message: String) -> RelayError {
        self.push_fatal("08P01", &message);
        RelayError::ClientProtocol(message)
    }

    /// Ends the session on the gateway's side with a FATAL error the client is shown.
    fn fatal(&mut self, sqlstate: &str, message: String) -> RelayError {
        self.push_fatal(sqlstate, &message);
        RelayError::Unavailable(message)
    }

    fn push_fatal(&mut self, sqlstate: &str, message: &str) {
        let fields = vec![
            (b'S', "FATAL".to_owned()),
            (b'V', "FATAL".to_owned()),
            (b'C', sqlstate.to_owned()),
            (b'M', message.to_owned()),
        ];
        let _ = wire::encode(&ErrorResponse::new(fields), &mut self.to_client);
    }

    /// Handle every complete target message in `buf`.
    fn target_batch(&mut self, buf: &mut BytesMut) -> Result<(), RelayError> {
        let result = loop {
            let frame = match wire::try_frame(buf, MAX_BACKEND_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(RelayError::TargetProtocol(e.to_string())),
            };
            if let Err(e) = self.target_message(frame) {
                break Err(e);
            }
        };
        self.hand_over_masked();
        result
    }

    /// The counts of values masked by resolved column masks go to the gate (once per batch of
    /// rows, not per value).
    fn hand_over_masked(&mut self) {
        if !self.masked.is_empty() {
            self.gate.add_masked(&self.masked);
            self.masked = MaskCounts::default();
        }
    }

    fn target_message(&mut self, frame: Frame) -> Result<(), RelayError> {
        // The statement this message finishes, reported once the message is relayed.
        let mut done = None;
        match frame.tag {
            b'D' => return self.data_row(frame),
            b'H' => {
                // Binary COPY is not masked: its rows carry neither column names nor type
                // OIDs, so which fields are strings cannot be known (classification makes it
                // admin).
                self.copy_out_text = frame.bytes.get(5) == Some(&0);
                self.copy_out_started(&frame.bytes);
            }
            b'd' if self.copy_out_text => return self.copy_row(frame),
            b'c' => self.copy_out_text = false,
            b'Z' => {
                let status = frame.bytes.get(5).copied().unwrap_or(b'I');
                self.status = status;
                self.current = None;
                self.copy_out_text = false;
                while let Some(p) = self.pending.pop_front() {
                    if matches!(p, Pending::Sync | Pending::Query { .. }) {
                        break;
                    }
                }
            }
            b'E' => {
                self.copy_out_text = false;
                done = self.failed_statement();
                let replaced = match self.pending.front_mut() {
                    Some(Pending::Query { refusal, .. }) => refusal.take(),
                    Some(Pending::Parse { refusal, .. }) => refusal.take(),
                    _ => None,
                };
                let extended = matches!(
                    self.pending.front(),
                    Some(
                        Pending::Parse { .. }
                            | Pending::Bind { .. }
                            | Pending::Describe { .. }
                            | Pending::Execute { .. }
                            | Pending::Close { .. }
                    )
                );
                if extended {
                    // The target skips to Sync after an error: so do the expectations.
                    while !matches!(self.pending.front(), None | Some(Pending::Sync)) {
                        self.pending.pop_front();
                    }
                }
                if let Some(refusal) = replaced {
                    return self.push_refusal(&refusal);
                }
            }
            b'1' | b'2' | b'3' => match self.pending.pop_front() {
                Some(Pending::Parse {
                    name,
                    trace,
                    request,
                    param_types,
                    ..
                }) => {
                    self.prepared.insert(name.clone(), Prepared { request, param_types });
                    self.statements.remove(&name);
                    match trace {
                        Some(trace) => self.traced.insert(name, trace),
                        None => self.traced.remove(&name),
                    };
                }
                Some(Pending::Bind {
                    portal,
                    statement,
                    formats,
                    parameters,
                    param_formats,
                    ..
                }) => {
                    let prepared = self.prepared.get(&statement);
                    let request = prepared.and_then(|p| p.request);
                    // Only a gate that hears of completions needs the parameters as text.
                    let parameters = match (request, prepared) {
                        (Some(_), Some(p)) => completion::parameters(&parameters, &param_formats, &p.param_types),
                        _ => Vec::new(),
                    };
                    self.portals.insert(
                        portal,
                        Portal {
                            statement,
                            formats,
                            described: None,
                            request,
                            parameters,
                        },
                    );
                }
                Some(Pending::Close { statement, name }) => {
                    if statement {
                        self.prepared.remove(&name);
                        self.statements.remove(&name);
                        self.traced.remove(&name);
                    } else {
                        self.portals.remove(&name);
                    }
                }
                _ => {}
            },
            b'T' => {
                let description: RowDescription =
                    wire::decode(&frame).map_err(|e| RelayError::TargetProtocol(e.to_string()))?;
                let mut columns: Vec<Column> = description
                    .fields
                    .into_iter()
                    .map(|f| Column {
                        name: f.name,
                        binary: f.format_code != 0,
                        type_oid: f.type_id,
                        trace: None,
                        null_binary: false,
                        mask: None,
                    })
                    .collect();
                match self.pending.front_mut() {
                    Some(Pending::Describe { .. }) => {
                        if let Some(Pending::Describe { portal, name, injected }) = self.pending.pop_front() {
                            self.described(portal, name, columns);
                            if injected {
                                return Ok(());
                            }
                        }
                    }
                    _ => {
                        let trace = self.query_trace();
                        self.trace_columns(&mut columns, trace.as_deref());
                        self.resolve_masks(&mut columns);
                        self.current = Some(columns);
                    }
                }
            }
            b't' => {
                // ParameterDescription: the statement's parameter types, resolved by the
                // target (binary parameters are decoded by them for the audit).
                if let Some(Pending::Describe {
                    portal: false, name, ..
                }) = self.pending.front()
                    && let Some(prepared) = self.prepared.get_mut(name)
                    && prepared.request.is_some()
                {
                    prepared.param_types = completion::parameter_types(&frame.bytes);
                }
            }
            b'n' => {
                if let Some(Pending::Describe { portal, name, injected }) = self.pending.pop_front() {
                    self.described(portal, name, Vec::new());
                    if injected {
                        return Ok(());
                    }
                }
            }
            b'C' | b'I' | b's' => {
                match self.pending.front_mut() {
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            portal, since, rows, ..
                        }) = self.pending.pop_front()
                        {
                            done = self.executed(&portal, since, rows, frame.tag == b's');
                        }
                    }
                    // The next result of the string is the next statement's.
                    Some(Pending::Query {
                        next,
                        request,
                        traces,
                        since,
                        ..
                    }) if frame.tag == b'C' => {
                        if let Some(first) = *request
                            && *next < traces.len()
                        {
                            let now = Instant::now();
                            done = Some(Done {
                                request: first + *next as u64,
                                since: std::mem::replace(since, now),
                                rows: 0,
                                parameters: Vec::new(),
                                suspended: false,
                            });
                        }
                        *next += 1;
                    }
                    _ => {}
                }
                self.current = None;
                self.copy_out_text = false;
            }
            _ => {}
        }
        if matches!(frame.tag, b'E' | b'N') {
            // PostgreSQL echoes values in its messages (`DETAIL:  Failing row contains (...)`,
            // a RAISE NOTICE): they pass the same detectors as result values.
            if let Some((message, masked)) = scrub_message(self.gate, &frame.bytes) {
                self.stats.values_masked += masked;
                self.to_client.put_slice(&message);
                self.report(done, &frame);
                return Ok(());
            }
        }
        self.to_client.put_slice(&frame.bytes);
        self.report(done, &frame);
        Ok(())
    }

    /// The statement an ErrorResponse answers, when it is one the gate allowed: the
    /// simple-query statement now running, or the Parse, Bind or Execute the target refused.
    fn failed_statement(&mut self) -> Option<Done> {
        let started = |request: u64, since: Instant, parameters: Vec<Option<String>>| Done {
            request,
            since,
            rows: 0,
            parameters,
            suspended: false,
        };
        match self.pending.front_mut()? {
            Pending::Query {
                refusal: None,
                request: Some(first),
                traces,
                next,
                since,
            } if *next < traces.len() => Some(started(*first + *next as u64, *since, Vec::new())),
            Pending::Parse {
                refusal: None,
                request: Some(request),
                since,
                ..
            } => Some(started(*request, *since, Vec::new())),
            Pending::Bind {
                statement,
                parameters,
                param_formats,
                since,
                ..
            } => {
                let prepared = self.prepared.get(statement)?;
                let parameters = completion::parameters(parameters, param_formats, &prepared.param_types);
                Some(started(prepared.request?, *since, parameters))
            }
            Pending::Execute { portal, since, .. } => {
                let since = *since;
                let portal = portal.clone();
                self.executed(&portal, since, 0, false)
            }
            _ => None,
        }
    }

    /// An execution of `portal` ended: its parameters go with its first record.
    fn executed(&mut self, portal: &str, since: Instant, rows: u64, suspended: bool) -> Option<Done> {
        let portal = self.portals.get_mut(portal)?;
        Some(Done {
            request: portal.request?,
            since,
            rows,
            parameters: std::mem::take(&mut portal.parameters),
            suspended,
        })
    }

    /// Tells the gate what the target answered to a finished statement.
    fn report(&mut self, done: Option<Done>, frame: &Frame) {
        let Some(done) = done else { return };
        // The statement's masking counts go with its completion.
        self.hand_over_masked();
        let mut outcome = Outcome {
            duration: done.since.elapsed(),
            parameters: done.parameters,
            suspended: done.suspended,
            ..Outcome::default()
        };
        match frame.tag {
            b'C' => {
                outcome.command_tag = completion::command_tag(&frame.bytes);
                outcome.rows = outcome.command_tag.and_then(completion::tag_rows);
            }
            b'E' => outcome.error = Some(completion::error_fields(&frame.bytes)),
            b's' => outcome.rows = Some(done.rows),
            _ => {}
        }
        self.gate.completed(done.request, outcome);
    }

    fn described(&mut self, portal: bool, name: String, mut columns: Vec<Column>) {
        let statement = if portal {
            self.portals.get(&name).map(|p| p.statement.as_str())
        } else {
            Some(name.as_str())
        };
        let trace = statement.and_then(|s| self.traced.get(s)).cloned();
        self.trace_columns(&mut columns, trace.as_deref());
        self.resolve_masks(&mut columns);
        if portal {
            if let Some(p) = self.portals.get_mut(&name) {
                p.described = Some(columns);
            }
        } else {
            self.statements.insert(name, columns);
        }
    }

    /// Provenance of the simple-query statement whose results arrive now.
    fn query_trace(&self) -> Option<Arc<Provenance>> {
        match self.pending.front() {
            Some(Pending::Query { traces, next, .. }) => traces.get(*next).cloned(),
            _ => None,
        }
    }

    /// Provenance of what the target answers now: the simple-query statement or the
    /// executing portal's prepared statement.
    fn current_trace(&self) -> Option<Arc<Provenance>> {
        match self.pending.front() {
            Some(Pending::Execute { portal, .. }) => {
                let statement = &self.portals.get(portal)?.statement;
                self.traced.get(statement).cloned()
            }
            _ => self.query_trace(),
        }
    }

    /// What a statement's rows come from: a `FETCH` or `EXECUTE` returns the rows its
    /// cursor's or prepared statement's definition traced.
    fn rows_of<'p>(&'p self, provenance: &'p Provenance) -> Option<&'p Provenance> {
        match provenance {
            Provenance::Rows(_) => Some(provenance),
            Provenance::Uses { kind, name } => self.named_rows.get(&(*kind, name.clone())).map(|p| &**p),
            Provenance::Untraced | Provenance::Defines { .. } => None,
        }
    }

    /// Attach to each column what its values derive from (nothing when that adds no class
    /// to the column's name: those stay on the name-only path).
    fn trace_columns(&self, columns: &mut [Column], provenance: Option<&Provenance>) {
        let Some(provenance) = provenance.and_then(|p| self.rows_of(p)) else {
            return;
        };
        let rules = self.gate.column_rules();
        if provenance.traces_nothing(&rules) {
            return;
        }
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let traces = provenance.trace_columns(&names, &rules);
        for (column, trace) in columns.iter_mut().zip(traces) {
            if let Some(trace) = trace {
                column.null_binary = self.gate.masks_traced(&trace);
                column.trace = Some(Arc::new(trace));
            }
        }
    }

    /// Each text column's masking, resolved by the gate once for the whole result.
    fn resolve_masks(&self, columns: &mut [Column]) {
        for column in columns {
            column.mask = self.gate.column_mask(&column.name, column.trace.as_deref());
        }
    }

    /// CopyOutResponse: the fields of the rows to come, traced by position (COPY names no
    /// columns).
    fn copy_out_started(&mut self, message: &[u8]) {
        self.copy_out_traced(message);
        self.copy_masks = CopyMasks {
            fields: self
                .copy_traces
                .iter()
                .map(|t| self.gate.column_mask("", t.as_deref()))
                .collect(),
            union: self.gate.column_mask("", self.copy_union.as_deref()),
            untraced: self.gate.column_mask("", None),
        };
    }

    fn copy_out_traced(&mut self, message: &[u8]) {
        self.copy_traces.clear();
        self.copy_union = None;
        let Some(count) = message.get(6..8).map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))) else {
            return;
        };
        let Some(current) = self.current_trace() else {
            return;
        };
        let Some(provenance) = self.rows_of(&current) else {
            return;
        };
        let names = vec![""; count];
        let traces = provenance.trace_columns(&names, &self.gate.column_rules());
        let mut union = ColumnTrace::default();
        for trace in traces.iter().flatten() {
            union.classes = union.classes.union(trace.classes).union(trace.row_classes);
            for t in &trace.rows {
                if !union.rows.contains(t) {
                    union.rows.push(t.clone());
                }
            }
        }
        self.copy_traces = traces.into_iter().map(|t| t.map(Arc::new)).collect();
        if !union.is_empty() {
            self.copy_union = Some(Arc::new(union));
        }
    }

    /// Columns of a portal: its own description, or its statement's with Bind's formats.
    fn portal_columns(&self, portal: &str) -> Vec<Column> {
        let Some(p) = self.portals.get(portal) else {
            return Vec::new();
        };
        if let Some(described) = &p.described {
            return described.clone();
        }
        let Some(columns) = self.statements.get(&p.statement) else {
            return Vec::new();
        };
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let format = match p.formats.len() {
                    0 => 0,
                    1 => p.formats[0],
                    _ => p.formats.get(i).copied().unwrap_or(0),
                };
                Column {
                    name: c.name.clone(),
                    binary: format != 0,
                    type_oid: c.type_oid,
                    trace: c.trace.clone(),
                    null_binary: c.null_binary,
                    mask: c.mask.clone(),
                }
            })
            .collect()
    }

    /// A CopyData row of a text-format COPY TO STDOUT (the target sends one row per
    /// message): each field passes the gate under an empty column name.
    fn copy_row(&mut self, frame: Frame) -> Result<(), RelayError> {
        let traces = CopyTraces {
            fields: &self.copy_traces,
            union: self.copy_union.as_deref(),
            masks: &self.copy_masks,
        };
        let masked = mask_copy_row_into(self.gate, &traces, &frame.bytes, &mut self.to_client, &mut self.masked)
            .map_err(RelayError::TargetProtocol)?;
        self.stats.values_masked += masked;
        Ok(())
    }

    fn data_row(&mut self, frame: Frame) -> Result<(), RelayError> {
        let resolved = match self.pending.front() {
            Some(Pending::Execute {
                portal, columns: None, ..
            }) => Some(self.portal_columns(portal)),
            _ => None,
        };
        if let Some(Pending::Execute { columns, rows, .. }) = self.pending.front_mut() {
            *rows += 1;
            if let Some(cols) = resolved {
                *columns = Some(cols);
            }
        }
        let columns: &[Column] = match self.pending.front() {
            Some(Pending::Execute { columns: Some(c), .. }) => c,
            _ => self.current.as_deref().unwrap_or(&[]),
        };
        let masked = mask_row_into(self.gate, columns, &frame.bytes, &mut self.to_client, &mut self.masked)
            .map_err(RelayError::TargetProtocol)?;
        self.stats.values_masked += masked;
        Ok(())
    }
}

/// Type OIDs whose binary send format is the value's text, byte for byte (textsend,
/// varcharsend, bpcharsend, namesend, unknownsend, json_send).
const TEXT_OIDS: [u32; 6] = [25, 1043, 1042, 19, 705, 114];

/// OIDs from here on are types created in the database (extensions such as citext, enums,
/// composites): their OIDs differ per database, so their binary form is not known by OID.
const FIRST_USER_OID: u32 = 16384;

/// jsonb: binary form is a version byte followed by the JSON text.
const JSONB_OID: u32 = 3802;

/// Version byte of jsonb's binary form that the relay knows (the only one PostgreSQL has).
const JSONB_VERSION: u8 = 1;

/// Arrays of the types above (text[], varchar[], bpchar[], name[], json[], jsonb[]):
/// elements are masked one by one, dispatched on the element OID the array carries.
const ARRAY_OIDS: [u32; 6] = [1009, 1015, 1014, 1003, 199, 3807];

/// PostgreSQL's MAXDIM: arrays claiming more dimensions are malformed.
const MAX_ARRAY_DIMS: i32 = 6;

/// Pass each value of a DataRow through the gate; a new message if any changed.
/// Columns the relay could not name are offered under an empty name, never skipped.
#[cfg(test)]
fn mask_row<G: StatementGate>(gate: &G, columns: &[Column], row: &[u8]) -> Result<Option<(BytesMut, u64)>, String> {
    let mut out = BytesMut::new();
    let masked = mask_row_into(gate, columns, row, &mut out, &mut MaskCounts::default())?;
    Ok((masked > 0).then_some((out, masked)))
}

/// `mask_row` appending straight to the client's output: the row as it came when no value
/// changed, else the row rewritten (unchanged stretches copied whole). Returns how many
/// values were replaced; on an error nothing is appended. Values of columns with a resolved
/// mask are counted in `counts`, the others by the gate.
fn mask_row_into<G: StatementGate>(
    gate: &G,
    columns: &[Column],
    row: &[u8],
    out: &mut BytesMut,
    counts: &mut MaskCounts,
) -> Result<u64, String> {
    let start = out.len();
    let result = rewrite_row(gate, columns, row, out, counts);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn rewrite_row<G: StatementGate>(
    gate: &G,
    columns: &[Column],
    row: &[u8],
    out: &mut BytesMut,
    counts: &mut MaskCounts,
) -> Result<u64, String> {
    let start = out.len();
    let mut body = row.get(5..).ok_or("short DataRow")?;
    if body.len() < 2 {
        return Err("short DataRow".to_owned());
    }
    let count = body.get_i16();
    let mut masked = 0u64;
    // Bytes of `row` before this offset are in `out` already (once something changed).
    let mut copied = 0usize;
    for i in 0..count.max(0) as usize {
        let at = row.len() - body.len();
        if body.len() < 4 {
            return Err("truncated DataRow".to_owned());
        }
        let len = body.get_i32();
        if len < 0 {
            continue;
        }
        let len = len as usize;
        let value = body.get(..len).ok_or("truncated DataRow value")?;
        body = &body[len..];
        let replaced = match columns.get(i) {
            Some(c) if c.binary => {
                if c.null_binary && !binary_reads_as_text(c.type_oid, value) {
                    // A masked class in a binary form the relay cannot rewrite: NULL is a
                    // valid value of every type, the real one is not sent.
                    if let Some(trace) = &c.trace {
                        gate.count_nulled(trace);
                    }
                    None
                } else {
                    match mask_binary(gate, &c.name, c.trace.as_deref(), c.type_oid, value)? {
                        Cow::Borrowed(_) => continue,
                        Cow::Owned(v) => Some(v),
                    }
                }
            }
            Some(Column { mask: Some(mask), .. }) => match mask.apply(value, counts) {
                Cow::Borrowed(_) => continue,
                Cow::Owned(v) => Some(v),
            },
            Some(c) => match leaf(gate, &c.name, c.trace.as_deref(), value) {
                Cow::Borrowed(_) => continue,
                Cow::Owned(v) => Some(v),
            },
            None => match gate.mask_value("", value) {
                Cow::Borrowed(_) => continue,
                Cow::Owned(v) => Some(v),
            },
        };
        if masked == 0 {
            out.reserve(row.len() + 64);
        }
        masked += 1;
        out.put_slice(&row[copied..at]);
        match replaced {
            None => out.put_i32(-1),
            Some(v) => put_value(out, &v)?,
        }
        copied = row.len() - body.len();
    }
    if masked == 0 {
        out.put_slice(row);
        return Ok(0);
    }
    // Bytes after the last value (none from a sound target) are dropped with the old length.
    out.put_slice(&row[copied..row.len() - body.len()]);
    set_length(out, start)?;
    Ok(masked)
}

/// One text value through the gate: by its trace when it has one.
fn leaf<'a, G: StatementGate>(gate: &G, column: &str, trace: Option<&ColumnTrace>, value: &'a [u8]) -> Cow<'a, [u8]> {
    match trace {
        Some(trace) => gate.mask_traced(column, trace, value),
        None => gate.mask_value(column, value),
    }
}

/// Whether `mask_binary` reads a binary value of this type as text (and so can mask it).
fn binary_reads_as_text(oid: u32, value: &[u8]) -> bool {
    TEXT_OIDS.contains(&oid)
        || oid == JSONB_OID
        || ARRAY_OIDS.contains(&oid)
        || (oid >= FIRST_USER_OID && std::str::from_utf8(value).is_ok())
}

/// Append a length-prefixed value (DataRow, array element).
fn put_value(out: &mut BytesMut, v: &[u8]) -> Result<(), String> {
    out.put_i32(i32::try_from(v.len()).map_err(|_| "masked value too long")?);
    out.put_slice(v);
    Ok(())
}

/// Fill in the length of a message built with a zero length after its type byte.
fn finish_message(mut out: BytesMut) -> Result<BytesMut, String> {
    set_length(&mut out, 0)?;
    Ok(out)
}

/// Writes the length of the message that starts at `start` in `out` and runs to its end.
fn set_length(out: &mut BytesMut, start: usize) -> Result<(), String> {
    let len = i32::try_from(out.len() - start - 1).map_err(|_| "masked row too long")?;
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Mask a binary-format value where its type's binary form is known to hold text.
fn mask_binary<'a, G: StatementGate>(
    gate: &G,
    column: &str,
    trace: Option<&ColumnTrace>,
    oid: u32,
    value: &'a [u8],
) -> Result<Cow<'a, [u8]>, String> {
    if ARRAY_OIDS.contains(&oid) {
        mask_binary_array(gate, column, trace, value)
    } else {
        Ok(mask_binary_scalar(gate, column, trace, oid, value))
    }
}

fn mask_binary_scalar<'a, G: StatementGate>(
    gate: &G,
    column: &str,
    trace: Option<&ColumnTrace>,
    oid: u32,
    value: &'a [u8],
) -> Cow<'a, [u8]> {
    if TEXT_OIDS.contains(&oid) {
        return leaf(gate, column, trace, value);
    }
    if oid == JSONB_OID {
        // jsonb_recv refuses any other version, so no client reads another: offering the
        // whole value keeps an unexpected one from passing unmasked.
        let Some((&JSONB_VERSION, json)) = value.split_first() else {
            return leaf(gate, column, trace, value);
        };
        return match leaf(gate, column, trace, json) {
            Cow::Borrowed(_) => Cow::Borrowed(value),
            Cow::Owned(masked) => {
                let mut out = Vec::with_capacity(masked.len() + 1);
                out.push(JSONB_VERSION);
                out.extend_from_slice(&masked);
                Cow::Owned(out)
            }
        };
    }
    // citext and enum labels are sent as their text; a user-defined type whose binary
    // value reads as text is masked as text (at worst a masked value a client cannot
    // decode, never an unmasked one). Other binary forms (composites, ranges) pass.
    if oid >= FIRST_USER_OID && std::str::from_utf8(value).is_ok() {
        return leaf(gate, column, trace, value);
    }
    Cow::Borrowed(value)
}

/// Mask each element of a binary array (array_send): ndim, has-null flag, element OID,
/// (size, lower bound) per dimension, then each element length-prefixed (-1 is NULL).
fn mask_binary_array<'a, G: StatementGate>(
    gate: &G,
    column: &str,
    trace: Option<&ColumnTrace>,
    value: &'a [u8],
) -> Result<Cow<'a, [u8]>, String> {
    let mut body = value;
    if body.len() < 12 {
        return Err("truncated array value".to_owned());
    }
    let ndim = body.get_i32();
    let _has_null = body.get_i32();
    let elem_oid = body.get_u32();
    if !(0..=MAX_ARRAY_DIMS).contains(&ndim) {
        return Err(format!("array value with {ndim} dimensions"));
    }
    let mut count: usize = usize::from(ndim > 0);
    for _ in 0..ndim {
        if body.len() < 8 {
            return Err("truncated array value".to_owned());
        }
        let size = usize::try_from(body.get_i32()).map_err(|_| "negative array dimension")?;
        let _lower_bound = body.get_i32();
        count = count.checked_mul(size).ok_or("array dimensions overflow")?;
    }
    // Every element takes at least its 4-byte length: bounds the allocation below.
    if count > body.len() / 4 {
        return Err("array value shorter than its dimensions".to_owned());
    }
    let header = &value[..value.len() - body.len()];
    let mut elements: Vec<Option<Cow<'a, [u8]>>> = Vec::with_capacity(count);
    let mut changed = false;
    for _ in 0..count {
        if body.len() < 4 {
            return Err("truncated array value".to_owned());
        }
        let len = body.get_i32();
        if len < 0 {
            elements.push(None);
            continue;
        }
        let len = len as usize;
        let element = body.get(..len).ok_or("truncated array element")?;
        body = &body[len..];
        let out = mask_binary_scalar(gate, column, trace, elem_oid, element);
        changed |= matches!(out, Cow::Owned(_));
        elements.push(Some(out));
    }
    if !body.is_empty() {
        return Err("trailing bytes after array elements".to_owned());
    }
    if !changed {
        return Ok(Cow::Borrowed(value));
    }
    let mut out = BytesMut::with_capacity(value.len() + 64);
    out.put_slice(header);
    for element in &elements {
        match element {
            None => out.put_i32(-1),
            Some(e) => put_value(&mut out, e)?,
        }
    }
    Ok(Cow::Owned(out.to_vec()))
}

/// What the fields of a COPY's rows derive from.
struct CopyTraces<'a> {
    /// By position.
    fields: &'a [Option<Arc<ColumnTrace>>],
    /// All of them together.
    union: Option<&'a ColumnTrace>,
    /// The gate's masking of the same, when it resolves it once.
    masks: &'a CopyMasks,
}

/// How the gate masks a COPY's fields (`None`: by a call per value).
#[derive(Debug, Default)]
struct CopyMasks {
    /// By position, for the traced fields.
    fields: Vec<Option<ColumnMask>>,
    /// By every field's trace together.
    union: Option<ColumnMask>,
    /// A field without a trace (under an empty column name).
    untraced: Option<ColumnMask>,
}

/// Mask the fields of one text-format COPY row. Fields are split at tabs, the default
/// delimiter; a value's own tabs are escaped (`\t`) in text format, so a raw tab is always
/// a delimiter. Each field is masked by the trace of its position; with another DELIMITER
/// or in CSV the row does not split into its fields, and each piece (usually the whole
/// line) is masked by every field's trace together. `\N` (NULL) stays as it is.
/// An ErrorResponse or NoticeResponse from the target with every free-text field (message,
/// detail, hint, context, the internal query, names) passed through the gate's masking as a
/// value of no known column; `None` when nothing changed or the message does not parse (it
/// is then relayed as it came: the target's own framing was already checked). Severity,
/// SQLSTATE, positions and source locations are left alone.
fn scrub_message<G: StatementGate>(gate: &G, message: &[u8]) -> Option<(BytesMut, u64)> {
    let mut rest = message.get(5..)?;
    let mut out = BytesMut::with_capacity(message.len() + 32);
    out.put_u8(*message.first()?);
    out.put_i32(0);
    let mut masked = 0u64;
    loop {
        let (&code, tail) = rest.split_first()?;
        if code == 0 {
            out.put_u8(0);
            break;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        let value = &tail[..end];
        let scrubbed = match code {
            b'S' | b'V' | b'C' | b'P' | b'p' | b'F' | b'L' | b'R' => Cow::Borrowed(value),
            _ => gate.mask_value("", value),
        };
        if let Cow::Owned(_) = scrubbed {
            masked += 1;
        }
        out.put_u8(code);
        out.put_slice(&scrubbed);
        out.put_u8(0);
        rest = &tail[end + 1..];
    }
    if masked == 0 {
        return None;
    }
    finish_message(out).ok().map(|m| (m, masked))
}

#[cfg(test)]
fn mask_copy_row<G: StatementGate>(
    gate: &G,
    traces: &CopyTraces<'_>,
    message: &[u8],
) -> Result<Option<(BytesMut, u64)>, String> {
    let mut out = BytesMut::new();
    let masked = mask_copy_row_into(gate, traces, message, &mut out, &mut MaskCounts::default())?;
    Ok((masked > 0).then_some((out, masked)))
}

/// `mask_copy_row` appending straight to the client's output: the message as it came when
/// no field changed, else the row rewritten. Returns how many fields were replaced; on an
/// error nothing is appended. Fields masked by a resolved mask are counted in `counts`.
fn mask_copy_row_into<G: StatementGate>(
    gate: &G,
    traces: &CopyTraces<'_>,
    message: &[u8],
    out: &mut BytesMut,
    counts: &mut MaskCounts,
) -> Result<u64, String> {
    let data = message.get(5..).ok_or("short CopyData")?;
    let line = match data.strip_suffix(b"\r\n") {
        Some(line) => line,
        None => data.strip_suffix(b"\n").unwrap_or(data),
    };
    let expected = traces.fields.len();
    // One pass finds the tabs of a row of up to 32 fields; wider rows take a second.
    let mut tabs = [0usize; 32];
    let mut found = 0;
    let mut all_found = true;
    for tab in Tabs::new(line) {
        let Some(slot) = tabs.get_mut(found) else {
            all_found = false;
            break;
        };
        *slot = tab;
        found += 1;
    }
    let count = if all_found { found } else { Tabs::new(line).count() };
    let split = count + 1 == expected;
    let start = out.len();
    let mut masked = 0u64;
    // Bytes of `message` before this offset are in `out` already (once something changed).
    let mut copied = 0usize;
    let mut at = 5usize;
    let mut field_start = 0;
    let (mut stored, mut searched) = (tabs[..found].iter().copied(), Tabs::new(line));
    let ends: &mut dyn Iterator<Item = usize> = if all_found { &mut stored } else { &mut searched };
    for (i, field_end) in ends.chain(std::iter::once(line.len())).enumerate() {
        let field = &line[field_start..field_end];
        field_start = field_end + 1;
        let field_at = at;
        at += field.len() + 1;
        if field == b"\\N" {
            continue;
        }
        let (trace, mask) = if split {
            (
                traces.fields.get(i).and_then(Option::as_deref),
                traces.masks.fields.get(i).and_then(Option::as_ref),
            )
        } else {
            (traces.union, traces.masks.union.as_ref())
        };
        let mask = match trace {
            Some(_) => mask,
            None => traces.masks.untraced.as_ref(),
        };
        let replaced = match mask {
            Some(mask) => mask.apply(field, counts),
            None => leaf(gate, "", trace, field),
        };
        let Cow::Owned(replaced) = replaced else {
            continue;
        };
        if masked == 0 {
            out.reserve(message.len() + 64);
        }
        masked += 1;
        out.put_slice(&message[copied..field_at]);
        out.put_slice(&replaced);
        copied = field_at + field.len();
    }
    if masked == 0 {
        out.put_slice(message);
        return Ok(0);
    }
    out.put_slice(&message[copied..]);
    if let Err(e) = set_length(out, start) {
        out.truncate(start);
        return Err(e);
    }
    Ok(masked)
}

/// The positions of the tabs in a COPY line, eight bytes at a time: a row's fields are short,
/// too short for a vectorised search to pay for its setup, too many for a byte loop to be cheap.
struct Tabs<'a> {
    line: &'a [u8],
    /// Offset of the word `found` was computed from.
    at: usize,
    /// One high bit per tab byte of the current word not yet returned.
    found: u64,
}

impl<'a> Tabs<'a> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const TABS: u64 = 0x0909_0909_0909_0909;

    #[inline]
    fn new(line: &'a [u8]) -> Self {
        let mut tabs = Tabs { line, at: 0, found: 0 };
        tabs.found = tabs.word(0);
        tabs
    }

    /// The high bit of each byte of the 8 bytes from `at` (fewer at the end) that is a tab: a
    /// byte is zero after the XOR exactly when adding 0x7f to its low 7 bits leaves its high
    /// bit clear and so did the byte itself (no carry crosses bytes).
    #[inline]
    fn word(&self, at: usize) -> u64 {
        let rest = self.line.get(at..).unwrap_or_default();
        let (word, valid) = match rest.first_chunk::<8>() {
            Some(chunk) => (u64::from_le_bytes(*chunk), u64::MAX),
            None => {
                // The last few bytes; the padding past the end is not tabs.
                let word = rest
                    .iter()
                    .enumerate()
                    .fold(0u64, |w, (i, &b)| w | (u64::from(b) << (8 * i)));
                (word, (1u64 << (8 * rest.len())) - 1)
            }
        };
        let x = word ^ Self::TABS;
        let zero = !(((x & Self::LOW7) + Self::LOW7) | x | Self::LOW7);
        zero & valid
    }
}

impl Iterator for Tabs<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.found == 0 {
            self.at += 8;
            if self.at >= self.line.len() {
                return None;
            }
            self.found = self.word(self.at);
        }
        let bit = self.found.trailing_zeros() as usize;
        self.found &= self.found - 1;
        Some(self.at + bit / 8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_MASKS: &CopyMasks = &CopyMasks {
        fields: Vec::new(),
        union: None,
        untraced: None,
    };

    const NO_TRACES: CopyTraces<'static> = CopyTraces {
        fields: &[],
        union: None,
        masks: NO_MASKS,
    };

    /// Replaces every value equal to `secret` by `XX`.
    struct Gate;

    impl StatementGate for Gate {
        type Grant = ();
        type Hold = ();

        async fn decide(&self, _: &str, _: &[classify::Statement]) -> Result<Gated<(), ()>, Refusal> {
            Ok(Gated::Granted(()))
        }

        async fn wait(&self, (): ()) -> Result<(), Refusal> {
            Ok(())
        }

        fn mask_value<'a>(&self, _: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
            if value == b"secret" {
                Cow::Owned(b"XX".to_vec())
            } else {
                Cow::Borrowed(value)
            }
        }

        /// Every traced value becomes `T`.
        fn mask_traced<'a>(&self, _: &str, _: &ColumnTrace, _: &'a [u8]) -> Cow<'a, [u8]> {
            Cow::Owned(b"T".to_vec())
        }
    }

    fn traced() -> Arc<ColumnTrace> {
        Arc::new(ColumnTrace {
            classes: gatehouse_mask::DataClasses::EMPTY.with(gatehouse_mask::DataClass::Email),
            ..ColumnTrace::default()
        })
    }

    fn data_row(values: &[&[u8]]) -> BytesMut {
        let mut row = BytesMut::new();
        row.put_u8(b'D');
        row.put_i32(0);
        row.put_i16(values.len() as i16);
        for v in values {
            row.put_i32(v.len() as i32);
            row.put_slice(v);
        }
        finish_message(row).unwrap()
    }

    #[test]
    fn traced_columns_are_masked_and_unrewritable_binary_values_become_null() {
        let column = |binary: bool, type_oid: u32, trace: Option<Arc<ColumnTrace>>| Column {
            name: "x".into(),
            binary,
            type_oid,
            null_binary: trace.is_some(),
            trace,
            mask: None,
        };
        let columns = [
            column(false, 25, Some(traced())),
            column(false, 25, None),
            column(true, 23, Some(traced())),
            column(true, 25, Some(traced())),
            column(true, 23, None),
        ];
        let row = data_row(&[b"a", b"secret", b"\0\0\0\x07", b"b", b"\0\0\0\x07"]);
        let (out, masked) = mask_row(&Gate, &columns, &row).unwrap().unwrap();
        assert_eq!(masked, 4);
        let mut expected = BytesMut::new();
        expected.put_u8(b'D');
        expected.put_i32(0);
        expected.put_i16(5);
        for v in [Some(&b"T"[..]), Some(b"XX"), None, Some(b"T"), Some(b"\0\0\0\x07")] {
            match v {
                Some(v) => put_value(&mut expected, v).unwrap(),
                None => expected.put_i32(-1),
            }
        }
        assert_eq!(out, finish_message(expected).unwrap());
    }

    #[test]
    fn copy_fields_follow_their_traces_and_nulls_stay() {
        let fields = [None, Some(traced()), Some(traced())];
        let union = traced();
        let traces = CopyTraces {
            fields: &fields,
            union: Some(&union),
            masks: NO_MASKS,
        };
        let mut msg = BytesMut::new();
        msg.put_u8(b'd');
        msg.put_i32(0);
        msg.put_slice(b"1\ta\t\\N\n");
        let msg = finish_message(msg).unwrap();
        let (out, masked) = mask_copy_row(&Gate, &traces, &msg).unwrap().unwrap();
        assert_eq!(masked, 1);
        assert_eq!(&out[5..], b"1\tT\t\\N\n");
        // A row that does not split into the expected fields (CSV): every piece by the union.
        let mut csv = BytesMut::new();
        csv.put_u8(b'd');
        csv.put_i32(0);
        csv.put_slice(b"1,a,\n");
        let csv = finish_message(csv).unwrap();
        let (out, _) = mask_copy_row(&Gate, &traces, &csv).unwrap().unwrap();
        assert_eq!(&out[5..], b"T\n");
    }

    fn array(ndim: i32, dims: &[(i32, i32)], elem_oid: u32, elements: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = BytesMut::new();
        v.put_i32(ndim);
        v.put_i32(i32::from(elements.iter().any(Option::is_none)));
        v.put_u32(elem_oid);
        for (size, lower) in dims {
            v.put_i32(*size);
            v.put_i32(*lower);
        }
        for e in elements {
            match e {
                None => v.put_i32(-1),
                Some(e) => {
                    v.put_i32(e.len() as i32);
                    v.put_slice(e);
                }
            }
        }
        v.to_vec()
    }

    #[test]
    fn array_elements_are_masked_and_lengths_rewritten() {
        let input = array(1, &[(3, 1)], 25, &[Some(b"secret"), None, Some(b"plain")]);
        let out = mask_binary(&Gate, "c", None, 1009, &input).unwrap();
        assert_eq!(
            out.as_ref(),
            array(1, &[(3, 1)], 25, &[Some(b"XX"), None, Some(b"plain")])
        );
        let untouched = array(1, &[(1, 1)], 25, &[Some(b"plain")]);
        assert!(matches!(
            mask_binary(&Gate, "c", None, 1009, &untouched).unwrap(),
            Cow::Borrowed(_)
        ));
        let empty = array(0, &[], 25, &[]);
        assert!(matches!(
            mask_binary(&Gate, "c", None, 1009, &empty).unwrap(),
            Cow::Borrowed(_)
        ));
        // Elements are dispatched on the OID the array carries: int4 elements stay.
        let ints = array(1, &[(1, 1)], 23, &[Some(b"secret")]);
        assert!(matches!(
            mask_binary(&Gate, "c", None, 1009, &ints).unwrap(),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn malformed_arrays_are_target_errors() {
        let e: &[u8] = b"secret";
        let cases = [
            array(7, &[(1, 1); 7], 25, &[Some(e)]),
            array(-1, &[], 25, &[]),
            array(1, &[(-1, 1)], 25, &[]),
            array(2, &[(i32::MAX, 1), (i32::MAX, 1)], 25, &[Some(e)]),
            array(1, &[(2, 1)], 25, &[Some(e)]),
            array(1, &[(1, 1)], 25, &[Some(e), Some(e)]),
            array(1, &[(1, 1)], 25, &[Some(e)])[..28].to_vec(),
            vec![0, 0, 0, 1],
        ];
        for case in cases {
            assert!(mask_binary(&Gate, "c", None, 1009, &case).is_err(), "{case:?}");
        }
    }

    #[test]
    fn binary_scalars_by_type() {
        assert_eq!(mask_binary(&Gate, "c", None, 25, b"secret").unwrap().as_ref(), b"XX");
        assert_eq!(
            mask_binary(&Gate, "c", None, 3802, b"\x01secret").unwrap().as_ref(),
            b"\x01XX"
        );
        // Types whose binary form is not known to be text pass as they are.
        assert_eq!(
            mask_binary(&Gate, "c", None, 23, b"secret").unwrap().as_ref(),
            b"secret"
        );
    }

    #[test]
    fn data_row_with_binary_columns_is_rebuilt() {
        let columns = [
            Column {
                name: "a".into(),
                binary: true,
                type_oid: 1043,
                trace: None,
                null_binary: false,
                mask: None,
            },
            Column {
                name: "b".into(),
                binary: true,
                type_oid: 17,
                trace: None,
                null_binary: false,
                mask: None,
            },
        ];
        let mut row = BytesMut::new();
        row.put_u8(b'D');
        row.put_i32(4 + 2 + 10 + 10);
        row.put_i16(2);
        for v in [b"secret", b"secret"] {
            row.put_i32(6);
            row.put_slice(v);
        }
        let (out, masked) = mask_row(&Gate, &columns, &row).unwrap().unwrap();
        assert_eq!(masked, 1);
        assert_eq!(&out[..], b"D\0\0\0\x16\0\x02\0\0\0\x02XX\0\0\0\x06secret");
    }

    #[test]
    fn binary_values_of_user_defined_text_types_are_masked() {
        // citext or an enum (OIDs from 16384 on): their binary form is their text.
        assert_eq!(&mask_binary_scalar(&Gate, "c", None, 16_500, b"secret")[..], b"XX");
        // Built-in non-text types are never read as text.
        assert_eq!(&mask_binary_scalar(&Gate, "c", None, 17, b"secret")[..], b"secret");
        // A user-defined binary form that is not text passes as it is.
        let binary = [0u8, 0, 0, 2, 0xff, 0xfe];
        assert_eq!(&mask_binary_scalar(&Gate, "c", None, 16_500, &binary)[..], &binary[..]);
    }

    #[test]
    fn copy_rows_are_masked_field_by_field() {
        let mut msg = BytesMut::new();
        msg.put_u8(b'd');
        msg.put_i32(4 + 14);
        msg.put_slice(b"1\tsecret\t\\N\tx\n");
        let (out, masked) = mask_copy_row(&Gate, &NO_TRACES, &msg).unwrap().unwrap();
        assert_eq!(masked, 1);
        assert_eq!(&out[..], b"d\0\0\0\x0e1\tXX\t\\N\tx\n");
        msg.truncate(1);
        msg.put_i32(4 + 8);
        msg.put_slice(b"1\tplain\n");
        assert!(mask_copy_row(&Gate, &NO_TRACES, &msg).unwrap().is_none());
    }

    #[test]
    fn rows_are_appended_to_the_output_as_they_came_or_rewritten() {
        let columns: Vec<Column> = ["a", "b", "c", "d"]
            .iter()
            .map(|name| Column {
                name: (*name).into(),
                binary: false,
                type_oid: 25,
                trace: None,
                null_binary: false,
                mask: None,
            })
            .collect();
        let mut out = BytesMut::from(&b"earlier"[..]);
        // Unchanged rows are copied whole, byte for byte.
        let clean = data_row(&[b"1", b"plain", b"", b"x"]);
        assert_eq!(
            mask_row_into(&Gate, &columns, &clean, &mut out, &mut MaskCounts::default()),
            Ok(0)
        );
        // Values changed at the start, in the middle and at the end; NULLs kept.
        let mut dirty = BytesMut::new();
        dirty.put_u8(b'D');
        dirty.put_i32(0);
        dirty.put_i16(4);
        for v in [Some(&b"secret"[..]), None, Some(b"keep"), Some(b"secret")] {
            match v {
                Some(v) => put_value(&mut dirty, v).unwrap(),
                None => dirty.put_i32(-1),
            }
        }
        let dirty = finish_message(dirty).unwrap();
        assert_eq!(
            mask_row_into(&Gate, &columns, &dirty, &mut out, &mut MaskCounts::default()),
            Ok(2)
        );
        let mut expected = BytesMut::from(&b"earlier"[..]);
        expected.put_slice(&clean);
        expected.put_u8(b'D');
        expected.put_i32(0);
        expected.put_i16(4);
        let start = expected.len() - 7;
        for v in [Some(&b"XX"[..]), None, Some(b"keep"), Some(b"XX")] {
            match v {
                Some(v) => put_value(&mut expected, v).unwrap(),
                None => expected.put_i32(-1),
            }
        }
        let len = i32::try_from(expected.len() - start - 1).unwrap();
        expected[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(out, expected);
        // A row truncated after a changed value appends nothing.
        let truncated = &dirty[..dirty.len() - 3];
        assert!(mask_row_into(&Gate, &columns, truncated, &mut out, &mut MaskCounts::default()).is_err());
        assert_eq!(out, expected);
        // COPY rows likewise, after what is already there.
        let mut copy = BytesMut::new();
        copy.put_u8(b'd');
        copy.put_i32(0);
        copy.put_slice(b"secret\tkeep\t\\N\tsecret\r\n");
        let copy = finish_message(copy).unwrap();
        let before = out.len();
        assert_eq!(
            mask_copy_row_into(&Gate, &NO_TRACES, &copy, &mut out, &mut MaskCounts::default()),
            Ok(2)
        );
        assert_eq!(&out[before..], b"d\0\0\0\x13XX\tkeep\t\\N\tXX\r\n");
    }

    /// Masks by name hint and content with every class, per value or resolved per column.
    struct Resolving;

    impl StatementGate for Resolving {
        type Grant = ();
        type Hold = ();

        async fn decide(&self, _: &str, _: &[classify::Statement]) -> Result<Gated<(), ()>, Refusal> {
            Ok(Gated::Granted(()))
        }

        async fn wait(&self, (): ()) -> Result<(), Refusal> {
            Ok(())
        }

        fn mask_value<'a>(&self, column: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
            let mut counts = MaskCounts::default();
            Masker::all().mask_hinted_bytes(gatehouse_mask::column_hint(column), value, &mut counts)
        }

        fn column_mask(&self, column: &str, _: Option<&ColumnTrace>) -> Option<ColumnMask> {
            Some(ColumnMask {
                masker: Masker::all(),
                class: gatehouse_mask::column_hint(column),
            })
        }
    }

    #[test]
    fn resolved_column_masks_mask_as_the_gate_does_per_value_and_count_locally() {
        let names = ["id", "email", "note", "password"];
        let per_value: Vec<Column> = names
            .iter()
            .map(|name| Column {
                name: (*name).into(),
                binary: false,
                type_oid: 25,
                trace: None,
                null_binary: false,
                mask: None,
            })
            .collect();
        let resolved: Vec<Column> = per_value
            .iter()
            .map(|c| Column {
                mask: Resolving.column_mask(&c.name, None),
                ..c.clone()
            })
            .collect();
        let rows = [
            data_row(&[
                b"1",
                b"user1@example.com",
                b"c4ca4238a0b923820dcc509a6f75849b",
                b"hunter2",
            ]),
            data_row(&[b"2", b"not an address", b"card 4111 1111 1111 1111", b""]),
            data_row(&[b"3", b"\xff", b"plain", b"x"]),
        ];
        for row in &rows {
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            let mut counts = MaskCounts::default();
            let n = mask_row_into(&Resolving, &per_value, row, &mut a, &mut counts).unwrap();
            assert!(counts.is_empty(), "per-value masking counts in the gate");
            let m = mask_row_into(&Resolving, &resolved, row, &mut b, &mut counts).unwrap();
            assert_eq!((a, n), (b, m));
        }
        let mut counts = MaskCounts::default();
        let mut out = BytesMut::new();
        mask_row_into(&Resolving, &resolved, &rows[0], &mut out, &mut counts).unwrap();
        assert_eq!(counts.get(gatehouse_mask::DataClass::Email), 1);
        assert_eq!(counts.get(gatehouse_mask::DataClass::Secret), 1);
        assert!(!out.windows(7).any(|w| w == b"hunter2"));

        // COPY fields: untraced ones by the resolved mask of no name, like `mask_value("")`.
        let masks = CopyMasks {
            fields: Vec::new(),
            union: None,
            untraced: Resolving.column_mask("", None),
        };
        let traces = CopyTraces {
            fields: &[],
            union: None,
            masks: &masks,
        };
        let mut copy = BytesMut::new();
        copy.put_u8(b'd');
        copy.put_i32(0);
        copy.put_slice(b"1\tuser1@example.com\t\\N\tplain\n");
        let copy = finish_message(copy).unwrap();
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        let mut counts = MaskCounts::default();
        let n = mask_copy_row_into(&Resolving, &NO_TRACES, &copy, &mut a, &mut counts).unwrap();
        assert!(counts.is_empty());
        let m = mask_copy_row_into(&Resolving, &traces, &copy, &mut b, &mut counts).unwrap();
        assert_eq!((&a, n), (&b, m));
        assert_eq!(&b[5..], b"1\tu***@example.com\t\\N\tplain\n");
        assert_eq!(counts.get(gatehouse_mask::DataClass::Email), 1);
    }

    #[test]
    fn tabs_are_found_at_every_offset() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            for _ in 0..50 {
                let line: Vec<u8> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        [b'\t', b'a', 0x89, 0x09 ^ 0x80, 0, b'\\', 0xff][(rng % 7) as usize]
                    })
                    .collect();
                let expected: Vec<usize> = (0..line.len()).filter(|&i| line[i] == b'\t').collect();
                assert_eq!(Tabs::new(&line).collect::<Vec<_>>(), expected, "{line:?}");
            }
        }
    }

    #[test]
    fn wide_copy_rows_split_into_their_fields() {
        let mut fields: Vec<Option<Arc<ColumnTrace>>> = vec![None; 40];
        fields[35] = Some(traced());
        let traces = CopyTraces {
            fields: &fields,
            union: None,
            masks: NO_MASKS,
        };
        let values: Vec<String> = (0..40)
            .map(|i| if i == 20 { "secret".into() } else { format!("v{i}") })
            .collect();
        let mut msg = BytesMut::new();
        msg.put_u8(b'd');
        msg.put_i32(0);
        msg.put_slice(values.join("\t").as_bytes());
        msg.put_u8(b'\n');
        let msg = finish_message(msg).unwrap();
        let (out, masked) = mask_copy_row(&Gate, &traces, &msg).unwrap().unwrap();
        assert_eq!(masked, 2);
        let mut expected = values.clone();
        expected[20] = "XX".into();
        expected[35] = "T".into();
        assert_eq!(&out[5..], format!("{}\n", expected.join("\t")).as_bytes());
        // One field short of the 40: no position is trusted, every field by the (absent) union.
        let (out, masked) = mask_copy_row(
            &Gate,
            &CopyTraces {
                fields: &fields[1..],
                ..traces
            },
            &msg,
        )
        .unwrap()
        .unwrap();
        assert_eq!(masked, 1);
        expected[35] = "v35".into();
        assert_eq!(&out[5..], format!("{}\n", expected.join("\t")).as_bytes());
    }
}
