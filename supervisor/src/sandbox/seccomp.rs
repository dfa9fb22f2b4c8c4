//! Seccomp programs from the plan's rules, built in parts by purpose and
//! attached as one program ([`chain`]):
//!
//! 1. architecture check (i386 and x32 syscalls kill the process), then the
//!    unconditional denies as a binary search over syscall numbers, one
//!    instruction per syscall, jumping to its block's return for its errno
//!    (hand-written, see below);
//! 2. argument checks (`socket`, `clone`, `ioctl`, ...): seccompiler, one
//!    part per verdict, since seccompiler gives a filter one match action;
//! 3. with ask or deny rules, the approval filter ([`notify_program`]).
//!
//! Why (2) is not seccompiler: seccompiler emits one linear chain sorted by
//! syscall number, and when a filter is attached the kernel builds its action
//! cache by emulating the program once per syscall number, so install time
//! grows with (syscalls in the chain) x (all syscall numbers). A search tree
//! walks ~8 instructions per number instead of ~2 per listed syscall; see
//! BENCHMARKS.md for the measured install cost. Each attached program also
//! has a fixed cost (~70 us here), which is why the parts are joined rather
//! than attached one by one. The argument checks stay with
//! seccompiler, whose comparisons (32/64-bit, masked) are the part worth not
//! writing twice.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

use policy::plan::{Op, SyscallRule, Verdict, Width};

use crate::exit::Failure;
use crate::sys::stage::Insn;

const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const JA: u16 = 0x05; // BPF_JMP | BPF_JA
/// Offsets into `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret_errno(v: Verdict) -> u32 {
    let errno = match v {
        Verdict::Eperm => libc::EPERM,
        Verdict::Enosys => libc::ENOSYS,
    };
    libc::SECCOMP_RET_ERRNO | errno as u32
}

/// Kills the process on any syscall that is not native x86-64: i386 entry
/// (`int 0x80`, where numbers mean other syscalls) and the x32 bit (where a
/// deny list keyed on x86-64 numbers would never match). Leaves the syscall
/// number loaded. Its KILL outranks whatever other programs answer, so the
/// program it starts is the only one that needs it.
fn arch_check() -> Vec<Insn> {
    vec![
        stmt(LD_W_ABS, ARCH),
        jump(JEQ_K, AUDIT_ARCH_X86_64, 1, 0), // native? skip the kill
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(LD_W_ABS, NR),
        jump(JGE_K, X32_SYSCALL_BIT, 0, 1), // x32 bit set? kill
        stmt(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
    ]
}

/// A binary search over `denies` (sorted by number): each listed syscall
/// returns its errno, everything else is allowed. Only loads of the syscall
/// number, JGE/JGT/JEQ and RET: the kernel's action cache can evaluate it.
///
/// Numbers that follow each other with the same answer are one stretch
/// (strict's mount family, io_uring's and the new mount API's calls): a
/// lone number costs one instruction, its JEQ, and a stretch two, its
/// bounds; each jumps to a return shared by its block (up to [`BLOCK`]
/// entries, each block ending with one RET per answer it gives), and the
/// last test of a leaf jumps to the block's ALLOW when it fails. Installing
/// a program costs time per instruction (the kernel translates and compiles
/// it): strict's part went from 221 instructions, with a return per
/// syscall, to about half; stretches took strict's whole program from 312
/// instructions to 260.
fn search_tree(denies: &[(u32, Verdict)]) -> Vec<Insn> {
    let answers: Vec<(u32, u32)> = denies.iter().map(|&(n, v)| (n, ret_errno(v))).collect();
    answer_tree(&answers, libc::SECCOMP_RET_ALLOW)
}

/// The architecture check, then a binary search over `answers` (sorted by
/// number; the action each returns), and `miss` for every other syscall.
/// Only loads of the syscall number, JGE/JGT/JEQ and RET: the kernel's
/// action cache can evaluate it.
fn answer_tree(answers: &[(u32, u32)], miss: u32) -> Vec<Insn> {
    let mut out = arch_check();
    let runs = stretches(answers);
    if runs.is_empty() {
        out.push(stmt(RET_K, miss));
    } else {
        blocks(&runs, miss, &mut out);
    }
    out
}

/// `answers` (sorted by number) as stretches: (first, last, action) for
/// each run of consecutive numbers with the same action.
fn stretches(answers: &[(u32, u32)]) -> Vec<(u32, u32, u32)> {
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    for &(nr, action) in answers {
        match runs.last_mut() {
            Some((_, last, a)) if *a == action && last.checked_add(1) == Some(nr) => *last = nr,
            _ => runs.push((nr, nr, action)),
        }
    }
    runs
}

/// What the first part returns, in [`program`], for a syscall no part
/// names: replaced by ALLOW once the parts are chained (where a part's
/// ALLOW means "ask the next part"). Never attached: [`program`] replaces
/// every one (a unit test checks).
const FINAL_ALLOW: u32 = libc::SECCOMP_RET_ALLOW | 0xA110;

/// Entries (lone numbers or stretches) per block: few enough that every
/// jump to the block's returns stays within a conditional jump's 8-bit
/// offset (80 stretches come to at most 160 tests, 31 JGE nodes and a
/// return per answer).
const BLOCK: usize = 80;

/// Where a jump of a block goes, before the block's returns are placed.
#[derive(Clone, Copy)]
enum To {
    Next,
    Skip(usize),
    Ret(u32),
}

/// Splits `d` into blocks under JGE nodes, as the tree inside a block does.
fn blocks(d: &[(u32, u32, u32)], miss: u32, out: &mut Vec<Insn>) {
    if d.len() <= BLOCK {
        block(d, miss, out);
        return;
    }
    let mid = d.len() / 2;
    let mut left = Vec::new();
    blocks(&d[..mid], miss, &mut left);
    // Past 255 instructions, hop over the left half with a 32-bit BPF_JA.
    match u8::try_from(left.len()) {
        Ok(skip) => out.push(jump(JGE_K, d[mid].0, skip, 0)),
        Err(_) => {
            out.push(jump(JGE_K, d[mid].0, 0, 1));
            out.push(stmt(JA, left.len() as u32));
        }
    }
    out.extend(left);
    blocks(&d[mid..], miss, out);
}

/// One block: its search tree, then its returns (`miss` first).
fn block(d: &[(u32, u32, u32)], miss: u32, out: &mut Vec<Insn>) {
    fn tree(d: &[(u32, u32, u32)], miss: u32, out: &mut Vec<(u16, u32, To, To)>) {
        if d.len() <= 3 {
            // In order: a number below an entry matched none before it.
            for (i, &(first, last, action)) in d.iter().enumerate() {
                let not = if i + 1 == d.len() { To::Ret(miss) } else { To::Next };
                if first == last {
                    out.push((JEQ_K, first, To::Ret(action), not));
                } else {
                    out.push((JGE_K, first, To::Next, To::Ret(miss)));
                    out.push((JGT_K, last, not, To::Ret(action)));
                }
            }
            return;
        }
        let mid = d.len() / 2;
        let mut left = Vec::new();
        tree(&d[..mid], miss, &mut left);
        out.push((JGE_K, d[mid].0, To::Skip(left.len()), To::Next));
        out.extend(left);
        tree(&d[mid..], miss, out);
    }
    let mut body = Vec::new();
    tree(d, miss, &mut body);
    let mut rets = vec![miss];
    for &(_, _, action) in d {
        if !rets.contains(&action) {
            rets.push(action);
        }
    }
    let offset = |pc: usize, to: To| -> u8 {
        let off = match to {
            To::Next => 0,
            To::Skip(n) => n,
            To::Ret(action) => body.len() + rets.iter().position(|r| *r == action).unwrap_or(0) - pc - 1,
        };
        // BLOCK keeps every offset in range; a wrong one would misroute syscalls.
        u8::try_from(off).expect("a search-tree block within an 8-bit jump")
    };
    for (pc, &(code, k, jt, jf)) in body.iter().enumerate() {
        out.push(jump(code, k, offset(pc, jt), offset(pc, jf)));
    }
    out.extend(rets.into_iter().map(|r| stmt(RET_K, r)));
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

/// Joins `programs` into one: where a part would return ALLOW, it jumps to
/// the next part's first instruction instead. The kernel answers stacked
/// programs with the strictest of their answers (between two ERRNOs, the
/// newest program's); a chain answers with the first part that does not
/// allow. The two agree when the parts come in that order of strictness,
/// which is how [`compile`] and [`notify_program`] lay them out: the
/// architecture check and the unconditional denies (KILL, ERRNO), then the
/// argument checks newest first (ERRNO, on syscalls the first part allows),
/// then the approval filter (USER_NOTIF, and ENOSYS for `openat2`, which no
/// argument check names and [`program`] keeps out of the first part). The
/// unit tests compare the two answers for every syscall of every shipped
/// profile, also with outright denies added.
///
/// Why one program: every attached program costs a fixed ~70 µs to install,
/// and a syscall the action cache cannot answer (an `openat` the approval
/// filter looks at) runs every attached program.
pub fn chain(programs: &[Vec<Insn>]) -> Result<Vec<Insn>, Failure> {
    let mut out = Vec::with_capacity(programs.iter().map(Vec::len).sum());
    for (i, prog) in programs.iter().enumerate() {
        let last = i + 1 == programs.len();
        for (pc, insn) in prog.iter().enumerate() {
            if !last && insn.code == RET_K && insn.k == libc::SECCOMP_RET_ALLOW {
                // pc + 1 + k = the next part's start.
                out.push(stmt(JA, (prog.len() - pc - 1) as u32));
            } else {
                out.push(Insn { code: insn.code, jt: insn.jt, jf: insn.jf, k: insn.k });
            }
        }
    }
    within_limit(out)
}

/// The kernel's limit (BPF_MAXINSNS): said here, not as EINVAL at exec.
fn within_limit(prog: Vec<Insn>) -> Result<Vec<Insn>, Failure> {
    if prog.len() > 4096 {
        return Err(Failure::setup(format!(
            "seccomp: the filter has {} instructions, over the kernel's limit of 4096; the profile asks about or denies too many syscalls",
            prog.len()
        )));
    }
    Ok(prog)
}

/// The one program to attach: `rules` and, with ask or deny rules, the
/// approval filter for `gate` (see [`chain`]). A syscall the approval
/// filter answers ENOSYS (`openat2`, so that libc falls back to a call it
/// can park) keeps that answer even where the profile also denies it
/// outright: attached one by one, the newer approval filter won that tie
/// between two ERRNOs, and a chain keeps the first answer, so the floor's
/// rules for it are left out.
///
/// The opens the approval filter checks by their flags (`openat`, `open`)
/// are the hottest calls the action cache cannot answer: every file a
/// server opens runs the program. Where no rule of the earlier parts names
/// them, they jump from the architecture check straight to the approval
/// filter instead of walking the search tree and the argument checks (for
/// strict's `openat`, 13 instructions instead of 44).
pub fn program(rules: &[SyscallRule], gate: Option<&[(u32, Notify)]>) -> Result<Vec<Insn>, Failure> {
    let enosys: Vec<i64> =
        gate.unwrap_or_default().iter().filter(|(_, how)| *how == Notify::Enosys).map(|(n, _)| i64::from(*n)).collect();
    let kept: Vec<SyscallRule> = rules.iter().filter(|r| !enosys.contains(&r.nr)).cloned().collect();
    let mut parts = compile(&kept)?;
    let named_later: Vec<u32> = kept
        .iter()
        .filter(|r| !r.when.is_empty())
        .filter_map(|r| u32::try_from(r.nr).ok())
        .chain(gate.unwrap_or_default().iter().map(|(n, _)| *n))
        .collect();
    let Some(gate) = gate else {
        parts[0] = dispatch(&kept, &named_later)?;
        return finish(chain(&parts)?);
    };
    let straight: Vec<u32> = gate
        .iter()
        .filter(|(n, how)| matches!(how, Notify::WriteFlags { .. }) && !kept.iter().any(|r| r.nr == i64::from(*n)))
        .map(|(n, _)| *n)
        .take(8)
        .collect();
    parts[0] = dispatch(&kept, &named_later)?;
    let approval_at: usize = parts.iter().map(Vec::len).sum();
    parts.push(notify_program(gate));
    let mut out = chain(&parts)?;
    if !straight.is_empty() {
        // Right after the architecture check, with the syscall number
        // loaded: a JEQ per shortcut to the hop to the approval filter, a
        // hop over that hop for everything else. What is skipped answers
        // ALLOW for every syscall it names no rule for: the search tree
        // and seccompiler's parts are default-allow. A part that acts on
        // every syscall must not be added between them and the approval
        // filter without ending this.
        let at = arch_check().len();
        let m = straight.len();
        let mut hop: Vec<Insn> = straight.iter().enumerate().map(|(i, n)| jump(JEQ_K, *n, (m - i) as u8, 0)).collect();
        hop.push(stmt(JA, 1));
        // From at + m + 2 to the approval filter, now at approval_at + m + 2.
        hop.push(stmt(JA, (approval_at - at) as u32));
        out.splice(at..at, hop);
    }
    finish(within_limit(out)?)
}

/// The first part of [`program`]: the architecture check, then one search
/// over every syscall some part names. The unconditional denies return
/// their errno; the syscalls a later part names (argument checks, the
/// approval filter) go on to it (ALLOW, which [`chain`] turns into a jump
/// to the next part); every other syscall is allowed at once
/// ([`FINAL_ALLOW`]). Installing a program makes the kernel run it once per
/// syscall number to fill its action cache, and each instruction on the
/// way of every number cost about 0.7 µs of every launch here: under
/// strict, the ~360 numbers no part names walked all the parts (63
/// instructions), and now stop after the search (at most 24).
fn dispatch(rules: &[SyscallRule], named_later: &[u32]) -> Result<Vec<Insn>, Failure> {
    let always = always_denied(rules)?;
    let mut answers: BTreeMap<u32, u32> = always.iter().map(|(n, v)| (*n, ret_errno(*v))).collect();
    for n in named_later {
        answers.entry(*n).or_insert(libc::SECCOMP_RET_ALLOW);
    }
    Ok(answer_tree(&answers.into_iter().collect::<Vec<_>>(), FINAL_ALLOW))
}

/// The chained program with [`dispatch`]'s final answers made ALLOW.
fn finish(mut prog: Vec<Insn>) -> Result<Vec<Insn>, Failure> {
    for i in prog.iter_mut().filter(|i| i.code == RET_K && i.k == FINAL_ALLOW) {
        i.k = libc::SECCOMP_RET_ALLOW;
    }
    Ok(prog)
}

/// Whether the kernel answers syscall `nr` of x86-64 from its action cache
/// for `prog`, without running it: the kernel's own test when a program is
/// attached (`seccomp_is_const_allow` in kernel/seccomp.c, 5.11+), rewritten.
/// The program is run knowing only the syscall number and the architecture;
/// loading anything else (an argument, the instruction pointer) or any
/// instruction outside that test's short list means the answer depends on
/// the call, and only ALLOW is cached. For a stack of programs, every one of
/// them must be cacheable for `nr`.
pub fn cached_allow(prog: &[Insn], nr: u32) -> bool {
    let (mut pc, mut acc) = (0usize, 0u32);
    while let Some(i) = prog.get(pc) {
        match i.code {
            LD_W_ABS => {
                acc = match i.k {
                    NR => nr,
                    ARCH => AUDIT_ARCH_X86_64,
                    _ => return false,
                }
            }
            RET_K => return i.k == libc::SECCOMP_RET_ALLOW,
            JA => pc += i.k as usize,
            // JEQ, JGE, JGT, JSET with a constant.
            JEQ_K | JGE_K | 0x25 | 0x45 => {
                let taken = match i.code {
                    JEQ_K => acc == i.k,
                    JGE_K => acc >= i.k,
                    0x25 => acc > i.k,
                    _ => acc & i.k != 0,
                };
                pc += usize::from(if taken { i.jt } else { i.jf });
            }
            0x54 => acc &= i.k, // BPF_ALU | BPF_AND | BPF_K
            _ => return false,
        }
        pc += 1;
    }
    false
}

/// The syscalls `rules` deny whatever their arguments, with the answer. An
/// unconditional deny wins over argument rules for the same syscall;
/// between verdicts, EPERM (the stricter-sounding, Verdict's first) wins.
fn always_denied(rules: &[SyscallRule]) -> Result<BTreeMap<u32, Verdict>, Failure> {
    let mut always: BTreeMap<u32, Verdict> = BTreeMap::new();
    for r in rules.iter().filter(|r| r.when.is_empty()) {
        let nr = u32::try_from(r.nr).map_err(|e| Failure::setup(format!("seccomp: cannot compile the filter: {e}")))?;
        let v = always.entry(nr).or_insert(r.verdict);
        *v = (*v).min(r.verdict);
    }
    Ok(always)
}

/// Compiles the rules into programs, architecture filter first, then the
/// argument checks newest first (see [`chain`], which joins them).
pub fn compile(rules: &[SyscallRule]) -> Result<Vec<Vec<Insn>>, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("seccomp: cannot compile the filter: {e}"));
    let always = always_denied(rules)?;
    let mut programs = vec![search_tree(&always.iter().map(|(n, v)| (*n, *v)).collect::<Vec<_>>())];
    let mut by_verdict: BTreeMap<Verdict, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
    for r in rules.iter().filter(|r| !r.when.is_empty() && !always.contains_key(&(r.nr as u32))) {
        let conds = r.when.iter().map(condition).collect::<Result<Vec<_>, _>>().map_err(|e| fail(&e))?;
        by_verdict
            .entry(r.verdict)
            .or_default()
            .entry(r.nr)
            .or_default()
            .push(SeccompRule::new(conds).map_err(|e| fail(&e))?);
    }
    // Newest first: stacked, the program installed last won a tie between
    // two ERRNOs, and a chain keeps the first (see `chain`).
    for (verdict, map) in by_verdict.into_iter().rev() {
        let errno = ret_errno(verdict) & libc::SECCOMP_RET_DATA;
        let filter = SeccompFilter::new(map, SeccompAction::Allow, SeccompAction::Errno(errno), TargetArch::x86_64)
            .map_err(|e| fail(&e))?;
        let prog: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| fail(&e))?;
        programs.push(prog);
    }
    Ok(programs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A classic-BPF interpreter for what these programs use, to check them
    /// without a kernel (the e2e tests check them with one).
    fn eval(prog: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        eval_counted(prog, nr, arch, args).0
    }

    /// [`eval`], and how many instructions ran.
    fn eval_counted(prog: &[Insn], nr: u32, arch: u32, args: [u64; 6]) -> (u32, usize) {
        let mut data = vec![nr, arch, 0, 0];
        for a in args {
            data.push(a as u32);
            data.push((a >> 32) as u32);
        }
        let (mut pc, mut acc, mut ran) = (0usize, 0u32, 0usize);
        loop {
            let i = &prog[pc];
            ran += 1;
            match i.code {
                0x20 => acc = data[i.k as usize / 4],
                0x15 | 0x35 | 0x25 | 0x45 => {
                    let t = match i.code {
                        0x15 => acc == i.k,
                        0x35 => acc >= i.k,
                        0x25 => acc > i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if t { i.jt as usize } else { i.jf as usize };
                }
                0x05 => pc += i.k as usize,
                0x06 => return (i.k, ran),
                0x54 => acc &= i.k,
                0x00 => acc = i.k,
                other => panic!("opcode {other:#x} not interpreted"),
            }
            pc += 1;
        }
    }

    /// The kernel's rule for stacked filters: the lowest action value wins
    /// (KILL_PROCESS is 0x80000000 as signed: the most restrictive).
    fn verdict(progs: &[Vec<Insn>], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        progs.iter().map(|p| eval(p, nr, arch, args)).min_by_key(|r| (*r as i32, *r)).unwrap()
    }

    fn rules() -> Vec<SyscallRule> {
        let sockets = policy::seccomp::SocketPolicy { tcp: true, tcp_bind: false, udp: false, unix: false };
        policy::seccomp::baseline(policy::seccomp::FloorPolicy { sockets, chmod: false })
    }

    #[test]
    fn every_syscall_gets_exactly_the_planned_answer() {
        let rules = rules();
        let progs = compile(&rules).unwrap();
        for &(name, nr) in policy::syscalls::X86_64 {
            let planned: Vec<&SyscallRule> = rules.iter().filter(|r| r.nr == nr).collect();
            let got = verdict(&progs, nr as u32, AUDIT_ARCH_X86_64, [0; 6]);
            let unconditional = planned.iter().find(|r| r.when.is_empty());
            match unconditional {
                Some(r) => assert_eq!(got, ret_errno(r.verdict), "{name}"),
                None if planned.is_empty() => assert_eq!(got, libc::SECCOMP_RET_ALLOW, "{name}"),
                None => {} // argument rules: checked below and by the e2e tests
            }
        }
        let nr = |n: &str| policy::syscalls::number(n).unwrap() as u32;
        let eperm = ret_errno(Verdict::Eperm);
        assert_eq!(verdict(&progs, nr("socket"), AUDIT_ARCH_X86_64, [16, 3, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict(&progs, nr("socket"), AUDIT_ARCH_X86_64, [2, 1, 0, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&progs, nr("ioctl"), AUDIT_ARCH_X86_64, [0, 0x1_0000_5412, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict(&progs, nr("ioctl"), AUDIT_ARCH_X86_64, [0, 0x5413, 0, 0, 0, 0]), libc::SECCOMP_RET_ALLOW);
        assert_eq!(verdict(&progs, nr("clone"), AUDIT_ARCH_X86_64, [0x1000_0000 | (1 << 40), 0, 0, 0, 0, 0]), eperm);
        assert_eq!(verdict(&progs, nr("clone3"), AUDIT_ARCH_X86_64, [0; 6]), ret_errno(Verdict::Enosys));
    }

    #[test]
    fn foreign_architectures_and_x32_are_killed() {
        let progs = compile(&rules()).unwrap();
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        for nr in [0, 20, 311, 400] {
            assert_eq!(verdict(&progs, nr, AUDIT_ARCH_I386, [0; 6]), libc::SECCOMP_RET_KILL_PROCESS);
            assert_eq!(
                verdict(&progs, nr | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6]),
                libc::SECCOMP_RET_KILL_PROCESS
            );
        }
    }

    /// What the kernel answers for programs attached in this order (oldest
    /// first): the newest program with the strictest action (signed).
    fn stacked(progs: &[Vec<Insn>], nr: u32, args: [u64; 6]) -> u32 {
        let mut ret = libc::SECCOMP_RET_ALLOW;
        for p in progs.iter().rev() {
            let cur = eval(p, nr, AUDIT_ARCH_X86_64, args);
            let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if action(cur) < action(ret) {
                ret = cur;
            }
        }
        ret
    }

    /// The one program [`program`] makes answers every syscall as the
    /// programs it joins answered when they were attached one by one (the
    /// argument checks in the order compile used to give them, the approval
    /// filter last), for every shipped profile as it is and with outright
    /// denies added, with its own gate, none, and one that overlaps.
    #[test]
    fn the_chained_program_answers_as_the_stacked_ones_did() {
        let vars = policy::Vars { workspace: "/ws".into(), home: "/home/u".into(), tmp: "/tmp/t".into() };
        let loader = policy::Loader::builtin_only();
        let mut checked = 0;
        for (name, _) in policy::source::BUILTIN {
            let profile = loader.load(name).unwrap();
            let plan = policy::compile(&profile, &vars).unwrap();
            // A profile may also deny outright what a gate parks or answers
            // ENOSYS (`[syscalls] deny`), or what argument checks cover.
            let mut denying = plan.seccomp.rules.clone();
            for n in ["openat2", "connect", "socket", "execveat", "openat"] {
                denying.extend(policy::seccomp::extra(n, "test"));
            }
            // A rule on some arguments of `open` turns its straight jump to
            // the approval filter off too (see `program`).
            denying.push(SyscallRule {
                syscall: "open".into(),
                nr: i64::from(nr::OPEN),
                when: vec![policy::plan::ArgCmp {
                    arg: 1,
                    width: Width::Dword,
                    op: Op::MaskedEq(libc::O_TRUNC as u64),
                    value: libc::O_TRUNC as u64,
                }],
                verdict: Verdict::Eperm,
                why: "test".into(),
            });
            // The profile's own approval filter, none, and one that parks
            // syscalls the argument checks also answer (socket, ioctl,
            // clone, execveat): there the stricter ERRNO must still win.
            let own = (!plan.gate.is_empty()).then(|| notify_set(&plan.gate));
            let overlapping = [
                (41, Notify::Always),
                (16, Notify::Always),
                (56, Notify::Always),
                (nr::EXECVEAT, Notify::Always),
                (nr::CONNECT, Notify::Always),
                (nr::OPENAT, Notify::WriteFlags { arg: 2 }),
                (nr::OPENAT2, Notify::Enosys),
            ];
            for rules in [&plan.seccomp.rules, &denying] {
                for gate in [own.as_deref(), None, Some(&overlapping[..])] {
                    checked += same_answers(name, rules, gate);
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }

    /// Arguments that meet every condition of `r` at once (each condition
    /// alone is not enough for a rule on several arguments).
    fn meeting(r: &SyscallRule) -> [u64; 6] {
        let mut args = [0u64; 6];
        for c in &r.when {
            args[usize::from(c.arg)] = match c.op {
                Op::Eq | Op::Ge | Op::Le | Op::MaskedEq(_) => c.value,
                Op::Gt => c.value.wrapping_add(1),
                Op::Ne => c.value ^ 1,
            };
        }
        args
    }

    /// Compares, for one rule set and gate, the joined program with the
    /// programs attached one by one; returns how many answers were compared.
    fn same_answers(name: &str, rules: &[SyscallRule], gate: Option<&[(u32, Notify)]>) -> usize {
        let mut checked = 0;
        // Attached one by one: floor, then the argument checks oldest first
        // (compile now gives them newest first), then the gate.
        let parts = compile(rules).unwrap();
        let mut old: Vec<Vec<Insn>> = vec![parts[0].clone()];
        old.extend(parts[1..].iter().rev().cloned());
        old.extend(gate.map(notify_program));
        let one = program(rules, gate).unwrap();
        // Each argument value the rules compare with, and its neighbours.
        let mut values: Vec<u64> = vec![0, 1, 2, 3, 0x40, 0x41, 0x200, 0x241, 0x1000, 1 << 32, u64::MAX];
        for r in rules {
            for c in &r.when {
                let mask = match c.op {
                    Op::MaskedEq(m) => m,
                    _ => 0,
                };
                values.extend([c.value, c.value.wrapping_add(1), c.value.wrapping_sub(1), c.value | 1 << 32]);
                values.extend([mask, c.value | mask, c.value & !mask]);
            }
        }
        values.sort_unstable();
        values.dedup();
        let mut cases: Vec<[u64; 6]> = Vec::new();
        for arg in 0..6 {
            for &v in &values {
                let mut args = [0u64; 6];
                args[arg] = v;
                cases.push(args);
            }
        }
        cases.extend(rules.iter().filter(|r| !r.when.is_empty()).map(meeting));
        for nr in 0..460u32 {
            for &args in &cases {
                let (want, got) = (stacked(&old, nr, args), eval(&one, nr, AUDIT_ARCH_X86_64, args));
                assert_eq!(got, want, "{name}: syscall {nr}, args {args:x?}");
                checked += 1;
            }
        }
        // Every rule on several arguments was met at least once.
        for r in rules.iter().filter(|r| !r.when.is_empty()) {
            let got = eval(&one, r.nr as u32, AUDIT_ARCH_X86_64, meeting(r));
            assert_ne!(got, libc::SECCOMP_RET_ALLOW, "{name}: rule on {} never met", r.nr);
        }
        // Foreign syscalls die before any part can park or allow them.
        for nr in 0..460u32 {
            const AUDIT_ARCH_I386: u32 = 0x4000_0003;
            let i386 = eval(&one, nr, AUDIT_ARCH_I386, [0; 6]);
            assert_eq!(i386, libc::SECCOMP_RET_KILL_PROCESS, "{name}: i386 {nr}");
            let x32 = eval(&one, nr | X32_SYSCALL_BIT, AUDIT_ARCH_X86_64, [0; 6]);
            assert_eq!(x32, libc::SECCOMP_RET_KILL_PROCESS, "{name}: x32 {nr}");
        }
        checked
    }

    /// A shipped profile's name and plan, the syscalls its approval filter
    /// parks, and its one program.
    type Shipped = (&'static str, policy::Plan, Option<Vec<(u32, Notify)>>, Vec<Insn>);

    /// Every shipped profile, as [`Shipped`].
    fn shipped() -> Vec<Shipped> {
        let vars = policy::Vars { workspace: "/ws".into(), home: "/home/u".into(), tmp: "/tmp/t".into() };
        let loader = policy::Loader::builtin_only();
        let profiles = policy::source::BUILTIN.iter().map(|&(name, _)| {
            let plan = policy::compile(&loader.load(name).unwrap(), &vars).unwrap();
            let gate = (!plan.gate.is_empty()).then(|| notify_set(&plan.gate));
            let prog = program(&plan.seccomp.rules, gate.as_deref()).unwrap();
            (name, plan, gate, prog)
        });
        profiles.collect()
    }

    /// The calls a server makes all the time are answered from the kernel's
    /// action cache under every shipped profile (no BPF runs for them), and
    /// the twin: what the profile checks by argument, or parks, is not.
    #[test]
    fn hot_syscalls_are_answered_from_the_kernels_action_cache() {
        const HOT: &str = "read write close fstat newfstatat statx lseek pread64 pwrite64 readv writev mmap \
            munmap mprotect madvise brk futex getpid getppid gettid clock_gettime clock_nanosleep nanosleep \
            rt_sigaction rt_sigprocmask rt_sigreturn sched_yield poll ppoll epoll_wait epoll_pwait epoll_ctl \
            getrandom getdents64 fcntl dup dup3 pipe2 wait4 recvfrom recvmsg readlink faccessat2 exit exit_group";
        let nr = |n: &str| policy::syscalls::number(n).unwrap_or_else(|| panic!("{n}")) as u32;
        for (name, _, _, prog) in shipped() {
            for n in HOT.split_whitespace() {
                assert!(cached_allow(&prog, nr(n)), "{name}: {n} runs BPF on every call");
            }
            // Checked by argument (or, without network, denied): never cached.
            for n in ["socket", "ioctl", "clone"] {
                assert!(!cached_allow(&prog, nr(n)), "{name}: {n} cached");
            }
            // Denied outright: not an ALLOW, so not cached either.
            assert!(!cached_allow(&prog, nr("bpf")), "{name}: bpf");
            if name == "strict" {
                // The approval filter looks at openat's flags, and openat
                // goes straight there (see `program`).
                assert!(!cached_allow(&prog, nr("openat")), "strict: openat cached");
                let read_only = [libc::AT_FDCWD as u64, 0, libc::O_RDONLY as u64, 0, 0, 0];
                let (answer, ran) = eval_counted(&prog, nr("openat"), AUDIT_ARCH_X86_64, read_only);
                assert_eq!(answer, libc::SECCOMP_RET_ALLOW);
                assert_eq!(ran, 13, "strict: openat walks {ran} instructions");
            }
        }
        // Loading an argument, or the instruction pointer, is never constant.
        let ip = [stmt(LD_W_ABS, 8), stmt(RET_K, libc::SECCOMP_RET_ALLOW)];
        assert!(!cached_allow(&ip, 0));
        assert!(cached_allow(&[stmt(RET_K, libc::SECCOMP_RET_ALLOW)], 0));
    }

    /// The calls the gate parks for path, exec and connect rules are the
    /// ones the profile compiler refuses to ask about by name (an ask by
    /// name on one of them was judged by the path rules alone), and no more.
    #[test]
    fn the_calls_decided_by_target_are_the_ones_asks_by_name_refuse() {
        let vars = policy::Vars { workspace: "/ws".into(), home: "/home/u".into(), tmp: "/tmp/t".into() };
        let mut p = policy::Loader::builtin_only().load("strict").unwrap();
        let ask = policy::ask::AskOverrides {
            read: vec!["/etc".into()],
            exec: vec!["/usr/bin/true".into()],
            connect: vec!["443".into()],
            ..Default::default()
        };
        p.apply(&policy::profile::Overrides { ask, ..Default::default() }).unwrap();
        let plan = policy::compile(&p, &vars).unwrap();
        let mut parked: Vec<i64> = notify_set(&plan.gate).iter().map(|(n, _)| i64::from(*n)).collect();
        let mut refused: Vec<i64> = policy::ask::DECIDED_BY_TARGET
            .iter()
            .map(|(name, _)| policy::syscalls::number(name).unwrap_or_else(|| panic!("{name}")))
            .collect();
        parked.sort_unstable();
        refused.sort_unstable();
        assert_eq!(parked, refused);
    }

    #[test]
    fn a_program_over_the_kernel_limit_is_refused_before_launch() {
        let allow = || stmt(RET_K, libc::SECCOMP_RET_ALLOW);
        assert_eq!(chain(&[vec![allow(); 2048], vec![allow(); 2048]]).unwrap().len(), 4096);
        let err = chain(&[vec![allow(); 2048], vec![allow(); 2049]]).unwrap_err();
        assert!(err.message.contains("4097 instructions"), "{}", err.message);
    }

    #[test]
    fn syscalls_no_part_names_stop_at_the_first_search() {
        // The kernel runs the program once per syscall number to fill its
        // action cache when it is attached: what no part names must be
        // answered by the first part's search, not walk every part.
        for (name, plan, gate, prog) in shipped() {
            assert!(!prog.iter().any(|i| i.k == FINAL_ALLOW), "{name}: the first part's marker was attached");
            let named: Vec<u32> =
                plan.seccomp.rules.iter().map(|r| r.nr as u32).chain(gate.iter().flatten().map(|(n, _)| *n)).collect();
            let (mut longest, mut unnamed) = (0, 0);
            for nr in (0..460u32).filter(|n| !named.contains(n)) {
                let (action, ran) = eval_counted(&prog, nr, AUDIT_ARCH_X86_64, [0; 6]);
                assert_eq!(action, libc::SECCOMP_RET_ALLOW, "{name}: syscall {nr}");
                assert!(cached_allow(&prog, nr), "{name}: syscall {nr} not cacheable");
                longest = longest.max(ran);
                unnamed += 1;
            }
            // Architecture check, the straight hops to the approval filter,
            // a search over ~100 numbers, the return.
            assert!(
                unnamed > 250 && longest <= 24,
                "{name}: {unnamed} unnamed syscalls walk up to {longest} instructions"
            );
        }
    }

    #[test]
    fn stretches_answer_every_number_as_listed() {
        // Stretches of one answer, touching stretches of two answers, lone
        // numbers between them, a stretch from 0, and long stretches across
        // blocks: every number gets its listed answer, every other ALLOW.
        let v = |i: u32| match i % 3 {
            0 => Verdict::Eperm,
            1 => Verdict::Enosys,
            _ => Verdict::Eperm,
        };
        let mut denies: Vec<(u32, Verdict)> = (0..4).map(|n| (n, Verdict::Eperm)).collect();
        denies.extend((10..14).map(|n| (n, Verdict::Eperm)));
        denies.extend((14..16).map(|n| (n, Verdict::Enosys)));
        denies.push((18, Verdict::Eperm));
        denies.push((20, Verdict::Enosys));
        // 300 stretches of 3, two apart, their answers in turn EPERM, ENOSYS, EPERM.
        denies.extend((0..300u32).flat_map(|i| (0..3).map(move |k| (100 + i * 5 + k, v(i)))));
        let prog = search_tree(&denies);
        let want: std::collections::HashMap<u32, u32> = denies.iter().map(|&(n, v)| (n, ret_errno(v))).collect();
        for nr in 0..1700 {
            let expected = want.get(&nr).copied().unwrap_or(libc::SECCOMP_RET_ALLOW);
            assert_eq!(eval(&prog, nr, AUDIT_ARCH_X86_64, [0; 6]), expected, "nr {nr}");
        }
        // Two tests per stretch: far fewer than one per number.
        assert!(prog.len() < 6 + 2 * 306 + 306 / 2 + 4 * 306usize.div_ceil(BLOCK), "{} instructions", prog.len());
        assert!(prog.len() < denies.len(), "{} instructions for {} numbers", prog.len(), denies.len());
    }

    #[test]
    fn search_tree_handles_any_size() {
        // Mixed answers, and sizes past one block (BLOCK) and past 255
        // instructions (the JA hop).
        let answer = |i: u32| if i % 5 == 2 { Verdict::Enosys } else { Verdict::Eperm };
        for n in [1usize, 2, 3, 4, 7, 50, 127, 128, 129, 200, 300, 700] {
            let denies: Vec<(u32, Verdict)> = (0..n as u32).map(|i| (i * 3 + 1, answer(i))).collect();
            let prog = search_tree(&denies);
            for nr in 0..(n as u32 * 3 + 5) {
                let want = if nr % 3 == 1 && nr < n as u32 * 3 + 1 {
                    ret_errno(answer(nr / 3))
                } else {
                    libc::SECCOMP_RET_ALLOW
                };
                assert_eq!(eval(&prog, nr, AUDIT_ARCH_X86_64, [0; 6]), want, "n {n} nr {nr}");
            }
            // One instruction per syscall, plus the tree and a few returns.
            assert!(prog.len() <= 6 + n + n / 2 + 4 * n.div_ceil(BLOCK) + 1, "n {n}: {} instructions", prog.len());
        }
    }
}

/// Which syscalls the approval filter parks, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Always.
    Always,
    /// When the open flags (argument `arg`) ask for writing or creating.
    WriteFlags { arg: u8 },
    /// Fail with ENOSYS (libc falls back to a syscall the filter parks).
    Enosys,
}

/// x86-64 numbers of the path syscalls the gate performs itself.
pub mod nr {
    pub const OPEN: u32 = 2;
    pub const OPENAT: u32 = 257;
    pub const CREAT: u32 = 85;
    pub const OPENAT2: u32 = 437;
    pub const RENAME: u32 = 82;
    pub const RENAMEAT: u32 = 264;
    pub const RENAMEAT2: u32 = 316;
    pub const LINK: u32 = 86;
    pub const LINKAT: u32 = 265;
    pub const SYMLINK: u32 = 88;
    pub const SYMLINKAT: u32 = 266;
    pub const UNLINK: u32 = 87;
    pub const UNLINKAT: u32 = 263;
    pub const RMDIR: u32 = 84;
    pub const MKDIR: u32 = 83;
    pub const MKDIRAT: u32 = 258;
    pub const MKNOD: u32 = 133;
    pub const MKNODAT: u32 = 259;
    pub const TRUNCATE: u32 = 76;
    pub const EXECVE: u32 = 59;
    pub const EXECVEAT: u32 = 322;
    pub const CONNECT: u32 = 42;
}

/// The syscalls the gate must see for `plan`'s ask and deny rules.
pub fn notify_set(plan: &policy::ask::GatePlan) -> Vec<(u32, Notify)> {
    use policy::ask::Access;
    let mut out = Vec::new();
    let reads = plan.covers(Access::Read);
    let paths = reads || plan.covers(Access::Write);
    if paths {
        let open = |arg| if reads { Notify::Always } else { Notify::WriteFlags { arg } };
        out.push((nr::OPEN, open(1)));
        out.push((nr::OPENAT, open(2)));
        out.push((nr::CREAT, Notify::Always));
        // openat2 keeps its flags behind a pointer the filter cannot read.
        out.push((nr::OPENAT2, Notify::Enosys));
        // Every call that adds, moves or removes a name: a protected path
        // must not be reachable by renaming a tree into or out of it.
        for n in [
            nr::RENAME,
            nr::RENAMEAT,
            nr::RENAMEAT2,
            nr::LINK,
            nr::LINKAT,
            nr::SYMLINK,
            nr::SYMLINKAT,
            nr::UNLINK,
            nr::UNLINKAT,
            nr::RMDIR,
            nr::MKDIR,
            nr::MKDIRAT,
            nr::MKNOD,
            nr::MKNODAT,
            nr::TRUNCATE,
        ] {
            out.push((n, Notify::Always));
        }
    }
    if plan.covers(Access::Exec) {
        out.push((nr::EXECVE, Notify::Always));
        out.push((nr::EXECVEAT, Notify::Always));
    }
    if plan.covers(Access::Connect) {
        out.push((nr::CONNECT, Notify::Always));
    }
    for (n, _) in plan.ask_syscalls() {
        if let Ok(n) = u32::try_from(n) {
            if !out.iter().any(|(x, _)| *x == n) {
                out.push((n, Notify::Always));
            }
        }
    }
    out
}

/// The approval filter: RET_USER_NOTIF for `set`, ALLOW for the rest. It
/// is the last part of the one program (see [`chain`]): the first part's
/// architecture check has already killed foreign syscalls.
pub fn notify_program(set: &[(u32, Notify)]) -> Vec<Insn> {
    const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
    const WRITE_FLAGS: u32 = (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) as u32;
    let mut out = vec![stmt(LD_W_ABS, NR)];
    for &(n, how) in set {
        let handler: Vec<Insn> = match how {
            Notify::Always => vec![stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF)],
            Notify::Enosys => vec![stmt(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32)],
            Notify::WriteFlags { arg } => vec![
                // Low 32 bits of the argument (x86-64 is little-endian).
                stmt(LD_W_ABS, 16 + 8 * u32::from(arg)),
                jump(JSET_K, WRITE_FLAGS, 0, 1),
                stmt(RET_K, libc::SECCOMP_RET_USER_NOTIF),
                stmt(RET_K, libc::SECCOMP_RET_ALLOW),
            ],
        };
        out.push(jump(JEQ_K, n, 0, handler.len() as u8));
        out.extend(handler);
    }
    out.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    out
}
