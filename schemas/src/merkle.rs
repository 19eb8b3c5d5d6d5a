//! A segment's commitment to each of its events, one by one: a Merkle tree
//! over the events' chain heads, in the segment's row order (by session,
//! then seq), built as RFC 9162 (Certificate Transparency 2.0) builds its
//! trees. Its root is in the segment's manifest, and signed on its own in a
//! [`RootStatement`](crate::manifest::RootStatement), so that any subset of
//! the events can be proven to be in the segment (an inclusion proof per
//! event: a few dozen hashes) without showing anything of the others: not
//! their sessions, subjects or resources, which the manifest lists.
//!
//! A leaf is an event's chain head, which commits to the event's canonical
//! encoding and to the head before it, blinded by a nonce of its own; the
//! event is proven by its encoding, the head before it (a hash), its nonce
//! and the path from its leaf to the root. Without the nonces, a path would
//! let its holder test guesses at the events beside the proven one (the
//! next event of the same session is one hash of the proven head and a
//! guess away from its leaf); each nonce derives from the segment's secret
//! salt, which stays in the manifest, so a proof shows nothing of the leaves
//! around it.
//!
//! - nonce of leaf `i`: the first 16 bytes of `SHA-256("proctor.nonce1" ||
//!   salt || i)` (`i` as 8 bytes, big-endian)
//! - leaf hash: `SHA-256(0x00 || nonce || head)`
//!
//! Each input fits one SHA-256 block (the node's two): sealing hashes a
//! nonce, a leaf and about one node per event, on its hot path.
//! - node hash: `SHA-256(0x01 || left || right)`
//! - the root of `n > 1` leaves: the node of the root of the first `k`
//!   (the largest power of two below `n`) and the root of the rest.

use sha2::{Digest, Sha256};

use crate::chain::ChainHash;

/// A hash in the tree.
pub type Hash = [u8; 32];

/// A leaf's blinding nonce: 128 bits, so that a leaf's input fits one block.
pub type Nonce = [u8; 16];

/// The nonce of leaf `index` of a segment whose salt is `salt`.
pub fn nonce(salt: &Hash, index: u64) -> Nonce {
    let mut hasher = Sha256::new();
    hasher.update(b"proctor.nonce1");
    hasher.update(salt);
    hasher.update(index.to_be_bytes());
    let digest: Hash = hasher.finalize().into();
    let mut nonce = [0u8; 16];
    nonce.copy_from_slice(&digest[..16]);
    nonce
}

/// The leaf hash of an event with chain head `head` and nonce `nonce`.
pub fn leaf(nonce: &Nonce, head: &ChainHash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0u8]);
    hasher.update(nonce);
    hasher.update(head.0);
    hasher.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([1u8]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The root over `leaves` (leaf hashes): the hash of nothing for none.
pub fn root(leaves: &[Hash]) -> Hash {
    Tree::new(leaves.to_vec()).root()
}

/// A tree's levels, leaves first: each level pairs the one below from the
/// left, and a last node without a pair moves up as it is. This is the same
/// tree as RFC 9162's recursive definition (tested against it), built once
/// so that any number of proofs cost a few hashes each.
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|level| level.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [left, right] => node(left, right),
                    [alone] => *alone,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn root(&self) -> Hash {
        match self.levels.last().and_then(|top| top.first()) {
            Some(root) => *root,
            None => Sha256::digest([]).into(),
        }
    }

    /// The inclusion proof of leaf `index`: its path's siblings from the
    /// leaf up; `None` past the last leaf.
    pub fn proof(&self, index: u64) -> Option<Vec<Hash>> {
        if index >= self.size() {
            return None;
        }
        let mut at = index as usize;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            let sibling = at ^ 1;
            if sibling < level.len() {
                path.push(level[sibling]);
            }
            at /= 2;
        }
        Some(path)
    }
}

/// Whether `proof` shows leaf hash `leaf`, at `index` of a tree of `size`
/// leaves, under `root` (RFC 9162, section 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node(p, &r);
            while fn_ & 1 == 0 && fn_ != 0 {
                fn_ >>= 1;
                sn >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && r == *root
}

/// The sizes of a tree's levels, from its leaves up to its root.
fn level_sizes(size: u64) -> Vec<u64> {
    let mut sizes = vec![size];
    while let Some(&last) = sizes.last().filter(|&&n| n > 1) {
        sizes.push(last.div_ceil(2));
    }
    sizes
}

impl Tree {
    /// The nodes that prove the leaves at `indices` (ascending, each once)
    /// together: what a verifier needs besides those leaves to recompute
    /// the root ([`root_from`]), in the order it asks for them (level by
    /// level from the leaves up, left to right). None if an index is out of
    /// range or out of order. Leaves proven together share their paths:
    /// all of a tree's leaves need no node at all.
    pub fn multiproof(&self, indices: &[u64]) -> Option<Vec<Hash>> {
        if indices.windows(2).any(|w| w[0] >= w[1]) || indices.last().is_some_and(|&i| i >= self.size()) {
            return None;
        }
        let mut known: Vec<u64> = indices.to_vec();
        let mut proof = Vec::new();
        for level in &self.levels[..self.levels.len().saturating_sub(1)] {
            let mut above = Vec::with_capacity(known.len());
            let mut k = 0;
            while k < known.len() {
                let at = known[k];
                let sibling = at ^ 1;
                if known.get(k + 1) == Some(&sibling) {
                    k += 1;
                } else if (sibling as usize) < level.len() {
                    proof.push(level[sibling as usize]);
                }
                above.push(at / 2);
                k += 1;
            }
            known = above;
        }
        Some(proof)
    }
}

/// The root of a tree of `size` leaves, recomputed from some of its leaves
/// (`(index, leaf)`, indices ascending, each once) and their multiproof
/// ([`Tree::multiproof`]). None if the leaves or the proof do not fit the
/// tree: an index out of order or out of range, a proof too short or too
/// long, no leaf at all.
pub fn root_from(size: u64, leaves: &[(u64, Hash)], proof: &[Hash]) -> Option<Hash> {
    if leaves.is_empty()
        || leaves.windows(2).any(|w| w[0].0 >= w[1].0)
        || leaves.last().is_some_and(|&(i, _)| i >= size)
    {
        return None;
    }
    let mut known: Vec<(u64, Hash)> = leaves.to_vec();
    let mut proof = proof.iter();
    for &width in &level_sizes(size)[..level_sizes(size).len() - 1] {
        let mut above = Vec::with_capacity(known.len() / 2 + 1);
        let mut k = 0;
        while k < known.len() {
            let (at, hash) = known[k];
            let sibling = at ^ 1;
            let parent = match known.get(k + 1) {
                Some(&(next, right)) if next == sibling => {
                    k += 1;
                    node(&hash, &right)
                }
                _ if sibling >= width => hash,
                _ => {
                    let other = proof.next()?;
                    if at & 1 == 1 { node(other, &hash) } else { node(&hash, other) }
                }
            };
            above.push((at / 2, parent));
            k += 1;
        }
        known = above;
    }
    if proof.next().is_some() {
        return None;
    }
    match known.as_slice() {
        [(0, root)] => Some(*root),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 9162's definition, recursively: the slow path the levels are
    /// checked against.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => Sha256::digest([]).into(),
            1 => leaves[0],
            n => {
                let k = n.next_power_of_two() / 2;
                node(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn reference_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let k = leaves.len().next_power_of_two() / 2;
        if index < k {
            let mut path = reference_proof(index, &leaves[..k]);
            path.push(reference_root(&leaves[k..]));
            path
        } else {
            let mut path = reference_proof(index - k, &leaves[k..]);
            path.push(reference_root(&leaves[..k]));
            path
        }
    }

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf(&nonce(&[7; 32], i as u64), &ChainHash::GENESIS.next(&i.to_le_bytes()))).collect()
    }

    #[test]
    fn the_levels_give_the_roots_and_proofs_of_the_definition_and_every_proof_verifies() {
        for n in 0..=70 {
            let leaves = leaves(n);
            let tree = Tree::new(leaves.clone());
            assert_eq!(tree.root(), reference_root(&leaves), "root of {n}");
            for i in 0..n {
                let proof = tree.proof(i as u64).unwrap();
                assert_eq!(proof, reference_proof(i, &leaves), "proof of {i} of {n}");
                assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &proof, &tree.root()), "{i} of {n}");
            }
            assert_eq!(tree.proof(n as u64), None);
        }
    }

    #[test]
    fn a_proof_fails_for_another_leaf_index_root_or_path() {
        let leaves = leaves(13);
        let tree = Tree::new(leaves.clone());
        let root = tree.root();
        for i in 0..13u64 {
            let proof = tree.proof(i).unwrap();
            let at = i as usize;
            assert!(!verify_inclusion(&leaves[(at + 1) % 13], i, 13, &proof, &root), "another leaf");
            assert!(!verify_inclusion(&leaves[at], (i + 1) % 13, 13, &proof, &root), "another index");
            assert!(!verify_inclusion(&leaves[at], i, 13, &proof, &leaves[0]), "another root");
            assert!(!verify_inclusion(&leaves[at], i, 13, &proof[..proof.len() - 1], &root), "a path cut short");
            let mut longer = proof.clone();
            longer.push(root);
            assert!(!verify_inclusion(&leaves[at], i, 13, &longer, &root), "a path made longer");
            for k in 0..proof.len() {
                let mut bent = proof.clone();
                bent[k][0] ^= 1;
                assert!(!verify_inclusion(&leaves[at], i, 13, &bent, &root), "a path with a changed hash");
            }
        }
        assert!(!verify_inclusion(&leaves[0], 13, 13, &[], &root), "past the end");
        assert!(!verify_inclusion(&leaves[0], 0, 0, &[], &root), "an empty tree");
    }

    #[test]
    fn multiproofs_give_the_root_of_the_single_proofs_for_every_subset() {
        // Every subset of small trees, and random subsets of larger ones:
        // the root recomputed from a multiproof is the tree's, and it is
        // never longer than the single proofs together.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for n in 1..=300usize {
            let leaves = leaves(n);
            let tree = Tree::new(leaves.clone());
            let subsets: Vec<Vec<u64>> = if n <= 10 {
                (1u32..1 << n).map(|mask| (0..n as u64).filter(|i| mask & (1 << i) != 0).collect()).collect()
            } else {
                (0..20)
                    .map(|_| (0..n as u64).filter(|_| next() % 4 == 0).collect::<Vec<_>>())
                    .filter(|s| !s.is_empty())
                    .collect()
            };
            for subset in subsets {
                let proof = tree.multiproof(&subset).unwrap();
                let known: Vec<(u64, Hash)> = subset.iter().map(|&i| (i, leaves[i as usize])).collect();
                assert_eq!(root_from(n as u64, &known, &proof), Some(tree.root()), "{subset:?} of {n}");
                let singles: usize = subset.iter().map(|&i| tree.proof(i).unwrap().len()).sum();
                assert!(proof.len() <= singles, "{subset:?} of {n}");
                // Whatever is changed, left out or added, the root is another.
                if let Some(first) = proof.first() {
                    let mut bent = proof.clone();
                    bent[0][0] ^= 1;
                    assert_ne!(root_from(n as u64, &known, &bent), Some(tree.root()));
                    assert_eq!(root_from(n as u64, &known, &proof[1..]), None, "a proof cut short");
                    let mut longer = proof.clone();
                    longer.push(*first);
                    assert_eq!(root_from(n as u64, &known, &longer), None, "a proof made longer");
                }
                let mut other = known.clone();
                other[0].1[0] ^= 1;
                assert_ne!(root_from(n as u64, &other, &proof), Some(tree.root()), "another leaf");
                // (The size is not checked here: a subtree's root can stand
                // for a leaf of a larger tree, so the size comes from the
                // signed root statement, never from the prover.)
            }
            // All leaves need no node.
            let all: Vec<u64> = (0..n as u64).collect();
            assert_eq!(tree.multiproof(&all).unwrap(), Vec::<Hash>::new());
        }
        let tree = Tree::new(leaves(5));
        assert_eq!(tree.multiproof(&[3, 1]), None, "out of order");
        assert_eq!(tree.multiproof(&[5]), None, "out of range");
        assert_eq!(root_from(5, &[], &[]), None, "no leaf");
        assert_eq!(root_from(5, &[(1, [0; 32]), (1, [0; 32])], &[]), None, "twice");
    }
}
