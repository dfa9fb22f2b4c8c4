//! The command line: `run`, `doctor`, `explain`, `profile`.

mod approvals;
mod audit;
mod doctor;
mod explain;
mod grants;
mod mcp;
mod probe_op;
mod profile;
mod run;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::exit::{self, Failure};

const EXIT_CODES: &str = "\
Exit status of `portcullis run`:
  N        the command's own exit status
  128+N    the command was killed by signal N
  125      portcullis failed before exec: bad profile or flag, a rule this
           kernel cannot enforce (see --best-effort), sandbox setup failed
  126      the command may not be executed under the profile (not in the
           exec allowlist, or the kernel refused to execute it)
  127      the command was not found
Other subcommands exit 0 on success and 125 on error.";

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Run MCP servers and agent tools in a kernel-enforced sandbox", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `portcullis run ...` alone: parsing it builds only `run`'s arguments, not
/// every subcommand's (a tenth of a millisecond of every launch). Its help,
/// usage and errors are the same as through [`Cli`].
#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Run MCP servers and agent tools in a kernel-enforced sandbox", after_help = EXIT_CODES)]
struct RunCli {
    #[command(subcommand)]
    cmd: RunOnly,
}

#[derive(Subcommand, Debug)]
enum RunOnly {
    /// Run a command under a profile: portcullis run [OPTIONS] -- CMD [ARGS]...
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
}

impl Cli {
    fn parse_args() -> Result<Cli, clap::Error> {
        let argv: Vec<OsString> = std::env::args_os().collect();
        if argv.get(1).is_some_and(|a| a == "run") {
            if let Some(args) = plain_run(&argv[2..]) {
                return Ok(Cli { cmd: Cmd::Run(args) });
            }
            return RunCli::try_parse_from(argv).map(|c| match c.cmd {
                RunOnly::Run(args) => Cli { cmd: Cmd::Run(args) },
            });
        }
        Cli::try_parse_from(argv)
    }
}

/// The usual `run` line, read without clap (building its parser took a
/// tenth of a millisecond of every launch): `--FLAG VALUE` or
/// `--FLAG=VALUE` for the string-valued flags, each single-valued one at
/// most once, `--mcp` and `--best-effort` at most once, then `--` and a
/// command. Anything else (another flag, help, a value that is empty, not
/// UTF-8 or starts with `-`, `--max-procs`, `--syslog`) gives None, and
/// clap reads the line: its errors and help stay the only ones. A test
/// holds the two to the same result.
fn plain_run(args: &[OsString]) -> Option<RunArgs> {
    let mut a = SandboxArgs::for_profile("strict");
    let mut profile = None;
    let mut mcp = false;
    let mut i = 0;
    loop {
        let arg = args.get(i)?.to_str()?;
        i += 1;
        if arg == "--" {
            break;
        }
        let flag = arg.strip_prefix("--")?;
        match flag {
            "mcp" if !mcp => {
                mcp = true;
                continue;
            }
            "best-effort" if !a.best_effort => {
                a.best_effort = true;
                continue;
            }
            _ => {}
        }
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, value),
            None => {
                i += 1;
                (flag, args.get(i - 1)?.to_str()?)
            }
        };
        if value.is_empty() || value.starts_with('-') {
            return None;
        }
        let once = |slot: &mut Option<String>| slot.replace(value.to_string()).is_none().then_some(());
        let value = value.to_string();
        match name {
            "profile" => once(&mut profile)?,
            "workspace" => a.workspace.replace(value.into()).is_none().then_some(())?,
            "read" => a.read.push(value),
            "write" => a.write.push(value),
            "exec" => a.exec.push(value),
            "connect" => a.connect.push(value),
            "bind" => a.bind.push(value),
            "env" => a.env.push(value),
            "max-memory" => once(&mut a.max_memory)?,
            "ask-read" => a.ask_read.push(value),
            "ask-write" => a.ask_write.push(value),
            "ask-exec" => a.ask_exec.push(value),
            "ask-connect" => a.ask_connect.push(value),
            "ask-timeout" => once(&mut a.ask_timeout)?,
            "audit-log" => a.audit_log.replace(value.into()).is_none().then_some(())?,
            "audit-key" => a.audit_key.replace(value.into()).is_none().then_some(())?,
            "audit-rotate-size" => once(&mut a.audit_rotate_size)?,
            _ => return None,
        }
    }
    let command = args[i..].to_vec();
    if command.is_empty() {
        return None;
    }
    if let Some(p) = profile {
        a.profile = p;
    }
    Some(RunArgs { sandbox: a, mcp, command })
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a command under a profile: portcullis run [OPTIONS] -- CMD [ARGS]...
    #[command(after_help = EXIT_CODES)]
    Run(RunArgs),
    /// What this kernel can enforce; with --profile, what of it would be weakened here.
    Doctor {
        #[arg(long)]
        json: bool,
        #[arg(long, value_name = "NAME|PATH")]
        profile: Option<String>,
    },
    /// Print the compiled plan: every Landlock rule, seccomp verdict, exec allowlist, env policy and limit.
    Explain(ExplainArgs),
    /// Verify, read, export and prove the signed audit log; show or rotate its key.
    Audit {
        #[command(subcommand)]
        cmd: audit::AuditCmd,
    },
    /// List, show and check profiles.
    Profile {
        #[command(subcommand)]
        cmd: ProfileCmd,
    },
    /// Put `portcullis run --mcp` in front of the stdio servers of an MCP
    /// client config (Claude Desktop, Claude Code, VS Code, Cursor); keeps FILE.portcullis-backup.
    Wrap {
        file: PathBuf,
        /// Use this profile for every server instead of recognising each.
        #[arg(long, value_name = "NAME|PATH")]
        profile: Option<String>,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Undo `wrap`: the original file byte for byte when it is unchanged since.
    Unwrap { file: PathBuf },
    /// The approval broker: one per user; supervisors submit `ask` requests,
    /// front ends answer. Started on demand by the first supervisor that needs it.
    Broker {
        /// Stay in the foreground (default: detach when started on demand).
        #[arg(long)]
        foreground: bool,
    },
    /// Pending approval requests: an interactive queue on a terminal, or with --json a list.
    Approvals {
        #[arg(long)]
        json: bool,
    },
    /// Allow pending request ID (once, unless --session or --always).
    Approve {
        id: String,
        #[arg(long, conflicts_with = "always")]
        session: bool,
        #[arg(long)]
        always: bool,
    },
    /// Deny pending request ID (once, unless --always).
    Deny {
        id: String,
        #[arg(long)]
        always: bool,
    },
    /// Persisted decisions (`always allow` / `always deny`) per profile.
    Grants {
        #[command(subcommand)]
        cmd: grants::GrantsCmd,
    },
    /// Internal: what `profile test` runs inside the sandbox.
    #[command(hide = true, name = "probe-op")]
    ProbeOp { op: String, target: String },
}

#[derive(Subcommand, Debug)]
pub enum ProfileCmd {
    /// Built-in, system and user profiles.
    List,
    /// The profile's text and its extends chain.
    Show { name: String },
    /// Validate a profile file: every error names file:line.
    Check { file: PathBuf },
    /// Check the profile's `[[expect]]` entries in real sandboxes on this
    /// kernel (exit 0: all hold; 1: some do not; 125: cannot test).
    Test {
        name: String,
        /// Check them on every kernel of the VM matrix instead (needs the source tree).
        #[arg(long)]
        vm: bool,
    },
}

/// Flags shared by `run` and `explain`. They only add to the profile.
#[derive(Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Profile name (built-in, user or system) or path to a .toml file.
    #[arg(long, default_value = "strict", value_name = "NAME|PATH")]
    pub profile: String,
    /// The directory `{workspace}` means (default: the current directory; one
    /// that holds your home directory, or `/`, is refused).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Also allow reading PATH (repeatable).
    #[arg(long, value_name = "PATH")]
    pub read: Vec<String>,
    /// Also allow reading and writing PATH (repeatable).
    #[arg(long, value_name = "PATH")]
    pub write: Vec<String>,
    /// Also allow executing PATH or a command name looked up on PATH (repeatable).
    #[arg(long, value_name = "PATH")]
    pub exec: Vec<String>,
    /// Also allow TCP connect to PORT (repeatable).
    #[arg(long, value_name = "PORT")]
    pub connect: Vec<String>,
    /// Also allow TCP bind on PORT (repeatable).
    #[arg(long, value_name = "PORT")]
    pub bind: Vec<String>,
    /// Also pass environment variable NAME (repeatable; `*` globs never pass secret-looking names).
    #[arg(long, value_name = "NAME")]
    pub env: Vec<String>,
    /// At most N processes and threads in the sandbox.
    #[arg(long, value_name = "N")]
    pub max_procs: Option<u64>,
    /// At most SIZE of memory (e.g. 512M, 2G).
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// Stop reads of PATH (and beneath) for a decision (repeatable).
    #[arg(long, value_name = "PATH")]
    pub ask_read: Vec<String>,
    /// Stop writes to PATH (and beneath), creating, renaming or deleting there, for a decision (repeatable).
    #[arg(long, value_name = "PATH")]
    pub ask_write: Vec<String>,
    /// Stop executing PATH for a decision, showing its argv (repeatable; PATH also becomes executable).
    #[arg(long, value_name = "PATH")]
    pub ask_exec: Vec<String>,
    /// Stop TCP connects to PORT (or IP:PORT) for a decision (repeatable).
    #[arg(long, value_name = "PORT")]
    pub ask_connect: Vec<String>,
    /// Deny an unanswered request after DURATION (e.g. 30s, 2m; default 120s).
    #[arg(long, value_name = "DURATION")]
    pub ask_timeout: Option<String>,
    /// Run even if this kernel cannot enforce every rule; print what is degraded.
    #[arg(long)]
    pub best_effort: bool,
    /// The signed audit log (default: $PORTCULLIS_AUDIT_LOG, else
    /// /var/log/portcullis/audit.log for root, else $XDG_STATE_HOME/portcullis/audit.log).
    #[arg(long, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Its signing key (default: $PORTCULLIS_AUDIT_KEY, else
    /// /var/lib/portcullis/audit.key for root, else $XDG_DATA_HOME/portcullis/audit.key).
    #[arg(long, value_name = "PATH")]
    pub audit_key: Option<PathBuf>,
    /// Also forward each audit record to syslog (journald reads /dev/log
    /// too), or to the datagram socket at PATH.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/dev/log")]
    pub syslog: Option<PathBuf>,
    /// Start a new log file once the live one reaches SIZE (e.g. 64M; `0`
    /// never). The old file keeps its records as `<log>.<first seq>` and the
    /// chain continues across files (default: $PORTCULLIS_AUDIT_ROTATE_SIZE, else 64M).
    #[arg(long, value_name = "SIZE")]
    pub audit_rotate_size: Option<String>,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Gate the command's MCP stdio: check each tools/call against the
    /// profile's [mcp] rules, rate limits and breakers, redact results,
    /// record every call in the audit log (see docs/MCP.md).
    #[arg(long)]
    pub mcp: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    #[arg(long)]
    pub json: bool,
}

impl SandboxArgs {
    /// Just a profile, no flags: what `doctor --profile` and `profile test` use.
    pub fn for_profile(profile: &str) -> Self {
        SandboxArgs {
            profile: profile.to_string(),
            workspace: None,
            read: vec![],
            write: vec![],
            exec: vec![],
            connect: vec![],
            bind: vec![],
            env: vec![],
            max_procs: None,
            max_memory: None,
            ask_read: vec![],
            ask_write: vec![],
            ask_exec: vec![],
            ask_connect: vec![],
            ask_timeout: None,
            best_effort: false,
            audit_log: None,
            audit_key: None,
            syslog: None,
            audit_rotate_size: None,
        }
    }

    pub fn overrides(&self) -> policy::Overrides {
        policy::Overrides {
            read: self.read.clone(),
            write: self.write.clone(),
            exec: self.exec.clone(),
            connect: self.connect.clone(),
            bind: self.bind.clone(),
            env: self.env.clone(),
            max_procs: self.max_procs,
            max_memory: self.max_memory.clone(),
            best_effort: self.best_effort,
            ask: policy::ask::AskOverrides {
                read: self.ask_read.clone(),
                write: self.ask_write.clone(),
                exec: self.ask_exec.clone(),
                connect: self.ask_connect.clone(),
                timeout: self.ask_timeout.clone(),
            },
        }
    }
}

/// Parses the command line, runs it, and returns the exit code.
pub fn main() -> i32 {
    crate::timing::start();
    let cli = match Cli::parse_args() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => exit::SETUP,
            };
            let _ = e.print();
            return code;
        }
    };
    crate::timing::mark("arguments parsed");
    let result = match cli.cmd {
        Cmd::Run(args) => run::run(args),
        Cmd::Doctor { json, profile } => doctor::doctor(json, profile.as_deref()),
        Cmd::Explain(args) => explain::explain(args),
        Cmd::Profile { cmd } => profile::profile(cmd),
        Cmd::Audit { cmd } => audit::audit(cmd),
        Cmd::Wrap { file, profile, dry_run } => mcp::wrap(&file, profile.as_deref(), dry_run),
        Cmd::Unwrap { file } => mcp::unwrap(&file),
        Cmd::Broker { foreground } => approvals::broker(foreground),
        Cmd::Approvals { json } => approvals::approvals(json),
        Cmd::Approve { id, session, always } => approvals::answer(&id, true, session, always),
        Cmd::Deny { id, always } => approvals::answer(&id, false, false, always),
        Cmd::Grants { cmd } => grants::grants(cmd),
        Cmd::ProbeOp { op, target } => Ok(probe_op::probe_op(&op, &target)),
    };
    crate::timing::done();
    match result {
        Ok(code) => code,
        Err(Failure { code, message }) => {
            eprintln!("portcullis: {}", defused(&message));
            code
        }
    }
}

/// A multi-line message (a failure, `explain`, `doctor`) with what it
/// quotes (profile values, flags, the command line, paths) made safe for a
/// terminal: controls and bidi characters escaped line by line, the
/// message's own line breaks kept. One-line output uses
/// `audit::display_safe`, which escapes newlines too. The audit log keeps
/// the raw text (JSON-escaped); this is display only.
fn defused(message: &str) -> String {
    message.split('\n').map(::audit::display_safe).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The fast path for `run` must be the same parser: same help, same
    /// arguments, same errors.
    #[test]
    fn run_alone_parses_exactly_as_the_full_command_line() {
        let help = |mut c: clap::Command| {
            c.build();
            let run = c.find_subcommand_mut("run").expect("a run subcommand");
            run.render_long_help().to_string()
        };
        assert_eq!(help(RunCli::command()), help(Cli::command()));
        RunCli::command().debug_assert();
        Cli::command().debug_assert();
        let argv = ["portcullis", "run", "--profile", "p", "--read", "/a", "--max-memory", "5Q", "--", "x", "-y"];
        let (fast, full) = (RunCli::try_parse_from(argv).map(|_| ()), Cli::try_parse_from(argv).map(|_| ()));
        assert!(fast.is_ok() && full.is_ok());
        let bad = ["portcullis", "run", "--bogus", "--", "x"];
        let (fast, full) = (RunCli::try_parse_from(bad), Cli::try_parse_from(bad));
        assert_eq!(fast.err().map(|e| e.to_string()), full.err().map(|e| e.to_string()));
        match RunCli::try_parse_from(argv).map(|c| c.cmd) {
            Ok(RunOnly::Run(a)) => assert_eq!((a.sandbox.profile.as_str(), a.command.len()), ("p", 2)),
            Err(e) => panic!("{e}"),
        }
    }

    /// The hand-read `run` line gives what clap gives, or leaves it to clap.
    #[test]
    fn the_plain_run_line_reads_as_clap_reads_it() {
        let lines: &[&[&str]] = &[
            &["--", "true"],
            &["--profile", "strict", "--exec", "/usr/bin/true", "--", "/usr/bin/true"],
            &["--profile=node", "--workspace", "/w", "--read", "/a", "--read=/b", "--", "node", "s.js", "--x"],
            &["--write", "/w", "--exec", "/e", "--connect", "443", "--bind", "8080", "--env", "TOKEN", "--", "c"],
            &["--max-memory", "512M", "--ask-read", "/r", "--ask-write", "/w", "--ask-exec", "/e", "--", "c"],
            &["--ask-connect", "1.2.3.4:5", "--ask-timeout", "5s", "--best-effort", "--mcp", "--", "c", "--", "d"],
            &["--audit-log", "/l", "--audit-key", "/k", "--audit-rotate-size", "2K", "--", "c"],
            &["--mcp", "--mcp", "--", "c"],
            &["--best-effort", "--best-effort", "--", "c"],
            &["--profile", "a", "--profile", "b", "--", "c"],
            &["--workspace", "/a", "--workspace=/b", "--", "c"],
            &["--max-memory", "1G", "--max-memory", "2G", "--", "c"],
            &["--profile", "--mcp", "--", "c"],
            &["--profile", "", "--", "c"],
            &["--profile"],
            &["--exec", "/e"],
            &["--", ""],
            &["--"],
            &[],
            &["--bogus", "--", "c"],
            &["--max-procs", "5", "--", "c"],
            &["--syslog", "--", "c"],
            &["--help"],
            &["-h"],
            &["--prof", "x", "--", "c"],
            &["cmd"],
            &["--read", "/a", "cmd"],
            &["--exec=", "--", "c"],
        ];
        for line in lines {
            let args: Vec<OsString> = line.iter().map(OsString::from).collect();
            let argv: Vec<OsString> = ["portcullis", "run"].iter().map(OsString::from).chain(args.clone()).collect();
            let clap = match RunCli::try_parse_from(&argv) {
                Ok(c) => match c.cmd {
                    RunOnly::Run(a) => Ok(format!("{a:?}")),
                },
                Err(e) => Err(e.kind()),
            };
            // None leaves the line to clap: fine whatever it says.
            if let Some(a) = plain_run(&args) {
                assert_eq!(Ok(format!("{a:?}")), clap, "{line:?}");
            }
        }
        // The usual lines are read here.
        for line in &lines[..7] {
            let args: Vec<OsString> = line.iter().map(OsString::from).collect();
            assert!(plain_run(&args).is_some(), "{line:?}");
        }
    }
}
