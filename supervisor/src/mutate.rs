//! Deterministic bad input for the never-panics tests: a seed message cut
//! short and with junk put in. The same mutants come out on every run, so a
//! failure names one that the next run makes again.

/// xorshift64.
pub struct Rng(pub u64);

impl Rng {
    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `seed` itself, `seed` cut after every `step`-th byte, and `n` copies with
/// one piece of `junk` put in at a random place (half the time writing over
/// up to 3 bytes of the seed).
pub fn mutants(seed: &[u8], junk: &[&[u8]], step: usize, n: usize, rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut out = vec![seed.to_vec()];
    out.extend((0..seed.len()).step_by(step).map(|at| seed[..at].to_vec()));
    for _ in 0..n {
        let at = rng.below(seed.len() + 1);
        let over = (at + rng.below(4)).min(seed.len());
        let mut m = seed[..at].to_vec();
        m.extend_from_slice(junk[rng.below(junk.len())]);
        m.extend_from_slice(&seed[if rng.below(2) == 0 { at } else { over }..]);
        out.push(m);
    }
    out
}
