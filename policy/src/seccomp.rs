//! The seccomp floor, as data: what every sandbox denies, and why.
//!
//! It is a deny list on top of default-allow, so the kernel's seccomp action
//! cache can answer every unlisted syscall without walking BPF. Syscalls the
//! list cannot know (added by a future kernel) are therefore allowed: the
//! Landlock rules, dropped capabilities and no_new_privs still bound them.

use crate::plan::{ArgCmp, Op, SyscallRule, Verdict, Width};
use crate::syscalls;

/// Syscalls an MCP server never needs and sandbox escapes use, denied with EPERM.
const ALWAYS: &[(&str, &str)] = &[
    ("io_uring_setup", "io_uring runs file and socket operations that seccomp never sees"),
    ("io_uring_enter", "io_uring runs file and socket operations that seccomp never sees"),
    ("io_uring_register", "io_uring runs file and socket operations that seccomp never sees"),
    ("bpf", "loads programs into the kernel"),
    ("perf_event_open", "kernel attack surface and side channels"),
    ("userfaultfd", "stalls the kernel mid-copy to win races"),
    ("keyctl", "the kernel keyring is not namespaced"),
    ("add_key", "the kernel keyring is not namespaced"),
    ("request_key", "the kernel keyring is not namespaced"),
    ("ptrace", "tracing other processes, rewriting syscalls after seccomp"),
    ("process_vm_readv", "reads other processes' memory"),
    ("process_vm_writev", "writes other processes' memory"),
    ("pidfd_getfd", "steals file descriptors from other processes"),
    ("kcmp", "compares kernel objects of other processes"),
    ("kexec_load", "replaces the running kernel"),
    ("kexec_file_load", "replaces the running kernel"),
    ("init_module", "loads kernel modules"),
    ("finit_module", "loads kernel modules"),
    ("delete_module", "unloads kernel modules"),
    ("mount", "rearranges the filesystem view"),
    ("umount2", "rearranges the filesystem view"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("move_mount", "new mount API"),
    ("open_tree", "new mount API"),
    ("open_tree_attr", "new mount API"),
    ("mount_setattr", "new mount API"),
    ("pivot_root", "changes the root filesystem"),
    ("chroot", "changes the root directory"),
    ("setns", "joins other namespaces"),
    ("unshare", "new namespaces detach mount-based rules and expose more kernel code"),
    ("open_by_handle_at", "opens files by handle, bypassing path checks (shocker)"),
    ("swapon", "host administration"),
    ("swapoff", "host administration"),
    ("reboot", "host administration"),
    ("acct", "host administration"),
    ("quotactl", "host administration"),
    ("quotactl_fd", "host administration"),
    ("syslog", "reads the kernel log"),
    ("settimeofday", "host administration"),
    ("clock_settime", "host administration"),
    ("clock_adjtime", "host administration"),
    ("adjtimex", "host administration"),
    ("sethostname", "host administration"),
    ("setdomainname", "host administration"),
    ("iopl", "raw I/O port access"),
    ("ioperm", "raw I/O port access"),
    ("modify_ldt", "old kernel attack surface"),
    ("uselib", "obsolete loader entry point"),
    ("lookup_dcookie", "profiling interface"),
    ("vhangup", "hangs up the terminal"),
    ("fanotify_init", "watches the whole filesystem"),
    ("name_to_handle_at", "pairs with open_by_handle_at"),
    ("memfd_secret", "memory hidden from the supervisor"),
    ("lsm_set_self_attr", "changes LSM attributes"),
    // Landlock (through ABI 7) does not mediate metadata changes, and the
    // sandbox owns every file of its uid: chown and extended attributes
    // (including POSIX ACLs) would reach files outside every rule.
    ("chown", "Landlock does not mediate ownership changes"),
    ("fchown", "Landlock does not mediate ownership changes"),
    ("lchown", "Landlock does not mediate ownership changes"),
    ("fchownat", "Landlock does not mediate ownership changes"),
    ("setxattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("lsetxattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("fsetxattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("setxattrat", "Landlock does not mediate extended attributes (ACLs included)"),
    ("removexattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("lremovexattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("fremovexattr", "Landlock does not mediate extended attributes (ACLs included)"),
    ("removexattrat", "Landlock does not mediate extended attributes (ACLs included)"),
    ("file_setattr", "Landlock does not mediate inode flags (append-only, nodump, project ids)"),
];

/// chmod-family syscalls and the index of their mode argument.
const CHMODS: &[(&str, u8)] = &[("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("fchmodat2", 2)];
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
/// MSG_FASTOPEN: sendto/sendmsg connect without connect(2), which Landlock never sees.
const MSG_FASTOPEN: u64 = 0x2000_0000;

// clone(2) flags that create namespaces.
const CLONE_NEWTIME: u64 = 0x80;
const CLONE_NEWNS: u64 = 0x0002_0000;
const CLONE_NEWCGROUP: u64 = 0x0200_0000;
const CLONE_NEWUTS: u64 = 0x0400_0000;
const CLONE_NEWIPC: u64 = 0x0800_0000;
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWPID: u64 = 0x2000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
// The clone rules test these in the low word of the flags (see baseline).
const _: () = assert!(
    (CLONE_NEWTIME
        | CLONE_NEWNS
        | CLONE_NEWCGROUP
        | CLONE_NEWUTS
        | CLONE_NEWIPC
        | CLONE_NEWUSER
        | CLONE_NEWPID
        | CLONE_NEWNET)
        >> 32
        == 0
);

const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;
/// Inode flags (chattr) and extended flags: metadata Landlock does not mediate.
const FS_IOC_SETFLAGS: u64 = 0x4008_6602;
const FS_IOC_FSSETXATTR: u64 = 0x401C_5820;
const AF_UNIX: u64 = 1;
const AF_INET: u64 = 2;
const AF_INET6: u64 = 10;
const SOCK_STREAM: u64 = 1;
const SOCK_DGRAM: u64 = 2;
const SOCK_TYPE_MASK: u64 = 0xf;
const IPPROTO_TCP: u64 = 6;
const IPPROTO_UDP: u64 = 17;
const MFD_NOEXEC_SEAL: u64 = 0x8;
const AT_EMPTY_PATH: u64 = 0x1000;
/// personality(2) values programs legitimately set: PER_LINUX, PER_LINUX32,
/// UNAME26 variants, and the 0xffffffff query.
const PERSONALITY_OK: &[u64] = &[0, 8, 0x0002_0000, 0x0002_0008, 0xffff_ffff];

/// What the socket rules must let through.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SocketPolicy {
    /// Some TCP port may be connected to or bound (Landlock checks which).
    pub tcp: bool,
    /// Some TCP port may be bound (else listen(2) is denied: its automatic
    /// bind to an ephemeral port is not checked by Landlock).
    pub tcp_bind: bool,
    pub udp: bool,
    /// socket(AF_UNIX): pathname and abstract unix sockets.
    pub unix: bool,
}

/// Everything the baseline depends on.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct FloorPolicy {
    pub sockets: SocketPolicy,
    /// chmod of files this uid owns (never setuid/setgid bits); off by default
    /// because Landlock cannot confine it to the writable paths.
    pub chmod: bool,
}

/// The numbers of [`ALWAYS`]' syscalls, looked up when compiled (a launch
/// compiles the baseline; the lookups were a third of its time).
const ALWAYS_NR: [i64; ALWAYS.len()] = {
    let mut out = [0; ALWAYS.len()];
    let mut i = 0;
    while i < ALWAYS.len() {
        out[i] = syscalls::number_const(ALWAYS[i].0);
        i += 1;
    }
    out
};

fn nr(name: &str) -> i64 {
    syscalls::number(name).unwrap_or_else(|| panic!("baseline names unknown syscall {name}"))
}

fn rule(name: &str, when: Vec<ArgCmp>, verdict: Verdict, why: &str) -> SyscallRule {
    SyscallRule { syscall: name.to_string(), nr: nr(name), when, verdict, why: why.to_string() }
}

fn cmp(arg: u8, width: Width, op: Op, value: u64) -> ArgCmp {
    ArgCmp { arg, width, op, value }
}

/// The baseline rules for a sandbox with this socket policy.
pub fn baseline(floor: FloorPolicy) -> Vec<SyscallRule> {
    let sockets = floor.sockets;
    let mut rules: Vec<SyscallRule> = ALWAYS
        .iter()
        .zip(ALWAYS_NR)
        .map(|(&(name, why), nr)| SyscallRule {
            syscall: name.to_string(),
            nr,
            when: vec![],
            verdict: Verdict::Eperm,
            why: why.to_string(),
        })
        .collect();

    for &(name, arg) in CHMODS {
        if floor.chmod {
            for (bit, label) in [(S_ISUID, "setuid"), (S_ISGID, "setgid")] {
                rules.push(rule(
                    name,
                    vec![cmp(arg, Width::Dword, Op::MaskedEq(bit), bit)],
                    Verdict::Eperm,
                    &format!("no {label} bits, ever"),
                ));
            }
        } else {
            rules.push(rule(
                name,
                vec![],
                Verdict::Eperm,
                "Landlock does not mediate mode changes: any file this uid owns would do (allow with `[filesystem] chmod = true`)",
            ));
        }
    }

    // Flag words are unsigned long: each flag is tested through a mask, so
    // extra or high bits beside it cannot dodge the match. Every namespace
    // flag lies in the low 32 bits, where the masked test of the low word
    // alone gives the same answer in half the BPF (a full-width test also
    // loads and tests the high word against a zero mask): 24 instructions
    // fewer under strict for the kernel to convert, compile and run for
    // each syscall number at every launch's install.
    for (flag, label) in [
        (CLONE_NEWNS, "CLONE_NEWNS"),
        (CLONE_NEWUSER, "CLONE_NEWUSER"),
        (CLONE_NEWPID, "CLONE_NEWPID"),
        (CLONE_NEWNET, "CLONE_NEWNET"),
        (CLONE_NEWIPC, "CLONE_NEWIPC"),
        (CLONE_NEWUTS, "CLONE_NEWUTS"),
        (CLONE_NEWCGROUP, "CLONE_NEWCGROUP"),
        (CLONE_NEWTIME, "CLONE_NEWTIME"),
    ] {
        rules.push(rule(
            "clone",
            vec![cmp(0, Width::Dword, Op::MaskedEq(flag), flag)],
            Verdict::Eperm,
            &format!("clone with {label} creates a namespace"),
        ));
    }
    // clone3 passes its flags in memory BPF cannot read: ENOSYS makes libc
    // fall back to clone(2), whose flags the rules above inspect.
    rules.push(rule("clone3", vec![], Verdict::Enosys, "flags hidden in memory; libc falls back to clone"));
    // A Landlock layer of the sandbox's own would have the kernel report
    // the sandbox's denials under a domain portcullis does not know (or,
    // with LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF, not at all): they
    // would go unrecorded while the run's summary said none were missed.
    // The sandbox cannot make a ruleset, so it cannot restrict itself
    // further (the command's own landlock_restrict_self takes the one
    // portcullis made). ENOSYS reads as a kernel without Landlock, which
    // tools that sandbox themselves take in their stride.
    rules.push(rule(
        "landlock_create_ruleset",
        vec![],
        Verdict::Enosys,
        "a Landlock layer of the sandbox's own would hide its denials from the audit log",
    ));

    // ioctl's request is an unsigned int: compare 32 bits (CVE-2019-10063).
    rules.push(rule(
        "ioctl",
        vec![cmp(1, Width::Dword, Op::Eq, TIOCSTI)],
        Verdict::Eperm,
        "TIOCSTI pushes keystrokes into the terminal",
    ));
    rules.push(rule(
        "ioctl",
        vec![cmp(1, Width::Dword, Op::Eq, TIOCLINUX)],
        Verdict::Eperm,
        "TIOCLINUX console selection injects input",
    ));
    for (req, what) in [(FS_IOC_SETFLAGS, "FS_IOC_SETFLAGS"), (FS_IOC_FSSETXATTR, "FS_IOC_FSSETXATTR")] {
        rules.push(rule(
            "ioctl",
            vec![cmp(1, Width::Dword, Op::Eq, req)],
            Verdict::Eperm,
            match what {
                "FS_IOC_SETFLAGS" => "FS_IOC_SETFLAGS changes inode flags (chattr), which Landlock does not mediate",
                _ => "FS_IOC_FSSETXATTR changes inode flags and project ids, which Landlock does not mediate",
            },
        ));
    }

    let personality_other: Vec<ArgCmp> = PERSONALITY_OK.iter().map(|v| cmp(0, Width::Dword, Op::Ne, *v)).collect();
    rules.push(rule(
        "personality",
        personality_other,
        Verdict::Eperm,
        "READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE and friends weaken mitigations",
    ));

    rules.push(rule(
        "memfd_create",
        vec![cmp(1, Width::Dword, Op::MaskedEq(MFD_NOEXEC_SEAL), 0)],
        Verdict::Eperm,
        "an executable memfd runs code from no path (only MFD_NOEXEC_SEAL memfds are allowed)",
    ));
    rules.push(rule(
        "execveat",
        vec![cmp(4, Width::Dword, Op::MaskedEq(AT_EMPTY_PATH), AT_EMPTY_PATH)],
        Verdict::Eperm,
        "fileless exec of an fd (fexecve)",
    ));

    // Address families: only AF_UNIX (when IPC is allowed) and the inet ones.
    // Ranges keep the program short: seccomp's action cache is rebuilt by
    // emulating the whole program once per syscall number at install time.
    if !sockets.tcp && !sockets.udp && !sockets.unix {
        rules.push(rule("socket", vec![], Verdict::Eperm, "the profile allows no network and no unix sockets"));
    } else {
        let families: [(Vec<ArgCmp>, &str); 3] = [
            (vec![cmp(0, Width::Dword, Op::Eq, 0)], "AF_UNSPEC"),
            (vec![cmp(0, Width::Dword, Op::Ge, 3), cmp(0, Width::Dword, Op::Le, 9)], "AF_AX25..AF_X25"),
            (vec![cmp(0, Width::Dword, Op::Ge, 11)], "AF_ROSE and above: netlink, packet, vsock and the rest"),
        ];
        for (when, label) in families {
            rules.push(rule("socket", when, Verdict::Eperm, &format!("address family {label} is not needed")));
        }
        if !sockets.unix {
            rules.push(rule(
                "socket",
                vec![cmp(0, Width::Dword, Op::Eq, AF_UNIX)],
                Verdict::Eperm,
                "AF_UNIX: the profile allows no IPC sockets",
            ));
        }
        for family in [AF_INET, AF_INET6] {
            let fam = cmp(0, Width::Dword, Op::Eq, family);
            let fname = family_name(family);
            if !sockets.tcp && !sockets.udp {
                rules.push(rule(
                    "socket",
                    vec![fam],
                    Verdict::Eperm,
                    &format!("{fname}: the profile allows no network"),
                ));
                continue;
            }
            let mut allowed = Vec::new();
            if sockets.tcp {
                allowed.push(SOCK_STREAM);
            }
            if sockets.udp {
                allowed.push(SOCK_DGRAM);
            }
            for (mask, value) in type_denials(&allowed) {
                rules.push(rule(
                    "socket",
                    vec![fam, cmp(1, Width::Dword, Op::MaskedEq(mask), value)],
                    Verdict::Eperm,
                    &format!("{fname} socket type (type & {mask:#x} == {value:#x}): Landlock restricts TCP only; UDP needs `udp = true`"),
                ));
            }
            // Landlock's port rules only see IPPROTO_TCP: SCTP or MPTCP
            // streams would dodge them. Protocol 0 means the default one.
            let protocols = [
                (sockets.tcp, SOCK_STREAM, IPPROTO_TCP, "stream protocol other than TCP escapes Landlock's port rules"),
                (sockets.udp, SOCK_DGRAM, IPPROTO_UDP, "datagram protocol other than UDP"),
            ];
            for (allowed, ty, proto, why) in protocols {
                if allowed {
                    rules.push(rule(
                        "socket",
                        vec![
                            fam,
                            cmp(1, Width::Dword, Op::MaskedEq(SOCK_TYPE_MASK), ty),
                            cmp(2, Width::Dword, Op::Ne, 0),
                            cmp(2, Width::Dword, Op::Ne, proto),
                        ],
                        Verdict::Eperm,
                        &format!("{fname} {why}"),
                    ));
                }
            }
        }
    }
    if sockets.tcp {
        for (name, arg) in [("sendto", 3), ("sendmsg", 2), ("sendmmsg", 3)] {
            rules.push(rule(
                name,
                vec![cmp(arg, Width::Dword, Op::MaskedEq(MSG_FASTOPEN), MSG_FASTOPEN)],
                Verdict::Eperm,
                "TCP Fast Open connects without connect(2), past Landlock's port rules",
            ));
        }
        if !sockets.tcp_bind {
            rules.push(rule(
                "listen",
                vec![],
                Verdict::Eperm,
                "listen(2) binds an ephemeral port Landlock never checks; allow a bind port to listen",
            ));
        }
    }
    // socketpair reaches nothing outside, but only AF_UNIX makes sense.
    rules.push(rule(
        "socketpair",
        vec![cmp(0, Width::Dword, Op::Ne, AF_UNIX)],
        Verdict::Eperm,
        "socketpair other than AF_UNIX",
    ));
    rules
}

/// Masked-equality tests that together match every socket type (the low four
/// bits of `type`; the rest are SOCK_NONBLOCK/SOCK_CLOEXEC) not in `allowed`:
/// one test per bit no allowed type uses, then the leftovers one by one.
fn type_denials(allowed: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut covered_bits = 0;
    for bit in [0x1, 0x2, 0x4, 0x8] {
        if allowed.iter().all(|t| t & bit == 0) {
            out.push((bit, bit));
            covered_bits |= bit;
        }
    }
    for ty in 0..=SOCK_TYPE_MASK {
        if ty & covered_bits == 0 && !allowed.contains(&ty) {
            out.push((SOCK_TYPE_MASK, ty));
        }
    }
    out
}

fn family_name(f: u64) -> String {
    match f {
        0 => "AF_UNSPEC".into(),
        1 => "AF_UNIX".into(),
        2 => "AF_INET".into(),
        10 => "AF_INET6".into(),
        16 => "AF_NETLINK".into(),
        17 => "AF_PACKET".into(),
        40 => "AF_VSOCK".into(),
        n => format!("#{n}"),
    }
}

/// A user-listed extra deny.
pub fn extra(name: &str, why: &str) -> Option<SyscallRule> {
    syscalls::number(name).map(|nr| SyscallRule {
        syscall: name.to_string(),
        nr,
        when: vec![],
        verdict: Verdict::Eperm,
        why: why.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_baseline_name_is_known() {
        for tcp in [false, true] {
            for udp in [false, true] {
                for unix in [false, true] {
                    let rules =
                        baseline(FloorPolicy { sockets: SocketPolicy { tcp, tcp_bind: tcp, udp, unix }, chmod: tcp });
                    assert!(rules.iter().all(|r| r.nr >= 0));
                }
            }
        }
    }

    /// Evaluates the socket rules the way the kernel filter would.
    fn denied(rules: &[SyscallRule], args: [u64; 3]) -> bool {
        rules.iter().filter(|r| r.syscall == "socket").any(|r| {
            r.when.iter().all(|c| {
                let v = if c.width == Width::Dword { args[c.arg as usize] & 0xffff_ffff } else { args[c.arg as usize] };
                match c.op {
                    Op::Eq => v == c.value,
                    Op::Ne => v != c.value,
                    Op::Ge => v >= c.value,
                    Op::Le => v <= c.value,
                    Op::Gt => v > c.value,
                    Op::MaskedEq(m) => v & m == c.value,
                }
            })
        })
    }

    #[test]
    fn socket_rules_match_the_policy_exhaustively() {
        const NONBLOCK_CLOEXEC: u64 = 0x800 | 0x80000;
        for tcp in [false, true] {
            for udp in [false, true] {
                for unix in [false, true] {
                    let rules = baseline(FloorPolicy {
                        sockets: SocketPolicy { tcp, tcp_bind: false, udp, unix },
                        chmod: false,
                    });
                    for family in 0..300u64 {
                        for ty in 0..16u64 {
                            for flags in [0, NONBLOCK_CLOEXEC] {
                                for proto in [0u64, IPPROTO_TCP, IPPROTO_UDP, 132] {
                                    let inet = family == AF_INET || family == AF_INET6;
                                    let proto_ok = proto == 0
                                        || (ty == SOCK_STREAM && proto == IPPROTO_TCP)
                                        || (ty == SOCK_DGRAM && proto == IPPROTO_UDP);
                                    let want_allowed = (family == AF_UNIX && unix)
                                        || (inet
                                            && proto_ok
                                            && ((ty == SOCK_STREAM && tcp) || (ty == SOCK_DGRAM && udp)));
                                    let got = !denied(&rules, [family, ty | flags, proto]);
                                    assert_eq!(
                                        got, want_allowed,
                                        "tcp {tcp} udp {udp} unix {unix}: socket({family}, {ty}|{flags:#x}, {proto})"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
