//! Which clients have each value of each fact, so that `-F` looks at the
//! few distinct values of a key (`os.id` has a handful across a fleet)
//! instead of every client's facts: the most selective expression's
//! clients are the candidates, and only they are checked against the rest. A list fact is indexed element by
//! element; `!=` is "has the key" minus "has an element equal to it", as
//! [`FactExpr::matches`] says.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pantry_shared::facts::{FactExpr, FactFilter, Facts, Op};
use serde_json::Value;

/// One key's values: each (as its JSON text) with the clients that have
/// it. (Who has the key at all is their union: not kept twice.)
#[derive(Default)]
struct Values {
    by_value: HashMap<String, (Value, HashSet<Arc<str>>)>,
}

#[derive(Default)]
pub struct FactIndex {
    by_key: HashMap<String, Values>,
}

fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        scalar => vec![scalar],
    }
}

impl FactIndex {
    pub fn add(&mut self, identity: &Arc<str>, facts: &Facts) {
        for (key, value) in facts {
            let values = self.by_key.entry(key.clone()).or_default();
            for element in elements(value) {
                let entry =
                    values.by_value.entry(element.to_string()).or_insert_with(|| (element.clone(), HashSet::new()));
                entry.1.insert(identity.clone());
            }
        }
    }

    pub fn remove(&mut self, identity: &str, facts: &Facts) {
        for (key, value) in facts {
            let Some(values) = self.by_key.get_mut(key) else { continue };
            for element in elements(value) {
                let text = element.to_string();
                if let Some((_, ids)) = values.by_value.get_mut(&text) {
                    ids.remove(identity);
                    if ids.is_empty() {
                        values.by_value.remove(&text);
                    }
                }
            }
            if values.by_value.is_empty() {
                self.by_key.remove(key);
            }
        }
    }

    /// The clients one expression selects (their facts' freshness aside).
    fn selected(&self, expr: &FactExpr) -> HashSet<Arc<str>> {
        let Some(values) = self.by_key.get(&expr.key) else { return HashSet::new() };
        let union = |pick: &dyn Fn(&Value) -> bool| {
            let mut out = HashSet::new();
            for (value, ids) in values.by_value.values() {
                if pick(value) {
                    out.extend(ids.iter().cloned());
                }
            }
            out
        };
        match expr.op {
            Op::Present => union(&|_| true),
            // Has the key, and no element equal to the value.
            Op::Ne => {
                let equal = union(&|v| !expr.scalar_matches(v));
                let mut present = union(&|_| true);
                present.retain(|id| !equal.contains(id));
                present
            }
            _ => union(&|v| expr.scalar_matches(v)),
        }
    }

    /// How many clients one expression selects, about (a list fact's
    /// elements each count): cheap, from the sets' sizes.
    fn estimate(&self, expr: &FactExpr) -> usize {
        let Some(values) = self.by_key.get(&expr.key) else { return 0 };
        let all = || values.by_value.values().map(|(_, ids)| ids.len()).sum();
        match expr.op {
            Op::Present | Op::Ne => all(),
            _ => values.by_value.values().filter(|(v, _)| expr.scalar_matches(v)).map(|(_, ids)| ids.len()).sum(),
        }
    }

    /// The clients that may match `filter`: those its most selective
    /// expression selects (the caller checks every expression on each,
    /// which costs the few candidates, not the fleet).
    pub fn candidates(&self, filter: &FactFilter) -> HashSet<Arc<str>> {
        match filter.0.iter().min_by_key(|e| self.estimate(e)) {
            Some(narrowest) => self.selected(narrowest),
            None => HashSet::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts(v: Value) -> Facts {
        let mut f = Facts::new();
        pantry_shared::facts::flatten_into("", &v, &mut f);
        f
    }

    /// The index selects exactly whom matching each client's facts does.
    #[test]
    fn the_index_agrees_with_matching_every_client() {
        let fleet: Vec<(Arc<str>, Facts)> = (0..60)
            .map(|i| {
                let memory = [8192, 16384, 32768][i % 3];
                let f = facts(json!({
                    "os": {"id": if i % 10 == 0 { "ubuntu" } else { "debian" }, "version_id": format!("{}", 10 + i % 3)},
                    "memory_mib": memory,
                    "ipv4": [format!("10.0.{}.1", i % 4), "192.168.0.1"],
                    "virtual": i % 2 == 0,
                }));
                (Arc::from(format!("host-{i:02}").as_str()), f)
            })
            .collect();
        let mut index = FactIndex::default();
        for (id, f) in &fleet {
            index.add(id, f);
        }
        let exprs = [
            vec!["os.id=debian"],
            vec!["os.id=debian", "memory_mib>=16384"],
            vec!["os.version_id=1*"],
            vec!["os.id!=debian"],
            vec!["ipv4=10.0.2.*"],
            vec!["ipv4!=192.168.0.1"],
            vec!["ipv4!=10.0.1.1"],
            vec!["os.id~^ub"],
            vec!["memory_mib<16384", "virtual=true"],
            vec!["virtual"],
            vec!["missing"],
            vec!["os.version_id>10"],
        ];
        for e in exprs {
            let filter = FactFilter::parse(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap().unwrap();
            let want: HashSet<Arc<str>> =
                fleet.iter().filter(|(_, f)| filter.matches(f)).map(|(id, _)| id.clone()).collect();
            let facts_of = |id: &Arc<str>| &fleet.iter().find(|(i, _)| i == id).unwrap().1;
            let candidates = index.candidates(&filter);
            let got: HashSet<Arc<str>> = candidates.iter().filter(|id| filter.matches(facts_of(id))).cloned().collect();
            assert_eq!(got, want, "{e:?}");
            // Each expression alone, by the index, is exact.
            for expr in &filter.0 {
                let alone: HashSet<Arc<str>> =
                    fleet.iter().filter(|(_, f)| expr.matches(f)).map(|(id, _)| id.clone()).collect();
                assert_eq!(index.selected(expr), alone, "{expr}");
            }
        }
        // Removing a client's facts takes it out of every set.
        index.remove("host-00", &fleet[0].1);
        let filter = FactFilter::parse(&["os.id=ubuntu".to_owned()]).unwrap().unwrap();
        assert!(!index.candidates(&filter).contains("host-00"));
        assert_eq!(index.candidates(&filter).len(), 5);
    }
}
