//! Dependency order of resources.

use std::collections::{BTreeMap, BTreeSet};

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
/// are ignored.
pub fn topological(deps: &BTreeMap<&str, Vec<&str>>) -> Result<Vec<String>, Vec<String>> {
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
    let mut out = Vec::with_capacity(deps.len());
    while let Some(node) = ready.pop_first() {
        out.push(node.to_string());
        for dependent in dependents.get(node).map(Vec::as_slice).unwrap_or(&[]) {
            let count = remaining
                .get_mut(dependent)
                .expect("every dependent is a node");
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
