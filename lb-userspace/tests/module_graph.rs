//! The library's modules depend on each other one way: no two sibling modules import each
//! other, directly or through a cycle (docs/DEVELOPING.md, "Where things live"). This reads
//! `src/` as text: every `crate::a::b` and `super::x` path, and the names inside
//! `use crate::{...}` / `use super::{...}` groups, is an edge from the file's module to the
//! module it names; an edge between two modules counts between their children of the
//! nearest common parent.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

type Module = Vec<String>;

fn modules(dir: &Path, prefix: &Module, out: &mut BTreeMap<Module, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            let mut child = prefix.clone();
            child.push(name);
            modules(&path, &child, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut module = prefix.clone();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                module.push(name);
            }
            let text = fs::read_to_string(&path).unwrap();
            // Unit tests may reach anywhere.
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            let text: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            out.insert(module, text);
        }
    }
}

/// Paths named in `text`, as absolute module paths.
fn references(module: &Module, text: &str) -> Vec<Module> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut found = Vec::new();
    for root in ["crate", "super"] {
        let base: Module = if root == "crate" {
            Vec::new()
        } else {
            module[..module.len().saturating_sub(1)].to_vec()
        };
        for (at, _) in text.match_indices(&format!("{root}::")) {
            if text[..at].chars().next_back().is_some_and(is_name) {
                continue;
            }
            let rest = &text[at + root.len() + 2..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a, b::{..}, c}`: the first name of each item.
                let mut depth = 1;
                let mut item_start = true;
                let mut name = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 1 => break,
                        '}' => depth -= 1,
                        ',' if depth == 1 => item_start = true,
                        c if is_name(c) && item_start && depth == 1 => name.push(c),
                        _ => {
                            if !name.is_empty() {
                                let mut path = base.clone();
                                path.push(std::mem::take(&mut name));
                                found.push(path);
                            }
                            if !c.is_whitespace() {
                                item_start = false;
                            }
                        }
                    }
                }
                continue;
            }
            let path: Module = rest
                .split(|c: char| !(is_name(c) || c == ':'))
                .next()
                .unwrap_or("")
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            let mut full = base.clone();
            full.extend(path);
            found.push(full);
        }
    }
    found
}

#[test]
fn no_two_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = BTreeMap::new();
    modules(&src, &Vec::new(), &mut all);
    // Sibling edges, per parent.
    let mut edges: BTreeMap<Module, BTreeSet<(String, String)>> = BTreeMap::new();
    for (module, text) in &all {
        for reference in references(module, text) {
            // The longest prefix that is a module.
            let Some(target) = (0..=reference.len())
                .rev()
                .map(|n| reference[..n].to_vec())
                .find(|m| all.contains_key(m))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common == module.len() || common == target.len() {
                continue; // a parent and its child
            }
            edges
                .entry(module[..common].to_vec())
                .or_default()
                .insert((module[common].clone(), target[common].clone()));
        }
    }
    let mut cycles = Vec::new();
    for (parent, edges) in &edges {
        let next = |from: &str| -> Vec<&str> {
            edges
                .iter()
                .filter(|(a, _)| a == from)
                .map(|(_, b)| b.as_str())
                .collect()
        };
        // From every module, walk its dependencies; coming back to it is a cycle.
        for (start, _) in edges {
            let mut stack = vec![(start.as_str(), vec![start.as_str()])];
            let mut seen = BTreeSet::new();
            while let Some((at, path)) = stack.pop() {
                for to in next(at) {
                    if to == start {
                        cycles.push(format!(
                            "{}: {} -> {start}",
                            parent.join("::"),
                            path.join(" -> ")
                        ));
                    } else if seen.insert(to) {
                        let mut longer = path.clone();
                        longer.push(to);
                        stack.push((to, longer));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{}",
        cycles.join("\n")
    );
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 20,
        "the scan found the imports"
    );
}
