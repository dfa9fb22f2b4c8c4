//! portcullis-probe: does one thing the test asks, inside the sandbox, and
//! prints what the kernel answered: `ok` or `errno N NAME`.
//!
//! Probes pass deliberately harmless arguments (fd -1, NULL pointers) where
//! they can, so an allowed syscall fails with EBADF/EFAULT/EINVAL while a
//! filtered one fails with the filter's EPERM/ENOSYS (the bubblewrap and
//! Chromium oracle): the errno proves which layer answered.
#![allow(clippy::undocumented_unsafe_blocks)]

use std::ffi::CString;
use std::io::Write;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn name(e: i32) -> &'static str {
    match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EAGAIN => "EAGAIN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::EXDEV => "EXDEV",
        libc::ESRCH => "ESRCH",
        libc::ENOTTY => "ENOTTY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::ENOMEM => "ENOMEM",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ELOOP => "ELOOP",
        libc::EISCONN => "EISCONN",
        libc::EBUSY => "EBUSY",
        _ => "OTHER",
    }
}

fn report(r: i64) {
    if r < 0 {
        let e = errno();
        println!("errno {e} {}", name(e));
    } else {
        println!("ok");
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn num(s: &str) -> u64 {
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if let Some(o) = s.strip_prefix("0o") {
        u64::from_str_radix(o, 8).unwrap()
    } else {
        s.parse::<i64>().map(|v| v as u64).unwrap()
    }
}

fn sockaddr_in(port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
        sin_zero: [0; 8],
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    unsafe {
        match a(0) {
            "await" => {
                // `await PATH OP ARGS...`: waits (10 s at most) for the
                // test to make PATH, then does OP ARGS (by exec'ing
                // itself). Nothing before that may be parked by a gate.
                let p = std::path::Path::new(a(1));
                for _ in 0..1000 {
                    if p.exists() {
                        break;
                    }
                    libc::usleep(10_000);
                }
                let me = std::env::current_exe().unwrap();
                let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(me).args(&args[2..]));
                println!("exec failed: {err}");
            }
            "read" => {
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                report(fd as i64);
            }
            "openat2" => {
                // Read-only openat2: flags behind a pointer no filter can read.
                #[repr(C)]
                struct OpenHow {
                    flags: u64,
                    mode: u64,
                    resolve: u64,
                }
                let how = OpenHow { flags: (libc::O_RDONLY | libc::O_CLOEXEC) as u64, mode: 0, resolve: 0 };
                let size = std::mem::size_of::<OpenHow>();
                let fd = libc::syscall(libc::SYS_openat2, libc::AT_FDCWD, c(a(1)).as_ptr(), &how, size);
                report(fd);
            }
            "write" => {
                // Open an existing file for writing and append a marker.
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"probe\n".as_ptr().cast(), 6);
                }
                report(fd as i64);
            }
            "deep-tree" => {
                // A tree N levels deep in $TMPDIR, made with short names
                // only (mkdir n, rename c to n/c, rename n to c): deeper
                // than PATH_MAX, and than a recursive remover's stack.
                let levels: usize = a(1).parse().unwrap();
                let dir = std::env::var("TMPDIR").unwrap_or_default();
                println!("{dir}");
                if libc::chdir(c(&dir).as_ptr()) != 0 || libc::mkdir(c"c".as_ptr(), 0o700) != 0 {
                    return report(-1);
                }
                for _ in 0..levels {
                    if libc::mkdir(c"n".as_ptr(), 0o700) != 0
                        || libc::rename(c"c".as_ptr(), c"n/c".as_ptr()) != 0
                        || libc::rename(c"n".as_ptr(), c"c".as_ptr()) != 0
                    {
                        return report(-1);
                    }
                }
                report(0);
            }
            "create" => {
                let fd = libc::open(
                    c(a(1)).as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o755,
                );
                if fd >= 0 && args.len() > 2 {
                    let data = std::fs::read(a(2)).unwrap_or_default();
                    libc::write(fd, data.as_ptr().cast(), data.len());
                }
                report(fd as i64);
            }
            "create-hex" => {
                // Each argument a hex-encoded path (names that are not UTF-8).
                for h in &args[1..] {
                    let bytes: Vec<u8> = (0..h.len() / 2)
                        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(b'?'))
                        .collect();
                    let path = CString::new(bytes).unwrap_or_default();
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                        0o644,
                    );
                    report(fd as i64);
                }
            }
            "create-mode" => {
                let mode = u32::from_str_radix(a(2), 8).unwrap_or(0o644);
                report(libc::open(
                    c(a(1)).as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    mode,
                ) as i64)
            }
            "truncate" => report(libc::truncate(c(a(1)).as_ptr(), 0) as i64),
            "open-creat-dir" => {
                let fd = libc::open(
                    c(a(1)).as_ptr(),
                    libc::O_RDONLY | libc::O_CREAT | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    0o755,
                );
                report(fd as i64);
            }
            "symlink" => report(libc::symlink(c(a(1)).as_ptr(), c(a(2)).as_ptr()) as i64),
            "race-open" => race_open(a(1), a(2), num(a(3)) as usize),
            "race-exec" => race_exec(a(1), a(2), num(a(3)) as usize),
            "race-connect" => race_connect(num(a(1)) as u16, num(a(2)) as u16, num(a(3)) as usize),
            "race-unix-swap" => race_unix_swap(num(a(1)) as u16, num(a(2)) as usize),
            "unix-talk" => {
                // Connect to a pathname unix socket, send one line, print the reply line.
                use std::io::{BufRead, Write};
                match std::os::unix::net::UnixStream::connect(a(1)) {
                    Err(e) => {
                        let n = e.raw_os_error().unwrap_or(0);
                        println!("errno {n} {}", name(n));
                    }
                    Ok(mut s) => {
                        let _ = writeln!(s, "{}", a(2));
                        let mut line = String::new();
                        let _ = std::io::BufReader::new(s).read_line(&mut line);
                        println!("reply {}", line.trim());
                    }
                }
            }
            "fake-broker" => {
                // Listens at a1 and approves every submit "always", as an
                // attacker's broker would. Prints "listening" once bound.
                use std::io::{BufRead, Write};
                let l = match std::os::unix::net::UnixListener::bind(a(1)) {
                    Ok(l) => l,
                    Err(e) => {
                        let n = e.raw_os_error().unwrap_or(0);
                        println!("errno {n} {}", name(n));
                        return;
                    }
                };
                if a(2) == "stale" {
                    // The listener's creator exits; a child keeps serving:
                    // the socket's recorded pid is free for reuse.
                    let me = libc::getpid();
                    let child = libc::fork();
                    if child != 0 {
                        println!("listening {me} {child}");
                        return;
                    }
                    libc::close(1);
                } else {
                    println!("listening");
                }
                for mut s in l.incoming().flatten() {
                    let Ok(r) = s.try_clone() else { continue };
                    for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
                        let Some(req) = line.contains("\"submit\"").then(|| field_num(&line, "req")).flatten() else {
                            continue;
                        };
                        let _ = writeln!(s, "{{\"v\":1,\"type\":\"queued\",\"req\":{req},\"id\":\"0badc0de\",\"position\":1,\"of\":1,\"coalesced\":false,\"subscribers\":1}}");
                        let _ = writeln!(s, "{{\"v\":1,\"type\":\"decided\",\"req\":{req},\"id\":\"0badc0de\",\"allow\":true,\"scope\":\"once\",\"by\":\"approvals\",\"reason\":null,\"latency_ms\":0}}");
                    }
                }
            }
            "opath" => report(libc::open(c(a(1)).as_ptr(), libc::O_PATH | libc::O_CLOEXEC) as i64),
            "fifo" => {
                // A FIFO made in the sandbox, opened by a writer and a reader
                // (each open waits for the other end). SIGALRM ends a hang.
                libc::alarm(10);
                let p = c(a(1));
                if libc::mkfifo(p.as_ptr(), 0o600) != 0 {
                    return report(-1);
                }
                let pid = libc::fork();
                if pid == 0 {
                    let fd = libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    libc::_exit(if fd >= 0 { 0 } else { 1 });
                }
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                if fd >= 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                    println!("ok");
                } else {
                    report(-1);
                }
            }
            "fifo-flood" => {
                // N threads open a new FIFO for reading (each waits for a
                // writer that never comes); after 2 s, how many were refused.
                let p = c(a(1));
                if libc::mkfifo(p.as_ptr(), 0o600) != 0 {
                    return report(-1);
                }
                static EAGAIN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                for _ in 0..num(a(2)) {
                    let p = p.clone();
                    std::thread::spawn(move || {
                        // SAFETY: a plain open of a NUL-terminated path.
                        if libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) < 0 && errno() == libc::EAGAIN {
                            EAGAIN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    });
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
                println!("eagain {}", EAGAIN.load(std::sync::atomic::Ordering::SeqCst));
                std::io::stdout().flush().unwrap();
                libc::_exit(0);
            }
            "flood-open" => flood_open(a(1), num(a(2)) as usize, num(a(3)) as usize),
            "unlink" => report(libc::unlink(c(a(1)).as_ptr()) as i64),
            "rename" => report(libc::rename(c(a(1)).as_ptr(), c(a(2)).as_ptr()) as i64),
            "link" => report(libc::link(c(a(1)).as_ptr(), c(a(2)).as_ptr()) as i64),
            "mkdir" => report(libc::mkdir(c(a(1)).as_ptr(), 0o755) as i64),
            "plant-tmp" => {
                // Links in $TMPDIR (the private {tmp}) to a1 (a directory)
                // and a2 (a file): symbolic, hard (a2 must be reachable), and
                // one in a nested directory; a FIFO beside them.
                let tmp = std::env::var("TMPDIR").unwrap_or_default();
                let t = |n: &str| c(&format!("{tmp}/{n}"));
                let mut bad = 0;
                bad += libc::symlink(c(a(1)).as_ptr(), t("dirlink").as_ptr());
                bad += libc::symlink(c(a(2)).as_ptr(), t("filelink").as_ptr());
                bad += libc::link(c(a(2)).as_ptr(), t("hard").as_ptr());
                bad += libc::mkdir(t("sub").as_ptr(), 0o755);
                bad += libc::mkdir(t("sub/deeper").as_ptr(), 0o755);
                bad += libc::symlink(c(a(1)).as_ptr(), t("sub/deeper/up").as_ptr());
                bad += libc::mkfifo(t("sub/fifo").as_ptr(), 0o644);
                if bad != 0 {
                    report(-1);
                } else {
                    println!("planted {tmp}");
                }
            }
            "pagemap" => {
                // The frame number of one of our own pages, as
                // /proc/self/pagemap shows it to us (0: hidden).
                let page = Box::leak(Box::new([1u8; 4096]));
                let addr = page.as_ptr() as u64;
                let fd = libc::open(c"/proc/self/pagemap".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                let mut entry = 0u64;
                if fd < 0
                    || libc::pread(fd, (&mut entry as *mut u64).cast(), 8, ((addr / 4096) * 8) as libc::off_t) != 8
                {
                    report(-1);
                } else {
                    println!("pfn {}", entry & ((1u64 << 55) - 1));
                }
            }
            "open-unreadable-name" => {
                // open() with a name in memory the kernel reads in our own
                // context but another process cannot read: the vDSO's data
                // pages ([vvar], VM_PFNMAP, refused by process_vm_readv).
                let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
                let Some(start) = maps
                    .lines()
                    .find(|l| l.ends_with("[vvar]") || l.ends_with("[vvar_vclock]"))
                    .and_then(|l| l.split('-').next())
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                else {
                    println!("no vvar mapping");
                    return;
                };
                report(libc::open(start as *const libc::c_char, libc::O_RDONLY | libc::O_CLOEXEC) as i64);
            }
            "rmdir" => report(libc::rmdir(c(a(1)).as_ptr()) as i64),
            "mkfifo" => report(libc::mkfifo(c(a(1)).as_ptr(), 0o644) as i64),
            "mknod" => {
                // chr: a whiteout (0:0), which needs no CAP_MKNOD; blk: needs it.
                let kind = if a(2) == "blk" { libc::S_IFBLK } else { libc::S_IFCHR };
                report(libc::mknod(c(a(1)).as_ptr(), kind | 0o644, 0) as i64)
            }
            "list" => {
                // Open a directory and read its entries.
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC);
                if fd < 0 {
                    report(-1);
                } else {
                    let mut buf = [0u8; 4096];
                    report(libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()));
                }
            }
            "unix-bind" => {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    report(-1);
                } else {
                    let mut sa: libc::sockaddr_un = std::mem::zeroed();
                    sa.sun_family = libc::AF_UNIX as u16;
                    for (d, b) in sa.sun_path.iter_mut().zip(a(1).bytes()) {
                        *d = b as libc::c_char;
                    }
                    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                    report(libc::bind(fd, (&sa as *const libc::sockaddr_un).cast(), len) as i64);
                }
            }
            "ioctl-on" => {
                // Open a1 read-only and issue request a2 with a buffer.
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    report(-1);
                } else {
                    let mut buf = [0u8; 256];
                    report(libc::syscall(libc::SYS_ioctl, fd, num(a(2)), buf.as_mut_ptr()));
                }
            }
            "reopen-rw" => {
                // Upgrade a read-only fd through /proc/self/fd (re-checked by Landlock).
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY);
                if fd < 0 {
                    return report(-1);
                }
                let p = format!("/proc/self/fd/{fd}");
                report(libc::open(c(&p).as_ptr(), libc::O_WRONLY) as i64);
            }
            "exec" => {
                let prog = c(a(1));
                let argv: Vec<CString> = args[1..].iter().map(|s| c(s)).collect();
                let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
                ptrs.push(std::ptr::null());
                libc::execv(prog.as_ptr(), ptrs.as_ptr());
                report(-1);
            }
            "execveat-empty" => {
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                let argv = [c(a(1))];
                let ptrs = [argv[0].as_ptr(), std::ptr::null()];
                let envp: [*const libc::c_char; 1] = [std::ptr::null()];
                let r = libc::syscall(
                    libc::SYS_execveat,
                    fd,
                    c("").as_ptr(),
                    ptrs.as_ptr(),
                    envp.as_ptr(),
                    libc::AT_EMPTY_PATH,
                );
                report(r);
            }
            "memfd" => {
                let r = libc::syscall(libc::SYS_memfd_create, c("probe").as_ptr(), num(a(1)) as libc::c_uint);
                report(r);
            }
            "connect" => {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                // `connect PORT [IPV4]`: 127.0.0.1 unless an address is given.
                let mut sa = sockaddr_in(num(a(1)) as u16);
                if let Ok(ip) = a(2).parse::<std::net::Ipv4Addr>() {
                    sa.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
                }
                let r = libc::connect(s, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as u32);
                report(r as i64);
            }
            "bind" => {
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                let sa = sockaddr_in(num(a(1)) as u16);
                let r = libc::bind(s, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as u32);
                report(r as i64);
            }
            "udp-send" => {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                let sa = sockaddr_in(num(a(1)) as u16);
                let r = libc::sendto(
                    s,
                    b"leak".as_ptr().cast(),
                    4,
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as u32,
                );
                report(r as i64);
            }
            "socket" => report(libc::socket(num(a(1)) as i32, num(a(2)) as i32, num(a(3)) as i32) as i64),
            "socketpair" => {
                let mut sv = [0; 2];
                report(libc::socketpair(num(a(1)) as i32, libc::SOCK_STREAM, 0, sv.as_mut_ptr()) as i64);
            }
            "abstract-connect" => {
                let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                let mut sa: libc::sockaddr_un = std::mem::zeroed();
                sa.sun_family = libc::AF_UNIX as u16;
                let n = a(1).as_bytes();
                for (i, b) in n.iter().enumerate() {
                    sa.sun_path[i + 1] = *b as libc::c_char;
                }
                let len = (std::mem::size_of::<libc::sa_family_t>() + 1 + n.len()) as u32;
                report(libc::connect(s, (&sa as *const libc::sockaddr_un).cast(), len) as i64);
            }
            "kill" => report(libc::kill(num(a(1)) as i32, num(a(2)) as i32) as i64),
            "ioctl" => {
                // fd -1: an allowed request fails EBADF, a filtered one EPERM.
                let req = num(a(1));
                let ch = 0u8;
                report(libc::syscall(libc::SYS_ioctl, -1i64, req, &ch as *const u8));
            }
            "create-storm" => {
                // Creates DIR/f0..fN-1 under a SIGALRM every 50 us whose
                // handler does not restart syscalls; prints each index whose
                // create failed with EINTR (THREATS #19), then a total.
                extern "C" fn tick(_: libc::c_int) {}
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = tick as *const () as usize;
                libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut());
                let every = libc::timeval { tv_sec: 0, tv_usec: 50 };
                let timer = libc::itimerval { it_interval: every, it_value: every };
                libc::setitimer(libc::ITIMER_REAL, &timer, std::ptr::null_mut());
                let (dir, n) = (a(1), num(a(2)));
                let (mut made, mut interrupted) = (0, 0);
                for i in 0..n {
                    let p = c(&format!("{dir}/f{i}"));
                    let fd =
                        libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC, 0o644);
                    if fd >= 0 {
                        libc::close(fd);
                        made += 1;
                    } else if errno() == libc::EINTR {
                        interrupted += 1;
                        println!("eintr {i}");
                    }
                }
                let off: libc::itimerval = std::mem::zeroed();
                libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut());
                println!("made {made} eintr {interrupted}");
            }
            "listener" => {
                // Installs a filter of its own that parks getppid with a
                // listener (THREATS #9: answering its own notifications).
                // Reports the listener (ok) or why not; never calls getppid.
                let prog = [
                    libc::sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 },
                    libc::sock_filter { code: 0x15, jt: 0, jf: 1, k: libc::SYS_getppid as u32 },
                    libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fc0_0000 },
                    libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0x7fff_0000 },
                ];
                let fprog =
                    libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut libc::sock_filter };
                report(libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                    &fprog,
                ));
            }
            "syscall" => {
                let nr = policy::syscalls::number(a(1)).unwrap_or_else(|| num(a(1)) as i64);
                let v: Vec<u64> = (2..8).map(|i| if a(i).is_empty() { 0 } else { num(a(i)) }).collect();
                report(libc::syscall(nr, v[0], v[1], v[2], v[3], v[4], v[5]));
            }
            "clone" => {
                // Raw clone with the given flags; the child exits at once.
                let flags = num(a(1)) | libc::SIGCHLD as u64;
                let r = libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize);
                if r == 0 {
                    libc::_exit(0);
                }
                if r > 0 {
                    libc::waitpid(r as i32, std::ptr::null_mut(), 0);
                }
                report(r);
            }
            "x32" => {
                // getpid with the x32 bit set.
                let r = libc::syscall(libc::SYS_getpid | 0x4000_0000);
                report(r);
            }
            "int80" => {
                // i386 getpid (20) through the compat entry.
                let mut ret: i64 = 20;
                std::arch::asm!("int 0x80", inout("rax") ret, options(nostack));
                println!("int80 returned {ret}");
            }
            "status" => {
                let s = std::fs::read_to_string("/proc/self/status").unwrap();
                for l in s
                    .lines()
                    .filter(|l| ["NoNewPrivs", "Seccomp:", "Cap", "Cpus_allowed_list"].iter().any(|p| l.starts_with(p)))
                {
                    println!("{l}");
                }
            }
            "proc-name" => {
                // The Name: line of a /proc status file (whose process it is).
                match std::fs::read_to_string(a(1)) {
                    Ok(s) => println!("{}", s.lines().find(|l| l.starts_with("Name:")).unwrap_or("no Name:")),
                    Err(e) => {
                        let n = e.raw_os_error().unwrap_or(0);
                        println!("errno {n} {}", name(n));
                    }
                }
            }
            "fds" => {
                let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                fds.sort();
                // The directory fd read_dir holds is the highest one: drop it.
                fds.pop();
                println!("fds {fds:?}");
            }
            "env" => {
                for (k, v) in std::env::vars() {
                    println!("{k}={v}");
                }
            }
            "forks" => {
                // Fork up to N sleeping children; report how many succeeded.
                let n = num(a(1));
                let mut kids = Vec::new();
                let mut err = 0;
                for _ in 0..n {
                    let p = libc::fork();
                    if p == 0 {
                        libc::sleep(30);
                        libc::_exit(0);
                    }
                    if p < 0 {
                        err = errno();
                        break;
                    }
                    kids.push(p);
                }
                println!("forked {} {}", kids.len(), name(err));
                for k in kids {
                    libc::kill(k, libc::SIGKILL);
                    libc::waitpid(k, std::ptr::null_mut(), 0);
                }
            }
            "alloc" => {
                let mb = num(a(1)) as usize;
                let mut v: Vec<Vec<u8>> = Vec::new();
                for _ in 0..mb {
                    let mut chunk = Vec::new();
                    if chunk.try_reserve_exact(1 << 20).is_err() {
                        println!("alloc failed after {} MiB", v.len());
                        return;
                    }
                    chunk.resize(1 << 20, 1u8);
                    v.push(chunk);
                }
                println!("allocated {} MiB", v.len());
            }
            "orphan" => {
                // Double-fork a setsid'd grandchild that outlives us unless contained.
                if libc::fork() == 0 {
                    libc::setsid();
                    if libc::fork() == 0 {
                        let me = c(&std::env::current_exe().unwrap().to_string_lossy());
                        let argv = [me.clone(), c("sleeper"), c(a(1))];
                        let ptrs = [argv[0].as_ptr(), argv[1].as_ptr(), argv[2].as_ptr(), std::ptr::null()];
                        libc::execv(me.as_ptr(), ptrs.as_ptr());
                        libc::_exit(1);
                    }
                    libc::_exit(0);
                }
                libc::wait(std::ptr::null_mut());
                println!("ok");
                std::io::stdout().flush().unwrap();
                libc::sleep(60);
            }
            "leave-behind" => {
                // A child runs the rest of the arguments as its own probe;
                // we exit at EOF on stdin without waiting for it.
                if libc::fork() == 0 {
                    let me = c(&std::env::current_exe().unwrap().to_string_lossy());
                    let rest: Vec<CString> = args[1..].iter().map(|s| c(s)).collect();
                    let mut ptrs: Vec<*const libc::c_char> = vec![me.as_ptr()];
                    ptrs.extend(rest.iter().map(|s| s.as_ptr()));
                    ptrs.push(std::ptr::null());
                    libc::execv(me.as_ptr(), ptrs.as_ptr());
                    libc::_exit(1);
                }
                let mut sink = Vec::new();
                let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
                println!("ok");
            }
            "kill-first-parked" => {
                // Two children create the same new file (O_EXCL) and park on
                // one question: the first is killed and reaped before anyone
                // answers. The second reports what the answer did for it:
                // "ok", or EEXIST if the file was made for the dead one.
                let create = |path: &str| -> ! {
                    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
                    report(libc::open(c(path).as_ptr(), flags, 0o644) as i64);
                    std::io::stdout().flush().unwrap();
                    libc::_exit(0)
                };
                std::io::stdout().flush().unwrap();
                let first = libc::fork();
                if first == 0 {
                    create(a(1));
                }
                // The test says when the first one's question is out.
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                let second = libc::fork();
                if second == 0 {
                    create(a(1));
                }
                // In openat (257) means parked on the gate; the pause lets
                // the gate add it to the question already out.
                let syscall = format!("/proc/{second}/syscall");
                let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while !std::fs::read_to_string(&syscall).unwrap_or_default().starts_with("257 ") {
                    if std::time::Instant::now() > until {
                        println!("the second caller never parked in openat ({syscall})");
                        std::process::exit(1);
                    }
                    libc::usleep(1000);
                }
                libc::usleep(300_000);
                libc::kill(first, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(first, &mut status, 0);
                println!("killed");
                std::io::stdout().flush().unwrap();
                libc::waitpid(second, &mut status, 0);
            }
            "sleeper" => {
                libc::sleep(60);
            }
            "trap" => {
                // Exit 42 on SIGTERM, to show the signal was forwarded.
                extern "C" fn on_term(_: libc::c_int) {
                    unsafe { libc::_exit(42) };
                }
                libc::signal(libc::SIGTERM, on_term as extern "C" fn(libc::c_int) as libc::sighandler_t);
                println!("ready");
                std::io::stdout().flush().unwrap();
                libc::sleep(60);
                libc::_exit(1);
            }
            "exit" => std::process::exit(num(a(1)) as i32),
            "raise" => {
                libc::signal(num(a(1)) as i32, libc::SIG_DFL);
                libc::raise(num(a(1)) as i32);
            }
            "echo-stdin" => {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).unwrap();
                print!("{s}");
            }
            "pid" => println!("pid {}", libc::getpid()),
            "chmod" => report(libc::chmod(c(a(1)).as_ptr(), num(a(2)) as libc::mode_t) as i64),
            "fchmod" => {
                let fd = libc::open(c(a(1)).as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                report(libc::fchmod(fd, num(a(2)) as libc::mode_t) as i64);
            }
            "chown" => report(libc::chown(c(a(1)).as_ptr(), libc::getuid(), libc::getgid()) as i64),
            "setxattr" => {
                report(libc::setxattr(c(a(1)).as_ptr(), c("user.probe").as_ptr(), b"x".as_ptr().cast(), 1, 0) as i64)
            }
            "tfo" => {
                // TCP Fast Open: sendto with MSG_FASTOPEN connects without connect(2).
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                let sa = sockaddr_in(num(a(1)) as u16);
                let r = libc::sendto(
                    s,
                    b"hi".as_ptr().cast(),
                    2,
                    libc::MSG_FASTOPEN,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as u32,
                );
                report(r as i64);
            }
            "shmget" => report(libc::shmget(num(a(1)) as libc::key_t, num(a(2)) as usize, num(a(3)) as i32) as i64),
            "listen" => {
                // listen(2) without bind(2): the kernel binds an ephemeral port.
                let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                if s < 0 {
                    return report(-1);
                }
                if !a(1).is_empty() {
                    let sa = sockaddr_in(num(a(1)) as u16);
                    if libc::bind(s, (&sa as *const libc::sockaddr_in).cast(), std::mem::size_of_val(&sa) as u32) != 0 {
                        return report(-1);
                    }
                }
                report(libc::listen(s, 1) as i64);
            }
            "proc-pids" => {
                let mut pids: Vec<i32> = std::fs::read_dir("/proc")
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                pids.sort();
                println!("pids {pids:?}");
            }
            "proc-environs" => {
                // Opens /proc/N/environ for every process /proc lists;
                // prints how many opened.
                let opened = std::fs::read_dir("/proc")
                    .map(|d| {
                        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                            .filter(|n| std::fs::File::open(format!("/proc/{n}/environ")).is_ok())
                            .count()
                    })
                    .unwrap_or(0);
                println!("opened {opened}");
            }
            "loop-open" => {
                // open/read/close of one file N times; prints ns per iteration.
                open_loop(a(1), num(a(2)));
            }
            "loop-open-landlock" => {
                // The kernel's own floor: one Landlock layer with a single
                // rule (every right beneath DIR), nothing else; then loop-open.
                use landlock::{path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI};
                let abi = ABI::V5;
                let status = Ruleset::default()
                    .handle_access(AccessFs::from_all(abi))
                    .and_then(|r| r.create())
                    .and_then(|r| r.add_rules(path_beneath_rules([a(1)], AccessFs::from_all(abi))))
                    .and_then(|r| r.restrict_self());
                if let Err(e) = status {
                    eprintln!("probe: landlock: {e}");
                    std::process::exit(2);
                }
                open_loop(a(2), num(a(3)));
            }
            "loop-open-seccomp" => {
                // strict's seccomp program(s) alone, as `cargo xtask bench`
                // wrote them (each: u32 LE count, then count 8-byte
                // instructions), no Landlock; then loop-open. Attached without
                // a listener: a call the approval part would park gets ENOSYS
                // instead, and the loop's read-only opens are never parked.
                let bytes = std::fs::read(a(1)).unwrap_or_else(|e| {
                    eprintln!("probe: {}: {e}", a(1));
                    std::process::exit(2);
                });
                let mut progs: Vec<Vec<libc::sock_filter>> = Vec::new();
                let mut rest = &bytes[..];
                while rest.len() >= 4 {
                    let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                    rest = &rest[4..];
                    if rest.len() < n * 8 {
                        eprintln!("probe: {}: truncated program", a(1));
                        std::process::exit(2);
                    }
                    progs.push(
                        rest[..n * 8]
                            .chunks_exact(8)
                            .map(|i| libc::sock_filter {
                                code: u16::from_le_bytes([i[0], i[1]]),
                                jt: i[2],
                                jf: i[3],
                                k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
                            })
                            .collect(),
                    );
                    rest = &rest[n * 8..];
                }
                if progs.is_empty() || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    eprintln!("probe: no program, or no_new_privs refused");
                    std::process::exit(2);
                }
                for prog in &progs {
                    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr() as *mut _ };
                    if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &fprog) != 0 {
                        eprintln!("probe: seccomp: errno {}", errno());
                        std::process::exit(2);
                    }
                }
                open_loop(a(2), num(a(3)));
            }
            "loop-getppid" => {
                let n = num(a(1));
                let t = std::time::Instant::now();
                for _ in 0..n {
                    libc::syscall(libc::SYS_getppid);
                }
                println!("ns {}", t.elapsed().as_nanos() / n as u128);
            }
            other => {
                eprintln!("probe: unknown action `{other}`");
                std::process::exit(2);
            }
        }
    }
}

/// One thread keeps swapping a shared path buffer between `allowed` and
/// `denied` while this one opens whatever it holds for appending, `n`
/// times. Prints how many opens succeeded; the test checks `denied` is untouched.
/// open/read/close of one file `n` times; prints ns per iteration.
fn open_loop(path: &str, n: u64) {
    let path = c(path);
    let mut buf = [0u8; 4096];
    let t = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: a NUL-terminated path and a live buffer; the fd is ours.
        unsafe {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
        }
    }
    println!("ns {}", t.elapsed().as_nanos() / n.max(1) as u128);
}

fn race_open(allowed: &str, denied: &str, n: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let buf: &'static mut [u8; 512] = Box::leak(Box::new([0u8; 512]));
    let ptr = buf.as_mut_ptr() as usize;
    let (a, d) = (c(allowed), c(denied));
    let (a, d) = (a.as_bytes_with_nul().to_vec(), d.as_bytes_with_nul().to_vec());
    // SAFETY: test code; the buffer is leaked (lives forever) and the race on it is the point.
    unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), ptr as *mut u8, a.len()) };
    let swapper = std::thread::spawn(move || {
        while !STOP.load(Ordering::Relaxed) {
            for name in [&a, &d] {
                // SAFETY: as above.
                unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), ptr as *mut u8, name.len()) };
            }
        }
    });
    let mut opened = 0;
    for _ in 0..n {
        // SAFETY: the buffer always holds a NUL-terminated name (both copies end in NUL).
        let fd = unsafe { libc::open(ptr as *const libc::c_char, libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC) };
        if fd >= 0 {
            opened += 1;
            // SAFETY: writes 5 bytes from a literal to an fd we own, then closes it.
            unsafe {
                libc::write(fd, b"race\n".as_ptr().cast(), 5);
                libc::close(fd);
            }
        }
    }
    STOP.store(true, Ordering::Relaxed);
    let _ = swapper.join();
    println!("opened {opened} of {n}");
}

/// `n` times, a child execs a name another thread keeps switching between
/// `first` and `second` (each a program that exits 0 and 1, e.g. true and
/// false). Prints how many ran each, how many execs were refused with
/// EACCES, and how many ended otherwise (a torn name: ENOENT).
fn race_exec(first: &str, second: &str, n: usize) {
    let (a, b) = (c(first).as_bytes_with_nul().to_vec(), c(second).as_bytes_with_nul().to_vec());
    let (mut ran_first, mut ran_second, mut refused, mut other) = (0, 0, 0, 0);
    for _ in 0..n {
        std::io::stdout().flush().unwrap();
        // SAFETY: fork in a single-threaded process; the child only starts a
        // thread and execs or exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let buf: &'static mut [u8; 512] = Box::leak(Box::new([0u8; 512]));
            let ptr = buf.as_mut_ptr() as usize;
            // SAFETY: test code; the buffer is leaked and the race on it is the point.
            unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), ptr as *mut u8, a.len()) };
            let (a, b) = (a.clone(), b.clone());
            std::thread::spawn(move || loop {
                for name in [&a, &b] {
                    // SAFETY: as above.
                    unsafe { std::ptr::copy_nonoverlapping(name.as_ptr(), ptr as *mut u8, name.len()) };
                }
            });
            let argv = [ptr as *const libc::c_char, std::ptr::null()];
            // SAFETY: the buffer always ends in a NUL within its 512 bytes; argv is NULL-terminated.
            unsafe { libc::execv(ptr as *const libc::c_char, argv.as_ptr()) };
            let code = if errno() == libc::EACCES { 3 } else { 4 };
            // SAFETY: leaving the forked child without running the parent's exit handlers.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
            Some(0) => ran_first += 1,
            Some(1) => ran_second += 1,
            Some(3) => refused += 1,
            _ => other += 1,
        }
    }
    println!("first {ran_first} second {ran_second} refused {refused} other {other}");
}

/// `threads` threads open `n` distinct files under `dir` in all; prints how
/// many were refused with EACCES.
fn flood_open(dir: &str, n: usize, threads: usize) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static DENIED: AtomicUsize = AtomicUsize::new(0);
    let per = n / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let dir = dir.to_string();
            std::thread::spawn(move || {
                for i in 0..per {
                    let p = c(&format!("{dir}/f{t}-{i}"));
                    // SAFETY: a NUL-terminated path; the fd, if any, is closed at once.
                    let fd = unsafe { libc::open(p.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                    if fd >= 0 {
                        // SAFETY: closes the fd we just opened.
                        unsafe { libc::close(fd) };
                    } else if errno() == libc::EACCES {
                        DENIED.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    println!("denied {} of {}", DENIED.load(Ordering::Relaxed), per * threads);
}

/// The integer value of `"key":N` in a JSON line (no parser in the probe).
fn field_num(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let digits: String = line[at..].trim_start().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// THREATS #11: connect `n` fresh TCP sockets to 127.0.0.1 through one
/// sockaddr whose port another thread flips between `allowed` and `denied`.
/// Prints how many connected, and to which port (getpeername).
fn race_connect(allowed: u16, denied: u16, n: usize) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    let addr: &'static mut libc::sockaddr_in = Box::leak(Box::new(sockaddr_in(allowed)));
    let ptr = addr as *mut libc::sockaddr_in as usize;
    let flipper = std::thread::spawn(move || {
        while !STOP.load(Ordering::Relaxed) {
            for port in [allowed, denied] {
                // SAFETY: test code; the sockaddr is leaked and the race on its port is the point.
                unsafe {
                    std::ptr::write_volatile(
                        std::ptr::addr_of_mut!((*(ptr as *mut libc::sockaddr_in)).sin_port),
                        port.to_be(),
                    )
                };
            }
        }
    });
    let (mut to_allowed, mut to_denied, mut refused) = (0, 0, 0);
    for _ in 0..n {
        // SAFETY: plain socket calls on an fd we own; the sockaddr lives forever.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                continue;
            }
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            if libc::connect(fd, ptr as *const libc::sockaddr, len) == 0 {
                let mut peer = sockaddr_in(0);
                let mut plen = len;
                libc::getpeername(fd, (&mut peer as *mut libc::sockaddr_in).cast(), &mut plen);
                match u16::from_be(peer.sin_port) {
                    p if p == denied => to_denied += 1,
                    _ => to_allowed += 1,
                }
            } else {
                refused += 1;
            }
            libc::close(fd);
        }
    }
    STOP.store(true, Ordering::Relaxed);
    let _ = flipper.join();
    println!("connected {to_allowed} allowed {to_denied} denied {refused} refused");
}

/// THREATS #12: connect(FD, 127.0.0.1:`port`) `n` times while another
/// thread keeps swapping FD between a unix socket and a fresh TCP socket
/// (dup2). A gate that checks the fd, finds a unix socket and lets the
/// call go on (CONTINUE) lets the kernel connect whatever FD is by then.
fn race_unix_swap(port: u16, n: usize) {
    use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
    static STOP: AtomicBool = AtomicBool::new(false);
    static TCP: AtomicI32 = AtomicI32::new(-1);
    const FD: i32 = 100;
    // SAFETY: plain socket calls on fds this probe owns.
    let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if unix < 0 {
        return report(-1);
    }
    static RUNNING: AtomicBool = AtomicBool::new(false);
    let swapper = std::thread::spawn(move || {
        while !STOP.load(Ordering::Relaxed) {
            // SAFETY: dup2 onto a number this probe reserved.
            unsafe {
                libc::dup2(unix, FD);
                libc::dup2(TCP.load(Ordering::Relaxed), FD);
            }
            RUNNING.store(true, Ordering::Relaxed);
        }
    });
    // SAFETY: as above.
    TCP.store(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) }, Ordering::Relaxed);
    while !RUNNING.load(Ordering::Relaxed) {
        std::thread::yield_now();
    }
    let (mut connected, mut refused) = (0, 0);
    let mut errs = std::collections::BTreeMap::new();
    let addr = sockaddr_in(port);
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    for _ in 0..n {
        // SAFETY: as above; the sockaddr lives on this stack frame.
        unsafe {
            let tcp = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let old = TCP.swap(tcp, Ordering::Relaxed);
            if libc::connect(FD, (&addr as *const libc::sockaddr_in).cast(), len) == 0 {
                connected += 1;
            } else {
                refused += 1;
                *errs.entry(name(errno())).or_insert(0) += 1;
            }
            if old >= 0 {
                libc::close(old);
            }
        }
    }
    STOP.store(true, Ordering::Relaxed);
    let _ = swapper.join();
    println!("connected {connected} refused {refused} {errs:?}");
}
