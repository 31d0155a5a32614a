//! One task per client channel: it collects the channel's setup (pty, allowed env), asks
//! the core about the request that starts a program (exec, shell, subsystem), and only
//! when permitted opens the matching channel on the host and relays both ways until both
//! sides have closed. A refused request never reaches the host: the client reads why on
//! stderr and gets exit status 126.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use gatehouse_audit::AuditEvent;
use gatehouse_core::{ApprovalNeeded, Gateway, Permit, Refusal, Session, Verdict};
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Pty, Sig};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::command::{ParsedCommand, parse_bytes};
use crate::error::SshError;
use crate::recording::Recorder;
use crate::scp::ScpObserver;
use crate::server::UpstreamSlot;
use crate::sftp::{self, ClientStep, Framer, Tracker};
use crate::upstream::{Upstream, UpstreamTarget};

/// Exit status of a refused request, as shells use for "found but not executable".
pub const REFUSED_EXIT_STATUS: u32 = 126;
/// Environment variables kept per channel.
pub(crate) const MAX_ENV: usize = 64;
/// Exit status when the host cannot be reached (what OpenSSH's client itself uses).
const TARGET_FAILED_EXIT_STATUS: u32 = 255;
/// Input a client may send while its request waits for approval; it reaches the host once
/// the request is approved. More than this withdraws the request.
pub const MAX_HELD_INPUT: usize = 1 << 20;

/// What a channel task needs from its connection.
#[derive(Clone)]
pub(crate) struct ChannelContext {
    pub gateway: Arc<Gateway>,
    pub session: Session,
    pub target: UpstreamTarget,
    pub upstream: Arc<UpstreamSlot>,
    pub recordings: PathBuf,
    /// Record shell input too (`ssh.record_input`).
    pub record_input: bool,
}

impl ChannelContext {
    /// The host's connection, opened by the first channel that needs it.
    pub async fn upstream(&self) -> Result<Arc<Upstream>, SshError> {
        self.upstream
            .get_or_try_init(|| async { self.target.connect().await.map(Arc::new) })
            .await
            .cloned()
    }
}

/// The terminal the client asked for.
#[derive(Clone, Debug)]
struct PtyRequest {
    term: String,
    cols: u32,
    rows: u32,
    px: u32,
    py: u32,
    modes: Vec<(Pty, u32)>,
}

/// The request that starts the channel's program.
enum Start {
    Exec(Vec<u8>),
    Shell,
    Subsystem(String),
}

impl Start {
    fn kind(&self) -> &'static str {
        match self {
            Start::Exec(_) => "exec",
            Start::Shell => "shell",
            Start::Subsystem(_) => "subsystem",
        }
    }

    /// What the approvers see, and the exact bytes the approval is bound to.
    fn shown(&self, pty: bool) -> (String, Vec<u8>) {
        match self {
            Start::Exec(command) => (String::from_utf8_lossy(command).into_owned(), command.clone()),
            Start::Shell => {
                let shown = if pty { "shell (with a terminal)" } else { "shell" }.to_string();
                let exact = shown.clone().into_bytes();
                (shown, exact)
            }
            Start::Subsystem(name) => {
                let shown = format!("subsystem {name}");
                let exact = shown.clone().into_bytes();
                (shown, exact)
            }
        }
    }
}

/// What the client sent while its request waited for approval, relayed once it is approved.
#[derive(Default)]
struct HeldInput {
    data: Vec<u8>,
    eof: bool,
}

/// Byte counts and how the program ended, for the audit record.
#[derive(Default)]
struct Outcome {
    bytes_in: u64,
    bytes_out: u64,
    bytes_err: u64,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
}

/// Environment variables a client may pass to the host.
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name.starts_with("LC_")
}

/// The Cedar action and context for a program request.
fn decision_input(start: &Start, pty: bool) -> Option<(&'static str, serde_json::Value)> {
    match start {
        Start::Exec(command) => {
            let parsed = parse_bytes(command);
            Some(match scp_transfer(&parsed) {
                Some((direction, path)) => ("file_transfer", json!({ "direction": direction, "path": path })),
                None => ("exec", parsed.cedar_context()),
            })
        }
        Start::Shell => Some(("shell", json!({ "pty": pty }))),
        // sftp may move files either way within one channel: "both" is allowed only by a
        // policy that allows any direction.
        Start::Subsystem(name) if name == "sftp" => Some(("file_transfer", json!({ "direction": "both" }))),
        Start::Subsystem(_) => None,
    }
}

/// `scp -t PATH` (the client uploads) and `scp -f PATH` (the client downloads), as the
/// legacy scp protocol (`scp -O`) runs them on the host.
pub fn scp_transfer(parsed: &ParsedCommand) -> Option<(&'static str, String)> {
    if parsed.uses_shell_syntax || parsed.argv0 != "scp" {
        return None;
    }
    let flags = &parsed.argv[1..];
    let direction = if flags.iter().any(|a| a.starts_with('-') && a.contains('t')) {
        "upload"
    } else if flags.iter().any(|a| a.starts_with('-') && a.contains('f')) {
        "download"
    } else {
        return None;
    };
    let path = flags.iter().rev().find(|a| !a.starts_with('-'))?.clone();
    Some((direction, path))
}

/// Serves one client session channel from open to close.
pub(crate) async fn run_session_channel(
    ctx: ChannelContext,
    channel: Channel<Msg>,
    handle: Handle,
    _slot: OwnedSemaphorePermit,
) {
    let id = channel.id();
    let (mut client_rx, client_tx) = channel.split();
    let mut pty: Option<PtyRequest> = None;
    let mut env: Vec<(String, String)> = Vec::new();
    let start = loop {
        let Some(msg) = client_rx.wait().await else {
            return;
        };
        match msg {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                // Answered by the connection handler, in order with the client's requests.
                pty = Some(PtyRequest {
                    term,
                    cols: col_width,
                    rows: row_height,
                    px: pix_width,
                    py: pix_height,
                    modes: terminal_modes,
                });
            }
            // Answered by the connection handler; the same allowlist applies here.
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } if env_allowed(&variable_name) && env.len() < MAX_ENV => {
                env.push((variable_name, variable_value));
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                if let Some(p) = pty.as_mut() {
                    (p.cols, p.rows, p.px, p.py) = (col_width, row_height, pix_width, pix_height);
                }
            }
            ChannelMsg::Exec { command, .. } => break Start::Exec(command),
            ChannelMsg::RequestShell { .. } => break Start::Shell,
            ChannelMsg::RequestSubsystem { name, .. } => break Start::Subsystem(name),
            ChannelMsg::Eof | ChannelMsg::Close => return,
            _ => {}
        }
    };

    let Some((action, attributes)) = decision_input(&start, pty.is_some()) else {
        tracing::info!("Unknown subsystem refused.");
        let _ = handle.channel_failure(id).await;
        let _ = client_tx.close().await;
        return;
    };
    let (permit, held_input, acknowledged) = match ctx.session.decide(action, attributes).await {
        Ok(Verdict::Permit(permit)) => (permit, HeldInput::default(), false),
        Ok(Verdict::NeedsApproval(needed)) => {
            match wait_for_approval(&ctx, &handle, &client_tx, &mut client_rx, id, &mut pty, &start, needed).await {
                Ok((permit, input)) => (permit, input, true),
                Err(None) => {
                    // The client went away: nobody is left to tell.
                    let _ = client_tx.close().await;
                    return;
                }
                Err(Some(message)) => {
                    tracing::info!(action, %message, "SSH request not approved.");
                    tell_refusal(&handle, &client_tx, id, pty.is_some(), &message, REFUSED_EXIT_STATUS).await;
                    return;
                }
            }
        }
        Err(refusal) => {
            tracing::info!(action, %refusal, "SSH request refused.");
            refuse(
                &handle,
                &client_tx,
                id,
                pty.is_some(),
                &refusal.message,
                REFUSED_EXIT_STATUS,
            )
            .await;
            return;
        }
    };
    let kind = start.kind();
    let is_sftp = matches!(&start, Start::Subsystem(name) if name == "sftp");
    let legacy_scp = match &start {
        Start::Exec(command) => {
            let parsed = parse_bytes(command);
            scp_transfer(&parsed).map(|(direction, path)| {
                let into_dir = parsed.argv[1..]
                    .iter()
                    .any(|a| a.starts_with('-') && (a.contains('r') || a.contains('d')));
                (direction, path, into_dir)
            })
        }
        _ => None,
    };
    let recorder = match (&start, open_recorder(&ctx, &permit, pty.as_ref())) {
        (Start::Shell, Ok(r)) => Some(r),
        (Start::Shell, Err(error)) => {
            tracing::error!(%error, "Cannot create the session recording; refusing the shell.");
            refuse_once(
                acknowledged,
                &handle,
                &client_tx,
                id,
                pty.is_some(),
                "gatehouse: the gateway cannot record this shell, so it is refused",
                REFUSED_EXIT_STATUS,
            )
            .await;
            return;
        }
        _ => None,
    };
    let up = match open_upstream(&ctx, start, pty.as_ref(), &env).await {
        Ok(up) => up,
        Err(error) => {
            tracing::info!(%error, "The host did not start the program.");
            ctx.session.target_error(error.to_string()).await;
            let message = format!("gatehouse: the target could not run the request: {error}");
            refuse_once(
                acknowledged,
                &handle,
                &client_tx,
                id,
                pty.is_some(),
                &message,
                TARGET_FAILED_EXIT_STATUS,
            )
            .await;
            if let Some(r) = recorder {
                finish_recording(&ctx, r).await;
            }
            return;
        }
    };
    if !acknowledged {
        let _ = handle.channel_success(id).await;
    }
    let recorder = recorder.map(|r| Arc::new(Mutex::new(r)));
    let input_recorder = recorder.clone().filter(|_| ctx.record_input);
    let sftp = is_sftp.then(|| SftpGate::new(&ctx, permit.request()));
    let scp = legacy_scp.map(|(direction, path, into_dir)| ScpWatch {
        ctx: ctx.clone(),
        channel: permit.request(),
        upload: direction == "upload",
        observer: Mutex::new(ScpObserver::new(path, direction, into_dir, permit.request())),
    });
    let outcome = relay(
        id,
        &handle,
        client_rx,
        client_tx,
        up,
        (recorder.clone(), input_recorder),
        held_input,
        (sftp.as_ref(), scp.as_ref()),
    )
    .await;
    if let Some(gate) = &sftp {
        gate.finish().await;
    }
    if let Some(r) = recorder.and_then(Arc::into_inner) {
        finish_recording(&ctx, r.into_inner().unwrap_or_else(|p| p.into_inner())).await;
    }
    audit_end(&ctx, permit, kind, outcome).await;
}

/// Serves one permitted direct-tcpip channel: bytes only, both ways.
pub(crate) async fn run_forward(
    ctx: ChannelContext,
    channel: Channel<Msg>,
    handle: Handle,
    up: Channel<russh::client::Msg>,
    permit: Permit,
    _slot: OwnedSemaphorePermit,
) {
    let id = channel.id();
    let (client_rx, client_tx) = channel.split();
    let outcome = relay(
        id,
        &handle,
        client_rx,
        client_tx,
        up,
        (None, None),
        HeldInput::default(),
        (None, None),
    )
    .await;
    audit_end(&ctx, permit, "forward", outcome).await;
}

/// Opens the host's channel and starts the permitted program on it.
async fn open_upstream(
    ctx: &ChannelContext,
    start: Start,
    pty: Option<&PtyRequest>,
    env: &[(String, String)],
) -> Result<Channel<russh::client::Msg>, SshError> {
    let upstream = ctx.upstream().await?;
    let mut up = upstream.channel_open_session().await?;
    if let Some(p) = pty {
        up.request_pty(false, &p.term, p.cols, p.rows, p.px, p.py, &p.modes)
            .await?;
    }
    for (name, value) in env {
        up.set_env(false, name.as_str(), value.as_str()).await?;
    }
    match start {
        Start::Exec(command) => up.exec(true, command).await?,
        Start::Shell => up.request_shell(true).await?,
        Start::Subsystem(name) => up.request_subsystem(true, name).await?,
    }
    loop {
        match up.wait().await {
            Some(ChannelMsg::Success) => return Ok(up),
            Some(ChannelMsg::Failure) => return Err(SshError::Target("the host refused the request".into())),
            Some(ChannelMsg::Close) | Some(ChannelMsg::Eof) | None => {
                return Err(SshError::Target("the host closed the channel".into()));
            }
            // Window adjustments before the reply carry nothing to relay.
            Some(_) => {}
        }
    }
}

/// Holds a request that policy wants approved: the request is acknowledged, the client
/// reads the approval id, group and deadline on stderr, and its input is kept (up to
/// [`MAX_HELD_INPUT`]) until the approvers answer. The client closing the channel or the
/// connection withdraws the request. `Err(None)`: the client is gone; `Err(Some(message))`:
/// refused, tell the client.
#[allow(clippy::too_many_arguments)] // one call site; the pieces are the channel's state
async fn wait_for_approval(
    ctx: &ChannelContext,
    handle: &Handle,
    client_tx: &ChannelWriteHalf<Msg>,
    client_rx: &mut ChannelReadHalf,
    id: ChannelId,
    pty: &mut Option<PtyRequest>,
    start: &Start,
    needed: ApprovalNeeded,
) -> Result<(Permit, HeldInput), Option<String>> {
    let (shown, exact) = start.shown(pty.is_some());
    let shown = format!("{} on {}: {shown}", start.kind(), ctx.session.target().name);
    let held = match ctx.session.hold(vec![needed], &shown, &exact).await {
        Ok(held) => held,
        Err(refusal) => {
            let _ = handle.channel_success(id).await;
            return Err(Some(refusal.message));
        }
    };
    let _ = handle.channel_success(id).await;
    let newline = if pty.is_some() { "\r\n" } else { "\n" };
    let notice = format!("{}{newline}", held.notice());
    let _ = client_tx.extended_data_bytes(1, Bytes::from(notice)).await;
    tracing::info!(
        approval = held.id(),
        group = held.approver_group(),
        "SSH request waiting for approval."
    );

    let mut input = HeldInput::default();
    let mut overflow = false;
    let mut gone = false;
    let cancel = async {
        loop {
            match client_rx.wait().await {
                None | Some(ChannelMsg::Close) => {
                    gone = true;
                    return;
                }
                Some(ChannelMsg::Data { data }) => {
                    if input.data.len() + data.len() > MAX_HELD_INPUT {
                        overflow = true;
                        return;
                    }
                    input.data.extend_from_slice(&data);
                }
                Some(ChannelMsg::Eof) => input.eof = true,
                Some(ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                }) => {
                    if let Some(p) = pty.as_mut() {
                        (p.cols, p.rows, p.px, p.py) = (col_width, row_height, pix_width, pix_height);
                    }
                }
                Some(
                    ChannelMsg::Exec { .. } | ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. },
                ) => {
                    let _ = handle.channel_failure(id).await;
                }
                // Signals for a program that has not started yet have nobody to reach.
                Some(_) => {}
            }
        }
    };
    match held.wait_or_cancel(cancel).await {
        Ok(mut permits) => match permits.pop() {
            Some(permit) => Ok((permit, input)),
            None => Err(Some(
                "gatehouse: the approval released nothing; the request is refused".into(),
            )),
        },
        Err(_) if gone => Err(None),
        Err(refusal) if overflow => Err(Some(format!(
            "{}: more than {} KiB of input arrived while waiting for approval",
            refusal.message,
            MAX_HELD_INPUT >> 10
        ))),
        Err(Refusal { message, .. }) => Err(Some(message)),
    }
}

/// Tells the client why its request is refused: the request itself is acknowledged so
/// that the client prints the message and reports `status` as the exit status.
async fn refuse(handle: &Handle, client: &ChannelWriteHalf<Msg>, id: ChannelId, pty: bool, message: &str, status: u32) {
    let _ = handle.channel_success(id).await;
    tell_refusal(handle, client, id, pty, message, status).await;
}

/// [`refuse`], for a request that may have been acknowledged already (it waited for approval).
async fn refuse_once(
    acknowledged: bool,
    handle: &Handle,
    client: &ChannelWriteHalf<Msg>,
    id: ChannelId,
    pty: bool,
    message: &str,
    status: u32,
) {
    if acknowledged {
        tell_refusal(handle, client, id, pty, message, status).await;
    } else {
        refuse(handle, client, id, pty, message, status).await;
    }
}

/// The message on stderr, the exit status, and the channel closed.
async fn tell_refusal(
    handle: &Handle,
    client: &ChannelWriteHalf<Msg>,
    id: ChannelId,
    pty: bool,
    message: &str,
    status: u32,
) {
    // A terminal in raw mode needs the carriage return; a pipe would show it.
    let line = if pty {
        format!("{message}\r\n")
    } else {
        format!("{message}\n")
    };
    let _ = client.extended_data_bytes(1, Bytes::from(line)).await;
    let _ = handle.exit_status_request(id, status).await;
    let _ = client.eof().await;
    let _ = client.close().await;
}

/// An SFTP channel's per-file gate: cuts both directions into SFTP packets, asks the core
/// about every open and every change by path before the host sees it, and audits each
/// file when it is closed (see [`crate::sftp`]).
struct SftpGate {
    ctx: ChannelContext,
    /// The request that opened the channel.
    channel: u64,
    tracker: Mutex<Tracker>,
}

impl SftpGate {
    fn new(ctx: &ChannelContext, channel: u64) -> Self {
        Self {
            ctx: ctx.clone(),
            channel,
            tracker: Mutex::new(Tracker::default()),
        }
    }

    fn tracker(&self) -> std::sync::MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Client bytes: whole packets go to the host once permitted; refused ones are answered
    /// (through `answers`) without reaching it. `Err`: the client broke the protocol.
    async fn client_bytes(
        &self,
        framer: &mut Framer,
        data: &[u8],
        up_tx: &ChannelWriteHalf<russh::client::Msg>,
        client_tx: &ChannelWriteHalf<Msg>,
        answers: &mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        framer.push(data);
        while let Some(packet) = framer.next_packet()? {
            let step = self.tracker().client_packet(packet)?;
            let forward = match step {
                ClientStep::Forward(packet) => packet,
                ClientStep::Answer(answer) => {
                    let _ = answers.send(answer).await;
                    continue;
                }
                ClientStep::Decide {
                    packet,
                    id,
                    checks,
                    opens,
                } => match self.decide(&checks).await {
                    Ok(request) => {
                        if opens && let (Some(check), Some(request)) = (checks.first(), request) {
                            self.tracker().opening(id, check, request);
                        }
                        packet
                    }
                    Err(message) => {
                        tracing::info!(%message, "SFTP request refused.");
                        // OpenSSH's clients print only the status code's own text; the
                        // reason, naming the policy, reaches the user on stderr.
                        let line = format!("{message}\n");
                        let _ = client_tx.extended_data_bytes(1, Bytes::from(line)).await;
                        let _ = answers
                            .send(sftp::status(id, sftp::FX_PERMISSION_DENIED, &message))
                            .await;
                        continue;
                    }
                },
            };
            if up_tx.data_bytes(forward).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Every check must be permitted; the first one's request number is returned.
    async fn decide(&self, checks: &[sftp::Check]) -> Result<Option<u64>, String> {
        let mut first = None;
        for check in checks {
            match self.ctx.session.decide("file_transfer", check.context()).await {
                Ok(Verdict::Permit(permit)) => {
                    first.get_or_insert(permit.request());
                }
                Ok(Verdict::NeedsApproval(needed)) => {
                    return Err(format!(
                        "gatehouse: file_transfer of {} needs approval by group {}; a single file inside sftp cannot wait for approval (policy {})",
                        check.path,
                        needed.approver_group(),
                        needed.policies().join(", ")
                    ));
                }
                Err(refusal) => return Err(format!("{} ({} {})", refusal.message, check.operation, check.path)),
            }
        }
        Ok(first)
    }

    /// Host bytes: whole packets to the client, closed files audited. `Err`: the host broke
    /// the protocol.
    async fn host_bytes(
        &self,
        framer: &mut Framer,
        data: &[u8],
        client_tx: &ChannelWriteHalf<Msg>,
    ) -> Result<(), String> {
        framer.push(data);
        while let Some(packet) = framer.next_packet()? {
            let closed = self.tracker().host_packet(&packet)?;
            if let Some(file) = closed {
                self.audit_file(file).await;
            }
            if client_tx.data_bytes(packet).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    async fn audit_file(&self, file: sftp::FileRecord) {
        audit_file(&self.ctx, self.channel, file).await;
    }

    /// The client broke the protocol: tell it on stderr, audit it, and close the host's
    /// side (the client's side closes once the host's has).
    async fn broken(
        &self,
        client_tx: &ChannelWriteHalf<Msg>,
        up_tx: &ChannelWriteHalf<russh::client::Msg>,
        message: &str,
    ) {
        tracing::warn!(%message, "The client broke the SFTP protocol; closing the channel.");
        let line = format!("gatehouse: {message}; the SFTP channel is closed\n");
        let _ = client_tx.extended_data_bytes(1, Bytes::from(line)).await;
        let event = AuditEvent::ProtocolError {
            session: self.ctx.session.id().into(),
            request: self.channel,
            message: message.into(),
        };
        if let Err(error) = self.ctx.gateway.audit().append(event).await {
            tracing::error!(%error, "Audit write of a protocol error failed.");
        }
        let _ = client_tx.eof().await;
        let _ = up_tx.close().await;
    }

    /// Audits the files left open when the channel ended.
    async fn finish(&self) {
        let left = self.tracker().abandoned();
        for file in left {
            self.audit_file(file).await;
        }
    }
}

/// Writes one file's `file_transferred` record.
async fn audit_file(ctx: &ChannelContext, channel: u64, file: sftp::FileRecord) {
    tracing::info!(path = %file.path, direction = %file.direction, bytes_read = file.bytes_read, bytes_written = file.bytes_written, completed = file.completed, "File transferred.");
    let event = AuditEvent::FileTransferred {
        session: ctx.session.id().into(),
        request: file.request,
        channel,
        path: file.path,
        direction: file.direction,
        bytes_read: file.bytes_read,
        bytes_written: file.bytes_written,
        completed: file.completed,
    };
    if let Err(error) = ctx.gateway.audit().append(event).await {
        tracing::error!(%error, "Audit write of a transferred file failed.");
    }
}

/// A legacy scp channel (`scp -O`): the files it moves, named and counted from the sending
/// side's stream, each audited as `file_transferred` (see [`crate::scp`]).
struct ScpWatch {
    ctx: ChannelContext,
    channel: u64,
    /// The client sends (`scp -t`); else the host does (`scp -f`).
    upload: bool,
    observer: Mutex<ScpObserver>,
}

impl ScpWatch {
    async fn sent(&self, data: &[u8]) {
        let done = self.observer.lock().unwrap_or_else(|p| p.into_inner()).feed(data);
        for file in done {
            audit_file(&self.ctx, self.channel, file).await;
        }
    }
}

/// Relays data, EOF, window changes and signals to the host, and data, stderr, EOF, exit
/// status and exit signal back, until the host closes the channel. Each direction runs on
/// its own, so a slow reader on one side never stalls the other. An SFTP channel's data
/// goes through its [`SftpGate`].
#[allow(clippy::too_many_arguments)] // one relay for every channel kind; the pieces are its state
async fn relay(
    id: ChannelId,
    handle: &Handle,
    mut client_rx: ChannelReadHalf,
    client_tx: ChannelWriteHalf<Msg>,
    up: Channel<russh::client::Msg>,
    (recorder, input_recorder): (SharedRecorder, SharedRecorder),
    held: HeldInput,
    (sftp, scp): (Option<&SftpGate>, Option<&ScpWatch>),
) -> Outcome {
    let (mut up_rx, up_tx) = up.split();
    // The gateway's own SFTP answers, sent to the client between the host's packets.
    let (answers_tx, mut answers_rx) = mpsc::channel::<Bytes>(64);
    let to_host = async {
        let mut framer = Framer::default();
        let mut bytes_in = held.data.len() as u64;
        if let Some(gate) = sftp
            && !held.data.is_empty()
        {
            if let Err(message) = gate
                .client_bytes(&mut framer, &held.data, &up_tx, &client_tx, &answers_tx)
                .await
            {
                gate.broken(&client_tx, &up_tx, &message).await;
            }
        } else if !held.data.is_empty()
            && let Some(watch) = scp.filter(|w| w.upload)
        {
            watch.sent(&held.data).await;
            if up_tx.data_bytes(Bytes::from(held.data)).await.is_err() {
                let _ = up_tx.close().await;
            }
        } else if !held.data.is_empty()
            && (!record_input(&input_recorder, &held.data) || up_tx.data_bytes(Bytes::from(held.data)).await.is_err())
        {
            let _ = up_tx.close().await;
        }
        if held.eof {
            let _ = up_tx.eof().await;
        }
        loop {
            let Some(msg) = client_rx.wait().await else {
                let _ = up_tx.close().await;
                break;
            };
            match msg {
                ChannelMsg::Data { data } if sftp.is_some() => {
                    bytes_in += data.len() as u64;
                    let Some(gate) = sftp else { break };
                    if let Err(message) = gate
                        .client_bytes(&mut framer, &data, &up_tx, &client_tx, &answers_tx)
                        .await
                    {
                        gate.broken(&client_tx, &up_tx, &message).await;
                        break;
                    }
                }
                ChannelMsg::Data { data } => {
                    bytes_in += data.len() as u64;
                    if let Some(watch) = scp.filter(|w| w.upload) {
                        watch.sent(&data).await;
                    }
                    if !record_input(&input_recorder, &data) || up_tx.data_bytes(data).await.is_err() {
                        let _ = up_tx.close().await;
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = up_tx.eof().await;
                }
                ChannelMsg::Close => {
                    let _ = up_tx.close().await;
                    break;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    let _ = up_tx.window_change(col_width, row_height, pix_width, pix_height).await;
                    if let Some(r) = &recorder {
                        let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
                        if let Err(error) = r.resize(col_width, row_height) {
                            tracing::error!(%error, "Recording write failed.");
                        }
                    }
                }
                ChannelMsg::Signal { signal } => {
                    let _ = up_tx.signal(signal).await;
                }
                ChannelMsg::Exec { .. } | ChannelMsg::RequestShell { .. } | ChannelMsg::RequestSubsystem { .. } => {
                    // One program per channel, decided once.
                    let _ = handle.channel_failure(id).await;
                }
                _ => {}
            }
        }
        bytes_in
    };
    let to_client = async {
        let mut outcome = Outcome::default();
        let mut framer = Framer::default();
        loop {
            let msg = tokio::select! {
                msg = up_rx.wait() => msg,
                Some(answer) = answers_rx.recv() => {
                    // Only whole packets are ever sent, so this lands between two of them.
                    if client_tx.data_bytes(answer).await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            match msg {
                ChannelMsg::Data { data } if sftp.is_some() => {
                    outcome.bytes_out += data.len() as u64;
                    let Some(gate) = sftp else { break };
                    if let Err(message) = gate.host_bytes(&mut framer, &data, &client_tx).await {
                        tracing::warn!(%message, "The host broke the SFTP protocol; closing the channel.");
                        let line =
                            format!("gatehouse: the host broke the SFTP protocol ({message}); the channel is closed\n");
                        let _ = client_tx.extended_data_bytes(1, Bytes::from(line)).await;
                        let _ = up_tx.close().await;
                        break;
                    }
                }
                ChannelMsg::Data { data } => {
                    outcome.bytes_out += data.len() as u64;
                    if let Some(watch) = scp.filter(|w| !w.upload) {
                        watch.sent(&data).await;
                    }
                    if !record(&recorder, &data) || client_tx.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    outcome.bytes_err += data.len() as u64;
                    if !record(&recorder, &data) || client_tx.extended_data_bytes(ext, data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = client_tx.eof().await;
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    outcome.exit_status = Some(exit_status);
                    let _ = handle.exit_status_request(id, exit_status).await;
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    outcome.exit_signal = Some(signal_text(&signal_name));
                    let _ = handle
                        .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                        .await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = client_tx.close().await;
        outcome
    };
    let (bytes_in, mut outcome) = tokio::join!(to_host, to_client);
    outcome.bytes_in = bytes_in;
    outcome
}

/// Writes output to the recording; false when the recording failed and the channel must
/// close (an unrecorded shell is not allowed to continue).
fn record(recorder: &Option<Arc<Mutex<Recorder>>>, data: &[u8]) -> bool {
    let Some(r) = recorder else {
        return true;
    };
    let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
    match r.output(data) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "Recording write failed; closing the shell.");
            false
        }
    }
}

/// A shell's recording, shared by the two directions of the relay (None: not recorded).
type SharedRecorder = Option<Arc<Mutex<Recorder>>>;

/// Writes input to the recording when input is recorded; false when that failed.
fn record_input(recorder: &Option<Arc<Mutex<Recorder>>>, data: &[u8]) -> bool {
    let Some(r) = recorder else {
        return true;
    };
    let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
    match r.input(data) {
        Ok(()) => true,
        Err(error) => {
            tracing::error!(%error, "Recording write failed; closing the shell.");
            false
        }
    }
}

fn signal_text(sig: &Sig) -> String {
    match sig {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

fn open_recorder(ctx: &ChannelContext, permit: &Permit, pty: Option<&PtyRequest>) -> std::io::Result<Recorder> {
    let path = ctx
        .recordings
        .join(format!("{}-{}.cast", ctx.session.id(), permit.request()));
    let (cols, rows, term) = match pty {
        Some(p) => (p.cols, p.rows, p.term.as_str()),
        None => (80, 24, "dumb"),
    };
    let title = format!(
        "{} on {} ({})",
        ctx.session.identity().display_name(),
        ctx.session.target().name,
        ctx.session.id()
    );
    Recorder::create(&path, cols, rows, term, &title)
}

async fn finish_recording(ctx: &ChannelContext, recorder: Recorder) {
    match recorder.finish() {
        Ok(written) => {
            let event = AuditEvent::RecordingWritten {
                session: ctx.session.id().into(),
                path: written.path.display().to_string(),
                bytes: written.bytes,
                sha256: written.sha256,
            };
            if let Err(error) = ctx.gateway.audit().append(event).await {
                tracing::error!(%error, "Audit write of a recording failed.");
            }
        }
        Err(error) => tracing::error!(%error, "Closing the session recording failed."),
    }
}

async fn audit_end(ctx: &ChannelContext, permit: Permit, kind: &str, outcome: Outcome) {
    let event = AuditEvent::ChannelEnded {
        session: ctx.session.id().into(),
        request: permit.request(),
        kind: kind.into(),
        exit_status: outcome.exit_status,
        exit_signal: outcome.exit_signal,
        bytes_in: outcome.bytes_in,
        bytes_out: outcome.bytes_out,
        bytes_err: outcome.bytes_err,
    };
    if let Err(error) = ctx.gateway.audit().append(event).await {
        tracing::error!(%error, "Audit write of a channel's end failed.");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use crate::command::parse;

    #[test]
    fn env_allowlist() {
        assert!(env_allowed("LANG"));
        assert!(env_allowed("LC_ALL"));
        assert!(!env_allowed("LD_PRELOAD"));
        assert!(!env_allowed("PATH"));
        assert!(!env_allowed("LANGUAGE"));
    }

    #[test]
    fn legacy_scp_commands_are_file_transfers() {
        assert_eq!(scp_transfer(&parse("scp -t /tmp/x")), Some(("upload", "/tmp/x".into())));
        assert_eq!(
            scp_transfer(&parse("scp -v -f -- /etc/hosts")),
            Some(("download", "/etc/hosts".into()))
        );
        assert_eq!(
            scp_transfer(&parse("scp -t /tmp/x; rm -rf /")),
            None,
            "shell syntax is an exec"
        );
        assert_eq!(scp_transfer(&parse("uptime")), None);
    }

    #[test]
    fn sftp_needs_a_policy_for_both_directions() {
        let (action, context) = decision_input(&Start::Subsystem("sftp".into()), false).unwrap();
        assert_eq!(action, "file_transfer");
        assert_eq!(context["direction"], "both");
        assert!(decision_input(&Start::Subsystem("netconf".into()), false).is_none());
    }
}
