//! Where each user id sits in a list of users: one index for the feature job's population
//! and the published table's rows. A slot per id when the ids are packed in a span at most
//! about twice the count (the usual case: ids are assigned in sequence), a hash map
//! otherwise. And which shard of the read path holds a user (`UserShard`), the one rule a
//! server loading its share and a client choosing a server both follow. And the training
//! labels by user (`Labels`, what `dataset::labels` reads). Pure; no I/O.

use std::collections::HashMap;

const NO_POSITION: u32 = u32::MAX;

pub enum UserIndex {
    Dense { first: u64, positions: Vec<u32> },
    Sparse(HashMap<u64, u32>),
}

impl UserIndex {
    /// Indexes `users` by position; fails with the first id that appears twice. A list must
    /// hold fewer than `u32::MAX` users.
    pub fn build(users: &[u64]) -> Result<UserIndex, u64> {
        let (Some(&min), Some(&max)) = (users.iter().min(), users.iter().max()) else {
            return Ok(UserIndex::Sparse(HashMap::new()));
        };
        let span = max - min;
        if span < 2 * users.len() as u64 + 1024 {
            let mut positions = vec![NO_POSITION; span as usize + 1];
            for (position, &user) in users.iter().enumerate() {
                let slot = &mut positions[(user - min) as usize];
                if *slot != NO_POSITION {
                    return Err(user);
                }
                *slot = position as u32;
            }
            Ok(UserIndex::Dense {
                first: min,
                positions,
            })
        } else {
            let mut positions = HashMap::with_capacity(users.len());
            for (position, &user) in users.iter().enumerate() {
                if positions.insert(user, position as u32).is_some() {
                    return Err(user);
                }
            }
            Ok(UserIndex::Sparse(positions))
        }
    }

    /// The position of `user`, or None when the list does not hold it.
    pub fn position(&self, user: u64) -> Option<usize> {
        let position = match self {
            UserIndex::Dense { first, positions } => {
                *positions.get(user.checked_sub(*first)? as usize)?
            }
            UserIndex::Sparse(positions) => *positions.get(&user)?,
        };
        (position != NO_POSITION).then_some(position as usize)
    }

    /// The most users one list may hold.
    pub const MAX_USERS: usize = NO_POSITION as usize;
}

/// One of `count` shards of the users, by a hash of the user id: ids assigned in sequence
/// spread evenly, and every caller computes the same shard. The hash is SplitMix64's
/// finalizer, a few lines in any language (docs/openapi.json gives it and test vectors):
/// `shard = splitmix64(user_id) % count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserShard {
    pub index: u32,
    pub count: u32,
}

impl UserShard {
    /// The shard of `count` that holds `user_id`.
    pub fn of(user_id: u64, count: u32) -> u32 {
        (splitmix64(user_id) % u64::from(count.max(1))) as u32
    }

    pub fn contains(&self, user_id: u64) -> bool {
        Self::of(user_id, self.count) == self.index
    }
}

/// SplitMix64's output function (Steele, Lea and Flood, 2014) applied to `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl std::fmt::Display for UserShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for UserShard {
    type Err = String;

    /// `INDEX/COUNT`, 0-based: `0/4` is the first of four.
    fn from_str(text: &str) -> Result<UserShard, String> {
        let bad = || format!("'{text}' is not a shard: use INDEX/COUNT, 0-based, as 0/4");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(format!(
                "shard '{text}': the index must be below the count (0-based) and the count at least 1"
            ));
        }
        Ok(UserShard { index, count })
    }
}

/// The training labels: the labelled users, sorted, and a bit each for whether they
/// defaulted. About 8 bytes a user, where a hash map of them took 20 to 36: the night holds
/// them from the features stage to the train stage, for every labelled user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    users: Vec<u64>,
    defaulted: Vec<u64>,
}

impl Labels {
    /// Whether `user` defaulted; None when the user has no label.
    pub fn get(&self, user: u64) -> Option<bool> {
        let position = self.users.binary_search(&user).ok()?;
        Some(self.defaulted_at(position))
    }

    /// The bit of the user at `position` in `users`.
    fn defaulted_at(&self, position: usize) -> bool {
        self.defaulted[position / 64] >> (position % 64) & 1 == 1
    }

    pub fn contains(&self, user: u64) -> bool {
        self.users.binary_search(&user).is_ok()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// (user, defaulted), in user order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, bool)> + '_ {
        self.users
            .iter()
            .enumerate()
            .map(|(position, &user)| (user, self.defaulted_at(position)))
    }
}

/// (user, defaulted) pairs; a user given twice keeps its last label, as a map would.
impl FromIterator<(u64, bool)> for Labels {
    fn from_iter<I: IntoIterator<Item = (u64, bool)>>(pairs: I) -> Labels {
        let mut pairs: Vec<(u64, bool)> = pairs.into_iter().collect();
        // stable: of a user's pairs the last stays last
        pairs.sort_by_key(|(user, _)| *user);
        let mut labels = Labels::default();
        for (i, &(user, defaulted)) in pairs.iter().enumerate() {
            if pairs.get(i + 1).is_some_and(|(next, _)| *next == user) {
                continue;
            }
            let position = labels.users.len();
            if position % 64 == 0 {
                labels.defaulted.push(0);
            }
            labels.defaulted[position / 64] |= (defaulted as u64) << (position % 64);
            labels.users.push(user);
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_finds_every_user_and_nothing_else() {
        // in sequence, shuffled, and spread far apart (the hash map)
        for users in [
            vec![10, 11, 12, 14],
            vec![14, 10, 12, 11],
            vec![7, u64::MAX - 1, 1 << 40, 3],
        ] {
            let index = UserIndex::build(&users).unwrap();
            assert_eq!(
                matches!(index, UserIndex::Dense { .. }),
                users[1] < 1000,
                "{users:?}"
            );
            for (position, &user) in users.iter().enumerate() {
                assert_eq!(index.position(user), Some(position));
            }
            for absent in [0, 9, 13, 15, 1 << 41, u64::MAX] {
                assert_eq!(index.position(absent), None, "{absent} in {users:?}");
            }
        }
        assert!(UserIndex::build(&[]).unwrap().position(0).is_none());
    }

    #[test]
    fn an_id_twice_is_refused() {
        assert_eq!(UserIndex::build(&[5, 6, 5]).err(), Some(5));
        assert_eq!(
            UserIndex::build(&[1 << 50, 3, 1 << 50]).err(),
            Some(1 << 50)
        );
    }

    #[test]
    fn shards_follow_the_documented_hash_and_split_sequential_ids_evenly() {
        // the test vectors docs/openapi.json gives clients in other languages
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(42), 0xBDD7_3226_2FEB_6E95);
        assert_eq!(UserShard::of(42, 4), (0xBDD7_3226_2FEB_6E95u64 % 4) as u32);
        let count = 4;
        let mut sizes = [0usize; 4];
        for user in 1..=100_000u64 {
            let shard = UserShard::of(user, count);
            sizes[shard as usize] += 1;
            let mine = UserShard {
                index: shard,
                count,
            };
            assert!(mine.contains(user));
        }
        for size in sizes {
            assert!((24_000..26_000).contains(&size), "{sizes:?}");
        }
        assert_eq!(
            "1/4".parse::<UserShard>(),
            Ok(UserShard { index: 1, count: 4 })
        );
        assert_eq!(UserShard { index: 1, count: 4 }.to_string(), "1/4");
        for bad in ["4/4", "1", "a/2", "0/0"] {
            assert!(bad.parse::<UserShard>().is_err(), "{bad}");
        }
    }
}
