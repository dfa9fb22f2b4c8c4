//! Prints the audit benchmark figures: `cargo run --release -p portcullis-audit --example bench [N]`.
//! (`cargo xtask bench` calls the same `audit::bench_*` functions.)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let s = audit::bench_signing(n)?;
    println!(
        "signing:  {:.0} records/s durable (group commit {}), raw ed25519 sign {:.0}/s, \
         per-group ratio median {:.2} (rounds {:.2}..{:.2}), append {:.1} us",
        s.records_per_sec, s.batch, s.raw_signatures_per_sec, s.ratio_median, s.ratio_low, s.ratio_high, s.append_us
    );
    let v = audit::bench_verify((n / 8).max(1000))?;
    println!(
        "verify:   batch {:.0} records/s, one-by-one strict {:.0} records/s, speed-up median {:.2}x ({:.2}..{:.2})",
        v.batch_per_sec, v.one_by_one_per_sec, v.speedup_median, v.speedup_low, v.speedup_high
    );
    Ok(())
}
