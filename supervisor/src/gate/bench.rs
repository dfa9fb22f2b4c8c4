//! For `cargo xtask bench`: what a parked syscall costs.
//!
//! - *floor*: a bare responder (receive, answer, nothing else) for getppid;
//! - *gate*: the real gate deciding getppid under an `ask` rule that a
//!   session grant answers (policy-decided, no human), then CONTINUE;
//! - *open*: open(O_WRONLY|O_APPEND)+close of a workspace file, bare and
//!   through the gate (path resolved from the caller's view, decided, opened
//!   in the confined thread, injected with ADDFD).

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use policy::ask::{Access, GatePlan, GateRule, Grant, GrantScope, Grants, Target};

use super::{Asker, Context, Setup};
use crate::broker::{AskAnswer, AskRequest};
use crate::evidence::{AuditPaths, Evidence};
use crate::exit::Failure;
use crate::sandbox::seccomp::{notify_program, notify_set};
use crate::sys::bench::{fork_worker, Work};
use crate::sys::notify;

/// Latency figures in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
}

fn stats(mut v: Vec<u64>) -> Stats {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q) as usize] as f64;
    let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
    Stats { p50: at(0.5), p99: at(0.99), mean }
}

#[derive(Clone, Debug)]
pub struct GateBench {
    pub bare_getppid: Stats,
    pub floor: Stats,
    pub gate: Stats,
    pub open_bare: Stats,
    pub open_gate: Stats,
    /// getppid denied by a rule (policy-decided), back to back: audit off,
    /// and audit on as shipped (the first 3 per target recorded, the rest counted).
    pub deny_audit_off: Stats,
    pub deny_audit_on: Stats,
    /// The same denial with every one recorded (signed, group-committed),
    /// at steady rates: one row per [`PACES`].
    pub paced: Vec<Paced>,
}

/// One steady rate of recorded denials, audit off and on.
#[derive(Clone, Copy, Debug)]
pub struct Paced {
    /// One call every this many nanoseconds.
    pub every_ns: u64,
    pub audit_off: Stats,
    pub audit_on: Stats,
    /// Records the audit-on run wrote.
    pub records: u64,
}

/// (interval, calls): 1,000 recorded denials a second (a busy sandbox), and
/// 20,000 (a stress rate, half of what one signing core sustains here).
pub const PACES: [(u64, usize); 2] = [(1_000_000, 3_000), (50_000, 20_000)];

/// Interleaved rounds of the audit off/on comparison.
const ROUNDS: usize = 20;

struct Never;

impl Asker for Never {
    fn ask(&self, _req: &AskRequest) -> AskAnswer {
        AskAnswer::deny("bench", "the benchmark never asks a person", std::time::Duration::ZERO)
    }
}

fn rule(access: Access, target: Target, deny: bool) -> GateRule {
    GateRule {
        access,
        target,
        deny,
        category: policy::mcp::Category::Write,
        timeout_ms: 1000,
        at: policy::Origin::new("bench", 0),
    }
}

fn pair() -> Result<(OwnedFd, OwnedFd), Failure> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| Failure::setup(format!("socketpair: {e}")))
}

/// Runs every measurement with `iters` timed iterations each. Forks its
/// workers first, while the caller is single-threaded.
pub fn measure(iters: usize, dir: &Path) -> Result<GateBench, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("gate bench: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
    let file = dir.join("file.txt");
    std::fs::write(&file, "").map_err(|e| fail(&e))?;
    let file_c = CString::new(file.to_string_lossy().as_bytes()).map_err(|e| fail(&e))?;
    let nr_getppid = policy::syscalls::number("getppid").unwrap_or(110);
    let plan = GatePlan {
        rules: vec![
            rule(Access::Syscall, Target::Syscall { name: "getppid".into(), nr: nr_getppid }, false),
            rule(Access::Write, Target::Path(dir.join("protected").to_string_lossy().into_owned()), true),
            // As strict's: every write then also looks for git directories
            // of other names around its target (gate::path::git_aliases).
            rule(Access::Write, Target::Anywhere(".git".into()), true),
        ],
        markers: vec![],
        symlinks: vec![],
        default_timeout_ms: 1000,
    };
    let prog = notify_program(&notify_set(&plan));
    let deny_plan = GatePlan {
        rules: vec![rule(Access::Syscall, Target::Syscall { name: "getppid".into(), nr: nr_getppid }, true)],
        default_timeout_ms: 1000,
        markers: vec![],
        symlinks: vec![],
    };

    let (floor_ours, floor_theirs) = pair()?;
    let (gate_ours, gate_theirs) = pair()?;
    let (open_ours, open_theirs) = pair()?;
    let bare_ppid = fork_worker(None, Work::Getppid, iters).map_err(|e| fail(&e))?;
    let floor_w = fork_worker(Some((&prog, &floor_theirs)), Work::Getppid, iters).map_err(|e| fail(&e))?;
    let gate_w = fork_worker(Some((&prog, &gate_theirs)), Work::Getppid, iters).map_err(|e| fail(&e))?;
    let open_bare_w = fork_worker(None, Work::OpenAppend(file_c.clone()), iters).map_err(|e| fail(&e))?;
    let open_gate_w =
        fork_worker(Some((&prog, &open_theirs)), Work::OpenAppend(file_c), iters).map_err(|e| fail(&e))?;
    // Audit off and on are compared in interleaved rounds, each row's
    // samples pooled. A single run lands in one of two modes (p50 ~3.7 or
    // ~6 us here, by where the scheduler puts the caller and the gate), so
    // two configurations run one after the other compare placements, not
    // code: the same code measured 0.98x and 1.40x that way.
    let mut works = vec![(Work::Getppid, iters / ROUNDS), (Work::Getppid, iters / ROUNDS)];
    for (every, n) in PACES {
        works.extend([(Work::GetppidEvery(every), n / ROUNDS), (Work::GetppidEvery(every), n / ROUNDS)]);
    }
    // Within a round, the pair's order alternates (off first, then on
    // first), and the workers are forked in the order they run: where the
    // scheduler first puts a process can follow the order of the forks.
    let mut deny_runs = Vec::new();
    for round in 0..ROUNDS {
        for pair_of in 0..works.len() / 2 {
            for k in [round % 2, 1 - round % 2] {
                let row = 2 * pair_of + k;
                let (work, n) = &works[row];
                let (ours, theirs) = pair()?;
                let w = fork_worker(Some((&prog, &theirs)), work.clone(), *n).map_err(|e| fail(&e))?;
                deny_runs.push((round, row, ours, w));
            }
        }
    }
    drop((floor_theirs, gate_theirs, open_theirs));

    let bare_getppid = stats(bare_ppid.run().map_err(|e| fail(&e))?);

    // The floor: receive, answer, nothing else.
    let listener = crate::sys::stage::recv_fd(&floor_ours, true).ok_or_else(|| fail(&"no listener from the worker"))?;
    let _ = notify::set_sync_wakeup(listener.as_fd());
    let responder = std::thread::spawn(move || loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            return;
        }
        let ev = fds[0].revents().unwrap_or(PollFlags::empty());
        if ev.contains(PollFlags::POLLIN) {
            if let Ok(Some(n)) = notify::recv(listener.as_fd()) {
                let _ = notify::respond(listener.as_fd(), n.id, 0, 0, false);
            }
        } else if !ev.is_empty() {
            return;
        }
    });
    let floor = stats(floor_w.run().map_err(|e| fail(&e))?);
    let _ = responder.join();

    let audit = AuditPaths {
        log: dir.join("audit/audit.log"),
        key: dir.join("audit/audit.key"),
        syslog: None,
        rotate_bytes: None,
    };
    let start_with = |sock: OwnedFd,
                      session: &str,
                      plan: &GatePlan,
                      audit_on: bool,
                      records_per_target: u32|
     -> Result<super::Running, Failure> {
        let mut grants = Grants::default();
        grants.insert(&Grant {
            id: "bench".into(),
            profile: "bench".into(),
            access: Access::Syscall,
            target: "getppid".into(),
            allow: true,
            scope: GrantScope::Session,
            created: 0,
            by: "bench".into(),
        });
        let ctx = Context {
            plan: plan.clone(),
            records_per_target,
            connect_ports: Vec::new(),
            tmp: None,
            profile: "bench".into(),
            session: session.into(),
            argv: vec!["bench".into()],
            grants_path: dir.join("grants.json"),
            grants,
            asker: Box::new(Never),
            unix_sockets: false,
        };
        let evidence = if audit_on { Some(Evidence::open(&audit, session)?) } else { None };
        super::begin(Setup { sock, ruleset: None, net: None })?.start(ctx, evidence)
    };
    let start =
        |sock: OwnedFd, session: &str| start_with(sock, session, &plan, true, super::VERDICT_RECORDS_PER_TARGET);
    let g = start(gate_ours, "bench-getppid")?;
    let gate = stats(gate_w.run().map_err(|e| fail(&e))?);
    g.finish();
    let open_bare = stats(open_bare_w.run().map_err(|e| fail(&e))?);
    let g = start(open_ours, "bench-open")?;
    let open_gate = stats(open_gate_w.run().map_err(|e| fail(&e))?);
    g.finish();

    // Audit off against audit on, for a verdict the policy decides and records.
    let mut settings = vec![(false, super::VERDICT_RECORDS_PER_TARGET), (true, super::VERDICT_RECORDS_PER_TARGET)];
    for _ in PACES {
        settings.extend([(false, u32::MAX), (true, u32::MAX)]);
    }
    let count = || audit::records(&audit.log).map(|r| r.count() as u64).unwrap_or(0);
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); settings.len()];
    let mut written = vec![0u64; settings.len()];
    for (round, row, sock, worker) in deny_runs {
        let (audit_on, per_target) = settings[row];
        let before = count();
        let g = start_with(sock, &format!("bench-deny-{row}-{round}"), &deny_plan, audit_on, per_target)?;
        samples[row].extend(worker.run().map_err(|e| fail(&e))?);
        g.finish();
        written[row] += count() - before;
    }
    let rows: Vec<Stats> = samples.into_iter().map(stats).collect();
    let paced = PACES
        .iter()
        .enumerate()
        .map(|(k, (every_ns, _))| Paced {
            every_ns: *every_ns,
            audit_off: rows[2 + 2 * k],
            audit_on: rows[3 + 2 * k],
            records: written[3 + 2 * k],
        })
        .collect();
    Ok(GateBench {
        bare_getppid,
        floor,
        gate,
        open_bare,
        open_gate,
        deny_audit_off: rows[0],
        deny_audit_on: rows[1],
        paced,
    })
}
