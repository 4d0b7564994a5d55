//! Dependency order of resources.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use crate::stack::ResourceDef;

/// Resources in an order where each comes after everything it depends on; ties are broken by
/// name, so the order is deterministic. On a cycle, returns one cycle's members in order.
pub fn order(resources: &BTreeMap<String, ResourceDef>) -> Result<Vec<String>, Vec<String>> {
    let deps: BTreeMap<&str, Vec<&str>> = resources
        .iter()
        .map(|(n, r)| {
            (
                n.as_str(),
                r.dependencies.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    topological(&deps)
}

/// Topological order of a graph given as node → dependencies. Dependencies that are not nodes
/// are ignored. Of the nodes ready at each step the first by name comes first.
///
/// Nodes are numbered in name order (the map's order) and the sort works on the numbers: a
/// name is looked up once per dependency, not compared at every step (a plan of ten thousand
/// resources sorts twice and a stack load once).
pub fn topological(deps: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, Vec<String>> {
    let names: Vec<&str> = deps.keys().copied().collect();
    let index: HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut remaining = vec![0usize; names.len()];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (node, ds) in deps.values().enumerate() {
        let mut known: Vec<usize> = ds
            .iter()
            .filter_map(|d| index.get(d).copied())
            .filter(|d| *d != node)
            .collect();
        known.sort_unstable();
        known.dedup();
        remaining[node] = known.len();
        for d in known {
            dependents[d].push(node);
        }
    }
    // The smallest number is the first name.
    let mut ready: BinaryHeap<Reverse<usize>> = (0..names.len())
        .filter(|i| remaining[*i] == 0)
        .map(Reverse)
        .collect();
    let mut out = Vec::with_capacity(names.len());
    while let Some(Reverse(node)) = ready.pop() {
        out.push(names[node].to_string());
        for &dependent in &dependents[node] {
            remaining[dependent] -= 1;
            if remaining[dependent] == 0 {
                ready.push(Reverse(dependent));
            }
        }
    }
    if out.len() == names.len() {
        return Ok(out);
    }
    let stuck: BTreeSet<&str> = (0..names.len())
        .filter(|i| remaining[*i] > 0)
        .map(|i| names[i])
        .collect();
    Err(find_cycle(deps, &stuck))
}

/// Walks dependencies from the first stuck node until a node repeats. Every stuck node has a
/// stuck dependency, so the walk must repeat.
fn find_cycle(deps: &BTreeMap<&str, Vec<&str>>, stuck: &BTreeSet<&str>) -> Vec<String> {
    let Some(&start) = stuck.first() else {
        return Vec::new();
    };
    let mut path: Vec<&str> = vec![start];
    let mut node = start;
    loop {
        let Some(next) = deps[node]
            .iter()
            .copied()
            .filter(|d| stuck.contains(d))
            .min()
        else {
            return path.iter().map(|s| s.to_string()).collect();
        };
        if let Some(i) = path.iter().position(|p| *p == next) {
            return path[i..].iter().map(|s| s.to_string()).collect();
        }
        path.push(next);
        node = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The sort as it was written first, on names: the reference the numbered one must equal.
    fn by_names(deps: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, Vec<String>> {
        let mut remaining: BTreeMap<&str, usize> = BTreeMap::new();
        let mut dependents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (node, ds) in deps {
            let known: BTreeSet<&str> = ds
                .iter()
                .copied()
                .filter(|d| deps.contains_key(d) && d != node)
                .collect();
            remaining.insert(node, known.len());
            for d in known {
                dependents.entry(d).or_default().push(node);
            }
        }
        let mut ready: BTreeSet<&str> = remaining
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        while let Some(node) = ready.pop_first() {
            out.push(node.to_string());
            for dependent in dependents.get(node).map(Vec::as_slice).unwrap_or(&[]) {
                let count = remaining.get_mut(dependent).expect("a node");
                *count -= 1;
                if *count == 0 {
                    ready.insert(dependent);
                }
            }
        }
        if out.len() == deps.len() {
            return Ok(out);
        }
        let stuck: BTreeSet<&str> = remaining
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, _)| *k)
            .collect();
        Err(find_cycle(deps, &stuck))
    }

    proptest! {
        /// Any graph (dependencies on unknown nodes, on themselves, repeated, cycles): the
        /// same order, or the same cycle, as the sort on names.
        #[test]
        fn the_numbered_sort_equals_the_sort_on_names(
            edges in proptest::collection::vec(
                ("[a-h]{1,2}", proptest::collection::vec("[a-i]{1,2}", 0..4)),
                0..24,
            )
        ) {
            let deps: BTreeMap<&str, Vec<&str>> = edges
                .iter()
                .map(|(n, ds)| (n.as_str(), ds.iter().map(String::as_str).collect()))
                .collect();
            prop_assert_eq!(topological(&deps), by_names(&deps));
        }
    }

    #[test]
    fn orders_dependencies_first_and_finds_cycles() {
        let g: BTreeMap<&str, Vec<&str>> = [
            ("api", vec!["db", "migrate"]),
            ("migrate", vec!["db"]),
            ("db", vec![]),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            topological(&g).expect("acyclic"),
            vec!["db", "migrate", "api"]
        );
        let c: BTreeMap<&str, Vec<&str>> = [
            ("a", vec!["b"]),
            ("b", vec!["c"]),
            ("c", vec!["a"]),
            ("d", vec![]),
        ]
        .into_iter()
        .collect();
        assert_eq!(topological(&c).unwrap_err(), vec!["a", "b", "c"]);
    }
}
