//! Which rows a reader visits in an epoch, and in what order: the unit of work is a row group
//! (or a slice of one), shuffled per epoch by seed and dealt round-robin to the ranks.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// A contiguous run of rows inside one row group of one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unit {
    pub shard: usize,
    pub row_group: usize,
    pub rows: Range<usize>,
}

/// Which part of the data this reader owns: `rank` of `world_size` readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardSpec {
    pub rank: usize,
    pub world_size: usize,
}

impl Default for ShardSpec {
    fn default() -> Self {
        Self {
            rank: 0,
            world_size: 1,
        }
    }
}

/// The units of `rank` for `epoch`. `row_groups[s][g]` is the row count of group `g` of shard
/// `s`. Every row is in exactly one rank's plan. Row groups are split into slices only when
/// there are fewer of them than readers, since a slice costs a read of its whole column chunk.
pub fn plan(
    row_groups: &[Vec<usize>],
    shard: ShardSpec,
    epoch: u64,
    seed: u64,
    shuffle: bool,
) -> Vec<Unit> {
    let groups: usize = row_groups.iter().map(Vec::len).sum();
    let parts = if groups == 0 {
        1
    } else {
        shard.world_size.div_ceil(groups)
    };
    let mut units = Vec::new();
    for (s, sizes) in row_groups.iter().enumerate() {
        for (g, &rows) in sizes.iter().enumerate() {
            for p in 0..parts {
                let range = rows * p / parts..rows * (p + 1) / parts;
                if !range.is_empty() {
                    units.push(Unit {
                        shard: s,
                        row_group: g,
                        rows: range,
                    });
                }
            }
        }
    }
    if shuffle {
        SplitMix64::new(seed, epoch).shuffle(&mut units);
    }
    units
        .into_iter()
        .skip(shard.rank)
        .step_by(shard.world_size.max(1))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(units: &[Unit]) -> Vec<(usize, usize, usize)> {
        units
            .iter()
            .flat_map(|u| u.rows.clone().map(move |r| (u.shard, u.row_group, r)))
            .collect()
    }

    #[test]
    fn ranks_cover_every_row_once() {
        for groups in [
            vec![vec![10, 3], vec![7]],
            vec![vec![100]],
            vec![vec![1, 1, 1, 1, 1]],
        ] {
            for world_size in 1..6 {
                let mut all = Vec::new();
                for rank in 0..world_size {
                    all.extend(rows_of(&plan(
                        &groups,
                        ShardSpec { rank, world_size },
                        3,
                        9,
                        true,
                    )));
                }
                let total: usize = groups.iter().flatten().sum();
                assert_eq!(all.len(), total, "{groups:?} over {world_size}");
                all.sort();
                all.dedup();
                assert_eq!(all.len(), total, "no row twice");
            }
        }
    }

    #[test]
    fn epochs_reshuffle_deterministically() {
        let groups = vec![vec![5; 20]];
        let one = ShardSpec::default();
        assert_eq!(
            plan(&groups, one, 0, 1, true),
            plan(&groups, one, 0, 1, true)
        );
        assert_ne!(
            plan(&groups, one, 0, 1, true),
            plan(&groups, one, 1, 1, true)
        );
        let ordered = plan(&groups, one, 0, 1, false);
        assert!(ordered.windows(2).all(|w| w[0].row_group < w[1].row_group));
    }
}
