//! What the MCP gate costs: round trips of `tools/call` through the proxy
//! against the same in-process server without it, and messages per second.
//! `cargo xtask bench` calls [`measure`] and prints [`Figures::table`].

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::gate::Gate;
use super::journal::Journal;
use super::pins::PinStore;
use super::proxy::{ClientOut, Proxy};
use super::NoBroker;

/// Latency figures for one message size.
#[derive(Clone, Debug)]
pub struct Latency {
    pub bytes: usize,
    pub direct_p50: Duration,
    pub direct_p99: Duration,
    pub proxied_p50: Duration,
    pub proxied_p99: Duration,
    /// Through a raw relay: two threads copying lines, no parsing (the floor of any line proxy).
    pub relay_p50: Duration,
}

#[derive(Clone, Debug)]
pub struct Figures {
    pub latency: Vec<Latency>,
    /// Small messages (notifications) per second through the proxy.
    pub messages_per_sec: f64,
    /// Whether tool-call records went to a real signed audit log.
    pub audit: bool,
}

impl Figures {
    /// A Markdown table for BENCHMARKS.md.
    pub fn table(&self) -> String {
        let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
        let mut s = String::from(
            "| message | direct p50 (us) | direct p99 | proxied p50 | proxied p99 | added p50 | added p99 | a raw line relay adds, p50 |\n|---|---|---|---|---|---|---|---|\n",
        );
        for l in &self.latency {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                if l.bytes >= 1 << 20 { format!("{} MiB", l.bytes >> 20) } else { format!("{} KiB", l.bytes >> 10) },
                us(l.direct_p50),
                us(l.direct_p99),
                us(l.proxied_p50),
                us(l.proxied_p99),
                us(l.proxied_p50.saturating_sub(l.direct_p50)),
                us(l.proxied_p99.saturating_sub(l.direct_p99)),
                us(l.relay_p50.saturating_sub(l.direct_p50)),
            );
        }
        s += &format!(
            "\nThroughput through the proxy: {:.0} messages/s (small notifications). Policy on, audit {}.\n",
            self.messages_per_sec,
            if self.audit { "on (signed log, group commit)" } else { "off" }
        );
        s
    }

    /// The target line: added p50 at 1 KiB with policy and audit on.
    pub fn verdict(&self) -> String {
        let Some(l) = self.latency.iter().find(|l| l.bytes == 1 << 10) else { return String::new() };
        let added = l.proxied_p50.saturating_sub(l.direct_p50).as_secs_f64() * 1e6;
        let relay = l.relay_p50.saturating_sub(l.direct_p50).as_secs_f64() * 1e6;
        format!(
            "Added p50 at 1 KiB, policy and audit on: {added:.1} µs (target: at most 30 µs; {}). Of that, {relay:.1} µs is what any line relay adds here (two more pipe hops, each a thread wake-up); the rest is framing, JSON, policy, redaction and the record.\n",
            if added <= 30.0 { "met" } else { "not met" }
        )
    }
}

fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let (r, w) = nix::unistd::pipe()?;
    Ok((std::fs::File::from(r), std::fs::File::from(w)))
}

/// A server thread: answers every request line with a result echoing the request's text.
fn echo_server(input: std::fs::File, output: std::fs::File) {
    std::thread::spawn(move || {
        let mut r = BufReader::with_capacity(64 << 10, input);
        let mut w = BufWriter::with_capacity(64 << 10, output);
        let mut line = Vec::new();
        loop {
            line.clear();
            if r.read_until(b'\n', &mut line).unwrap_or(0) == 0 {
                return;
            }
            let v: serde_json::Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let Some(id) = v.get("id") else { continue };
            let text = v.pointer("/params/arguments/text").cloned().unwrap_or_default();
            let resp = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": text}]}});
            if serde_json::to_writer(&mut w, &resp).is_err() || w.write_all(b"\n").is_err() || w.flush().is_err() {
                return;
            }
        }
    });
}

/// The floor of any line proxy: two threads copying lines both ways, nothing else.
fn relay(client_in: std::fs::File, client_out: std::fs::File, server_in: std::fs::File, server_out: std::fs::File) {
    let copy = |input: std::fs::File, output: std::fs::File| {
        move || {
            let mut r = BufReader::with_capacity(64 << 10, input);
            let mut w = BufWriter::with_capacity(64 << 10, output);
            let mut line = Vec::new();
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).unwrap_or(0) == 0
                    || w.write_all(&line).and_then(|()| w.flush()).is_err()
                {
                    return;
                }
            }
        }
    };
    std::thread::spawn(copy(client_in, server_in));
    std::thread::spawn(copy(server_out, client_out));
}

fn call(id: usize, bytes: usize) -> Vec<u8> {
    let text = "x".repeat(bytes.saturating_sub(100));
    let v = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}});
    let mut out = serde_json::to_vec(&v).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Round trips: write a request to `w`, read one line from `r`.
fn round_trips(
    w: &mut impl Write,
    r: &mut impl BufRead,
    bytes: usize,
    rounds: usize,
) -> std::io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(rounds);
    let mut line = Vec::new();
    for i in 0..rounds {
        let msg = call(i, bytes);
        let t = Instant::now();
        w.write_all(&msg)?;
        w.flush()?;
        line.clear();
        r.read_until(b'\n', &mut line)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times)
}

/// Chunks the direct, relayed and proxied round trips alternate in.
const CHUNKS: usize = 20;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Starts a proxy to a fresh echo server; returns the client's ends.
fn proxied(audit: Option<&std::path::Path>) -> std::io::Result<(std::fs::File, BufReader<std::fs::File>, Arc<Gate>)> {
    let (srv_in_r, srv_in_w) = pipe()?;
    let (srv_out_r, srv_out_w) = pipe()?;
    echo_server(srv_in_r, srv_out_w);
    let (cli_in_r, cli_in_w) = pipe()?;
    let (cli_out_r, cli_out_w) = pipe()?;
    let journal = match audit {
        Some(dir) => {
            let paths = crate::evidence::AuditPaths {
                log: dir.join("bench.log"),
                key: dir.join("bench.key"),
                syslog: None,
                rotate_bytes: None,
            };
            let log = crate::evidence::Evidence::open(&paths, "bench").map_err(|f| std::io::Error::other(f.message))?;
            Journal::start(log)?
        }
        None => Journal::discard(),
    };
    let mut plan = policy::mcp::McpPlan { max_message: 4 << 20, ..Default::default() };
    plan.rules.push(policy::mcp::ToolRule {
        pattern: "echo".into(),
        verdict: policy::mcp::ToolVerdict::Allow,
        at: policy::Origin::new("bench", 1),
    });
    let gate =
        Arc::new(Gate::new(plan, "bench", vec!["echo".into()], Box::new(NoBroker), journal, PinStore::in_memory()));
    let out = ClientOut::new(Box::new(BufWriter::with_capacity(64 << 10, cli_out_w)));
    let _proxy = Proxy::start(gate.clone(), BufReader::new(cli_in_r), out, srv_in_w, srv_out_r, None)?;
    Ok((cli_in_w, BufReader::with_capacity(64 << 10, cli_out_r), gate))
}

/// Measures `rounds` round trips per size (1 KiB and 1 MiB), direct and
/// through the proxy, and the proxy's throughput over `messages`
/// notifications. With `audit_dir`, tool
/// calls are recorded in a signed log there.
pub fn measure(rounds: usize, messages: usize, audit_dir: Option<&std::path::Path>) -> std::io::Result<Figures> {
    let mut latency = Vec::new();
    for bytes in [1 << 10, 1 << 20] {
        let rounds = if bytes > 1 << 16 { rounds.clamp(CHUNKS, 200) } else { rounds.max(CHUNKS) };
        let (si_r, si_w) = pipe()?;
        let (so_r, so_w) = pipe()?;
        echo_server(si_r, so_w);
        let (mut w, mut r) = (si_w, BufReader::with_capacity(64 << 10, so_r));
        let (ri_r, ri_w) = pipe()?;
        let (ro_r, ro_w) = pipe()?;
        let (rsi_r, rsi_w) = pipe()?;
        let (rso_r, rso_w) = pipe()?;
        echo_server(rsi_r, rso_w);
        relay(ri_r, ro_w, rsi_w, rso_r);
        let (mut rw, mut rr) = (ri_w, BufReader::with_capacity(64 << 10, ro_r));
        let (mut pw, mut pr, gate) = proxied(audit_dir)?;
        // Interleave, so load on the machine skews all three alike.
        let (mut d, mut rl, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..CHUNKS {
            d.extend(round_trips(&mut w, &mut r, bytes, rounds / CHUNKS)?);
            rl.extend(round_trips(&mut rw, &mut rr, bytes, rounds / CHUNKS)?);
            p.extend(round_trips(&mut pw, &mut pr, bytes, rounds / CHUNKS)?);
        }
        d.sort();
        rl.sort();
        p.sort();
        latency.push(Latency {
            bytes,
            direct_p50: pct(&d, 0.5),
            direct_p99: pct(&d, 0.99),
            proxied_p50: pct(&p, 0.5),
            proxied_p99: pct(&p, 0.99),
            relay_p50: pct(&rl, 0.5),
        });
        drop((pw, pr, rw, rr));
        gate.finish();
    }
    // Throughput: a writer floods notifications, the echo server ignores them
    // (no id), and one final request marks the end.
    let (mut pw, mut pr, gate) = proxied(audit_dir)?;
    let n = messages.max(1);
    let note = b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n";
    let t = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<std::fs::File> {
        let mut w = BufWriter::with_capacity(64 << 10, pw.try_clone()?);
        for _ in 0..n {
            w.write_all(note)?;
        }
        w.write_all(&call(0, 200))?;
        w.flush()?;
        drop(w);
        pw.flush()?;
        Ok(pw)
    });
    let mut line = Vec::new();
    pr.read_until(b'\n', &mut line)?;
    let secs = t.elapsed().as_secs_f64();
    let _ = writer.join();
    gate.finish();
    Ok(Figures { latency, messages_per_sec: n as f64 / secs, audit: audit_dir.is_some() })
}

#[cfg(test)]
mod tests {
    #[test]
    fn measure_runs() {
        let f = super::measure(5, 2000, None).unwrap();
        eprintln!("{}", f.table());
        assert_eq!(f.latency.len(), 2);
        assert!(f.messages_per_sec > 0.0);
        assert!(f.table().contains("| 1 KiB |"));
    }
}
