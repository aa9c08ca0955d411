//! Node naming: Apache Curator's layouts (the default: `InterProcessMutex`, which its
//! `LeaderSelector` holds too; `LeaderLatch` for elections with `recipe=curator-latch`) or
//! kazoo's (`Lock`, which kazoo's `Election` is).

/// Which client library's node names a lock uses (the `recipe` option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recipe {
    /// Curator's `InterProcessMutex` (`_c_<uuid>-lock-<seq>`) for locks and elections alike
    /// (the default): what Curator's `LeaderSelector` holds, its participant id as the node's
    /// data. `LeaderLatch` nodes (`latch-`) are contenders too.
    Curator,
    /// Curator's `InterProcessMutex` for locks, its `LeaderLatch` (`_c_<uuid>-latch-<seq>`, the
    /// value as data) for election candidates (`recipe=curator-latch`), for fleets whose Java
    /// services elect with `LeaderLatch`. Both kinds are contenders, ordered by the digits after
    /// the last `lock-` or `latch-`.
    CuratorLatch,
    /// kazoo's `Lock` (`<uuid hex>__lock__<seq>`), for locks and elections alike (kazoo's
    /// `Election` is a `Lock`); kazoo's read-lock nodes (`__rlock__`) are contenders too.
    Kazoo,
}

/// A contender's node name under the lock's directory, with its place in line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Contender {
    pub name: String,
    pub sequence: i64,
}

/// Where one acquire stands in a lock's line. Every contender whose name starts with the
/// acquire's protected prefix is the acquire's own (a create whose answer was lost may have made
/// a node it does not know of): the earliest is its place, the others are to be deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Place {
    /// The acquire's node: the earliest with its prefix.
    pub mine: String,
    /// How many contenders are ahead of it (0: it holds the lock).
    pub position: usize,
    /// The contender right ahead of it.
    pub ahead: Option<String>,
    /// Its other nodes, later in line.
    pub extra: Vec<String>,
}

impl Recipe {
    /// The name a new contender creates (ZooKeeper appends the sequence number): a lock's, or
    /// an election candidate's. `id` is a random 128-bit value, which finds the node again
    /// after a create whose reply was lost.
    pub(crate) fn node_prefix(self, id: u128, election: bool) -> String {
        let hex = format!("{id:032x}");
        match self {
            Recipe::Curator | Recipe::CuratorLatch => {
                let kind = if election && self == Recipe::CuratorLatch { "latch-" } else { "lock-" };
                format!("_c_{}-{}-{}-{}-{}-{kind}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
            }
            Recipe::Kazoo => format!("{hex}__lock__"),
        }
    }

    fn markers(self) -> &'static [&'static str] {
        match self {
            Recipe::Curator | Recipe::CuratorLatch => &["lock-", "latch-"],
            Recipe::Kazoo => &["__lock__", "__rlock__"],
        }
    }

    /// The contenders among a lock directory's children, first in line first. Children that
    /// are not contenders of this recipe (e.g. a lease node of another recipe) are ignored.
    pub(crate) fn contenders(self, children: Vec<String>) -> Vec<Contender> {
        let mut contenders: Vec<Contender> = children
            .into_iter()
            .filter_map(|name| {
                // After the last marker in the name, whichever it is (as Curator reads its own).
                let (at, marker) = self.markers().iter().filter_map(|m| Some((name.rfind(m)?, m))).max()?;
                let digits = &name[at + marker.len()..];
                let sequence = digits.parse().ok()?;
                Some(Contender { name, sequence })
            })
            .collect();
        contenders.sort_by_key(|c| c.sequence);
        contenders
    }

    /// Where the acquire whose nodes start with `prefix` stands among a directory's children;
    /// `None` when it has no node there.
    pub(crate) fn place(self, children: Vec<String>, prefix: &str) -> Option<Place> {
        let contenders = self.contenders(children);
        let position = contenders.iter().position(|c| c.name.starts_with(prefix))?;
        let extra = contenders[position + 1..].iter().filter(|c| c.name.starts_with(prefix)).map(|c| c.name.clone());
        Some(Place {
            mine: contenders[position].name.clone(),
            position,
            ahead: position.checked_sub(1).map(|i| contenders[i].name.clone()),
            extra: extra.collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curator_names_look_like_curators_and_sort_by_sequence() {
        let prefix = Recipe::Curator.node_prefix(0x0123456789abcdef0123456789abcdef, false);
        assert_eq!(prefix, "_c_01234567-89ab-cdef-0123-456789abcdef-lock-");
        let selector = Recipe::Curator.node_prefix(0x0123456789abcdef0123456789abcdef, true);
        assert_eq!(selector, prefix, "LeaderSelector holds an InterProcessMutex");
        let candidate = Recipe::CuratorLatch.node_prefix(0x0123456789abcdef0123456789abcdef, true);
        assert_eq!(candidate, "_c_01234567-89ab-cdef-0123-456789abcdef-latch-", "LeaderLatch's names");
        assert_eq!(Recipe::CuratorLatch.node_prefix(0x0123456789abcdef0123456789abcdef, false), prefix);
        let children = vec![
            format!("{prefix}0000000012"),
            "_c_ffffffff-0000-0000-0000-000000000000-lock-0000000003".to_owned(),
            format!("{candidate}0000000007"),
            "x-lock-5-latch-0000000009".to_owned(),
            "leases".to_owned(),
            "x-lock-notdigits".to_owned(),
        ];
        for recipe in [Recipe::Curator, Recipe::CuratorLatch] {
            let order: Vec<i64> = recipe.contenders(children.clone()).iter().map(|c| c.sequence).collect();
            assert_eq!(order, [3, 7, 9, 12], "a lock and an election of one name are one line; the last marker counts");
        }
    }

    #[test]
    fn kazoo_names_and_read_locks_count() {
        let prefix = Recipe::Kazoo.node_prefix(7, false);
        assert_eq!(Recipe::Kazoo.node_prefix(7, true), prefix, "kazoo's Election is its Lock");
        assert_eq!(prefix, "00000000000000000000000000000007__lock__");
        let children =
            vec![format!("{prefix}0000000005"), "abc__rlock__0000000002".to_owned(), "lease_holder".to_owned()];
        let order: Vec<String> = Recipe::Kazoo.contenders(children).into_iter().map(|c| c.name).collect();
        assert_eq!(order, ["abc__rlock__0000000002".to_owned(), format!("{prefix}0000000005")]);
    }

    #[test]
    fn every_node_with_the_prefix_is_the_acquires_own_and_the_earliest_is_its_place() {
        let mine = Recipe::Curator.node_prefix(1, false);
        let other = Recipe::CuratorLatch.node_prefix(2, true);
        let children = vec![
            format!("{mine}0000000007"),
            format!("{other}0000000001"),
            format!("{mine}0000000004"),
            format!("{other}0000000002"),
        ];
        let place = Recipe::Curator.place(children.clone(), &mine).unwrap();
        assert_eq!(place.mine, format!("{mine}0000000004"), "the earlier of its two nodes");
        assert_eq!((place.position, place.ahead), (2, Some(format!("{other}0000000002"))));
        assert_eq!(place.extra, [format!("{mine}0000000007")]);

        let first = Recipe::Curator.place(children.clone(), &other).unwrap();
        assert_eq!((first.position, first.ahead, first.extra.len()), (0, None, 1));
        assert_eq!(Recipe::Curator.place(children, &Recipe::Curator.node_prefix(3, false)), None);
    }
}
