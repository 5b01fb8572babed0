//! Identities folded into ranges where they share a prefix and differ in a
//! numeric suffix, as ClusterShell's `clubak` prints node sets:
//! `web-001 … web-340, db-2` is `web-[001-340],db-2`.

use std::collections::BTreeMap;

/// `ids` folded, sorted by prefix then number.
pub fn fold<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    // Prefix → (number, its digits as written), and the ids with no
    // numeric suffix.
    let mut numbered: BTreeMap<&str, Vec<(u64, &str)>> = BTreeMap::new();
    let mut plain: Vec<&str> = Vec::new();
    for id in ids {
        let digits = id.len() - id.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        let (prefix, suffix) = id.split_at(id.len() - digits);
        match suffix.parse::<u64>() {
            Ok(n) if digits > 0 && digits <= 18 => numbered.entry(prefix).or_default().push((n, suffix)),
            _ => plain.push(id),
        }
    }
    // (how many ids, sort name, text): the biggest sets first, as in
    // `web-[001-340],db-2`.
    let mut parts: Vec<(usize, String, String)> = plain.into_iter().map(|p| (1, p.to_owned(), p.to_owned())).collect();
    for (prefix, mut numbers) in numbered {
        numbers.sort();
        numbers.dedup();
        let count = numbers.len();
        if numbers.len() == 1 {
            parts.push((1, prefix.to_owned(), format!("{prefix}{}", numbers[0].1)));
            continue;
        }
        // Runs of consecutive numbers written with the same width.
        let mut ranges: Vec<String> = Vec::new();
        let mut run: Vec<(u64, &str)> = Vec::new();
        let close = |run: &[(u64, &str)], ranges: &mut Vec<String>| match run {
            [] => {}
            [one] => ranges.push(one.1.to_owned()),
            [first, .., last] => ranges.push(format!("{}-{}", first.1, last.1)),
        };
        for n in numbers {
            // Padded numbers keep their width (`09-10`); unpadded ones may
            // grow (`9-10`).
            let unpadded = |d: &str| !d.starts_with('0') || d.len() == 1;
            let continues = run.last().is_some_and(|last| {
                n.0 == last.0 + 1 && (n.1.len() == last.1.len() || (unpadded(n.1) && unpadded(last.1)))
            });
            if !continues {
                close(&run, &mut ranges);
                run.clear();
            }
            run.push(n);
        }
        close(&run, &mut ranges);
        parts.push((count, prefix.to_owned(), format!("{prefix}[{}]", ranges.join(","))));
    }
    parts.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    parts.into_iter().map(|(_, _, p)| p).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::fold;

    #[test]
    fn ranges_like_clubak() {
        let web: Vec<String> = (1..=340).map(|i| format!("web-{i:03}")).collect();
        let mut ids: Vec<&str> = web.iter().map(String::as_str).collect();
        ids.push("db-2");
        assert_eq!(fold(ids), "web-[001-340],db-2");
        assert_eq!(fold(["web-1", "web-2", "web-4", "web-10", "mail"]), "web-[1-2,4,10],mail");
        assert_eq!(fold(["web-09", "web-10"]), "web-[09-10]");
        assert_eq!(fold(["a9", "a10"]), "a[9-10]");
        assert_eq!(fold(["h1.example.com"]), "h1.example.com");
        assert_eq!(fold(Vec::<&str>::new()), "");
    }
}
