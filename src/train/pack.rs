//! How a batch of sequences becomes rows for one forward pass: right-padded to the
//! longest ([`pack`]), end to end in one row ([`pack_free`], TRL's padding_free), or end
//! to end with the sequences that share a prompt computing it once ([`pack_shared`]).

use super::data::Seq;
use crate::ops::attention::SharedGroup;

/// Right-pad `seqs` to one `(N, T)` batch. Returns the ids, T, and for every completion
/// token (sequence by sequence) the flattened position that predicts it and its id.
pub fn pack(seqs: &[&Seq]) -> (Vec<u32>, usize, Vec<u32>, Vec<i32>) {
    let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1).max(2);
    let mut ids = vec![0u32; seqs.len() * t];
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, s) in seqs.iter().enumerate() {
        ids[r * t..r * t + s.ids.len()].copy_from_slice(&s.ids);
        for p in s.prompt_len.max(1)..s.ids.len() {
            rows.push((r * t + p - 1) as u32);
            targets.push(s.ids[p] as i32);
        }
    }
    (ids, t, rows, targets)
}

/// The sequences of a batch end to end in one row, with no padding (TRL's
/// `padding_free`); see [`pack_free`].
pub struct PackedRow {
    /// `(1, T)` token ids.
    pub ids: Vec<u32>,
    pub t: usize,
    /// As [`pack`]'s: the position predicting each completion token, and its id.
    pub rows: Vec<u32>,
    pub targets: Vec<i32>,
    /// Each token's rotary position, restarting at every sequence.
    pub positions: Vec<usize>,
    /// Sequence boundaries `0, l_0, l_0 + l_1, ...`.
    pub cu_seqlens: Vec<usize>,
}

/// Lay `seqs` end to end in one row (see [`PackedRow`]).
pub fn pack_free(seqs: &[&Seq]) -> PackedRow {
    let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
    let mut ids = Vec::with_capacity(total.max(2));
    let mut positions = Vec::with_capacity(total.max(2));
    let mut cu = vec![0];
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for s in seqs {
        let at = ids.len();
        ids.extend_from_slice(&s.ids);
        positions.extend(0..s.ids.len());
        for p in s.prompt_len.max(1)..s.ids.len() {
            rows.push((at + p - 1) as u32);
            targets.push(s.ids[p] as i32);
        }
        cu.push(ids.len());
    }
    // a row of one token (a lone one-token sequence) still forms a (1, 2) batch, as in
    // `pack`; the extra position belongs to no sequence and sees no key
    while ids.len() < 2 {
        ids.push(0);
        positions.push(0);
    }
    PackedRow {
        t: ids.len(),
        ids,
        rows,
        targets,
        positions,
        cu_seqlens: cu,
    }
}

/// The sequences of a batch in one row, those with the same prompt as one group: the
/// prompt once, then each one's completion ([`SharedGroup`]). A completion's tokens keep
/// their rotary positions (after the prompt's) and see the prompt and themselves only, so
/// each sequence's log-probs are those of it alone, as in [`pack_free`].
pub struct SharedRow {
    /// As [`PackedRow`]'s; `cu_seqlens` is empty.
    pub row: PackedRow,
    /// The groups, in the row's order.
    pub groups: Vec<SharedGroup>,
    /// Each token's key for LoRA dropout masks: (sequence << 32 | position), the sequence
    /// numbered by its place in the batch (a shared prompt's tokens are its first
    /// sequence's), as padded and padding-free batches number them.
    pub token_keys: Vec<u64>,
    /// Prompt tokens not computed again (the batch's tokens less the row's).
    pub saved: usize,
}

/// Lay `seqs` end to end in one row, the sequences with the same prompt ids (at least one
/// token) as one group, grouped in order of first appearance (see [`SharedRow`]).
pub fn pack_shared(seqs: &[&Seq]) -> SharedRow {
    // members of each group, by their index in `seqs`
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut by_prompt: std::collections::HashMap<&[u32], usize> = Default::default();
    for (i, s) in seqs.iter().enumerate() {
        let prompt = &s.ids[..s.prompt_len.min(s.ids.len())];
        if prompt.is_empty() {
            groups.push(vec![i]);
            continue;
        }
        match by_prompt.get(prompt) {
            Some(&g) => groups[g].push(i),
            None => {
                by_prompt.insert(prompt, groups.len());
                groups.push(vec![i]);
            }
        }
    }
    let total: usize = seqs.iter().map(|s| s.ids.len()).sum();
    let (mut ids, mut positions, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    let mut laid = Vec::with_capacity(groups.len());
    // where each sequence's token p lies in the row: the group's prompt, then its answer
    let mut place: Vec<(usize, usize, usize)> = vec![(0, 0, 0); seqs.len()];
    for members in &groups {
        let first = seqs[members[0]];
        let pl = first.prompt_len.min(first.ids.len());
        let start = ids.len();
        ids.extend_from_slice(&first.ids[..pl]);
        positions.extend(0..pl);
        keys.extend((0..pl).map(|p| (members[0] as u64) << 32 | p as u64));
        let mut answers = Vec::with_capacity(members.len());
        for &m in members {
            let s = seqs[m];
            place[m] = (start, pl, ids.len());
            ids.extend_from_slice(&s.ids[pl..]);
            positions.extend(pl..s.ids.len());
            keys.extend((pl..s.ids.len()).map(|p| (m as u64) << 32 | p as u64));
            answers.push(s.ids.len() - pl);
        }
        laid.push(SharedGroup {
            start,
            prompt: pl,
            answers,
        });
    }
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (s, &(start, pl, answer)) in seqs.iter().zip(&place) {
        let at = |p: usize| if p < pl { start + p } else { answer + p - pl };
        for p in s.prompt_len.max(1)..s.ids.len() {
            rows.push(at(p - 1) as u32);
            targets.push(s.ids[p] as i32);
        }
    }
    let saved = total - ids.len();
    // as in `pack_free`: at least a (1, 2) batch; the extra position sees no key
    while ids.len() < 2 {
        ids.push(0);
        positions.push(0);
        keys.push(u64::MAX);
    }
    SharedRow {
        row: PackedRow {
            t: ids.len(),
            ids,
            rows,
            targets,
            positions,
            cu_seqlens: Vec::new(),
        },
        groups: laid,
        token_keys: keys,
        saved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(ids: &[u32], prompt_len: usize) -> Seq {
        Seq {
            ids: ids.to_vec(),
            prompt_len,
        }
    }

    #[test]
    fn shared_prompts_are_laid_once_before_their_answers() {
        // two pairs' chosen then rejected; the second pair's rejected has a prompt of its
        // own, and a third chosen repeats the first prompt
        let (c0, c1, c2) = (
            seq(&[5, 6, 7, 8], 2),
            seq(&[9, 10, 11], 1),
            seq(&[5, 6, 30], 2),
        );
        let (r0, r1) = (seq(&[5, 6, 20], 2), seq(&[12, 13, 14], 1));
        let p = pack_shared(&[&c0, &c1, &c2, &r0, &r1]);
        // groups: [5 6 | 7 8 | 30 | 20], [9 | 10 11], [12 | 13 14]
        assert_eq!(p.row.ids, [5, 6, 7, 8, 30, 20, 9, 10, 11, 12, 13, 14]);
        assert_eq!(p.row.positions, [0, 1, 2, 3, 2, 2, 0, 1, 2, 0, 1, 2]);
        let g = |start, prompt, answers: &[usize]| SharedGroup {
            start,
            prompt,
            answers: answers.to_vec(),
        };
        assert_eq!(
            p.groups,
            [g(0, 2, &[2, 1, 1]), g(6, 1, &[2]), g(9, 1, &[2])]
        );
        assert_eq!(p.saved, 4);
        // each completion token is predicted by its own previous token, the first by the
        // shared prompt's last: c0 7 8, c1 10 11, c2 30, r0 20, r1 13 14
        assert_eq!(p.row.rows, [1, 2, 6, 7, 1, 1, 9, 10]);
        assert_eq!(p.row.targets, [7, 8, 10, 11, 30, 20, 13, 14]);
        // dropout keys: the sequence's place in the batch, the prompt's its first user's
        let k = |s: u64, pos: u64| s << 32 | pos;
        assert_eq!(
            p.token_keys,
            [
                k(0, 0),
                k(0, 1),
                k(0, 2),
                k(0, 3),
                k(2, 2),
                k(3, 2),
                k(1, 0),
                k(1, 1),
                k(1, 2),
                k(4, 0),
                k(4, 1),
                k(4, 2)
            ]
        );
        // the ranges: answers after the first skip those before them
        let r = crate::ops::attention::AttnOpts::shared_ranges(&[p.groups], 12);
        let at = |i: usize| &r[4 * i..4 * i + 4];
        assert_eq!(at(3), [0, 6, 0, 0]);
        assert_eq!(at(4), [0, 6, 2, 4]);
        assert_eq!(at(5), [0, 6, 2, 5]);
        assert_eq!(at(7), [6, 9, 6, 6]);
    }
}
