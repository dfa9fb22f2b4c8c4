//! Prints the audit benchmark figures: `cargo run --release -p portcullis-audit --example bench [N]`.
//! (`cargo xtask bench` calls the same `audit::bench_*` functions.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let s = audit::bench_signing(n)?;
    println!(
        "signing:  {:.0} records/s durable (group commit {}), raw ed25519 sign {:.0}/s, ratio {:.2}, append {:.1} us",
        s.records_per_sec,
        s.batch,
        s.raw_signatures_per_sec,
        s.records_per_sec / s.raw_signatures_per_sec,
        s.append_us
    );
    let v = audit::bench_verify(n)?;
    println!(
        "verify:   batch {:.0} records/s, one-by-one strict {:.0} records/s, speed-up {:.2}x",
        v.batch_per_sec,
        v.one_by_one_per_sec,
        v.batch_per_sec / v.one_by_one_per_sec
    );
    Ok(())
}
