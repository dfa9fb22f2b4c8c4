//! RFC 6962 Merkle tree over the log's records: roots, inclusion and
//! consistency proofs, and their verifiers (RFC 9162 §2.1.3.2, §2.1.4.2).
//!
//! Leaves and interior nodes are hashed with different prefixes (0x00, 0x01)
//! so a node can never pass for a leaf (THREATS.md L7).

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the hash of one leaf. For the audit log, `data`
/// is the record's stored line without its newline.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree, `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// MTH over already-hashed leaves (RFC 6962 §2.1).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ProofError {
    #[error("leaf index {index} is not below tree size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("proof has the wrong number of hashes for these tree sizes")]
    WrongLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
}

/// PATH(m, D[n]): the audit path for leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Ok(out)
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    if d.len() <= 1 {
        return;
    }
    let k = split(d.len());
    if m < k {
        path(m, &d[..k], out);
        out.push(root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(root(&d[..k]));
    }
}

/// PROOF(m, D[n]): shows the tree of the first `old_size` leaves is a prefix
/// of the tree of all `leaves`.
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let new = leaves.len() as u64;
    if old_size > new {
        return Err(ProofError::SizesReversed { old: old_size, new });
    }
    let mut out = Vec::new();
    if old_size > 0 && old_size < new {
        subproof(old_size as usize, leaves, true, &mut out);
    }
    Ok(out)
}

fn subproof(m: usize, d: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = d.len();
    if m == n {
        if !complete {
            out.push(root(d));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &d[..k], complete, out);
        out.push(root(&d[k..]));
    } else {
        subproof(m - k, &d[k..], false, out);
        out.push(root(&d[..k]));
    }
}

/// Recomputes the root from a leaf and its audit path (RFC 9162 §2.1.3.2).
pub fn root_from_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash]) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    Ok(r)
}

/// Checks that `leaf` is at `index` in the tree of `size` leaves with `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    if root_from_inclusion(index, size, leaf, proof)? == *root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// Checks that the tree (`old_size`, `old_root`) is a prefix of the tree
/// (`new_size`, `new_root`) (RFC 9162 §2.1.4.2). An empty old tree is
/// consistent with everything, and needs an empty proof.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed { old: old_size, new: new_size });
    }
    if old_size == 0 {
        return if proof.is_empty() { Ok(()) } else { Err(ProofError::WrongLength) };
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root { Ok(()) } else { Err(ProofError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    // A complete (power-of-two) old tree is its own first node: the proof omits it.
    let mut path: Vec<&Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(old_root);
    }
    path.extend(proof.iter());
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (*path[0], *path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if fr == *old_root && sr == *new_root {
        Ok(())
    } else {
        Err(ProofError::RootMismatch)
    }
}

/// The right edge of a growing tree: the roots of its perfect subtrees,
/// largest first. O(log n) memory; lets a writer know the root after every
/// append without keeping every leaf.
#[derive(Clone, Debug, Default)]
pub struct Frontier {
    size: u64,
    // (height, hash): a perfect subtree of 2^height leaves.
    stack: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(h, left)) = self.stack.last() {
            if h != node.0 {
                break;
            }
            self.stack.pop();
            node = (h + 1, node_hash(&left, &node.1));
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// The size and the perfect subtrees (height, root), largest first.
    pub fn parts(&self) -> (u64, &[(u32, Hash)]) {
        (self.size, &self.stack)
    }

    /// Rebuilds a frontier from [`parts`](Self::parts); None unless the
    /// heights strictly decrease and add up to `size` leaves.
    pub fn from_parts(size: u64, stack: Vec<(u32, Hash)>) -> Option<Frontier> {
        let mut total: u64 = 0;
        let mut last = u32::MAX;
        for &(h, _) in &stack {
            if h >= last || h >= 64 {
                return None;
            }
            last = h;
            total = total.checked_add(1u64 << h)?;
        }
        (total == size).then_some(Frontier { size, stack })
    }

    /// The roots of the perfect subtrees alone, largest first: one per
    /// 1-bit of `size`, from the most significant (what a `segment` record
    /// carries).
    pub fn hashes(&self) -> Vec<Hash> {
        self.stack.iter().map(|(_, h)| *h).collect()
    }

    /// Rebuilds a frontier from [`hashes`](Self::hashes); None unless there
    /// is exactly one hash per 1-bit of `size`.
    pub fn from_hashes(size: u64, hashes: &[Hash]) -> Option<Frontier> {
        let heights = (0..64u32).rev().filter(|h| size >> h & 1 == 1);
        if hashes.len() != size.count_ones() as usize {
            return None;
        }
        Frontier::from_parts(size, heights.zip(hashes.iter().copied()).collect())
    }

    /// MTH of everything pushed so far: the perfect subtrees folded right to left.
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Lowercase hex of a digest.
pub fn to_hex(h: &Hash) -> String {
    let mut s = String::with_capacity(64);
    for b in h {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

/// Parses exactly 64 lowercase hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(b[2 * i])? << 4 | digit(b[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The certificate-transparency reference corpus (used by RFC 6962 implementations).
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(s: &str) -> Hash {
        from_hex(s).unwrap()
    }

    fn leaves() -> Vec<Hash> {
        LEAVES.iter().map(|l| leaf_hash(l)).collect()
    }

    #[test]
    fn roots_match_reference_vectors() {
        let l = leaves();
        let mut f = Frontier::new();
        assert_eq!(f.root(), h(ROOTS[0]));
        for n in 0..=8 {
            assert_eq!(to_hex(&root(&l[..n])), ROOTS[n], "size {n}");
            if n > 0 {
                f.push(l[n - 1]);
                assert_eq!(f.root(), h(ROOTS[n]), "frontier size {n}");
            }
        }
    }

    #[test]
    fn inclusion_reference_vectors() {
        let l = leaves();
        let p = inclusion_proof(0, &l).unwrap();
        let want0 = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(p, want0.map(h).to_vec());
        let p = inclusion_proof(5, &l).unwrap();
        let want5 = [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ];
        assert_eq!(p, want5.map(h).to_vec());
        verify_inclusion(5, 8, &l[5], &p, &h(ROOTS[8])).unwrap();
    }

    #[test]
    fn consistency_reference_vectors() {
        let l = leaves();
        let cases: [(u64, usize, &[&str]); 4] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases {
            let p = consistency_proof(m, &l[..n]).unwrap();
            assert_eq!(p, want.iter().map(|s| h(s)).collect::<Vec<_>>(), "PROOF({m}, D[{n}])");
            verify_consistency(m, n as u64, &h(ROOTS[m as usize]), &h(ROOTS[n]), &p).unwrap();
        }
    }

    #[test]
    fn every_proof_verifies_and_every_tamper_fails() {
        let l: Vec<Hash> = (0u32..33).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        for n in 1..=l.len() {
            let r = root(&l[..n]);
            for i in 0..n {
                let p = inclusion_proof(i as u64, &l[..n]).unwrap();
                verify_inclusion(i as u64, n as u64, &l[i], &p, &r).unwrap();
                // Wrong leaf, wrong index, wrong size, flipped proof bit all fail.
                assert!(verify_inclusion(i as u64, n as u64, &l[(i + 1) % 33], &p, &r).is_err());
                if n > 1 {
                    assert!(verify_inclusion(((i + 1) % n) as u64, n as u64, &l[i], &p, &r).is_err());
                }
                // (The tree size is not authenticated by the path alone: for some
                // shapes the same path fits two sizes. The signed checkpoint binds it.)
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0][0] ^= first[0] | 1;
                    assert!(verify_inclusion(i as u64, n as u64, &l[i], &bad, &r).is_err());
                }
            }
            for m in 0..=n {
                let p = consistency_proof(m as u64, &l[..n]).unwrap();
                let old = root(&l[..m]);
                verify_consistency(m as u64, n as u64, &old, &r, &p).unwrap();
                if m > 0 && m < n {
                    let mut bad = p.clone();
                    bad[0][31] ^= 1;
                    assert!(verify_consistency(m as u64, n as u64, &old, &r, &bad).is_err());
                    // A forked history: same size, different old root.
                    let forked = root(&[vec![leaf_hash(b"forged")], l[1..m].to_vec()].concat());
                    assert!(verify_consistency(m as u64, n as u64, &forked, &r, &p).is_err());
                    let mut short = p.clone();
                    short.pop();
                    assert!(verify_consistency(m as u64, n as u64, &old, &r, &short).is_err());
                }
            }
        }
        assert!(verify_consistency(3, 2, &l[0], &l[0], &[]).is_err());
    }

    #[test]
    fn hex_round_trip() {
        let x = leaf_hash(b"x");
        assert_eq!(from_hex(&to_hex(&x)), Some(x));
        assert_eq!(from_hex(&to_hex(&x).to_uppercase()), None);
        assert_eq!(from_hex("00"), None);
    }
}
