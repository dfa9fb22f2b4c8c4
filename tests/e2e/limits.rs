//! --max-procs and --max-memory hold, for root too.

use crate::both;
use crate::support::*;

fn forked(r: &Run) -> usize {
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("forked "))
        .unwrap_or_else(|| panic!("no fork report: {} {}", r.stdout, r.stderr));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

both!(process_limit_holds, |sb| {
    let r = sb.probe(&["--max-procs", "16"], &["forks", "64"]);
    let n = forked(&r);
    assert!(n < 16, "forked {n} children under --max-procs 16");
    assert!(r.stdout.contains("EAGAIN"), "{}", r.stdout);
    // Twin: under the limit, forks work.
    let r = sb.probe(&["--max-procs", "16"], &["forks", "4"]);
    assert_eq!(forked(&r), 4, "{}", r.stdout);
});

both!(memory_limit_holds, |sb| {
    let r = sb.probe(&["--max-memory", "64M"], &["alloc", "512"]);
    // Either the cgroup OOM-kills it (SIGKILL) or the rlimit makes allocation fail.
    assert!(r.code == 137 || r.stdout.contains("alloc failed"), "code {} stdout {}", r.code, r.stdout);
    assert!(!r.stdout.contains("allocated 512 MiB"));
    let r = sb.probe(&["--max-memory", "64M"], &["alloc", "8"]);
    assert_eq!(r.verdict(), "allocated 8 MiB", "{}", r.stderr);
    // Without a memory cgroup (unprivileged here) the rlimit stands in,
    // and the launch says what it does not count.
    let doctor = sb.run(&["doctor", "--json"]);
    if doctor.stdout.contains("RLIMIT_DATA per process") {
        assert!(r.stderr.contains("shared mappings and tmpfs files are not counted"), "{}", r.stderr);
    }
});
