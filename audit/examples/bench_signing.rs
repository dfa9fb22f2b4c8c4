//! `cargo run --release -p portcullis-audit --example bench_signing [N]`:
//! durable signed records/s against raw ed25519 signing on one core, the
//! figure `cargo xtask bench` reports, without the rest of the bench suite.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(30_000);
    let b = audit::bench_signing(n)?;
    println!(
        "batch {}: {:.0} records/s durable, {:.0} raw signatures/s, ratio {:.2}x, append {:.2} us",
        b.batch,
        b.records_per_sec,
        b.raw_signatures_per_sec,
        b.records_per_sec / b.raw_signatures_per_sec,
        b.append_us
    );
    Ok(())
}
