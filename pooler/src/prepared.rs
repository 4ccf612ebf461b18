//! The prepared statements a server connection holds (transaction pooling), bounded
//! by a least-recently-used policy so a client that prepares unique statements
//! forever cannot grow a backend without limit.

use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct PreparedSet {
    capacity: usize,
    /// Name → last use; eviction scans for the oldest, which is cheap at the sizes
    /// this is configured with (hundreds) and costs nothing on a hit.
    names: HashMap<Arc<str>, u64>,
    clock: u64,
}

impl PreparedSet {
    pub fn new(capacity: usize) -> Self {
        PreparedSet {
            capacity: capacity.max(1),
            ..Default::default()
        }
    }

    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Whether `name` is prepared; marks it used if so.
    pub fn touch(&mut self, name: &str) -> bool {
        self.clock += 1;
        match self.names.get_mut(name) {
            Some(used) => {
                *used = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared and returns the statements to close to stay within
    /// capacity (the least recently used, never `name` itself).
    pub fn insert(&mut self, name: Arc<str>) -> Vec<Arc<str>> {
        self.clock += 1;
        self.names.insert(name.clone(), self.clock);
        let mut evicted = Vec::new();
        while self.names.len() > self.capacity {
            let oldest = self
                .names
                .iter()
                .filter(|(n, _)| **n != name)
                .min_by_key(|(_, used)| **used)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(oldest) => {
                    self.names.remove(&oldest);
                    evicted.push(oldest);
                }
                None => break,
            }
        }
        evicted
    }

    pub fn remove(&mut self, name: &str) {
        self.names.remove(name);
    }

    /// After `DISCARD ALL` / `DEALLOCATE ALL` the server holds none.
    pub fn clear(&mut self) {
        self.names.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_is_evicted() {
        let mut set = PreparedSet::new(2);
        assert!(set.insert("a".into()).is_empty());
        assert!(set.insert("b".into()).is_empty());
        assert!(set.touch("a"));
        assert_eq!(set.insert("c".into()), vec![Arc::<str>::from("b")]);
        assert!(set.touch("a") && set.touch("c") && !set.touch("b"));
        assert_eq!(set.len(), 2);
        set.clear();
        assert!(set.is_empty());
    }

    #[test]
    fn bounded_under_endless_unique_statements() {
        let mut set = PreparedSet::new(10);
        let mut evicted = 0;
        for i in 0..10_000 {
            evicted += set.insert(format!("s{i}").into()).len();
        }
        assert_eq!(set.len(), 10);
        assert_eq!(evicted, 9_990);
    }
}
