//! Seccomp programs from the plan's rules: a hand-written architecture filter
//! first, then one seccompiler filter per verdict (seccompiler gives each
//! filter a single match action). Stacked filters all run; the kernel keeps
//! the strictest answer.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use policy::plan::{Op, SyscallRule, Verdict, Width};

use crate::exit::Failure;
use crate::sys::stage::Insn;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// Kills the process on any syscall that is not native x86-64: i386 entry
/// (`int 0x80`, where numbers mean other syscalls) and the x32 bit (where a
/// deny list keyed on x86-64 numbers would never match).
pub fn arch_filter() -> Vec<Insn> {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    vec![
        stmt(LD_W_ABS, 4),                    // seccomp_data.arch
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), // native? skip the kill
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, 0),                  // seccomp_data.nr
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1), // x32 bit set? kill
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

fn condition(c: &policy::plan::ArgCmp) -> Result<SeccompCondition, seccompiler::BackendError> {
    let len = match c.width {
        Width::Dword => SeccompCmpArgLen::Dword,
        Width::Qword => SeccompCmpArgLen::Qword,
    };
    let op = match c.op {
        Op::Eq => SeccompCmpOp::Eq,
        Op::Ne => SeccompCmpOp::Ne,
        Op::Ge => SeccompCmpOp::Ge,
        Op::Le => SeccompCmpOp::Le,
        Op::Gt => SeccompCmpOp::Gt,
        Op::MaskedEq(m) => SeccompCmpOp::MaskedEq(m),
    };
    SeccompCondition::new(c.arg, len, op, c.value)
}

/// Compiles the rules into programs, architecture filter first.
pub fn compile(rules: &[SyscallRule]) -> Result<Vec<Vec<Insn>>, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("seccomp: cannot compile the filter: {e}"));
    let mut programs = vec![arch_filter()];
    let mut by_verdict: BTreeMap<Verdict, BTreeMap<i64, Option<Vec<SeccompRule>>>> = BTreeMap::new();
    for r in rules {
        let slot = by_verdict.entry(r.verdict).or_default().entry(r.nr).or_insert_with(|| Some(Vec::new()));
        if r.when.is_empty() {
            // Unconditional: deny whatever the argument rules said.
            *slot = None;
        } else if let Some(list) = slot {
            let conds = r.when.iter().map(condition).collect::<Result<Vec<_>, _>>().map_err(|e| fail(&e))?;
            list.push(SeccompRule::new(conds).map_err(|e| fail(&e))?);
        }
    }
    for (verdict, map) in by_verdict {
        let errno = match verdict {
            Verdict::Eperm => libc::EPERM,
            Verdict::Enosys => libc::ENOSYS,
        };
        let map: BTreeMap<i64, Vec<SeccompRule>> =
            map.into_iter().map(|(nr, rules)| (nr, rules.unwrap_or_default())).collect();
        let filter =
            SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno as u32), TargetArch::x86_64)
                .map_err(|e| fail(&e))?;
        let prog: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| fail(&e))?;
        programs.push(prog);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_compiles_into_three_programs() {
        let sockets = policy::seccomp::SocketPolicy { tcp: true, tcp_bind: false, udp: false, unix: false };
        let rules = policy::seccomp::baseline(policy::seccomp::FloorPolicy { sockets, chmod: false });
        let progs = compile(&rules).unwrap();
        assert_eq!(progs.len(), 3, "arch, EPERM, ENOSYS");
        assert!(progs.iter().all(|p| p.len() < 4096));
    }
}
