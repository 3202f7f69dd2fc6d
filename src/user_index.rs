//! Where each user id sits in a list of users: one index for the feature job's population
//! and the published table's rows. A slot per id when the ids are packed in a span at most
//! about twice the count (the usual case: ids are assigned in sequence), a hash map
//! otherwise. Pure; no I/O.

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
}
