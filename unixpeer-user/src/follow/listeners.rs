//! Listening sockets by (network namespace, name): who a connect is
//! talking to before the server accepts. Looked up by the event's path
//! without building a key: a connect must not allocate to find its server.

use foldhash::HashMap;
use smallvec::SmallVec;

#[derive(Default)]
pub(crate) struct Listeners {
    /// Name -> (netns, inode) for each namespace with a listener of that
    /// name; almost always one.
    by_name: HashMap<Box<str>, SmallVec<[(u32, u64); 1]>>,
}

impl Listeners {
    pub(crate) fn insert(&mut self, netns: u32, name: &str, inode: u64) {
        let list = self.by_name.entry(name.into()).or_default();
        match list.iter_mut().find(|(n, _)| *n == netns) {
            Some(entry) => entry.1 = inode,
            None => list.push((netns, inode)),
        }
    }

    pub(crate) fn get(&self, netns: u32, name: &str) -> Option<u64> {
        self.by_name.get(name)?.iter().find(|(n, _)| *n == netns).map(|(_, i)| *i)
    }

    pub(crate) fn remove(&mut self, netns: u32, name: &str) {
        if let Some(list) = self.by_name.get_mut(name) {
            list.retain(|(n, _)| *n != netns);
            if list.is_empty() {
                self.by_name.remove(name);
            }
        }
    }

    /// Keeps the listeners for which `keep(netns, inode)` holds.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(u32, u64) -> bool) {
        self.by_name.retain(|_, list| {
            list.retain(|(n, i)| keep(*n, *i));
            !list.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_name_in_two_namespaces() {
        let mut l = Listeners::default();
        l.insert(1, "/run/a.sock", 10);
        l.insert(2, "/run/a.sock", 20);
        l.insert(1, "/run/a.sock", 11);
        assert_eq!(
            (l.get(1, "/run/a.sock"), l.get(2, "/run/a.sock"), l.get(3, "/run/a.sock")),
            (Some(11), Some(20), None)
        );
        l.remove(1, "/run/a.sock");
        assert_eq!((l.get(1, "/run/a.sock"), l.get(2, "/run/a.sock")), (None, Some(20)));
        l.retain(|_, inode| inode != 20);
        assert!(l.by_name.is_empty());
    }
}
