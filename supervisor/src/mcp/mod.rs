//! The MCP gate (`portcullis run --mcp`): the supervisor sits on the
//! server's stdio, passes the JSON-RPC stream through, and holds each
//! `tools/call` for the profile's `[mcp]` policy — allow / ask / deny by
//! tool, rate limits, circuit breakers, description pinning — redacts
//! secrets from results, and writes one audit record per call.
//!
//! - [`frame`]: bounded newline-delimited framing;
//! - [`jsonrpc`]: message shapes and the error responses the gate sends;
//! - [`gate`]: the decisions (no I/O), with [`bucket`], [`breaker`], [`pins`], [`redact`];
//! - [`approver`]: who answers `ask`: the approval broker ([`approver::Broker`]), a terminal prompt without one, else no;
//! - [`journal`]: the writer thread for `tool_call` audit records;
//! - [`proxy`]: the two threads that move the bytes;
//! - [`bench`]: added latency and throughput, for `cargo xtask bench`.

pub mod approver;
pub mod bench;
pub mod breaker;
pub mod bucket;
pub mod frame;
pub mod gate;
pub mod journal;
pub mod jsonrpc;
pub mod pins;
pub mod proxy;
pub mod redact;

use crate::sys::stage::Spawned;
use std::io::{BufReader, BufWriter};
use std::os::fd::AsFd;
use std::sync::Arc;

pub use approver::{Approval, ApprovalRequest, Approver, NoBroker};
pub use gate::Gate;
pub use journal::Journal;
pub use proxy::Proxy;

use crate::evidence::Evidence;
use crate::exit::Failure;

/// The gate's parts, opened before anything is spawned. No thread runs
/// yet: threads started before `run` blocks its signals would swallow the
/// SIGCHLD it waits for.
pub struct Prepared {
    plan: policy::mcp::McpPlan,
    profile: String,
    argv: Vec<String>,
    /// The run's session id (as in the audit log), shown with each ask.
    session: String,
    /// The grants file and this profile's saved answers, when one is usable.
    grants: Option<(std::path::PathBuf, policy::ask::Grants)>,
    log: crate::evidence::Evidence,
    pins: pins::PinStore,
    /// How long a tool's ask waits for a person: the profile's `[ask] timeout`.
    ask_timeout: std::time::Duration,
}

/// Makes the tool-call log handle (a sibling of the run's `evidence`) and
/// loads the pin store for `run --mcp`. Fails closed: no log, no run. (A pin
/// directory the sandbox could write is refused for every run: see
/// `cli::run`.)
pub fn open(plan: &policy::Plan, evidence: &Evidence, session: &str, argv: &[String]) -> Result<Prepared, Failure> {
    let pins = if plan.mcp.pin {
        let dir = pins::default_dir().ok_or_else(|| {
            Failure::setup("mcp: cannot place the pin directory: neither $XDG_STATE_HOME nor $HOME is absolute")
        })?;
        pins::PinStore::load(pins::file_for(&dir, &plan.profile, argv))
            .map_err(|e| Failure::setup(format!("mcp: {e}")))?
    } else {
        pins::PinStore::in_memory()
    };
    let log = evidence.sibling()?;
    Ok(Prepared {
        plan: plan.mcp.clone(),
        profile: plan.profile.clone(),
        argv: argv.to_vec(),
        session: session.to_string(),
        // A grants file that does not parse stops the launch, as it does
        // for the syscall gate: its "always deny" answers must not be lost.
        grants: match crate::grants::path() {
            Ok(p) => {
                let f = crate::grants::load(&p)?;
                Some((p, policy::ask::Grants::for_profile(&f, &plan.profile)))
            }
            Err(_) => None,
        },
        log,
        pins,
        ask_timeout: std::time::Duration::from_millis(plan.gate.default_timeout_ms),
    })
}

/// The proxy of a running session.
pub struct Attached {
    proxy: Proxy,
    gate: Arc<Gate>,
}

/// Starts the proxy between our stdio and the child's piped stdin/stdout.
/// Call after the signals `run` waits for are blocked, so the proxy's
/// threads inherit the mask.
pub fn attach(prepared: Prepared, child: &mut Spawned) -> Result<Attached, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("mcp: cannot start the proxy: {e}"));
    let journal = Journal::start(prepared.log).map_err(|e| fail(&e))?;
    let gate = Arc::new(Gate::new(
        prepared.plan,
        &prepared.profile,
        prepared.argv,
        Box::new({
            let b = approver::Broker::with_client(crate::broker::Client::new(), prepared.session.clone(), child.id())
                .with_timeout(prepared.ask_timeout);
            match &prepared.grants {
                Some((path, grants)) => b.with_grants(path.clone(), grants.clone()),
                None => b,
            }
        }),
        journal,
        prepared.pins,
    ));
    let server_in = child.stdin.take().ok_or_else(|| fail(&"the server's stdin is not a pipe"))?;
    let server_out = child.stdout.take().ok_or_else(|| fail(&"the server's stdout is not a pipe"))?;
    let client_in = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned().map_err(|e| fail(&e))?);
    let client_out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned().map_err(|e| fail(&e))?);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let stop: proxy::Stopper = Box::new(move |sig| {
        let _ = nix::sys::signal::kill(pid, sig);
    });
    let proxy = Proxy::start(
        gate.clone(),
        BufReader::with_capacity(64 << 10, client_in),
        proxy::ClientOut::new(Box::new(BufWriter::with_capacity(64 << 10, client_out))),
        server_in,
        server_out,
        Some(stop),
    )
    .map_err(|e| fail(&e))?;
    Ok(Attached { proxy, gate })
}

impl Attached {
    /// After the server exited: pass on what it still wrote, record calls
    /// it never answered, commit the audit log. Returns why tool-call
    /// records were lost, if any were.
    pub fn finish(self) -> Option<String> {
        self.proxy.join();
        self.gate.finish()
    }
}
